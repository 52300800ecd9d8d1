//! Peer access and inter-process sharing.
//!
//! Host backend (runs in CI): `HostConfig { device_count: 2 }` emulates a
//! peer device: access lists and `get_access` track it per accessor, as
//! `cuMemGetAccess` does. Shareable handles are memfds of their own, passed
//! over Unix sockets; "two processes" are two drivers here (the real
//! two-process test is `tests/ipc_two_process.rs`).
//!
//! CUDA (feature `cuda`): the same on GPUs, with every device the driver
//! counts: the peer tests need two devices and skip with a printed reason
//! otherwise (the commit cost with 3 peers needs four), the one-GPU sharing
//! test one. They print `PEER ...` lines (`key=value` fields) that
//! `scripts/multi_gpu_report.py` turns into the tables of `docs/multi-gpu.md`.
//! HIP
//! (feature `hip`): the same through the HIP backend, wherever it runs (the
//! stand-in `libamdhip64` emulates two devices with
//! `GPU_ARENA_HIP_SHIM_DEVICES=2`).

use std::os::fd::AsFd;
use std::time::Instant;

use gpu_arena::api::ipc::{ExportedBuffer, ImportedBuffer, SharedBuffer};
use gpu_arena::driver::{
    AccessMode, Checked, Driver, HostConfig, HostDriver, Location, Stream, share,
};
use gpu_arena::{
    Arena, ArenaConfig, CommitConfig, DevicePtr, Error, ErrorKind, GrowBuffer, Kind, Reason,
};
use gpu_arena::{Policy, SharedArena, SleepMode};

fn two_devices() -> HostDriver {
    HostDriver::with_config(HostConfig {
        device_count: 2,
        ..Default::default()
    })
    .unwrap()
}

/// The full structural check where the `invariant-checks` feature is on.
fn invariants<D: Driver>(a: &Arena<D>) {
    #[cfg(feature = "invariant-checks")]
    a.check_invariants();
    let _ = a;
}

fn config() -> ArenaConfig {
    ArenaConfig {
        reservation: 8 << 30,
        ..Default::default()
    }
}

/// Every committed page of the arena: its address.
fn committed_pages<D: Driver>(a: &Arena<D>) -> Vec<DevicePtr> {
    let s = a.snapshot();
    s.pages
        .iter()
        .filter(|p| p.state != gpu_arena::stats::PageStateReport::Free)
        .map(|p| s.base.byte_add(p.index * s.page))
        .collect()
}

fn assert_all<D: Driver>(a: &Arena<D>, pages: &[DevicePtr], who: Location, mode: AccessMode) {
    assert!(!pages.is_empty());
    for &p in pages {
        assert_eq!(
            a.access_of(p, who).unwrap(),
            mode,
            "page {p:#x} for {who:?}"
        );
    }
}

#[test]
fn grant_covers_committed_and_later_pages_and_revoke_takes_it_back() {
    let d = Checked::new(two_devices());
    {
        let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
        let peer = Location::Device(1);
        // Memory of every policy, committed before the grant.
        let small: Vec<DevicePtr> = (0..64).map(|_| a.alloc(4096, 64).unwrap()).collect();
        let large = a.alloc(40 << 20, 256).unwrap();
        let buf = a.reserve_buffer(16 << 20, Policy::Grow).unwrap();
        a.commit_buffer(buf, 0, 8 << 20).unwrap();
        let before = committed_pages(&a);
        assert_all(&a, &before, peer, AccessMode::None);
        assert_all(&a, &before, Location::Device(0), AccessMode::ReadWrite);

        // Grant: every committed page at once, one set_access per run of
        // adjacent mappings (never more than one per mapping).
        let calls = d.counts().set_access;
        let maps = a.stats().mappings;
        a.grant(peer, AccessMode::Read).unwrap();
        let grant_calls = d.counts().set_access - calls;
        assert!(
            (1..=maps).contains(&grant_calls),
            "{grant_calls} calls for {maps} mappings"
        );
        assert_all(&a, &before, peer, AccessMode::Read);
        a.grant(peer, AccessMode::ReadWrite).unwrap();
        assert_all(&a, &before, peer, AccessMode::ReadWrite);
        // Granting less never lowers rights (that is revoke's job).
        let calls = d.counts().set_access;
        a.grant(peer, AccessMode::Read).unwrap();
        assert_eq!(
            d.counts().set_access,
            calls,
            "no driver call for a no-op grant"
        );
        assert_all(&a, &before, peer, AccessMode::ReadWrite);
        assert_eq!(a.granted(peer), AccessMode::ReadWrite);

        // Pages committed later get the peer too, in the same set_access
        // call as the local device (no extra call per commit).
        let calls = d.counts();
        let later = a.alloc(24 << 20, 256).unwrap();
        a.commit_buffer(buf, 8 << 20, 16 << 20).unwrap();
        let after = d.counts();
        assert!(
            after.set_access - calls.set_access <= after.map - calls.map,
            "at most one set_access per new mapping"
        );
        let now = committed_pages(&a);
        assert!(now.len() > before.len());
        assert_all(&a, &now, peer, AccessMode::ReadWrite);
        assert_all(&a, &now, Location::Device(0), AccessMode::ReadWrite);

        // Revoke: no right left on any page, now or later; the local device
        // keeps its own.
        // SAFETY: nothing of device 1 uses the arena (host backend).
        unsafe { a.revoke(peer).unwrap() };
        assert_all(&a, &now, peer, AccessMode::None);
        assert_all(&a, &now, Location::Device(0), AccessMode::ReadWrite);
        let again = a.alloc(8 << 20, 256).unwrap();
        let pages = committed_pages(&a);
        assert_all(&a, &pages, peer, AccessMode::None);
        assert_eq!(
            a.access(),
            &[gpu_arena::driver::Access::read_write(Location::Device(0))]
        );

        // Bad accessors are refused up front.
        assert!(matches!(
            a.grant(Location::Device(2), AccessMode::Read),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            a.grant(Location::Host, AccessMode::Read),
            Err(Error::Unsupported(_))
        ));
        // Foreign pointers too.
        assert!(matches!(
            a.access_of(DevicePtr::new(1 << 12), peer),
            Err(Error::BadPointer { .. })
        ));
        for p in small {
            a.free(p).unwrap();
        }
        a.free(large).unwrap();
        a.free(later).unwrap();
        a.free(again).unwrap();
        a.free_buffer(buf, Policy::Grow, Stream::DEFAULT);
        invariants(&a);
    }
    assert!(d.leaks().is_none(), "{:?}", d.leaks());
}

