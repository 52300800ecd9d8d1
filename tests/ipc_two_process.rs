//! Two processes share one buffer.
//!
//! The test process (A, the exporter) re-executes this test binary twice:
//! once as the importer (B) and once as an intruder (C), telling each its
//! role through `GPU_ARENA_IPC_ROLE` (and B its device through
//! `GPU_ARENA_IPC_DEVICE`). Then:
//!
//! 1. A commits a shared buffer of two runs on its device, writes a pattern
//!    and listens on a named socket in a private directory (0700, socket
//!    0600);
//! 2. B and C connect; A sends the descriptors only to the connection whose
//!    `SO_PEERCRED` pid is B's: C is refused and receives nothing;
//! 3. B imports and maps the runs into its own arena (on its own device:
//!    the same as A's, or another GPU reaching A's memory as a peer), checks
//!    the pattern, writes an answer from its device and says so;
//! 4. A sees the answer, then drops its buffer (its runs are unmapped and
//!    released), trims, puts its arena to sleep and wakes it, commits and
//!    overwrites fresh memory of the same size, and says so;
//! 5. B still reads the pattern and its answer: nothing the exporter did
//!    pulled the memory from under it.
//!
//! `host_two_processes` runs everywhere (CI); `cuda_two_processes` does the
//! same on GPU 0 in both processes and `cuda_two_gpus_two_processes` with the
//! importer on the last GPU (it reads A's memory over peer access and answers
//! with a fill and a kernel of its own device); both skip, with a printed
//! reason, where the GPUs, shareable handles or peer access are missing;
//! `hip_two_processes` does it through the HIP backend (the stand-in
//! `libamdhip64` in CI), and skips the same way unless
//! `GPU_ARENA_REQUIRE_HIP=1`.
//!
//! The exporter prints one `IPC key=value ...` line per run (for the
//! multi-GPU report).

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpu_arena::api::ipc::{ExportedBuffer, ImportedBuffer, SharedBuffer};
use gpu_arena::driver::{DevicePtr, Driver, HostConfig, HostDriver, Stream, share};
use gpu_arena::{ArenaConfig, CommitConfig, Kind, SharedArena, SleepMode};

const ROLE: &str = "GPU_ARENA_IPC_ROLE";
const SOCKET: &str = "GPU_ARENA_IPC_SOCKET";
const DEVICE: &str = "GPU_ARENA_IPC_DEVICE";
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

/// One run of the test: who opens what, and how the importer answers.
struct Plan<D> {
    /// The test's name (children run it again with `--exact`).
    test: &'static str,
    /// Names the run in the socket directory and the `IPC` line.
    tag: &'static str,
    /// The importer's device (the exporter's is 0).
    importer_device: u32,
    /// Opens the backend on a device.
    open: fn(u32) -> D,
    /// Writes the importer's answer: `ANSWER_LEN` bytes at `va` (A's memory
    /// as mapped in B), from B's device; returns the bytes now there.
    answer: fn(&D, DevicePtr) -> Vec<u8>,
}

fn read_bytes<D: Driver>(a: &SharedArena<D>, va: DevicePtr, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: `va..va+len` is a mapped buffer of the arena, readable by its
    // device; `out` is a separate host allocation; the default stream's copy
    // has completed on return.
    unsafe {
        a.lock()
            .driver()
            .copy(out.as_mut_ptr() as u64, va.addr(), len, Stream::DEFAULT)
            .unwrap()
    };
    out
}

fn write_bytes<D: Driver>(a: &SharedArena<D>, va: DevicePtr, data: &[u8]) {
    // SAFETY: as in `read_bytes`, the other way.
    unsafe {
        a.lock()
            .driver()
            .copy(va.addr(), data.as_ptr() as u64, data.len(), Stream::DEFAULT)
            .unwrap()
    };
}

/// The answer of every backend: a fill of 0xEE from the importer's device.
fn fill_answer<D: Driver>(d: &D, va: DevicePtr) -> Vec<u8> {
    // SAFETY: the range is mapped read-write for the importer's device; the
    // default stream's fill has completed on return.
    unsafe { d.fill(va.addr(), 0xEE, ANSWER_LEN, Stream::DEFAULT) }.unwrap();
    vec![0xEE; ANSWER_LEN]
}

fn spawn(test: &str, role: &str, socket: &Path, device: u32) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(SOCKET, socket)
        .env(DEVICE, device.to_string())
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

