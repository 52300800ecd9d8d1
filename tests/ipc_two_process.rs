//! Two processes share one buffer.
//!
//! The test process (A, the exporter) re-executes this test binary twice:
//! once as the importer (B) and once as an intruder (C), telling each its
//! role through `GPU_ARENA_IPC_ROLE`. Then:
//!
//! 1. A commits a shared buffer of two runs, writes a pattern and listens
//!    on a named socket in a private directory (0700, socket 0600);
//! 2. B and C connect; A sends the descriptors only to the connection whose
//!    `SO_PEERCRED` pid is B's: C is refused and receives nothing;
//! 3. B imports and maps the runs into its own arena, checks the pattern,
//!    writes an answer from its device (a fill) and says so;
//! 4. A sees the answer, then drops its buffer (its runs are unmapped and
//!    released) and says so;
//! 5. B still reads the pattern and its answer: the exporter's release did
//!    not pull the memory from under it.
//!
//! `host_two_processes` runs everywhere (CI); `cuda_two_processes` does the
//! same on GPU 0 in both processes and skips, with a printed reason, where no
//! CUDA device or no POSIX-fd shareable handles are found;
//! `hip_two_processes` does it through the HIP backend (the stand-in
//! `libamdhip64` in CI), and skips the same way unless
//! `GPU_ARENA_REQUIRE_HIP=1`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpu_arena::api::ipc::{ExportedBuffer, ImportedBuffer, SharedBuffer};
use gpu_arena::driver::{Driver, HostDriver, Stream, share};
use gpu_arena::{ArenaConfig, CommitConfig, Kind, SharedArena};

const ROLE: &str = "GPU_ARENA_IPC_ROLE";
const SOCKET: &str = "GPU_ARENA_IPC_SOCKET";
/// Two runs of 4 MiB.
const LEN: u64 = 8 << 20;
const ANSWER_AT: u64 = 5 << 20;
const ANSWER_LEN: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(120);

fn config() -> ArenaConfig {
    ArenaConfig {
        reservation: 4 << 30,
        commit: CommitConfig {
            max_run: 4 << 20,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7) + 3) as u8
}

fn read_bytes<D: Driver>(a: &SharedArena<D>, va: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: `va..va+len` is a mapped buffer of the arena, readable by its
    // device; `out` is a separate host allocation; the default stream's copy
    // has completed on return.
    unsafe {
        a.lock()
            .driver()
            .copy(out.as_mut_ptr() as u64, va, len, Stream::DEFAULT)
            .unwrap()
    };
    out
}

fn write_bytes<D: Driver>(a: &SharedArena<D>, va: u64, data: &[u8]) {
    // SAFETY: as in `read_bytes`, the other way.
    unsafe {
        a.lock()
            .driver()
            .copy(va, data.as_ptr() as u64, data.len(), Stream::DEFAULT)
            .unwrap()
    };
}

fn spawn(test: &str, role: &str, socket: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SOCKET, socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn private_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::env::temp_dir().join(format!(
        "gpu-arena-ipc-{tag}-{}-{nanos}",
        std::process::id()
    ))
}

fn finish(child: Child, marker: &str) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(marker),
        "child without {marker}: {}\n{stdout}\n{stderr}",
        out.status
    );
}