/// A peer's access outlives sleep and wake (the wake maps fresh handles
/// and gives them the arena's whole access list), and a grant or revoke
/// made while asleep holds for the woken pages.
#[test]
fn a_peers_access_outlives_sleep_and_wake() {
    let d = Checked::new(two_devices());
    {
        let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
        let (peer, me) = (Location::Device(1), Location::Device(0));
        let small: Vec<DevicePtr> = (0..32).map(|_| a.alloc(4096, 64).unwrap()).collect();
        let large = a.alloc(40 << 20, 256).unwrap();
        a.grant(peer, AccessMode::Read).unwrap();
        for mode in [SleepMode::Offload, SleepMode::Discard] {
            a.sleep(mode, Stream::DEFAULT).unwrap();
            a.wake(Stream::DEFAULT).unwrap();
            let pages = committed_pages(&a);
            assert_all(&a, &pages, peer, AccessMode::Read);
            assert_all(&a, &pages, me, AccessMode::ReadWrite);
        }
        a.sleep(SleepMode::Discard, Stream::DEFAULT).unwrap();
        a.grant(peer, AccessMode::ReadWrite).unwrap();
        a.wake(Stream::DEFAULT).unwrap();
        assert_all(&a, &committed_pages(&a), peer, AccessMode::ReadWrite);
        a.sleep(SleepMode::Discard, Stream::DEFAULT).unwrap();
        // SAFETY: nothing of device 1 uses the arena (host backend).
        unsafe { a.revoke(peer).unwrap() };
        a.wake(Stream::DEFAULT).unwrap();
        let pages = committed_pages(&a);
        assert_all(&a, &pages, peer, AccessMode::None);
        assert_all(&a, &pages, me, AccessMode::ReadWrite);
        for p in small {
            a.free(p).unwrap();
        }
        a.free(large).unwrap();
        a.trim();
        invariants(&a);
    }
    assert!(d.leaks().is_none(), "{:?}", d.leaks());
}

#[test]
fn shared_arena_grant_and_revoke() {
    let arena = SharedArena::new(two_devices(), Kind::Device(0), config()).unwrap();
    let p = arena.alloc(3 << 20, 256, Stream::DEFAULT).unwrap();
    assert_eq!(arena.access_of(p, 1).unwrap(), AccessMode::None);
    arena.grant(1, AccessMode::ReadWrite).unwrap();
    assert_eq!(arena.access_of(p, 1).unwrap(), AccessMode::ReadWrite);
    assert_eq!(arena.access().len(), 2);
    // SAFETY: nothing of device 1 uses the arena.
    unsafe { arena.revoke(1).unwrap() };
    assert_eq!(arena.access_of(p, 1).unwrap(), AccessMode::None);
    assert_eq!(arena.access_of(p, 0).unwrap(), AccessMode::ReadWrite);
    arena.free(p, Stream::DEFAULT).unwrap();
}

/// The median of `xs`.
fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Allocation cost with and without a peer granted, on two arenas of the
/// same backend (one with `peer` granted read-write) measured in
/// alternating rounds: the hot path (slab blocks, no driver call) and the
/// commit path (a fresh 64 MiB block each time: create + map + set_access,
/// then unmap + release). Prints a `PEER_COST` line per arena (medians over
/// the rounds) and a `PEER_COST_RATIO` line (granted / not granted).
fn peer_cost<D: Driver>(label: &str, make: impl Fn() -> D, peer: u32) {
    const SMALL: u32 = 200_000;
    const BIG: u32 = 100;
    const ROUNDS: usize = 3;
    let mut arenas: Vec<Arena<D>> = (0..2)
        .map(|_| Arena::new(make(), Kind::Device(0), config()).unwrap())
        .collect();
    arenas[1]
        .grant(Location::Device(peer), AccessMode::ReadWrite)
        .unwrap();
    // (hot path ns, commit path us, driver calls and set_access per block)
    let mut small = [[0f64; ROUNDS]; 2];
    let mut big = [[0f64; ROUNDS]; 2];
    let mut calls = [(0f64, 0f64); 2];
    for a in arenas.iter_mut() {
        for size in [256, 64 << 20] {
            let p = a.alloc(size, 256).unwrap();
            a.free(p).unwrap();
        }
        a.trim();
    }
    for round in 0..ROUNDS {
        for (i, a) in arenas.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..SMALL {
                let p = a.alloc(256, 64).unwrap();
                a.free(p).unwrap();
            }
            small[i][round] = t.elapsed().as_nanos() as f64 / f64::from(SMALL);
            let before = a.stats().driver_calls;
            let t = Instant::now();
            for _ in 0..BIG {
                let p = a.alloc(64 << 20, 256).unwrap();
                a.free(p).unwrap();
                a.trim();
            }
            big[i][round] = t.elapsed().as_secs_f64() * 1e6 / f64::from(BIG);
            let after = a.stats().driver_calls;
            let per = |x: u64, y: u64| (x - y) as f64 / f64::from(BIG);
            calls[i] = (
                per(after.total(), before.total()),
                per(after.set_access, before.set_access),
            );
        }
    }
    for (i, granted) in [false, true].into_iter().enumerate() {
        println!(
            "PEER_COST backend={label} peer_granted={} alloc_free_256B_ns={:.1} \
             alloc_free_trim_64MiB_us={:.1} driver_calls_per_64MiB={:.1} set_access_per_64MiB={:.1}",
            u8::from(granted),
            median(&small[i]),
            median(&big[i]),
            calls[i].0,
            calls[i].1
        );
    }
    println!(
        "PEER_COST_RATIO backend={label} alloc_free_256B={:.3} alloc_free_trim_64MiB={:.3}",
        median(&small[1]) / median(&small[0]),
        median(&big[1]) / median(&big[0])
    );
    // Granting a peer adds no driver call per allocation (never a timing assert).
    assert_eq!(calls[0], calls[1]);
}

