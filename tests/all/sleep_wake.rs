//! Sleep and wake at the same addresses, exact accounting, the OOM report.

use gpu_arena::driver::{Checked, Driver, Fault, FaultKind, HostConfig, HostDriver, Op, Stream};
use gpu_arena::{Arena, ArenaConfig, DevicePtr, Error, Kind, SleepMode};

use crate::common::{check, fill};

fn driver() -> Checked<HostDriver> {
    Checked::new(
        HostDriver::with_config(HostConfig {
            granularity: 64 << 10,
            capacity: 512 << 20,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn config() -> ArenaConfig {
    let mut c = ArenaConfig {
        reservation: 1 << 30,
        min_reservation: 1 << 20,
        ..Default::default()
    };
    c.commit.decay_ms = 0;
    c
}

fn blocks(a: &mut Arena<&Checked<HostDriver>>) -> Vec<(DevicePtr, usize, u8)> {
    let mut v = Vec::new();
    for (k, size) in [100usize, 5000, 70_000, 300_000, 2 << 20]
        .into_iter()
        .enumerate()
    {
        let p = a.alloc(size as u64, 64).unwrap();
        fill(p, size, k as u8 * 31 + 1);
        v.push((p, size, k as u8 * 31 + 1));
    }
    v
}

#[test]
fn offload_keeps_contents_and_addresses_across_cycles() {
    let d = driver();
    {
        let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
        let live = blocks(&mut a);
        let before = a.stats();
        for _ in 0..3 {
            let r = a.sleep(SleepMode::Offload, Stream::DEFAULT).unwrap();
            assert_eq!(r.bytes, before.committed, "every committed byte goes back");
            assert!(r.copied > 0);
            assert_eq!(a.stats().committed, 0);
            assert!(a.is_asleep());
            // Only the pinned staging copy is held while asleep.
            assert_eq!(d.physical_bytes(), r.copied);
            assert!(matches!(a.alloc(64, 8), Err(Error::Asleep { .. })));
            let w = a.wake(Stream::DEFAULT).unwrap();
            assert_eq!(w.copied, r.copied);
            for &(p, len, seed) in &live {
                assert!(
                    check(p, len, seed),
                    "block at {p:#x} restored at the same address"
                );
            }
            assert_eq!(a.stats().live, before.live);
        }
        for (p, _, _) in live {
            a.free(p).unwrap();
        }
        a.trim();
    }
    assert!(d.leaks().is_none(), "{:?}", d.leaks());
    let c = d.counts();
    assert_eq!(c.create, c.release);
    assert_eq!(c.reserve, c.free_reservation);
}

#[test]
fn discard_gives_zeroed_pages_back_at_the_same_addresses() {
    let d = driver();
    let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
    let live = blocks(&mut a);
    let r = a.sleep(SleepMode::Discard, Stream::DEFAULT).unwrap();
    assert_eq!(r.copied, 0);
    assert_eq!(d.physical_bytes(), 0, "discard keeps nothing");
    a.wake(Stream::DEFAULT).unwrap();
    for &(p, len, _) in &live {
        // SAFETY: host backend, live block, awake again.
        let s = unsafe { std::slice::from_raw_parts(p.as_ptr::<u8>(), len) };
        assert!(
            s.iter().all(|&b| b == 0),
            "discarded contents read as zero on the host backend"
        );
    }
    // The arena works as before.
    let q = a.alloc(1 << 20, 64).unwrap();
    fill(q, 1 << 20, 9);
    assert!(check(q, 1 << 20, 9));
}

#[test]
fn a_failed_wake_leaves_the_arena_asleep_and_nothing_mapped() {
    let d = driver();
    let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
    // Three separate live ranges so wake makes several runs.
    let keep: Vec<DevicePtr> = (0..6).map(|_| a.alloc(300 << 10, 64).unwrap()).collect();
    for (i, &p) in keep.iter().enumerate() {
        if i % 2 == 1 {
            a.free(p).unwrap();
        } else {
            fill(p, 300 << 10, i as u8);
        }
    }
    a.sleep(SleepMode::Offload, Stream::DEFAULT).unwrap();
    let staged = d.physical_bytes();
    for op in [Op::Create, Op::Map, Op::SetAccess] {
        for kind in [FaultKind::OutOfMemory, FaultKind::DriverError] {
            d.inject(Fault { op, nth: 2, kind });
            assert!(a.wake(Stream::DEFAULT).is_err());
            d.clear_faults();
            assert!(a.is_asleep(), "{op:?}: still asleep");
            assert_eq!(a.stats().committed, 0);
            assert_eq!(d.physical_bytes(), staged, "{op:?}: nothing half-mapped");
        }
    }
    a.wake(Stream::DEFAULT).unwrap();
    for (i, &p) in keep.iter().enumerate() {
        if i % 2 == 0 {
            assert!(check(p, 300 << 10, i as u8));
        }
    }
}

#[test]
fn accounting_and_oom_report_match_the_stats() {
    let d = driver();
    let mut cfg = config();
    cfg.commit.limit = 8 << 20;
    let mut a = Arena::new(&d, Kind::Device(0), cfg).unwrap();
    let x = a.alloc(3 << 20, 512).unwrap();
    let y = a.alloc(1000, 64).unwrap();
    let z = a.alloc(2 << 20, 512).unwrap();
    a.free(z).unwrap();
    let acc = a.accounting();
    let s = a.stats();
    assert_eq!(
        (acc.live, acc.committed, acc.limit),
        (s.live, s.committed, 8 << 20)
    );
    assert_eq!(acc.reclaimable + acc.pending, s.pending_decommit);
    // The freed span lies on committed pages only if keep-alive kept them.
    assert!(acc.largest_free_committed <= s.committed - s.live + (64 << 10));
    let e = a.alloc(7 << 20, 512).unwrap_err();
    let Error::OutOfMemory(r) = &e else {
        panic!("expected OOM, got {e}")
    };
    let s = a.stats();
    assert_eq!(r.requested, 7 << 20);
    assert_eq!(r.live, s.live);
    assert_eq!(r.committed, s.committed);
    assert_eq!(r.limit, 8 << 20);
    assert_eq!(r.policies[0].live, s.slab.bytes);
    assert_eq!(r.policies[1].live, s.large.bytes);
    assert_eq!(r.policies[1].blocks, s.large.blocks);
    assert_eq!(r.fragmentation(), s.committed - s.live);
    let msg = e.to_string();
    assert!(
        msg.contains("by policy") && msg.contains("Hint:") && msg.contains("raise the limit"),
        "{msg}"
    );
    // The arena is unchanged and still works.
    a.free(x).unwrap();
    a.free(y).unwrap();
    assert_eq!(a.stats().live, 0);
}

#[test]
fn reservation_falls_back_under_an_address_space_limit() {
    // Re-run this test binary in a child with RLIMIT_AS set: the arena asks
    // for 64 GiB and must settle for less, saying so once.
    if std::env::var("GPU_ARENA_FALLBACK_CHILD").is_ok() {
        let d = HostDriver::new().unwrap();
        let a = Arena::new(
            d,
            Kind::Device(0),
            ArenaConfig {
                reservation: 64 << 30,
                min_reservation: 256 << 20,
                ..Default::default()
            },
        )
        .unwrap();
        let got = a.reservation_fallback().expect("a fallback happened");
        println!("FALLBACK_SIZE={got}");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "sleep_wake::reservation_falls_back_under_an_address_space_limit",
        "--nocapture",
    ])
    .env("GPU_ARENA_FALLBACK_CHILD", "1");
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 16 << 30,
                rlim_max: 16 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let size: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FALLBACK_SIZE="))
        .expect("child printed the size")
        .trim()
        .parse()
        .unwrap();
    assert!((256 << 20..16 << 30).contains(&size), "{size}");
    assert_eq!(
        stderr.matches("was refused; using").count(),
        1,
        "logged once: {stderr}"
    );
}

#[test]
fn memory_kinds_report_driver_differences() {
    let d = driver();
    assert!(d.capabilities().host_memory);
    let a = Arena::new(&d, Kind::PinnedHost, config()).unwrap();
    assert!(a.host_visible());
}

/// Frees while asleep (PyTorch frees a sleeping tag's tensors; a buffer is
/// dropped): served at once and exactly accounted, and the wake neither
/// recommits nor restores what held only freed bytes (a restore there would
/// write unmapped memory). A second free of the same block is still
/// refused. What stays live comes back with its contents (offload).
#[test]
fn frees_while_asleep_are_served_and_not_woken() {
    let d = driver();
    for mode in [SleepMode::Offload, SleepMode::Discard] {
        let arena = gpu_arena::SharedArena::new(&d, Kind::Device(0), config()).unwrap();
        let mut live = blocks(&mut arena.lock());
        let mut big = Vec::new();
        for k in 0..4u8 {
            let p = arena.alloc(3 << 20, 256, Stream::DEFAULT).unwrap();
            fill(p, 3 << 20, 100 + k);
            big.push((p, 3 << 20, 100 + k));
        }
        let mut g = gpu_arena::GrowBuffer::with_max(&arena, 64 << 20).unwrap();
        g.resize(4 << 20).unwrap();
        fill(g.as_ptr(), 4 << 20, 9);
        let before = arena.stats();
        let r = arena.lock().sleep(mode, Stream::DEFAULT).unwrap();
        assert_eq!(r.bytes, before.committed);
        // Free every other block, the large ones too, and drop the buffer.
        let mut kept = Vec::new();
        for (i, b) in live.drain(..).chain(big).enumerate() {
            if i % 2 == 0 {
                arena.free(b.0, Stream::DEFAULT).unwrap();
                let again = arena.free(b.0, Stream::DEFAULT);
                assert!(
                    matches!(again, Err(Error::BadPointer { .. })),
                    "double free while asleep: {again:?}"
                );
            } else {
                kept.push(b);
            }
        }
        drop(g);
        let s = arena.stats();
        assert!(arena.lock().is_asleep());
        assert_eq!(s.committed, 0);
        let kept_bytes: u64 = kept
            .iter()
            .map(|b| arena.lock().block_size(b.0).unwrap())
            .sum();
        assert_eq!(
            s.live, kept_bytes,
            "asleep stats count the kept blocks only"
        );
        assert!(matches!(
            arena.alloc(64, 8, Stream::DEFAULT),
            Err(Error::Asleep { .. })
        ));
        let w = arena.lock().wake(Stream::DEFAULT).unwrap();
        let s = arena.stats();
        assert_eq!(w.bytes, s.committed);
        assert!(
            s.committed < before.committed - (4 << 20),
            "freed pages stay given back: {} of {}",
            s.committed,
            before.committed
        );
        assert!(s.committed >= s.live);
        if mode == SleepMode::Offload {
            assert!(w.copied < r.copied && w.copied >= kept_bytes, "{w:?} {r:?}");
            for &(p, len, seed) in &kept {
                assert!(check(p, len, seed), "block at {p:#x} restored");
            }
        }
        for (p, _, _) in kept {
            arena.free(p, Stream::DEFAULT).unwrap();
        }
        arena.lock().trim();
        assert_eq!(arena.stats().committed, 0);
    }
    assert!(d.leaks().is_none(), "{:?}", d.leaks());
    let c = d.counts();
    assert_eq!((c.create, c.reserve), (c.release, c.free_reservation));
}

/// An arena dropped while asleep (after frees while asleep) gives
/// everything back: the stage holding its offloaded contents, every handle
/// and the reservation.
#[test]
fn an_arena_dropped_asleep_gives_everything_back() {
    let d = driver();
    for mode in [SleepMode::Offload, SleepMode::Discard] {
        let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
        let live = blocks(&mut a);
        a.sleep(mode, Stream::DEFAULT).unwrap();
        a.free(live[1].0).unwrap();
        a.free(live[4].0).unwrap();
        assert_eq!(d.physical_bytes(), a.stats().staged);
        drop(a);
        assert!(d.leaks().is_none(), "{mode:?}: {:?}", d.leaks());
        assert_eq!(d.physical_bytes(), 0);
    }
    let c = d.counts();
    assert_eq!((c.create, c.reserve), (c.release, c.free_reservation));
}
