//! Builds the cdylib, compiles `tests/c/smoke.c` against
//! `include/gpu_arena.h` and that library, and runs it.

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
    let run = Command::new(&out)
        .env_remove("GPU_ARENA_CONF")
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
}