#[test]
fn peer_grant_adds_no_per_allocation_cost_host() {
    peer_cost("host", two_devices, 1);
}

/// Commit cost with 0, 1 and 3 peers granted (those the device count
/// allows), in alternating rounds, medians printed as `PEER_COMMIT` lines:
/// a 64 MiB and a 2 MiB block allocated, freed and trimmed (create + map +
/// one set_access carrying 1 + peers descriptors, then unmap + release),
/// and one driver `set_access` over a 64 MiB range of granule-sized handles
/// with 1 + peers descriptors.
fn commit_cost<D: Driver>(label: &str, make: impl Fn() -> D, device_count: u32) {
    const BIG: u32 = 30;
    const SMALL: u32 = 200;
    const SET: u32 = 30;
    const ROUNDS: usize = 3;
    let peers: Vec<u32> = [0, 1, 3]
        .into_iter()
        .filter(|&k| k < device_count)
        .collect();
    for k in [1, 3] {
        if k >= device_count {
            println!(
                "PEER_COMMIT backend={label} peers={k} skipped: needs {} devices, found {device_count}",
                k + 1
            );
        }
    }
    let mut arenas: Vec<Arena<D>> = peers
        .iter()
        .map(|&k| {
            let mut a = Arena::new(make(), Kind::Device(0), config()).unwrap();
            for p in 1..=k {
                a.grant(Location::Device(p), AccessMode::ReadWrite).unwrap();
            }
            a
        })
        .collect();
    let mut big = vec![[0f64; ROUNDS]; peers.len()];
    let mut small = vec![[0f64; ROUNDS]; peers.len()];
    let mut set = vec![[0f64; ROUNDS]; peers.len()];
    for round in 0..ROUNDS {
        for (i, a) in arenas.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..BIG {
                let p = a.alloc(64 << 20, 256).unwrap();
                a.free(p).unwrap();
                a.trim();
            }
            big[i][round] = t.elapsed().as_secs_f64() * 1e6 / f64::from(BIG);
            let t = Instant::now();
            for _ in 0..SMALL {
                let p = a.alloc(2 << 20, 256).unwrap();
                a.free(p).unwrap();
                a.trim();
            }
            small[i][round] = t.elapsed().as_secs_f64() * 1e6 / f64::from(SMALL);

            // The driver call alone, on a range of its own.
            let d = a.driver();
            let g = d.capabilities().granularity;
            let len = 64 << 20;
            let va = d.reserve(len, 0).unwrap();
            let handles: Vec<_> = (0..len / g)
                .map(|j| {
                    let h = d.create(g, Location::Device(0)).unwrap();
                    // SAFETY: a fresh, unmapped granule of our reservation.
                    unsafe { d.map(va + (j * g) as u64, g, 0, h).unwrap() };
                    h
                })
                .collect();
            let list: Vec<gpu_arena::driver::Access> = (0..=peers[i])
                .map(|p| gpu_arena::driver::Access::read_write(Location::Device(p)))
                .collect();
            let t = Instant::now();
            for _ in 0..SET {
                // SAFETY: the range is ours, wholly mapped, and unused.
                unsafe { d.set_access(va, len, &list).unwrap() };
            }
            set[i][round] = t.elapsed().as_secs_f64() * 1e6 / f64::from(SET);
            // SAFETY: nothing uses the range; each handle is released once.
            unsafe {
                d.unmap(va, len).unwrap();
                for h in handles {
                    d.release(h).unwrap();
                }
                d.free_reservation(va, len).unwrap();
            }
        }
    }
    for (i, k) in peers.iter().enumerate() {
        println!(
            "PEER_COMMIT backend={label} peers={k} alloc_free_trim_64MiB_us={:.1} \
             alloc_free_trim_2MiB_us={:.1} set_access_64MiB_us={:.1}",
            median(&big[i]),
            median(&small[i]),
            median(&set[i])
        );
    }
}

#[test]
fn commit_cost_with_peers_host() {
    let four = || {
        HostDriver::with_config(HostConfig {
            device_count: 4,
            ..Default::default()
        })
        .unwrap()
    };
    commit_cost("host", four, 4);
}

fn two_hosts() -> (SharedArena<HostDriver>, SharedArena<HostDriver>) {
    let a = SharedArena::new(two_devices(), Kind::Device(0), config()).unwrap();
    let b = SharedArena::new(two_devices(), Kind::Device(0), config()).unwrap();
    (a, b)
}

/// Sends `e` over a socket pair and receives it again (what a second
/// process would get).
fn through_socket(e: &ExportedBuffer) -> ExportedBuffer {
    let (x, y) = share::socket_pair().unwrap();
    e.send_unchecked(x.as_fd()).unwrap();
    ExportedBuffer::recv(y.as_fd()).unwrap()
}

