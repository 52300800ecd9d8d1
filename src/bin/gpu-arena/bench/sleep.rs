//! g. sleep and wake: N tensors of 6 MiB (about 10 GiB on CUDA, 1 GiB on
//! the host backend) given back and recommitted at the same addresses.
//! gpu-arena: one arena, [`Arena::sleep`](gpu_arena::Arena::sleep) /
//! `wake`, first in an arena laid out as the global arenas lay out a tag's
//! memory (what engines put to sleep: `tag_bulk_streak`), then in an arena
//! of the default settings. Anchor: the per-tensor way engines use today: one physical handle
//! per tensor, unmapped + released one by one, then created + mapped +
//! given access one by one, through the crate's driver trait. Offload and
//! restore bandwidth are shown next to a plain pinned-host copy of the same
//! bytes in the same run.

use std::time::Instant;

use gpu_arena::driver::{Access, DevicePtr, Driver, Location, Stream};
use gpu_arena::global::GlobalConfig;
use gpu_arena::{ArenaConfig, Kind, SharedArena, SleepMode};

use super::{Anchor, Ctx, Row, Section, SectionId, Unit, tag_config};
use crate::{AnyResult, fmt_bytes};

const TENSOR: u64 = 6 << 20;
/// Targets for 10 GiB (what engines that sleep between training and
/// generation need): discard sleep ≤ 10 ms, wake ≤ 15 ms, offload and
/// restore ≥ 80 % of the copy bandwidth.
const SLEEP_NS_PER_10GIB: f64 = 10e6;
const WAKE_NS_PER_10GIB: f64 = 15e6;

fn ns(t: Instant) -> f64 {
    t.elapsed().as_nanos() as f64
}

/// Sleep and wake through the per-tensor driver sequence: (sleep ns, wake ns).
fn per_tensor(d: &impl Driver, n: u64, location: Location) -> AnyResult<(f64, f64)> {
    let va = d.reserve((n * TENSOR) as usize, 0)?;
    let access = [Access::read_write(location)];
    let mut handles = Vec::with_capacity(n as usize);
    let commit = |handles: &mut Vec<_>| -> AnyResult<()> {
        for i in 0..n {
            let h = d.create(TENSOR as usize, location)?;
            let at = va + i * TENSOR;
            // SAFETY: `at` is an unmapped range of our fresh reservation; the
            // mapping just made gets access for its device.
            unsafe {
                d.map(at, TENSOR as usize, 0, h)?;
                d.set_access(at, TENSOR as usize, &access)?;
            }
            handles.push(h);
        }
        Ok(())
    };
    commit(&mut handles)?;
    let t = Instant::now();
    for (i, h) in handles.drain(..).enumerate() {
        // SAFETY: each range is one whole mapping of ours that nothing uses.
        unsafe { d.unmap(va + i as u64 * TENSOR, TENSOR as usize) }?;
        d.release(h)?;
    }
    let sleep = ns(t);
    let t = Instant::now();
    commit(&mut handles)?;
    let wake = ns(t);
    for (i, h) in handles.drain(..).enumerate() {
        // SAFETY: as above.
        unsafe { d.unmap(va + i as u64 * TENSOR, TENSOR as usize) }?;
        d.release(h)?;
    }
    // SAFETY: every mapping of the reservation was removed above.
    unsafe { d.free_reservation(va, (n * TENSOR) as usize) }?;
    Ok((sleep, wake))
}

/// One sleep (discard) and wake of `n` tensors allocated one by one in a
/// fresh arena of `config`: (handles before the sleep, sleep ns, wake ns).
fn first_cycle(ctx: &Ctx, n: u64, config: ArenaConfig) -> AnyResult<(u64, f64, f64)> {
    let shared = SharedArena::new(ctx.backends.driver()?, Kind::Device(ctx.device), config)?;
    let blocks: Vec<DevicePtr> = (0..n)
        .map(|_| shared.alloc(TENSOR, 512, Stream::DEFAULT))
        .collect::<Result<_, _>>()?;
    let handles = shared.stats().handles;
    let mut a = shared.lock();
    let t = Instant::now();
    a.sleep(SleepMode::Discard, Stream::DEFAULT)?;
    let sleep = ns(t);
    let t = Instant::now();
    a.wake(Stream::DEFAULT)?;
    let wake = ns(t);
    drop(a);
    for b in blocks {
        shared.free(b, Stream::DEFAULT)?;
    }
    Ok((handles, sleep, wake))
}