/// Waits for a child; its `IPC_*` lines (stdout) are returned.
fn finish(child: Child, marker: &str) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(marker),
        "child without {marker}: {}\n{stdout}\n{stderr}",
        out.status
    );
    // The harness may print `test name ... ` on the same line first.
    stdout
        .lines()
        .filter_map(|l| l.find("IPC_").map(|i| l[i..].to_owned()))
        .collect()
}

/// Process A.
fn exporter<D: Driver>(plan: &Plan<D>) {
    let arena = SharedArena::new((plan.open)(0), Kind::Device(0), config()).unwrap();
    let buf = SharedBuffer::new(&arena, LEN).unwrap();
    let data: Vec<u8> = (0..LEN).map(pattern).collect();
    write_bytes(&arena, buf.as_ptr(), &data);
    let exported = buf.export().unwrap();
    let runs = exported.runs.len();
    assert_eq!(runs, 2, "two runs");

    let dir = private_dir(plan.tag);
    let listener = share::listen_private(&dir, "s").unwrap();
    let socket = dir.join("s");
    let importer = spawn(plan.test, "importer", &socket, plan.importer_device);
    let intruder = spawn(plan.test, "intruder", &socket, plan.importer_device);
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
    let answer = read_bytes(&arena, buf.as_ptr().byte_add(ANSWER_AT), ANSWER_LEN);
    let mut expected = vec![0u8; ANSWER_LEN];
    conn.read_exact(&mut expected).unwrap();
    assert_eq!(answer, expected, "the importer's answer is visible here");

    // Free, trim, sleep and wake, then fresh memory overwritten: none of it
    // may reach the memory B maps.
    drop(buf);
    arena.trim();
    assert_eq!(
        arena.stats().committed,
        0,
        "the exporter gave its runs back"
    );
    arena
        .lock()
        .sleep(SleepMode::Discard, Stream::DEFAULT)
        .unwrap();
    arena.lock().wake(Stream::DEFAULT).unwrap();
    let fresh = SharedBuffer::new(&arena, LEN).unwrap();
    write_bytes(&arena, fresh.as_ptr(), &vec![0u8; LEN as usize]);
    conn.write_all(b"D").unwrap();
    let mut lines = finish(importer, "IMPORTER_OK");
    lines.extend(finish(intruder, "INTRUDER_GOT_NOTHING"));
    drop(fresh);
    let _ = std::fs::remove_dir_all(&dir);
    for l in &lines {
        println!("{l}");
    }
    println!(
        "IPC test={} exporter_device=0 importer_device={} bytes={LEN} runs={runs} \
         import=ok pattern=ok answer_seen_by_exporter=ok after_exporter_free_trim_sleep=ok \
         intruder=refused",
        plan.tag, plan.importer_device
    );
}

/// Process B.
fn importer<D: Driver>(plan: &Plan<D>) {
    let device: u32 = std::env::var(DEVICE).unwrap().parse().unwrap();
    let arena = SharedArena::new((plan.open)(device), Kind::Device(device), config()).unwrap();
    let mut conn = UnixStream::connect(std::env::var(SOCKET).unwrap()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let exported = ExportedBuffer::recv(conn.as_fd()).unwrap();
    assert_eq!(exported.len, LEN);
    // SAFETY: the exporter (checked by the socket's owner) sent descriptors
    // made by SharedBuffer::export of the same backend.
    let view = unsafe { ImportedBuffer::new(&arena, &exported) }.unwrap();
    drop(exported);
    let check = |answer: Option<&[u8]>| {
        let got = read_bytes(&arena, view.as_ptr(), LEN as usize);
        for (i, &x) in got.iter().enumerate() {
            let i = i as u64;
            let want = match answer {
                Some(a) if (ANSWER_AT..ANSWER_AT + ANSWER_LEN as u64).contains(&i) => {
                    a[(i - ANSWER_AT) as usize]
                }
                _ => pattern(i),
            };
            assert_eq!(x, want, "byte {i}");
        }
    };
    check(None);
    // The answer, written by this process's device.
    let answer = (plan.answer)(arena.lock().driver(), view.as_ptr().byte_add(ANSWER_AT));
    conn.write_all(b"R").unwrap();
    conn.write_all(&answer).unwrap();
    let mut byte = [0u8];
    conn.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"D");
    // The exporter released, trimmed, slept and reused: everything is here.
    check(Some(&answer));
    drop(view);
    assert_eq!(arena.stats().committed, 0);
    println!("IPC_IMPORTER device={device} pattern=ok answer=ok after_exporter_release=ok");
    println!("IMPORTER_OK");
}