#[test]
fn shared_buffer_round_trip_and_lifetime() {
    let (exporter, importer) = two_hosts();
    // One 6 MiB run (multi-run buffers: the next test).
    let mut buf = SharedBuffer::new(&exporter, 6 << 20).unwrap();
    for (i, b) in buf.as_mut_slice().unwrap().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let e = buf.export().unwrap();
    assert_eq!(e.len, 6 << 20);
    assert_eq!(e.location, Location::Device(0));
    let got = through_socket(&e);
    drop(e);
    // SAFETY: the descriptors come from SharedBuffer::export on the host backend.
    let mut view = unsafe { ImportedBuffer::new(&importer, &got).unwrap() };
    drop(got);
    assert!(
        view.as_slice()
            .unwrap()
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8)
    );
    // The importer writes; the exporter sees it.
    view.as_mut_slice().unwrap()[100..104].copy_from_slice(b"pong");
    assert_eq!(&buf.as_slice().unwrap()[100..104], b"pong");
    // Imported pages get the importer's access list, and its grants.
    assert_eq!(
        importer.access_of(view.as_ptr(), 1).unwrap(),
        AccessMode::None
    );
    importer.grant(1, AccessMode::ReadWrite).unwrap();
    assert_eq!(
        importer
            .access_of(view.as_ptr().byte_add(5 << 20), 1)
            .unwrap(),
        AccessMode::ReadWrite
    );
    // The exporter lets go: its memory stays for the importer.
    drop(buf);
    assert_eq!(exporter.stats().committed, 0, "exporter gave its runs back");
    assert_eq!(exporter.lock().driver().physical_bytes(), 0);
    assert_eq!(&view.as_slice().unwrap()[100..104], b"pong");
    assert_eq!(view.as_slice().unwrap()[5 << 20], ((5 << 20) % 251) as u8);
    assert_eq!(importer.stats().committed, 6 << 20);
    drop(view);
    assert_eq!(importer.stats().committed, 0);
    assert!(importer.lock().driver().physical_bytes() == 0);
}

#[test]
fn multi_run_buffers_export_one_descriptor_per_run() {
    let small_runs = ArenaConfig {
        commit: CommitConfig {
            max_run: 4 << 20,
            ..Default::default()
        },
        ..config()
    };
    let d = Checked::new(HostDriver::new().unwrap());
    let d2 = Checked::new(HostDriver::new().unwrap());
    {
        let exporter = SharedArena::new(&d, Kind::Device(0), small_runs).unwrap();
        let importer = SharedArena::new(&d2, Kind::Device(0), config()).unwrap();
        // 150 runs of 4 MiB: more than one message of descriptors.
        let len = 150 * (4 << 20);
        let mut buf = SharedBuffer::new(&exporter, len).unwrap();
        let s = buf.as_mut_slice().unwrap();
        for run in 0..150 {
            s[run * (4 << 20) + 7] = run as u8;
        }
        let e = buf.export().unwrap();
        assert_eq!(e.runs.len(), 150);
        assert!(e.runs.iter().all(|r| r.len == 4 << 20));
        let got = through_socket(&e);
        // SAFETY: exported by the host backend.
        let view = unsafe { ImportedBuffer::new(&importer, &got).unwrap() };
        let v = view.as_slice().unwrap();
        for run in 0..150 {
            assert_eq!(v[run * (4 << 20) + 7], run as u8);
        }
        drop((buf, view, e, got));
        invariants(&exporter.lock());
        invariants(&importer.lock());
    }
    assert!(d.leaks().is_none(), "{:?}", d.leaks());
    assert!(d2.leaks().is_none(), "{:?}", d2.leaks());
    // Imports are counted as creates by the checked layer.
    assert_eq!(d2.counts().create, 150);
    assert_eq!(d2.counts().release, 150);
}

#[test]
fn only_the_intended_memory_is_exported() {
    let d = HostDriver::new().unwrap();
    let g = d.capabilities().granularity;
    // A plain handle lives in the memfd all handles share: never exported.
    let plain = d.create(g, Location::Device(0)).unwrap();
    let e = d.export(plain).unwrap_err();
    assert_eq!(e.driver_kind(), Some(ErrorKind::NotSupported));
    assert!(
        matches!(&e, Error::Driver(de) if de.reason == Some(Reason::NotShareable)),
        "{e}"
    );
    d.release(plain).unwrap();
    // A released handle cannot be exported either.
    let h = d.create_shareable(g, Location::Device(0)).unwrap();
    let fd = d.export(h).unwrap();
    d.release(h).unwrap();
    assert_eq!(
        d.export(h).unwrap_err().driver_kind(),
        Some(ErrorKind::InvalidValue)
    );
    // The descriptor is exactly one handle's memory, and it cannot shrink.
    let meta = std::fs::File::from(fd.try_clone().unwrap())
        .metadata()
        .unwrap();
    assert_eq!(meta.len(), g as u64);
    // SAFETY: ftruncate on our own descriptor; it must be refused (sealed).
    let r = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), 0) };
    assert_eq!(r, -1, "a shared memfd cannot shrink");

    // An arena refuses to export memory not committed shareable.
    let arena = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), config()).unwrap();
    let mut grow = GrowBuffer::with_max(&arena, 8 << 20).unwrap();
    grow.resize(4 << 20).unwrap();
    assert!(matches!(
        arena.lock().export_buffer(grow.as_ptr(), 4 << 20),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn import_checks_what_it_maps() {
    let d = HostDriver::new().unwrap();
    let g = d.capabilities().granularity;
    let h = d.create_shareable(2 * g, Location::Device(0)).unwrap();
    let fd = d.export(h).unwrap();
    let other = HostDriver::new().unwrap();
    let bad = |r: gpu_arena::Result<_>| {
        let e = r.unwrap_err();
        assert!(
            matches!(&e, Error::Driver(de) if de.reason == Some(Reason::BadSharedHandle)),
            "{e}"
        );
    };
    // SAFETY: each call is refused before anything is mapped.
    unsafe {
        // Wrong size.
        bad(other.import(fd.as_fd(), g, Location::Device(0)));
        // A file that can shrink (a pipe, or an unsealed memfd).
        let (r, _w) = std::io::pipe().unwrap();
        bad(other.import(r.as_fd(), 2 * g, Location::Device(0)));
        let raw = libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC);
        assert!(raw >= 0);
        let unsealed = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw);
        assert_eq!(libc::ftruncate(raw, 2 * g as libc::off_t), 0);
        bad(other.import(unsealed.as_fd(), 2 * g, Location::Device(0)));
        // The real one works, and is released like any handle.
        let h2 = other
            .import(fd.as_fd(), 2 * g, Location::Device(0))
            .unwrap();
        assert!(other.is_shareable(h2));
        other.release(h2).unwrap();
    }
    d.release(h).unwrap();
    assert!(d.is_clean() && other.is_clean());
}

