//! Builds the cdylib, compiles `tests/c/smoke.c` against
//! `include/gpu_arena.h` and that library, and runs it; then drives
//! `scripts/ab_shim.c` with two copies of it.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn c_program_runs_against_the_header_and_library() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // `cargo test` does not build the cdylib: build it here, in a target
    // directory of its own (the outer cargo holds the lock on the main one).
    // target/<profile>/deps/c_abi-… → target/
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let target_dir = target.join("c-abi");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Packed test binaries run on machines without a Rust toolchain or C compiler.
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if !have(&cargo) || !have(&cc) || !root.join("include/gpu_arena.h").exists() {
        println!(
            "skipped: needs cargo, a C compiler and the source tree (not on a packed test machine)"
        );
        return;
    }
    let status = Command::new(cargo)
        .args(["build", "--lib", "--no-default-features", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the cdylib failed");
    let profile_dir = target_dir.join("debug");
    let out = std::env::temp_dir().join(format!("gpu_arena_smoke_{}", std::process::id()));
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(root.join("tests/c/smoke.c"))
        .arg("-I")
        .arg(root.join("include"))
        .arg("-L")
        .arg(&profile_dir)
        .arg("-lgpu_arena")
        .arg(format!("-Wl,-rpath,{}", profile_dir.display()))
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(status.success(), "compiling the C smoke test failed");
    // The library just built comes first: cargo puts target/<profile> on
    // LD_LIBRARY_PATH, ahead of the rpath, and a cdylib left there by an
    // older `cargo build` would be loaded instead.
    let path = std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default();
    let mut dirs = vec![profile_dir.clone()];
    dirs.extend(std::env::split_paths(&path));
    let run = Command::new(&out)
        .env_remove("GPU_ARENA_CONF")
        .env("LD_LIBRARY_PATH", std::env::join_paths(dirs).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let _ = std::fs::remove_file(&out);
    assert!(
        run.status.success(),
        "C smoke test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("c abi ok"), "{stdout}");
    // report:1 prints the peaks at exit, for every device used
    for d in 0..4 {
        assert!(
            stderr.contains(&format!("device {d}: peak live")),
            "{stderr}"
        );
    }
    ab_shim_serves_two_builds(&root, &profile_dir, &cc);
}

/// `scripts/ab_shim.c` (two builds behind one PyTorch allocator, for
/// within-process A/B runs on the GPU machine) with two copies of the
/// library just built, driven by `tests/c/ab_shim_driver.c`: each build
/// serves the allocations made while it is selected and the frees of its
/// own blocks, and counts only those. The same file under both names is
/// refused (one library, one reservation: its blocks cannot be told apart).
fn ab_shim_serves_two_builds(root: &std::path::Path, profile_dir: &std::path::Path, cc: &str) {
    let dir = std::env::temp_dir().join(format!("gpu_arena_ab_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = profile_dir.join("libgpu_arena.so");
    let copies = [dir.join("a.so"), dir.join("b.so")];
    for c in &copies {
        std::fs::copy(&lib, c).unwrap();
    }
    let exe = dir.join("driver");
    let status = Command::new(cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(root.join("tests/c/ab_shim_driver.c"))
        .arg(root.join("scripts/ab_shim.c"))
        .args(["-ldl", "-lpthread"])
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(
        status.success(),
        "compiling the A/B shim and its driver failed"
    );
    let run = |second: &std::path::Path| {
        // In the scratch folder: the refused run aborts, and a core file,
        // if the system writes one, goes there.
        Command::new(&exe)
            .current_dir(&dir)
            .env("GPU_ARENA_CONF", "backend:host")
            .env("AB_LIB_0", &copies[0])
            .env("AB_LIB_1", second)
            .output()
            .unwrap()
    };
    let two = run(&copies[1]);
    let one = run(&copies[0]);
    let _ = std::fs::remove_dir_all(&dir);
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(two.status.success(), "{}", text(&two));
    assert!(text(&two).contains("ab shim ok"), "{}", text(&two));
    assert!(
        !one.status.success(),
        "one library under both names was served"
    );
    assert!(text(&one).contains("overlap"), "{}", text(&one));
}

/// The process-wide tag, unknown tags and CUDA-graph holds, through the C
/// ABI in this process (one test: these are process-wide settings).
#[test]
fn process_tag_unknown_tags_and_graph_holds() {
    use core::ffi::CStr;
    use gpu_arena::api::ffi::*;
    use gpu_arena::global;

    let last_error = || {
        // SAFETY: gpu_arena_last_error returns a NUL-terminated string.
        unsafe { CStr::from_ptr(gpu_arena_last_error()) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: NUL-terminated strings throughout.
    unsafe {
        // Choosing the process-wide tag opens no device, as choosing a
        // thread's does not (it opened device 0, with the settings of the
        // environment, before `gpu_arena_init` could give its own: found
        // by review).
        assert!(gpu_arena_set_process_tag(c"chosen-first".as_ptr()) >= 0);
        assert_eq!(global::arenas().count(), 0, "no device opened");
        assert_eq!(
            global::process_tag(),
            global::tag_index("chosen-first").unwrap()
        );
        assert!(gpu_arena_set_process_tag(c"default".as_ptr()) >= 0);
        assert_eq!(gpu_arena_init(c"backend:host,thread_cache:0".as_ptr()), 0);
        let arena = global::arena(0).unwrap();
        // Found again through the line of flags every call reads (once the
        // arena is ready): the arena of the table, not a copy.
        assert!(core::ptr::eq(arena, global::arena(0).unwrap()));

        // A thread that never chose a tag follows the process-wide one; a
        // thread that chose one keeps it.
        assert!(gpu_arena_set_tag(c"mine".as_ptr()) >= 0);
        let mine = arena.find_tag("mine").unwrap();
        assert!(gpu_arena_set_process_tag(c"weights".as_ptr()) >= 0);
        let weights = arena.find_tag("weights").unwrap();
        assert_eq!(global::current_tag(), mine);
        let other = std::thread::spawn(|| {
            let p = gpu_arena_alloc(1 << 20, 0, core::ptr::null_mut());
            assert!(!p.is_null());
            (global::current_tag(), p as u64)
        })
        .join()
        .unwrap();
        assert_eq!(other.0, weights, "an untagged thread uses the process tag");
        assert!(arena.tag_stats(weights).live >= 1 << 20);
        assert_eq!(
            gpu_arena_free(other.1 as *mut _, 1 << 20, 0, core::ptr::null_mut()),
            0
        );
        assert!(gpu_arena_set_process_tag(c"default".as_ptr()) >= 0);
        let untagged = std::thread::spawn(global::current_tag).join().unwrap();
        assert_eq!(untagged, 0);
        // A device whose arena comes later knows the same tags at the same
        // indices (a thread's tag is an index). The host backend has one
        // device; this runs where a second GPU is found.
        if let Ok(second) = global::arena(1) {
            assert_eq!(second.find_tag("mine"), Some(mine));
            assert_eq!(second.find_tag("weights"), Some(weights));
        }

        // Sleep and wake refuse unknown tags before changing anything.
        let rc = gpu_arena_sleep(0, c"weights,nonesuch".as_ptr(), 0, core::ptr::null_mut());
        assert_eq!(rc, -1);
        let e = last_error();
        assert!(e.contains("no tag named `nonesuch`"), "{e}");
        assert!(!arena.accounting(Some(weights)).asleep, "nothing slept");
        assert_eq!(
            gpu_arena_wake(0, c"nonesuch".as_ptr(), core::ptr::null_mut()),
            -1
        );
        assert!(arena.find_tag("nonesuch").is_none(), "no tag was created");

        // A graph hold: blocks allocated on the captured stream stay
        // allocated when freed, until the release.
        let s = 0x5000 as *mut core::ffi::c_void;
        let id = gpu_arena_graph_begin(0, s);
        assert_ne!(id, 0);
        let live0 = arena.tag_stats(mine).live;
        let a = gpu_arena_alloc(3 << 20, 0, s);
        let b = gpu_arena_alloc(4096, 0, s);
        let outside = gpu_arena_alloc(4096, 0, core::ptr::null_mut());
        // A wrong free of a held block is refused as the ordinary path
        // would refuse it, and changes nothing.
        assert_eq!(gpu_arena_free(a, 1 << 20, 0, s), -1, "another size");
        assert!(
            last_error().contains("size or alignment"),
            "{}",
            last_error()
        );
        assert_eq!(gpu_arena_free(a, 3 << 20, 1, s), -1, "another device");
        assert_eq!(gpu_arena_free(a, 3 << 20, -1, s), -1, "a negative device");
        assert_eq!(gpu_arena_free(a, 3 << 20, 0, s), 0);
        assert_eq!(gpu_arena_free(a, 3 << 20, 0, s), -1, "double free refused");
        assert!(last_error().contains("already freed"), "{}", last_error());
        gpu_arena_graph_end(id);
        let c = gpu_arena_alloc(4096, 0, s);
        assert_eq!(
            gpu_arena_free(c, 4096, 0, s),
            0,
            "after the capture: not noted"
        );
        assert_eq!(gpu_arena_free(outside, 4096, 0, core::ptr::null_mut()), 0);
        assert!(
            arena.tag_stats(mine).live >= live0 + (3 << 20) + 4096,
            "the freed block is still allocated"
        );
        assert_eq!(
            global::graph::hold_stats(id),
            Some((2, (3 << 20) + 4096, 1, 3 << 20))
        );
        assert_eq!(gpu_arena_graph_release(id), 3 << 20);
        assert_eq!(global::graph::hold_stats(id), None);
        // b was never freed while held: its free now takes the ordinary path.
        assert_eq!(gpu_arena_free(b, 4096, 0, s), 0);
        assert_eq!(arena.tag_stats(mine).live, live0);
        assert_eq!(
            gpu_arena_graph_release(id),
            0,
            "a second release does nothing"
        );

        // A graph released while the tag of its blocks sleeps: the deferred
        // frees are served, and the sleeping tag's stats let go of them
        // (the default stream here: sleep waits on the tag's streams, and
        // the host backend knows no stream 0x5000).
        assert!(gpu_arena_set_tag(c"weights".as_ptr()) >= 0);
        let d = core::ptr::null_mut();
        let id = gpu_arena_graph_begin(0, d);
        let live0 = arena.tag_stats(weights).live;
        let w = gpu_arena_alloc(3 << 20, 0, d);
        assert_eq!(gpu_arena_free(w, 3 << 20, 0, d), 0, "deferred");
        gpu_arena_graph_end(id);
        assert_eq!(arena.tag_stats(weights).live, live0 + (3 << 20));
        let rc = gpu_arena_sleep(0, c"weights".as_ptr(), 0, d);
        assert_eq!(rc, 0, "{}", last_error());
        assert_eq!(gpu_arena_graph_release(id), 3 << 20, "{}", last_error());
        assert_eq!(arena.tag_stats(weights).live, live0);
        assert_eq!(gpu_arena_wake(0, c"weights".as_ptr(), d), 0);
        assert_eq!(arena.tag_stats(weights).live, live0);
        assert!(gpu_arena_set_tag(c"mine".as_ptr()) >= 0);
    }
}
