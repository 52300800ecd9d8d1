//! Pinned host memory for an offload obtained ahead of the sleep, in the
//! background and away from the shards' locks, so that even the first
//! offload runs at copy speed (docs/sleep-wake.md).

use std::sync::Arc;

use gpu_arena::driver::system::Select;
use gpu_arena::driver::{Fault, FaultKind, Op, Stream, SystemDriver};
use gpu_arena::global::{GlobalArena, GlobalConfig};
use gpu_arena::{DevicePtr, Error, SleepMode, SleepReport};

use crate::common::{assert_all_given_back, checked_global};

/// A leaked arena over a checked host driver (one shard, no thread cache:
/// every block is in the shard the test looks at).
fn arena() -> (&'static GlobalArena, Arc<SystemDriver>) {
    let conf = GlobalConfig {
        shards: 1,
        thread_cache: 0,
        ..GlobalConfig::default()
    };
    checked_global(Select::Host, conf)
}

/// Blocks of tag `weights`, each filled with its own byte.
fn load(arena: &'static GlobalArena, sizes: &[u64], first: u8) -> Vec<(DevicePtr, u64, u8)> {
    let _g = arena.tag_scope("weights").unwrap();
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let p = arena.alloc(size, 512, Stream::DEFAULT).unwrap();
            let byte = first + i as u8;
            // SAFETY: host backend, a live block of `size` bytes.
            unsafe { std::ptr::write_bytes(p.as_mut_ptr::<u8>(), byte, size as usize) };
            (p, size, byte)
        })
        .collect()
}

/// Sleeps tag `weights`, offloading it.
fn offload(arena: &'static GlobalArena) -> SleepReport {
    arena
        .sleep(&["weights"], SleepMode::Offload, Stream::DEFAULT)
        .unwrap()
}

/// Wakes tag `weights` and checks that its blocks came back intact.
fn wake_intact(arena: &'static GlobalArena, blocks: &[(DevicePtr, u64, u8)]) {
    arena.wake(&["weights"], Stream::DEFAULT).unwrap();
    assert!(intact(blocks), "contents restored at the same addresses");
}

fn intact(blocks: &[(DevicePtr, u64, u8)]) -> bool {
    blocks.iter().all(|&(p, size, byte)| {
        // SAFETY: host backend, live blocks of an awake tag.
        let b = unsafe { std::slice::from_raw_parts(p.as_ptr::<u8>(), size as usize) };
        b.iter().all(|&x| x == byte)
    })
}

/// Frees the blocks, checks that a trim gives the pinned memory held for
/// offloads back, tears the arena down and checks that the driver got
/// everything back.
fn finish(arena: &'static GlobalArena, driver: &SystemDriver, blocks: Vec<(DevicePtr, u64, u8)>) {
    for (p, _, _) in blocks {
        arena.free(p, None, Stream::DEFAULT).unwrap();
    }
    arena.set_limit(u64::MAX);
    arena.trim();
    assert_eq!(arena.stats().staged, 0, "trim gives the stage back");
    // SAFETY: this thread alone used the arena (the stagers are joined by
    // destroy); nothing uses it afterwards.
    unsafe { GlobalArena::destroy(arena) }.unwrap();
    assert_all_given_back(driver);
}

#[test]
fn pinned_memory_obtained_in_the_background_serves_the_first_offload() {
    let (arena, driver) = arena();
    let blocks = load(arena, &[6 << 20, 200, 3 << 20, 70_000], 0x21);
    let weights = arena.tag("weights").unwrap();
    arena.prepare_offload_in_background(&["weights"]).unwrap();
    // The arena serves allocations meanwhile (another tag, and this one).
    let other = {
        let _g = arena.tag_scope("kv_cache").unwrap();
        arena.alloc(4 << 20, 512, Stream::DEFAULT).unwrap()
    };
    let creates_before_sleep = arena.stats().driver_calls.create;
    let r = offload(arena);
    assert_eq!(r.stage_seconds, 0.0, "the sleep pinned nothing itself");
    assert!(r.copied >= (6 << 20) + (3 << 20), "{r:?}");
    // The stage's driver calls are counted in the stats like any other.
    let s = arena.stats();
    let c = driver.as_checked().unwrap().counts();
    assert_eq!(
        s.driver_calls.create, c.create,
        "stats count the stage's create"
    );
    assert!(s.driver_calls.create >= creates_before_sleep);
    assert!(arena.tag_stats(weights).staged >= r.copied);
    wake_intact(arena, &blocks);
    arena.free(other, None, Stream::DEFAULT).unwrap();
    finish(arena, &driver, blocks);
}

#[test]
fn names_are_checked_before_any_thread_starts() {
    let (arena, driver) = arena();
    let e = arena
        .prepare_offload_in_background(&["weights", "no such tag"])
        .unwrap_err();
    assert!(matches!(e, Error::UnknownTag { .. }), "{e}");
    assert!(e.to_string().contains("no such tag"), "{e}");
    finish(arena, &driver, Vec::new());
}