#[test]
fn shared_runs_are_never_reused_and_fresh_ones_hold_nothing_old() {
    // A long decay would normally keep idle memory for reuse.
    let keep = ArenaConfig {
        commit: CommitConfig {
            decay_ms: 3_600_000,
            ..Default::default()
        },
        ..config()
    };
    let arena = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), keep).unwrap();
    let reader = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), config()).unwrap();

    // 1. A plain buffer's idle memory stays committed (decay) ...
    let mut grow = GrowBuffer::with_max(&arena, 4 << 20).unwrap();
    grow.resize(4 << 20).unwrap();
    grow.as_mut_slice().unwrap().fill(0x77);
    let grow_base = grow.as_ptr();
    drop(grow);
    assert_eq!(arena.stats().committed, 4 << 20, "kept alive");
    // ... but a shared buffer there gets fresh memory, not the old pages.
    let mut shared = SharedBuffer::new(&arena, 4 << 20).unwrap();
    println!(
        "shared buffer at {:#x}, earlier grow buffer at {grow_base:#x}",
        shared.as_ptr()
    );
    assert!(shared.as_slice().unwrap().iter().all(|&b| b == 0));
    // The old memory is unmapped there and stays idle for other uses until
    // it decays (or a trim).
    assert_eq!(
        arena.stats().committed,
        8 << 20,
        "fresh shared memory beside the idle memory"
    );
    arena.trim();
    assert_eq!(
        arena.stats().committed,
        4 << 20,
        "the idle memory went back on trim"
    );
    shared.as_mut_slice().unwrap().fill(0xAA);
    let e = shared.export().unwrap();
    let shared_base = shared.as_ptr();

    // 2. The shared buffer's runs go back at once despite the keep-alive ...
    drop(shared);
    assert_eq!(arena.stats().committed, 0);
    assert_eq!(arena.lock().driver().physical_bytes(), 0);
    // ... and a new buffer on that range writes fresh memory, which the
    // holder of the old descriptors never sees.
    let mut grow = GrowBuffer::with_max(&arena, 4 << 20).unwrap();
    assert_eq!(grow.as_ptr(), shared_base, "same range reused");
    grow.resize(4 << 20).unwrap();
    grow.as_mut_slice().unwrap().fill(0x55);
    // SAFETY: exported by the host backend.
    let old = unsafe { ImportedBuffer::new(&reader, &e).unwrap() };
    assert!(old.as_slice().unwrap().iter().all(|&b| b == 0xAA));
    drop(grow);
    invariants(&arena.lock());
}

#[test]
fn a_shared_run_freed_during_running_work_goes_back_only_after_its_fence() {
    let arena = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), config()).unwrap();
    let reader = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), config()).unwrap();
    let s = arena.lock().driver().create_stream().unwrap();
    let mut buf = SharedBuffer::new(&arena, 4 << 20).unwrap();
    buf.as_mut_slice().unwrap().fill(0x3C);
    let e = buf.export().unwrap();
    let base = buf.as_ptr();
    // A "kernel" on `s` still uses the buffer when it is freed on `s`.
    arena.lock().driver().hold(s);
    buf.free_on(s);
    assert_eq!(
        arena.stats().committed,
        4 << 20,
        "kept until the fence completes"
    );
    arena.trim();
    assert_eq!(arena.stats().committed, 4 << 20, "trim does not wait");
    // A new buffer meanwhile takes other addresses, waiting for nothing
    // (reusing the range would wait on that fence) ...
    let waits = arena.stats().driver_calls.wait;
    let mut other = GrowBuffer::with_max(&arena, 4 << 20).unwrap();
    assert_ne!(other.as_ptr(), base);
    other.resize(4 << 20).unwrap();
    assert_eq!(arena.stats().driver_calls.wait, waits, "nothing waited on");
    drop(other);
    // ... and once the work completed, the range is reused, with fresh memory.
    arena.lock().driver().complete(s);
    let mut grow = GrowBuffer::with_max(&arena, 4 << 20).unwrap();
    assert_eq!(grow.as_ptr(), base);
    grow.resize(4 << 20).unwrap();
    assert!(
        grow.as_slice().unwrap().iter().all(|&b| b == 0),
        "fresh pages"
    );
    grow.as_mut_slice().unwrap().fill(0x11);
    // SAFETY: exported by the host backend.
    let old = unsafe { ImportedBuffer::new(&reader, &e).unwrap() };
    assert!(old.as_slice().unwrap().iter().all(|&b| b == 0x3C));
    drop(grow);
    // SAFETY: the stream is idle and not used again.
    unsafe { arena.lock().driver().destroy_stream(s).unwrap() };
    invariants(&arena.lock());
}

#[test]
fn an_arena_with_live_shared_buffers_does_not_sleep() {
    let arena = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), config()).unwrap();
    let buf = SharedBuffer::new(&arena, 2 << 20).unwrap();
    let r = arena
        .lock()
        .sleep(gpu_arena::SleepMode::Discard, Stream::DEFAULT);
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    drop(buf);
    arena
        .lock()
        .sleep(gpu_arena::SleepMode::Discard, Stream::DEFAULT)
        .unwrap();
    arena.lock().wake(Stream::DEFAULT).unwrap();
}