/// Process C: connects like B, must receive nothing.
fn intruder() {
    let conn = UnixStream::connect(std::env::var(SOCKET).unwrap()).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    match ExportedBuffer::recv(conn.as_fd()) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            println!("IPC_INTRUDER received=nothing");
            println!("INTRUDER_GOT_NOTHING");
        }
        other => panic!("the intruder got something: {other:?}"),
    }
}

fn run<D: Driver>(plan: &Plan<D>) {
    match std::env::var(ROLE).as_deref() {
        Ok("importer") => importer(plan),
        Ok("intruder") => intruder(),
        _ => exporter(plan),
    }
}

#[test]
fn host_two_processes() {
    run(&Plan {
        test: "host_two_processes",
        tag: "host",
        importer_device: 0,
        open: |d| {
            HostDriver::with_config(HostConfig {
                device_count: d + 1,
                ..Default::default()
            })
            .unwrap()
        },
        answer: fill_answer,
    });
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use gpu_arena::driver::cuda::{CudaDriver, sys};

    /// Device 0's driver if it can share handles, else `None` after
    /// printing why the test skips.
    fn shareable() -> Option<CudaDriver> {
        match CudaDriver::new(0) {
            Err(e) => {
                println!("skipped: no usable CUDA device ({e})");
                None
            }
            Ok(d) if !d.capabilities().shareable_handles => {
                println!("skipped: this CUDA device cannot create POSIX-fd shareable handles");
                None
            }
            Ok(d) => Some(d),
        }
    }

    /// Whether device `from` can access device `to`'s memory.
    fn can_access_peer(_loaded: &CudaDriver, from: u32, to: u32) -> bool {
        let (mut a, mut b, mut can) = (0, 0, 0);
        // SAFETY: a CudaDriver exists, so libcuda is loaded and initialized;
        // the out-pointers are valid; the ordinals are below the count.
        unsafe {
            sys::cuDeviceGet(&mut a, from as i32) == sys::CUresult::CUDA_SUCCESS
                && sys::cuDeviceGet(&mut b, to as i32) == sys::CUresult::CUDA_SUCCESS
                && sys::cuDeviceCanAccessPeer(&mut can, a, b) == sys::CUresult::CUDA_SUCCESS
                && can != 0
        }
    }

    fn open(d: u32) -> CudaDriver {
        CudaDriver::new(d).unwrap()
    }

    #[test]
    fn cuda_two_processes() {
        if std::env::var(ROLE).is_err() && shareable().is_none() {
            return;
        }
        run(&Plan {
            test: "cuda::cuda_two_processes",
            tag: "cuda_one_gpu",
            importer_device: 0,
            open,
            answer: fill_answer,
        });
    }

    /// The importer's answer on another GPU: a fill, then a kernel of its
    /// own device adding one to each `u32` (peer writes by the copy engine
    /// and by the SMs).
    fn fill_and_kernel(d: &CudaDriver, va: DevicePtr) -> Vec<u8> {
        fill_answer(d, va);
        let k = d.kernels().unwrap();
        // SAFETY: the range is mapped read-write for this device and only
        // this kernel touches it until the fence below completed.
        unsafe { k.add_one(Stream::DEFAULT, va.addr(), (ANSWER_LEN / 4) as u64) }.unwrap();
        let f = d.record(Stream::DEFAULT).unwrap();
        d.wait(&f).unwrap();
        d.drop_fence(f);
        (0..ANSWER_LEN / 4)
            .flat_map(|_| 0xEEEE_EEEFu32.to_ne_bytes())
            .collect()
    }

    #[test]
    fn cuda_two_gpus_two_processes() {
        let importer_device = match std::env::var(DEVICE) {
            Ok(d) => d.parse().unwrap(),
            Err(_) => {
                let Some(d) = shareable() else { return };
                let n = d.capabilities().device_count;
                if n < 2 {
                    println!("skipped: IPC across GPUs needs 2 CUDA devices, found {n}");
                    return;
                }
                if !can_access_peer(&d, n - 1, 0) {
                    println!(
                        "skipped: CUDA device {} cannot access device 0 as a peer",
                        n - 1
                    );
                    return;
                }
                n - 1
            }
        };
        run(&Plan {
            test: "cuda::cuda_two_gpus_two_processes",
            tag: "cuda_two_gpus",
            importer_device,
            open,
            answer: fill_and_kernel,
        });
    }
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
    run(&Plan {
        test: "hip_two_processes",
        tag: "hip",
        importer_device: 0,
        open: |d| HipDriver::new(d).unwrap(),
        answer: fill_answer,
    });
}