/// Device → pinned host and back through the driver: (GiB/s down, GiB/s up).
fn pinned_copy(ctx: &Ctx, dev: DevicePtr, bytes: u64) -> AnyResult<(f64, f64)> {
    let pinned = SharedArena::new(
        ctx.backends.driver()?,
        Kind::PinnedHost,
        ArenaConfig::default(),
    )?;
    let host = pinned.alloc(bytes, 4096, Stream::DEFAULT)?;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let a = pinned.lock();
    let d = a.driver();
    let once = |dst: DevicePtr, src: DevicePtr| -> AnyResult<f64> {
        let t = Instant::now();
        // SAFETY: both ranges are live blocks of `bytes` bytes; no overlap.
        unsafe { d.copy(dst.addr(), src.addr(), bytes as usize, Stream::DEFAULT) }?;
        Ok(gib / t.elapsed().as_secs_f64())
    };
    once(host, dev)?; // warm-up
    let down = once(host, dev)?;
    let up = once(dev, host)?;
    drop(a);
    pinned.free(host, Stream::DEFAULT)?;
    Ok((down, up))
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let n: u64 = match (ctx.is_cuda(), ctx.quick) {
        (true, false) => 1707, // 10 GiB
        (true, true) => 171,
        (false, false) => 171, // 1 GiB
        (false, true) => 16,
    }
    .min(ctx.caps.device_memory / TENSOR / 3);
    let total = n * TENSOR;
    let scale = (10u64 << 30) as f64 / total as f64;
    let mut s = Section::new(
        SectionId::Sleep,
        format!(
            "g. sleep / wake of {} ({n} tensors of 6 MiB)",
            fmt_bytes(total)
        ),
        vec![Anchor::measured("per-tensor handles")],
    );
    let pb = ctx.progress(SectionId::Sleep, 5);
    let location = Location::Device(ctx.device);

    let raw = ctx.backends.driver()?;
    let (pt_sleep, pt_wake) = per_tensor(&raw, n, location)?;
    drop(raw);
    pb.inc(1);

    let tagged = first_cycle(ctx, n, tag_config())?;
    pb.inc(1);

    let shared = SharedArena::new(
        ctx.backends.driver()?,
        Kind::Device(ctx.device),
        ArenaConfig::default(),
    )?;
    let blocks: Vec<DevicePtr> = (0..n)
        .map(|_| shared.alloc(TENSOR, 512, Stream::DEFAULT))
        .collect::<Result<_, _>>()?;
    let cycle = |mode: SleepMode| -> AnyResult<(f64, f64, f64, f64)> {
        let mut a = shared.lock();
        let t = Instant::now();
        let r = a.sleep(mode, Stream::DEFAULT)?;
        let sleep = ns(t);
        let t = Instant::now();
        let w = a.wake(Stream::DEFAULT)?;
        let wake = ns(t);
        let gib = r.copied as f64 / (1u64 << 30) as f64;
        let down = if r.copy_seconds > 0.0 {
            gib / r.copy_seconds
        } else {
            0.0
        };
        let up = if w.copy_seconds > 0.0 {
            gib / w.copy_seconds
        } else {
            0.0
        };
        Ok((sleep, wake, down, up))
    };
    let first_handles = shared.stats().handles;
    let first = cycle(SleepMode::Discard)?;
    pb.inc(1);
    let steady = cycle(SleepMode::Discard)?;
    pb.inc(1);
    // A first offload with nothing prepared obtains the pinned host memory
    // during the sleep (shown apart); an engine calls prepare_offload once
    // its weights are loaded, and then the first offload runs at copy speed
    // (reported), as does every later one (the stage is kept).
    let cold = cycle(SleepMode::Offload)?;
    shared.trim();
    let prepare_s = shared.lock().prepare_offload()?;
    let offload = cycle(SleepMode::Offload)?;
    let steady_offload = cycle(SleepMode::Offload)?;
    let (copy_down, copy_up) = pinned_copy(ctx, blocks[0], total.min(1 << 30))?;
    pb.inc(1);
    for b in blocks {
        shared.free(b, Stream::DEFAULT)?;
    }
    drop(shared);
    pb.finish_and_clear();

    // A sleep's or a wake's row: its time against the per-tensor anchor's,
    // and the target for 10 GiB.
    let timed = |case: &str, ns: f64, sleep: bool| {
        let (anchor, per10, goal) = if sleep {
            (pt_sleep, SLEEP_NS_PER_10GIB, "≤ 10 ms per 10 GiB")
        } else {
            (pt_wake, WAKE_NS_PER_10GIB, "≤ 15 ms per 10 GiB")
        };
        Row::new(case, Unit::Ns, Some(ns), vec![Some(anchor)]).target(
            goal,
            Some(ns * scale <= per10),
            format!("{:.1} ms per 10 GiB", ns * scale / 1e6),
        )
    };
    s.rows.extend([
        timed(
            "sleep, discard (first, a tag's arena: as allocated)",
            tagged.1,
            true,
        ),
        timed("wake, no restore (first, a tag's arena)", tagged.2, false),
        timed(
            "sleep, discard (first, default arena: as allocated)",
            first.0,
            true,
        ),
        timed("wake, no restore (first, default arena)", first.1, false),
        timed("sleep, discard (steady: after a wake)", steady.0, true),
        timed("wake, no restore (steady)", steady.1, false),
    ]);
    s.rows.push(
        Row::new(
            "offload on sleep, first cycle after prepare_offload",
            Unit::GiBps,
            Some(offload.2),
            vec![Some(copy_down)],
        )
        .target(
            "≥ 80 % of the copy",
            Some(offload.2 >= 0.8 * copy_down),
            format!("{:.0} %", 100.0 * offload.2 / copy_down),
        ),
    );
    s.rows.push(
        Row::new(
            "restore on wake, first cycle",
            Unit::GiBps,
            Some(offload.3),
            vec![Some(copy_up)],
        )
        .target(
            "≥ 80 % of the copy",
            Some(offload.3 >= 0.8 * copy_up),
            format!("{:.0} %", 100.0 * offload.3 / copy_up),
        ),
    );
    s.notes.push(format!(
        "offload / restore with nothing prepared (the sleep obtains the pinned host memory): {:.1} / {:.1} GiB/s; prepare_offload took {:.1} ms beforehand; the cycle after it: {:.1} / {:.1} GiB/s",
        cold.2,
        cold.3,
        prepare_s * 1e3,
        steady_offload.2,
        steady_offload.3
    ));
    s.notes.push(format!(
        "a first sleep gives back the handles made as the tensors were allocated: {} in a tag's arena (one per tensor and larger while the allocations keep growing the top: GlobalConfig::tag_bulk_streak {}), {} in the default arena (one per page for the first {} tensors, CommitConfig::bulk_streak, then large ones); a wake recommits in handles of up to {} (CommitConfig::max_run)",
        tagged.0,
        GlobalConfig::default().tag_bulk_streak,
        first_handles,
        ArenaConfig::default().commit.bulk_streak,
        fmt_bytes(ArenaConfig::default().commit.max_run),
    ));
    s.notes.push(format!(
        "the driver's speed in this run: the anchor gave its {n} handles back at {:.1} µs each (unmap + release); that charge moves from run to run and within a run on the same machine, so read a sleep that misses its target against it",
        pt_sleep / n as f64 / 1e3
    ));
    s.notes.push(format!(
        "the anchor's copy column is a plain device ↔ pinned-host copy of {} through the driver",
        fmt_bytes(total.min(1 << 30))
    ));
    Ok(s)
}