#[test]
fn a_failed_import_leaves_nothing_behind() {
    let (exporter, importer) = two_hosts();
    let buf = SharedBuffer::new(&exporter, 8 << 20).unwrap();
    let mut e = buf.export().unwrap();
    // Corrupt the second run's length claim: the import of the first run
    // succeeds, the second fails; the first must be rolled back.
    let before = importer.stats();
    let fd2 = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    e.runs.push(gpu_arena::api::ipc::ExportedRun {
        offset: 8 << 20,
        len: 2 << 20,
        fd: fd2,
    });
    e.len += 2 << 20;
    // SAFETY: the bad descriptor is refused by the host backend's checks.
    let r = unsafe { ImportedBuffer::new(&importer, &e) };
    assert!(r.is_err());
    let after = importer.stats();
    assert_eq!(after.committed, before.committed);
    assert_eq!(after.grow.blocks, before.grow.blocks);
    assert_eq!(importer.lock().driver().physical_bytes(), 0);
    invariants(&importer.lock());
}

#[test]
fn send_refuses_a_peer_that_is_not_the_expected_process() {
    let arena = SharedArena::new(HostDriver::new().unwrap(), Kind::Device(0), config()).unwrap();
    let buf = SharedBuffer::new(&arena, 2 << 20).unwrap();
    let e = buf.export().unwrap();
    let (x, y) = share::socket_pair().unwrap();
    // The peer of a socketpair is this process: any other pid is refused
    // before anything is sent.
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let err = e.send(x.as_fd(), me + 1).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    drop(x);
    assert_eq!(
        ExportedBuffer::recv(y.as_fd()).unwrap_err().kind(),
        std::io::ErrorKind::UnexpectedEof,
        "nothing was sent"
    );
}

