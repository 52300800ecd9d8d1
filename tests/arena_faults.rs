//! Fault injection and out-of-memory, through the checked driver: a driver
//! call failing in the middle of a commit leaves nothing half-mapped and the
//! arena keeps working; the out-of-memory ladder trims, then waits on one
//! pending fence, then reports figures that match the stats; the configured
//! limit holds.
//!
//! A `harness = false` test (as bumpalo's `try_alloc`): each check runs in
//! order in one process and prints its name.

use gpu_arena::driver::{Checked, Driver, Fault, FaultKind, HostConfig, HostDriver, Op, Stream};
use gpu_arena::{Arena, ArenaConfig, Call, CommitConfig, DevicePtr, Error, ErrorKind, Kind, Stats};

const PAGE: u64 = 64 << 10;

fn host(capacity: u64) -> Checked<HostDriver> {
    Checked::new(
        HostDriver::with_config(HostConfig {
            granularity: PAGE as usize,
            capacity,
            ..Default::default()
        })
        .expect("host driver"),
    )
}

/// A small arena committing runs of at most `max_run` bytes.
fn config(max_run: u64) -> ArenaConfig {
    ArenaConfig {
        reservation: 64 << 20,
        min_reservation: 1 << 20,
        commit: CommitConfig {
            max_run,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn assert_balanced(driver: &Checked<HostDriver>) {
    assert_eq!(driver.leaks(), None);
    let c = driver.counts();
    // One unmap may remove several adjacent mappings: compare bytes.
    assert_eq!(
        (c.create, c.bytes_mapped, c.reserve),
        (c.release, c.bytes_unmapped, c.free_reservation),
        "{c:?}"
    );
    assert_eq!(c.refused, 0, "{c:?}");
}

/// The figures a failed call must leave as they were.
fn shape(s: &Stats) -> [u64; 9] {
    [
        s.committed,
        s.live,
        s.handles,
        s.pending_decommit,
        s.slab.blocks,
        s.large.blocks,
        s.large.bytes,
        s.allocs,
        s.frees,
    ]
}

/// The Nth create / map / set_access of an allocation that commits eight
/// pages fails (out of memory, or an unexpected driver error): the
/// allocation returns the error, every handle and mapping it had made is
/// given back (physical bytes, mappings and handles as before), and the
/// arena keeps serving.
fn a_failed_commit_leaves_nothing_behind() {
    // 7.5 pages from a page boundary: eight one-page handles, each mapped,
    // and one set_access over the range.
    let size = 7 * PAGE + PAGE / 2;
    for (op, runs) in [(Op::Create, 8), (Op::Map, 8), (Op::SetAccess, 1)] {
        for kind in [FaultKind::OutOfMemory, FaultKind::DriverError] {
            let driver = host(256 << 20);
            {
                let mut arena = Arena::new(&driver, Kind::Device(0), config(2 * PAGE)).unwrap();
                // Something live to keep: a slab and a large block.
                let small = arena.alloc(100, 8).unwrap();
                let keep = arena.alloc(3 * PAGE, 512).unwrap();
                let (c0, s0) = (driver.counts(), arena.stats());
                let probe = arena.alloc(size, PAGE).unwrap();
                let c1 = driver.counts();
                let made = match op {
                    Op::Create => c1.create - c0.create,
                    Op::Map => c1.map - c0.map,
                    _ => c1.set_access - c0.set_access,
                };
                assert_eq!(made, runs, "{op:?} calls of one allocation");
                arena.free(probe).unwrap();
                arena.trim();
                assert_eq!(shape(&arena.stats())[..3], shape(&s0)[..3]);

                for nth in 1..=runs {
                    let (c0, s0) = (driver.counts(), arena.stats());
                    let physical = driver.physical_bytes();
                    assert_eq!(s0.pending_fences, 0);
                    driver.inject(Fault { op, nth, kind });
                    let e = arena
                        .alloc(size, PAGE)
                        .expect_err("the injected fault fails the allocation");
                    let (c1, s1) = (driver.counts(), arena.stats());
                    assert_eq!(c1.injected, c0.injected + 1, "{op:?} #{nth} fired");
                    match kind {
                        FaultKind::OutOfMemory => {
                            let Error::OutOfMemory(r) = &e else {
                                panic!("{op:?} #{nth} {kind:?}: {e:?}")
                            };
                            assert_eq!(r.requested, size);
                            assert_eq!((r.live, r.committed), (s1.live, s1.committed), "{r:?}");
                            assert_eq!(r.limit, u64::MAX);
                        }
                        FaultKind::DriverError => {
                            let Error::Driver(d) = e else {
                                panic!("{op:?} #{nth} {kind:?}: {e:?}")
                            };
                            let call = match op {
                                Op::Create => Call::Create,
                                Op::Map => Call::Map,
                                _ => Call::SetAccess,
                            };
                            assert_eq!((d.call, d.kind), (call, ErrorKind::Other));
                        }
                    }
                    assert_eq!(
                        shape(&s1),
                        shape(&s0),
                        "{op:?} #{nth} {kind:?}: stats as before"
                    );
                    assert_eq!(
                        driver.physical_bytes(),
                        physical,
                        "physical bytes as before"
                    );
                    assert_eq!(
                        c1.create - c0.create,
                        c1.release - c0.release,
                        "handles as before"
                    );
                    assert_eq!(c1.map - c0.map, c1.unmap - c0.unmap, "mappings as before");
                    assert!(s1.driver_calls.failed > s0.driver_calls.failed);
                    arena.check_invariants();
                    // The arena keeps working: the same allocation now succeeds.
                    let p = arena.alloc(size, PAGE).unwrap();
                    assert!(p.is_aligned_to(PAGE));
                    arena.free(p).unwrap();
                    arena.trim();
                    arena.check_invariants();
                }
                arena.free(small).unwrap();
                arena.free(keep).unwrap();
                arena.check_invariants();
            }
            assert_balanced(&driver);
        }
    }
}

/// Memory full; blocks freed on a stream that is still running (held):
/// their pages wait behind that stream's fence. An allocation on another
/// stream then trims (nothing completed), waits on that one fence, trims
/// again and succeeds. With nothing reclaimable, out-of-memory reports
/// figures that match the stats.
fn out_of_memory_waits_on_one_fence_then_reports() {
    let capacity = 16 * PAGE;
    let driver = host(capacity);
    {
        let s = driver.create_stream().unwrap();
        let t = driver.create_stream().unwrap();
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        let blocks: Vec<DevicePtr> = (0..8)
            .map(|_| arena.alloc_on(2 * PAGE, 512, s).unwrap())
            .collect();
        assert_eq!(arena.stats().committed, capacity, "memory full");
        driver.inner().hold(s);
        arena.free_on(blocks[2], s).unwrap();
        arena.free_on(blocks[5], s).unwrap();
        arena.trim();
        let st = arena.stats();
        assert_eq!(
            (st.committed, st.pending_decommit, st.reclaimable),
            (capacity, 4 * PAGE, 0)
        );

        let waits = driver.counts().wait;
        let p = arena
            .alloc_on(2 * PAGE, 512, t)
            .expect("the ladder waits and succeeds");
        let c = driver.counts();
        assert_eq!(c.wait, waits + 1, "waited on exactly one fence");
        assert_eq!(arena.stats().driver_calls.wait, 1);
        assert!(arena.stats().committed <= capacity);
        arena.check_invariants();

        // Fill what is left; now nothing is reclaimable.
        let q = arena.alloc_on(2 * PAGE, 512, t).unwrap();
        assert_eq!(arena.stats().committed, capacity);
        let e = arena.alloc_on(4 * PAGE, 512, t).expect_err("out of memory");
        let st = arena.stats();
        let Error::OutOfMemory(r) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(r.requested, 4 * PAGE);
        assert_eq!(
            (r.live, r.committed),
            (st.live, st.committed),
            "{r:?} vs {st:?}"
        );
        assert_eq!(r.limit, arena.config().commit.limit);
        assert_eq!((r.reclaimable, r.pending), (0, 0));
        assert!(e.to_string().contains("out of memory"), "{e}");
        arena.check_invariants();

        // A commit of several runs that fails half-way reports the state the
        // caller sees afterwards (the runs it made were given back).
        arena.free_on(q, t).unwrap();
        arena.trim();
        assert_eq!(arena.stats().committed, capacity - 2 * PAGE);
        arena.set_limit(u64::MAX);
        let mut small_runs = Arena::new(&driver, Kind::Device(0), config(PAGE)).unwrap();
        let e = small_runs
            .alloc(4 * PAGE, 512)
            .expect_err("two of four pages fit");
        let st = small_runs.stats();
        let Error::OutOfMemory(r) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (r.live, r.committed),
            (st.live, st.committed),
            "{r:?} vs {st:?}"
        );
        assert_eq!(st.committed, 0, "nothing half-committed");
        small_runs.check_invariants();
        drop(small_runs);

        driver.inner().complete(s);
        for b in blocks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2 && *i != 5)
        {
            arena.free_on(*b.1, s).unwrap();
        }
        arena.free_on(p, t).unwrap();
        arena.trim();
        assert_eq!(arena.stats().committed, 0);
        arena.check_invariants();
    }
    assert_balanced(&driver);
}

/// `set_limit` caps committed memory: past it, out-of-memory with the limit
/// in the report; raising it lets the allocation through.
fn the_configured_limit_holds() {
    let driver = host(256 << 20);
    {
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        arena.set_limit(4 * PAGE);
        assert_eq!(arena.config().commit.limit, 4 * PAGE);
        let a = arena.alloc(3 * PAGE, 512).unwrap();
        let e = arena.alloc(2 * PAGE, 512).expect_err("beyond the limit");
        let st = arena.stats();
        let Error::OutOfMemory(r) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            (r.requested, r.live, r.committed, r.limit),
            (2 * PAGE, st.live, st.committed, 4 * PAGE)
        );
        assert!(
            e.to_string().contains(&format!("limit {}", 4 * PAGE)),
            "{e}"
        );
        // Within the limit still works.
        let b = arena.alloc(PAGE, 512).unwrap();
        assert_eq!(arena.stats().committed, 4 * PAGE);
        arena.set_limit(6 * PAGE);
        let c = arena.alloc(2 * PAGE, 512).unwrap();
        assert_eq!(arena.stats().committed, 6 * PAGE);
        // Freed memory is reused under the limit.
        arena.free(a).unwrap();
        let d = arena.alloc(3 * PAGE, 512).unwrap();
        assert!(arena.stats().committed <= 6 * PAGE);
        for p in [b, c, d] {
            arena.free(p).unwrap();
        }
        arena.check_invariants();
    }
    assert_balanced(&driver);
}