/// Process A.
fn exporter<D: Driver>(test: &str, tag: &str, driver: D) {
    let arena = SharedArena::new(driver, Kind::Device(0), config()).unwrap();
    let buf = SharedBuffer::new(&arena, LEN).unwrap();
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    write_bytes(&arena, buf.as_ptr(), &data);
    let exported = buf.export().unwrap();
    assert_eq!(exported.runs.len(), 2, "two runs");

    let dir = private_dir(tag);
    let listener = share::listen_private(&dir, "s").unwrap();
    let socket = dir.join("s");
    let importer = spawn(test, "importer", &socket);
    let intruder = spawn(test, "intruder", &socket);
    let (b, c) = (importer.id() as i32, intruder.id() as i32);
    println!("exporter {} importer {b} intruder {c}", std::process::id());

    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let (mut served, mut refused) = (None, 0);
    while served.is_none() || refused == 0 {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                match exported.send(conn.as_fd(), b) {
                    Ok(()) => served = Some(conn),
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        let who = share::peer_credentials(conn.as_fd()).unwrap();
                        assert_eq!(who.pid, c, "only the intruder is refused");
                        println!("refused: {e}");
                        refused += 1;
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "children did not connect");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    // A's own descriptors go; B holds its duplicates (and soon mappings).
    drop(exported);
    let mut conn = served.unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut byte = [0u8];
    conn.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"R", "importer checked the pattern and answered");
    let answer = read_bytes(&arena, buf.as_ptr() + ANSWER_AT, ANSWER_LEN);
    assert!(
        answer.iter().all(|&x| x == 0xEE),
        "the importer's answer is visible"
    );

    // Release: unmap + release here; B keeps its memory.
    drop(buf);
    assert_eq!(
        arena.stats().committed,
        0,
        "the exporter gave its runs back"
    );
    conn.write_all(b"D").unwrap();
    finish(importer, "IMPORTER_OK");
    finish(intruder, "INTRUDER_GOT_NOTHING");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Process B.
fn importer<D: Driver>(driver: D) {
    let arena = SharedArena::new(driver, Kind::Device(0), config()).unwrap();
    let mut conn = UnixStream::connect(std::env::var(SOCKET).unwrap()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let exported = ExportedBuffer::recv(conn.as_fd()).unwrap();
    assert_eq!(exported.len, LEN);
    // SAFETY: the exporter (checked by the socket's owner) sent descriptors
    // made by SharedBuffer::export of the same backend.
    let view = unsafe { ImportedBuffer::new(&arena, &exported) }.unwrap();
    drop(exported);
    let check = |answered: bool| {
        let got = read_bytes(&arena, view.as_ptr(), LEN as usize);
        for (i, &x) in got.iter().enumerate() {
            let i = i as u64;
            let want = if answered && (ANSWER_AT..ANSWER_AT + ANSWER_LEN as u64).contains(&i) {
                0xEE
            } else {
                pattern(i)
            };
            assert_eq!(x, want, "byte {i}");
        }
    };
    check(false);
    // The answer, written by this process's device.
    // SAFETY: the range is mapped read-write for our device; the default
    // stream's fill has completed on return.
    unsafe {
        arena
            .lock()
            .driver()
            .fill(view.as_ptr() + ANSWER_AT, 0xEE, ANSWER_LEN, Stream::DEFAULT)
            .unwrap()
    };
    conn.write_all(b"R").unwrap();
    let mut byte = [0u8];
    conn.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"D");
    // The exporter released its buffer: everything is still here.
    check(true);
    drop(view);
    assert_eq!(arena.stats().committed, 0);
    println!("IMPORTER_OK");
}

/// Process C: connects like B, must receive nothing.
fn intruder() {
    let conn = UnixStream::connect(std::env::var(SOCKET).unwrap()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    match ExportedBuffer::recv(conn.as_fd()) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            println!("INTRUDER_GOT_NOTHING");
        }
        other => panic!("the intruder got something: {other:?}"),
    }
}

fn run<D: Driver>(test: &str, tag: &str, open: impl Fn() -> D) {
    match std::env::var(ROLE).as_deref() {
        Ok("importer") => importer(open()),
        Ok("intruder") => intruder(),
        _ => exporter(test, tag, open()),
    }
}

#[test]
fn host_two_processes() {
    run("host_two_processes", "host", || HostDriver::new().unwrap());
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_two_processes() {
    use gpu_arena::driver::cuda::CudaDriver;
    if std::env::var(ROLE).is_err() {
        match CudaDriver::new(0) {
            Err(e) => {
                println!("skipped: no usable CUDA device ({e})");
                return;
            }
            Ok(d) if !d.capabilities().shareable_handles => {
                println!("skipped: this CUDA device cannot create POSIX-fd shareable handles");
                return;
            }
            Ok(_) => {}
        }
    }
    run("cuda_two_processes", "cuda", || CudaDriver::new(0).unwrap());
}

#[cfg(feature = "hip")]
#[test]
fn hip_two_processes() {
    use gpu_arena::driver::hip::HipDriver;
    if std::env::var(ROLE).is_err() {
        let required = std::env::var("GPU_ARENA_REQUIRE_HIP").is_ok_and(|v| v == "1");
        match HipDriver::new(0) {
            Err(e) if required => panic!("GPU_ARENA_REQUIRE_HIP is set, but HIP did not open: {e}"),
            Err(e) => {
                println!("skipped: no usable HIP device ({e})");
                return;
            }
            Ok(d) if !d.capabilities().shareable_handles => {
                assert!(!required, "the HIP backend cannot share handles here");
                println!("skipped: this HIP runtime cannot export POSIX-fd shareable handles");
                return;
            }
            Ok(_) => {}
        }
    }
    run("hip_two_processes", "hip", || HipDriver::new(0).unwrap());
}