/// On GPUs: every test opens devices by ordinal from the driver's count,
/// skips with a printed reason where too few devices (or no peer path) are
/// found, and prints `PEER ...` lines for the multi-GPU report.
#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use gpu_arena::driver::cuda::{CudaDriver, sys};

    /// Whether device `from` can read and write device `to`'s memory
    /// (`cuDeviceCanAccessPeer`).
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

    /// Drivers for every device (at least `min`), each of which can access
    /// device 0 as a peer; or `None` after printing why `what` skips.
    fn gpus(min: u32, what: &str) -> Option<Vec<CudaDriver>> {
        let d0 = match CudaDriver::new(0) {
            Ok(d) => d,
            Err(e) => {
                println!("skipped: no usable CUDA device ({e})");
                return None;
            }
        };
        let n = d0.capabilities().device_count;
        if n < min {
            println!("skipped: {what} needs {min} CUDA devices, found {n}");
            return None;
        }
        let mut all = vec![d0];
        for i in 1..n {
            if !can_access_peer(&all[0], i, 0) {
                println!("skipped: CUDA device {i} cannot access device 0 as a peer");
                return None;
            }
            match CudaDriver::new(i) {
                Ok(d) => all.push(d),
                Err(e) => {
                    println!("skipped: CUDA device {i} is not usable ({e})");
                    return None;
                }
            }
        }
        Some(all)
    }

    fn write_u32s<D: Driver>(d: &D, va: DevicePtr, n: usize, f: impl Fn(usize) -> u32) {
        let host: Vec<u32> = (0..n).map(f).collect();
        // SAFETY: `va` is mapped for the driver's device; `host` is a
        // separate allocation of n u32s.
        unsafe {
            d.copy(va.addr(), host.as_ptr() as u64, n * 4, Stream::DEFAULT)
                .unwrap()
        };
    }

    fn read_u32s<D: Driver>(d: &D, va: DevicePtr, n: usize) -> Vec<u32> {
        let mut host = vec![0u32; n];
        // SAFETY: as above, the other way.
        unsafe {
            d.copy(host.as_mut_ptr() as u64, va.addr(), n * 4, Stream::DEFAULT)
                .unwrap()
        };
        host
    }

    fn mode(m: AccessMode) -> &'static str {
        match m {
            AccessMode::None => "none",
            AccessMode::Read => "read",
            AccessMode::ReadWrite => "readwrite",
        }
    }

    /// A kernel on each other GPU, in its own context, reads and writes
    /// memory of device 0's arena: large spans committed before the grant,
    /// after it, and a growable buffer committed after it. Then revoke:
    /// `cuMemGetAccess` reports no access on every page, also for pages
    /// committed later; device 0 keeps its own.
    #[test]
    fn peer_kernels_read_and_write_gpu0_arena_memory() {
        let Some(gpus) = gpus(2, "peer access") else {
            return;
        };
        let d0 = &gpus[0];
        let n = gpus.len() as u32;
        let mut a = Arena::new(d0, Kind::Device(0), config()).unwrap();
        const N: usize = 4 << 20; // 16 MiB of u32
        let before = a.alloc((N * 4) as u64, 256).unwrap();
        write_u32s(d0, before, N, |i| i as u32);
        for p in 1..n {
            assert_eq!(
                a.access_of(before, Location::Device(p)).unwrap(),
                AccessMode::None
            );
        }
        let committed = a.stats().committed;
        for p in 1..n {
            let t = Instant::now();
            a.grant(Location::Device(p), AccessMode::ReadWrite).unwrap();
            let us = t.elapsed().as_secs_f64() * 1e6;
            println!(
                "PEER grant owner=0 peer={p} committed_bytes={committed} us={us:.1} access={}",
                mode(a.access_of(before, Location::Device(p)).unwrap())
            );
        }
        let later = a.alloc((N * 4) as u64, 256).unwrap();
        write_u32s(d0, later, N, |i| 7 * i as u32);
        let buf = a.reserve_buffer(16 << 20, Policy::Grow).unwrap();
        a.commit_buffer(buf, 0, 8 << 20).unwrap();
        const M: usize = 2 << 20; // 8 MiB of u32
        write_u32s(d0, buf, M, |i| 3 * i as u32);
        let pages = committed_pages(&a);
        for p in 1..n {
            assert_all(&a, &pages, Location::Device(p), AccessMode::ReadWrite);
        }

        // Each peer's kernel, in its own context and stream, adds one.
        for (p, d) in gpus.iter().enumerate().skip(1) {
            let k = d.kernels().unwrap();
            let s = d.create_stream().unwrap();
            let t = Instant::now();
            // SAFETY: the ranges are mapped read-write for this device and
            // nothing else touches them until the fence below completed.
            unsafe {
                k.add_one(s, before.addr(), N as u64).unwrap();
                k.add_one(s, later.addr(), N as u64).unwrap();
                k.add_one(s, buf.addr(), M as u64).unwrap();
            }
            let f = d.record(s).unwrap();
            d.wait(&f).unwrap();
            let us = t.elapsed().as_secs_f64() * 1e6;
            d.drop_fence(f);
            // SAFETY: the stream is idle and not used again.
            unsafe { d.destroy_stream(s).unwrap() };
            println!(
                "PEER kernel owner=0 peer={p} target={} bytes={} us={us:.1}",
                k.target(),
                (2 * N + M) * 4
            );
        }
        let plus = n - 1;
        let ok_before = read_u32s(d0, before, N)
            .iter()
            .enumerate()
            .all(|(i, &v)| v == i as u32 + plus);
        let ok_later = read_u32s(d0, later, N)
            .iter()
            .enumerate()
            .all(|(i, &v)| v == 7 * i as u32 + plus);
        let ok_buf = read_u32s(d0, buf, M)
            .iter()
            .enumerate()
            .all(|(i, &v)| v == 3 * i as u32 + plus);
        println!(
            "PEER kernel_results owner=0 peers={} committed_before_grant={} committed_after_grant={} \
             buffer_after_grant={}",
            n - 1,
            if ok_before { "ok" } else { "WRONG" },
            if ok_later { "ok" } else { "WRONG" },
            if ok_buf { "ok" } else { "WRONG" }
        );
        assert!(ok_before && ok_later && ok_buf);

        // Revoke: cuMemGetAccess says no access (no kernel is run to see it).
        for p in 1..n {
            // SAFETY: the peers' work on the arena completed (fences above).
            unsafe { a.revoke(Location::Device(p)).unwrap() };
        }
        let again = a.alloc(8 << 20, 256).unwrap();
        let pages = committed_pages(&a);
        for p in 1..n {
            assert_all(&a, &pages, Location::Device(p), AccessMode::None);
            println!(
                "PEER revoke owner=0 peer={p} pages={} access_after={} later_commit_access={}",
                pages.len(),
                mode(a.access_of(later, Location::Device(p)).unwrap()),
                mode(a.access_of(again, Location::Device(p)).unwrap())
            );
        }
        assert_all(&a, &pages, Location::Device(0), AccessMode::ReadWrite);
        for p in [before, later, again] {
            a.free(p).unwrap();
        }
        a.free_buffer(buf, Policy::Grow, Stream::DEFAULT);
    }

    #[test]
    fn peer_grant_adds_no_per_allocation_cost_cuda() {
        if gpus(2, "the peer-granted allocation cost").is_none() {
            return;
        }
        peer_cost("cuda", || CudaDriver::new(0).unwrap(), 1);
    }

    #[test]
    fn commit_cost_with_peers_cuda() {
        let Some(gpus) = gpus(2, "the commit cost with peers") else {
            return;
        };
        let n = gpus.len() as u32;
        drop(gpus);
        commit_cost("cuda", || CudaDriver::new(0).unwrap(), n);
    }

    #[test]
    fn cuda_shared_buffer_round_trip_in_one_process() {
        let d = match CudaDriver::new(0) {
            Ok(d) => d,
            Err(e) => {
                println!("skipped: no usable CUDA device ({e})");
                return;
            }
        };
        if !d.capabilities().shareable_handles {
            println!("skipped: this CUDA device cannot create POSIX-fd shareable handles");
            return;
        }
        let exporter = SharedArena::new(d, Kind::Device(0), config()).unwrap();
        let importer =
            SharedArena::new(CudaDriver::new(0).unwrap(), Kind::Device(0), config()).unwrap();
        const N: usize = 3 << 20;
        let buf = SharedBuffer::new(&exporter, (N * 4) as u64).unwrap();
        write_u32s(exporter.lock().driver(), buf.as_ptr(), N, |i| {
            i as u32 ^ 0x5a5a
        });
        let got = through_socket(&buf.export().unwrap());
        // SAFETY: exported by the CUDA backend.
        let view = unsafe { ImportedBuffer::new(&importer, &got).unwrap() };
        drop(got);
        drop(buf);
        let v = read_u32s(importer.lock().driver(), view.as_ptr(), N);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 ^ 0x5a5a));
        assert_eq!(exporter.stats().committed, 0);
    }

    /// A buffer of device 0 imported into an arena of the last GPU (in one
    /// process): that GPU reads it (copy engine) and writes it (a kernel of
    /// its own context) over peer access; device 0 sees the writes; the
    /// importer keeps the memory after the exporter let go.
    #[test]
    fn cuda_shared_buffer_imported_on_another_gpu() {
        let Some(mut gpus) = gpus(2, "sharing across GPUs") else {
            return;
        };
        if !gpus[0].capabilities().shareable_handles {
            println!("skipped: this CUDA device cannot create POSIX-fd shareable handles");
            return;
        }
        let last = (gpus.len() - 1) as u32;
        let d1 = gpus.pop().unwrap();
        let d0 = gpus.swap_remove(0);
        drop(gpus);
        let exporter = SharedArena::new(d0, Kind::Device(0), config()).unwrap();
        let importer = SharedArena::new(d1, Kind::Device(last), config()).unwrap();
        const N: usize = 3 << 20;
        let buf = SharedBuffer::new(&exporter, (N * 4) as u64).unwrap();
        write_u32s(exporter.lock().driver(), buf.as_ptr(), N, |i| i as u32 * 3);
        let got = through_socket(&buf.export().unwrap());
        // SAFETY: exported by the CUDA backend.
        let view = unsafe { ImportedBuffer::new(&importer, &got).unwrap() };
        drop(got);
        let access = importer.access_of(view.as_ptr(), last).unwrap();
        let read_ok = read_u32s(importer.lock().driver(), view.as_ptr(), N)
            .iter()
            .enumerate()
            .all(|(i, &x)| x == i as u32 * 3);
        {
            let g = importer.lock();
            let d = g.driver();
            let k = d.kernels().unwrap();
            // SAFETY: mapped read-write for this device; nothing else
            // touches it until the fence completed.
            unsafe {
                k.add_one(Stream::DEFAULT, view.as_ptr().addr(), N as u64)
                    .unwrap()
            };
            let f = d.record(Stream::DEFAULT).unwrap();
            d.wait(&f).unwrap();
            d.drop_fence(f);
        }
        let seen_ok = read_u32s(exporter.lock().driver(), buf.as_ptr(), N)
            .iter()
            .enumerate()
            .all(|(i, &x)| x == i as u32 * 3 + 1);
        // The exporter lets go, trims, and writes fresh memory of its own.
        drop(buf);
        exporter.trim();
        let fresh = SharedBuffer::new(&exporter, (N * 4) as u64).unwrap();
        write_u32s(exporter.lock().driver(), fresh.as_ptr(), N, |_| 0);
        let kept_ok = read_u32s(importer.lock().driver(), view.as_ptr(), N)
            .iter()
            .enumerate()
            .all(|(i, &x)| x == i as u32 * 3 + 1);
        println!(
            "PEER ipc_one_process exporter_device=0 importer_device={last} bytes={} \
             importer_access={} importer_read={} exporter_sees_kernel_write={} after_exporter_release={}",
            N * 4,
            mode(access),
            if read_ok { "ok" } else { "WRONG" },
            if seen_ok { "ok" } else { "WRONG" },
            if kept_ok { "ok" } else { "WRONG" }
        );
        assert_eq!(access, AccessMode::ReadWrite);
        assert!(read_ok && seen_ok && kept_ok);
        drop(fresh);
        assert_eq!(exporter.stats().committed, 0);
    }
}