/// Faults in calls the arena makes outside a commit: a failed fence record
/// while giving pages back leaves them pending, and a later trim gives them
/// back.
fn a_failed_fence_record_defers_the_decommit() {
    let driver = host(256 << 20);
    {
        let s = driver.create_stream().unwrap();
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        let p = arena.alloc_on(4 * PAGE, 512, s).unwrap();
        arena.free_on(p, s).unwrap();
        driver.inject(Fault {
            op: Op::Record,
            nth: 1,
            kind: FaultKind::DriverError,
        });
        arena.trim();
        // The handle whose fence could not be recorded stays (the others
        // got the fence on the next try).
        let st = arena.stats();
        assert!(st.committed >= PAGE, "no fence, no decommit: {st:?}");
        assert!(st.driver_calls.failed >= 1, "{st:?}");
        arena.check_invariants();
        arena.trim();
        assert_eq!(arena.stats().committed, 0);
        let q = arena.alloc_on(PAGE, 512, Stream::DEFAULT).unwrap();
        arena.free(q).unwrap();
    }
    assert_balanced(&driver);
}

/// A release the driver refuses keeps its handle: the memory still counts
/// as committed (it is still held), the next trim releases it, and nothing
/// is left at the end.
fn a_refused_release_is_tried_again() {
    let driver = host(256 << 20);
    {
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        let p = arena.alloc(3 * PAGE, PAGE).unwrap();
        arena.free(p).unwrap();
        driver.inject(Fault {
            op: Op::Release,
            nth: 1,
            kind: FaultKind::DriverError,
        });
        arena.trim();
        let st = arena.stats();
        assert_eq!(driver.counts().injected, 1);
        assert_eq!(
            (st.committed, st.handles),
            (PAGE, 1),
            "the refused handle is still held and counted: {st:?}"
        );
        assert_eq!(driver.physical_bytes(), PAGE);
        arena.check_invariants();
        arena.trim();
        let st = arena.stats();
        assert_eq!((st.committed, st.handles), (0, 0), "{st:?}");
        assert_eq!(st.driver_calls.create, st.driver_calls.release);
        // A refusal at teardown is tried again there too.
        let q = arena.alloc(PAGE, PAGE).unwrap();
        arena.free(q).unwrap();
        driver.inject(Fault {
            op: Op::Release,
            nth: 1,
            kind: FaultKind::OutOfMemory,
        });
    }
    assert_balanced(&driver);
}