#[test]
fn a_failed_background_stage_leaves_the_sleep_to_obtain_it() {
    let (arena, driver) = arena();
    let blocks = load(arena, &[5 << 20, 1000], 0x40);
    // The stager's create (the next one) is refused.
    driver.as_checked().unwrap().inject(Fault {
        op: Op::Create,
        nth: 1,
        kind: FaultKind::OutOfMemory,
    });
    arena.prepare_offload_in_background(&["weights"]).unwrap();
    let r = offload(arena);
    assert!(r.stage_seconds > 0.0, "the sleep obtained the stage itself");
    assert!(r.copied >= 5 << 20);
    assert_eq!(
        arena.stats().driver_calls.failed,
        1,
        "the refused create is counted"
    );
    wake_intact(arena, &blocks);
    finish(arena, &driver, blocks);
}

#[test]
fn a_stage_whose_release_the_driver_refused_goes_back_later() {
    let (arena, driver) = arena();
    let blocks = load(arena, &[2 << 20], 0x44);
    // The stager's access call fails, and so do the next three releases,
    // the first of them that of the handle it made (more than a release is
    // tried at once): the arena keeps the handles refused and releases them
    // later.
    let checked = driver.as_checked().unwrap();
    checked.inject(Fault {
        op: Op::SetAccess,
        nth: 1,
        kind: FaultKind::DriverError,
    });
    for nth in 1..=3 {
        checked.inject(Fault {
            op: Op::Release,
            nth,
            kind: FaultKind::DriverError,
        });
    }
    arena.prepare_offload_in_background(&["weights"]).unwrap();
    let r = offload(arena);
    assert!(r.stage_seconds > 0.0, "the sleep obtained the stage itself");
    assert!(arena.stats().driver_calls.failed >= 2);
    wake_intact(arena, &blocks);
    finish(arena, &driver, blocks); // teardown releases the kept handles
}

#[test]
fn a_tag_that_grew_after_staging_gets_a_larger_stage_and_trim_gives_it_back() {
    let (arena, driver) = arena();
    let mut blocks = load(arena, &[2 << 20], 0x60);
    let weights = arena.tag("weights").unwrap();
    assert!(arena.prepare_offload(&["weights"]).unwrap() > 0.0);
    let small = arena.tag_stats(weights).staged;
    assert!(small >= 2 << 20);
    assert_eq!(
        arena.prepare_offload(&["weights"]).unwrap(),
        0.0,
        "enough is held"
    );
    blocks.extend(load(arena, &[8 << 20], 0x70));
    let r = offload(arena);
    assert!(r.stage_seconds > 0.0, "the kept stage was too small");
    assert!(r.copied >= 10 << 20);
    // The smaller stage went back: only the larger one is held (the tag
    // is the only one with memory, and it is asleep).
    let checked = driver.as_checked().unwrap();
    assert_eq!(checked.physical_bytes(), arena.stats().staged);
    assert_eq!(arena.stats().committed, 0);
    wake_intact(arena, &blocks);
    assert!(arena.tag_stats(weights).staged > small);
    finish(arena, &driver, blocks);
}

#[test]
fn running_out_of_device_memory_keeps_the_pinned_memory_obtained_ahead() {
    let (arena, driver) = arena();
    let blocks = load(arena, &[4 << 20], 0x50);
    let weights = arena.tag("weights").unwrap();
    arena.prepare_offload(&["weights"]).unwrap();
    let staged = arena.tag_stats(weights).staged;
    assert!(staged >= 4 << 20);
    // The device is full: an allocation fails after the arena trimmed every
    // shard to retry, and that trim leaves the host's pinned memory alone.
    arena.set_limit(arena.stats().committed + (2 << 20));
    let e = arena.alloc(64 << 20, 512, Stream::DEFAULT).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory(_)), "{e}");
    assert_eq!(arena.tag_stats(weights).staged, staged, "the stage stays");
    let r = offload(arena);
    assert_eq!(r.stage_seconds, 0.0);
    wake_intact(arena, &blocks);
    finish(arena, &driver, blocks); // an explicit trim gives it back
}

#[test]
fn requests_made_while_the_stager_works_are_all_served_before_the_sleep() {
    let (arena, driver) = arena();
    // A loader that asks after each layer: requests come while the thread
    // still works on earlier ones; the last one sees every layer.
    let mut blocks = Vec::new();
    for layer in 0..12u8 {
        blocks.extend(load(arena, &[3 << 20, 4096], 0x10 + 2 * layer));
        arena.prepare_offload_in_background(&["weights"]).unwrap();
    }
    let r = offload(arena);
    assert_eq!(r.stage_seconds, 0.0, "the last request covered every layer");
    // One stage is held, the others went back as larger ones came.
    let checked = driver.as_checked().unwrap();
    assert_eq!(checked.physical_bytes(), arena.stats().staged);
    wake_intact(arena, &blocks);
    finish(arena, &driver, blocks);
}