#[cfg(feature = "hip")]
mod hip {
    use super::*;
    use crate::common::hip;

    fn write_u32s<D: Driver>(d: &D, va: DevicePtr, n: usize, f: impl Fn(usize) -> u32) {
        let host: Vec<u32> = (0..n).map(f).collect();
        // SAFETY: `va` is mapped for the driver's device; `host` is a
        // separate allocation of n u32s.
        unsafe { d.copy(va.addr(), host.as_ptr() as u64, n * 4, Stream::DEFAULT) }.unwrap();
    }

    fn read_u32s<D: Driver>(d: &D, va: DevicePtr, n: usize) -> Vec<u32> {
        let mut host = vec![0u32; n];
        // SAFETY: as above, the other way.
        unsafe { d.copy(host.as_mut_ptr() as u64, va.addr(), n * 4, Stream::DEFAULT) }.unwrap();
        host
    }

    #[test]
    fn hip_peer_grant_and_revoke() {
        let Some(d) = hip() else { return };
        let n = d.capabilities().device_count;
        if n < 2 {
            println!(
                "skipped: peer access needs 2 HIP devices, found {n} (the host stand-in emulates 2 with GPU_ARENA_HIP_SHIM_DEVICES=2)"
            );
            return;
        }
        let peer = Location::Device(1);
        let mut a = Arena::new(&d, Kind::Device(0), config()).unwrap();
        let before = a.alloc(16 << 20, 256).unwrap();
        assert_eq!(a.access_of(before, peer).unwrap(), AccessMode::None);
        a.grant(peer, AccessMode::ReadWrite).unwrap();
        invariants(&a);
        let later = a.alloc(16 << 20, 256).unwrap();
        let pages = committed_pages(&a);
        assert_all(&a, &pages, peer, AccessMode::ReadWrite);
        assert_all(&a, &pages, Location::Device(0), AccessMode::ReadWrite);
        write_u32s(&d, later, 1024, |i| i as u32);
        // SAFETY: no peer work uses the arena.
        unsafe { a.revoke(peer).unwrap() };
        assert_all(&a, &pages, peer, AccessMode::None);
        assert_all(&a, &pages, Location::Device(0), AccessMode::ReadWrite);
        assert!(
            read_u32s(&d, later, 1024)
                .iter()
                .enumerate()
                .all(|(i, &v)| v == i as u32)
        );
        for p in [before, later] {
            a.free(p).unwrap();
        }
        a.trim();
        drop(a);
        assert!(d.is_clean());
    }

    #[test]
    fn hip_shared_buffer_round_trip_in_one_process() {
        let Some(d) = hip() else { return };
        if !d.capabilities().shareable_handles {
            println!("skipped: this HIP runtime cannot export POSIX-fd shareable handles");
            return;
        }
        let exporter = SharedArena::new(d, Kind::Device(0), config()).unwrap();
        let importer = SharedArena::new(hip().unwrap(), Kind::Device(0), config()).unwrap();
        const N: usize = 3 << 20;
        let buf = SharedBuffer::new(&exporter, (N * 4) as u64).unwrap();
        write_u32s(exporter.lock().driver(), buf.as_ptr(), N, |i| {
            i as u32 ^ 0x5a5a
        });
        let got = through_socket(&buf.export().unwrap());
        // SAFETY: exported by the HIP backend.
        let view = unsafe { ImportedBuffer::new(&importer, &got).unwrap() };
        drop(got);
        drop(buf);
        let v = read_u32s(importer.lock().driver(), view.as_ptr(), N);
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 ^ 0x5a5a));
        assert_eq!(exporter.stats().committed, 0);
        drop(view);
        importer.trim();
        assert_eq!(importer.stats().committed, 0);
    }
}