/// Sleep gives every mapping back even when an unmap is refused once (it
/// is tried again at once), and wake maps the same addresses again.
fn sleep_survives_a_refused_unmap() {
    let driver = host(256 << 20);
    {
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        let p = arena.alloc(3 * PAGE, PAGE).unwrap();
        // SAFETY: host backend: the block is host memory of that size.
        unsafe { std::ptr::write_bytes(p.as_mut_ptr::<u8>(), 0x5a, (3 * PAGE) as usize) };
        driver.inject(Fault {
            op: Op::Unmap,
            nth: 1,
            kind: FaultKind::DriverError,
        });
        arena
            .sleep(gpu_arena::SleepMode::Offload, Stream::DEFAULT)
            .unwrap();
        assert_eq!(driver.counts().injected, 1);
        let st = arena.stats();
        assert_eq!((st.committed, st.handles, st.mappings), (0, 0, 0), "{st:?}");
        let l = driver.leaks().expect("the reservation and the pinned copy");
        assert_eq!(
            (l.handles, l.mappings, l.physical_bytes),
            (1, 1, 3 * PAGE),
            "only the pinned host copy is held: {l:?}"
        );
        arena.wake(Stream::DEFAULT).unwrap();
        // SAFETY: awake again, same address.
        let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr::<u8>(), (3 * PAGE) as usize) };
        assert!(bytes.iter().all(|&b| b == 0x5a));
        arena.free(p).unwrap();
        arena.check_invariants();
    }
    assert_balanced(&driver);
}

/// A commit whose set_access fails, and whose undo then has an unmap
/// refused once, leaves no mapping without access behind: the same block
/// placed there afterwards is reachable in every byte.
fn a_failed_commit_with_a_refused_undo_leaves_no_unreachable_page() {
    let driver = host(256 << 20);
    {
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        for unmaps in 1..=2 {
            driver.inject(Fault {
                op: Op::SetAccess,
                nth: 1,
                kind: FaultKind::DriverError,
            });
            for nth in 1..=unmaps {
                driver.inject(Fault {
                    op: Op::Unmap,
                    nth,
                    kind: FaultKind::DriverError,
                });
            }
            let e = arena.alloc(4 * PAGE, PAGE).expect_err("set_access fails");
            assert!(matches!(e, Error::Driver(_)), "{e:?}");
            arena.check_invariants();
            let p = arena.alloc(4 * PAGE, PAGE).unwrap();
            // SAFETY: host backend: the block is host memory of that size
            // (a page without access would fault here).
            unsafe { std::ptr::write_bytes(p.as_mut_ptr::<u8>(), 0x77, (4 * PAGE) as usize) };
            arena.free(p).unwrap();
            arena.trim();
            arena.check_invariants();
        }
        driver.clear_faults();
    }
    assert_balanced(&driver);
}

/// The pinned host memory of an offload goes back whole even when the
/// driver refuses a step once (unmap, release or reservation free), when
/// it is made and when it is dropped.
fn the_pinned_copy_goes_back_through_refusals() {
    for op in [Op::Unmap, Op::Release, Op::FreeReservation] {
        let driver = host(256 << 20);
        {
            let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
            let p = arena.alloc(2 * PAGE, PAGE).unwrap();
            arena
                .sleep(gpu_arena::SleepMode::Offload, Stream::DEFAULT)
                .unwrap();
            arena.wake(Stream::DEFAULT).unwrap();
            // The pinned copy is kept for the next sleep; trim drops it.
            driver.inject(Fault {
                op,
                nth: 1,
                kind: FaultKind::DriverError,
            });
            arena.trim();
            assert_eq!(driver.counts().injected, 1, "{op:?}");
            // A copy whose access cannot be set is given back at once.
            driver.inject(Fault {
                op: Op::SetAccess,
                nth: 1,
                kind: FaultKind::DriverError,
            });
            driver.inject(Fault {
                op,
                nth: 1,
                kind: FaultKind::DriverError,
            });
            arena
                .sleep(gpu_arena::SleepMode::Offload, Stream::DEFAULT)
                .expect_err("no pinned copy, no sleep");
            assert!(!arena.is_asleep());
            arena.free(p).unwrap();
        }
        assert_balanced(&driver);
    }
}

/// A trim while asleep changes nothing that wake relies on: small blocks
/// freed on another stream before the sleep (their slab waits for that
/// stream's fence) are not drained into the page table of an asleep arena,
/// so wake recommits every page it offloaded and restores it.
fn a_trim_while_asleep_leaves_the_pages_to_restore() {
    let driver = host(256 << 20);
    {
        let s = driver.create_stream().unwrap();
        let t = driver.create_stream().unwrap();
        let mut arena = Arena::new(&driver, Kind::Device(0), config(1 << 30)).unwrap();
        let keep = arena.alloc_on(PAGE, PAGE, s).unwrap();
        let small: Vec<DevicePtr> = (0..4)
            .map(|_| arena.alloc_on(100, 16, s).unwrap())
            .collect();
        // SAFETY: host backend: live blocks of these sizes.
        unsafe {
            std::ptr::write_bytes(keep.as_mut_ptr::<u8>(), 0x11, PAGE as usize);
            for &p in &small {
                std::ptr::write_bytes(p.as_mut_ptr::<u8>(), 0x22, 100);
            }
        }
        driver.inner().hold(s);
        for &p in &small {
            arena.free_on(p, t).unwrap();
        }
        arena
            .sleep(gpu_arena::SleepMode::Offload, Stream::DEFAULT)
            .unwrap();
        arena.trim();
        arena.wake(Stream::DEFAULT).unwrap();
        // SAFETY: awake again, same address.
        let b = unsafe { std::slice::from_raw_parts(keep.as_ptr::<u8>(), PAGE as usize) };
        assert!(b.iter().all(|&x| x == 0x11));
        arena.check_invariants();
        driver.inner().complete(s);
        arena.free_on(keep, s).unwrap();
        arena.trim();
        assert_eq!(arena.stats().committed, 0);
    }
    assert_balanced(&driver);
}

/// A stream may take back memory it freed while its own work on it is still
/// running (its work runs in order). When committing the rest of such a
/// block fails (the limit, device memory, a driver error), the span goes
/// back to the blocks region still guarded by that free's fence: another
/// stream is not handed those bytes before the fence completes. (Until the
/// fix, the failed allocation gave the span back as safe for everyone.)
fn a_failed_commit_keeps_a_pending_free_from_other_streams() {
    const BIG: u64 = 1 << 20;
    for how in ["limit", "create fails"] {
        // Pages of 1 MiB, so that blocks of a quarter page lie in the
        // blocks region (smaller ones go to slabs).
        let driver = Checked::new(
            HostDriver::with_config(HostConfig {
                granularity: BIG as usize,
                capacity: 1 << 30,
                ..Default::default()
            })
            .expect("host driver"),
        );
        {
            let a = driver.create_stream().unwrap();
            let b = driver.create_stream().unwrap();
            let mut arena = Arena::new(
                &driver,
                Kind::Device(0),
                ArenaConfig {
                    reservation: 256 << 20,
                    ..config(1 << 30)
                },
            )
            .unwrap();
            if how == "limit" {
                arena.set_limit(BIG);
            }
            // Two blocks on page 0, the second the last span of the region.
            let n = arena.alloc_on(BIG / 4, 512, a).unwrap();
            let x = arena.alloc_on(BIG / 4, 512, a).unwrap();
            // Stream a's work on x is still running when x is freed.
            driver.inner().hold(a);
            arena.free_on(x, a).unwrap();
            // On stream a, a block that starts in x's bytes and grows the
            // top fails to commit its fresh pages.
            if how == "create fails" {
                driver.inject(Fault {
                    op: Op::Create,
                    nth: 1,
                    kind: FaultKind::DriverError,
                });
            }
            let e = arena
                .alloc_on(2 * BIG, 512, a)
                .expect_err("the commit fails");
            assert!(
                matches!(
                    (how, &e),
                    ("limit", Error::OutOfMemory(_)) | ("create fails", Error::Driver(_))
                ),
                "{how}: {e:?}"
            );
            // Stream b gets x's bytes only after waiting on stream a's
            // fence: without the limit it gets fresh memory and waits for
            // nothing; under it, the bytes left on the committed page lie in
            // the span x's free guards, so it waits (the out-of-memory
            // ladder's last resort; the emulated kernel ends when waited on).
            let waits = driver.counts().wait;
            let y = arena.alloc_on(BIG / 4, 512, b).unwrap();
            let waited = driver.counts().wait - waits;
            let overlaps = y.addr() < x.addr() + BIG / 4 && x.addr() < y.addr() + BIG / 4;
            assert!(
                !overlaps || waited > 0,
                "{how}: stream b got {:#x}, inside the block stream a freed at {:#x} while \
                 its work was still running, without waiting",
                y.addr(),
                x.addr()
            );
            assert_eq!(waited > 0, how == "limit", "{how}: waited {waited} times");
            arena.check_invariants();
            driver.inner().complete(a);
            for (p, s) in [(y, b), (n, a)] {
                arena.free_on(p, s).unwrap();
            }
            arena.trim();
            arena.check_invariants();
            assert_eq!(arena.stats().committed, 0);
        }
        assert_balanced(&driver);
    }
}

fn main() {
    let tests: [(&str, fn()); 10] = [
        (
            "a_failed_commit_leaves_nothing_behind",
            a_failed_commit_leaves_nothing_behind,
        ),
        (
            "out_of_memory_waits_on_one_fence_then_reports",
            out_of_memory_waits_on_one_fence_then_reports,
        ),
        ("the_configured_limit_holds", the_configured_limit_holds),
        (
            "a_failed_fence_record_defers_the_decommit",
            a_failed_fence_record_defers_the_decommit,
        ),
        (
            "a_refused_release_is_tried_again",
            a_refused_release_is_tried_again,
        ),
        (
            "sleep_survives_a_refused_unmap",
            sleep_survives_a_refused_unmap,
        ),
        (
            "a_failed_commit_with_a_refused_undo_leaves_no_unreachable_page",
            a_failed_commit_with_a_refused_undo_leaves_no_unreachable_page,
        ),
        (
            "the_pinned_copy_goes_back_through_refusals",
            the_pinned_copy_goes_back_through_refusals,
        ),
        (
            "a_trim_while_asleep_leaves_the_pages_to_restore",
            a_trim_while_asleep_leaves_the_pages_to_restore,
        ),
        (
            "a_failed_commit_keeps_a_pending_free_from_other_streams",
            a_failed_commit_keeps_a_pending_free_from_other_streams,
        ),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        print!("test {name} ... ");
        test();
        println!("ok");
    }
}
