//! e. growth: a buffer doubling from 1 GiB to 32 GiB on CUDA (64 MiB to
//! 2 GiB on the host backend, capped by capacity). gpu-arena: one
//! [`GrowBuffer`] resized step by step (pages committed at its end, no
//! copy). Anchor: alloc-new + copy (driver copy) + free-old through the same
//! kind of arena. Time per step, in all, and peak committed memory. Between
//! steps (untimed, both sides) the new tail is filled, as a program would.

use std::time::Instant;

use gpu_arena::driver::{DevicePtr, Driver, Stream};
use gpu_arena::{ArenaConfig, GrowBuffer, Kind, SharedArena};

use super::{Anchor, Ctx, Row, Section, SectionId, Unit, fmt_ratio};
use crate::{AnyResult, fmt_bytes};

/// Target: growing in place is at least this many times faster than copying.
const TARGET: f64 = 50.0;

/// Fills `len` bytes at `at` (untimed work between steps).
fn fill(shared: &SharedArena<impl Driver>, at: DevicePtr, len: u64) -> AnyResult<()> {
    let a = shared.lock();
    // SAFETY: the range is committed memory of a live block or buffer of
    // this arena, writable by the device (and the CPU on the host backend).
    unsafe {
        a.driver()
            .fill(at.addr(), 0x5a, len as usize, Stream::DEFAULT)
    }?;
    Ok(())
}

/// The sizes: `start`, doubling to `end`.
fn steps(start: u64, end: u64) -> Vec<u64> {
    std::iter::successors(Some(start), |&s| (s < end).then_some(s * 2)).collect()
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let mut s = Section::new(
        SectionId::Growth,
        "e. growth (time per step and in all; peak committed memory)",
        vec![Anchor::measured("alloc-new + copy + free-old")],
    );
    let (start, mut end) = match (ctx.is_cuda(), ctx.quick) {
        (true, false) => (1u64 << 30, 32u64 << 30),
        (true, true) => (1 << 30, 4 << 30),
        (false, false) => (64 << 20, 2 << 30),
        (false, true) => (64 << 20, 256 << 20),
    };
    // The copy needs old + new at once.
    while end > start && end + end / 2 > ctx.caps.device_memory {
        end /= 2;
    }
    let sizes = steps(start, end);
    let pb = ctx.progress(SectionId::Growth, 2 * (sizes.len() as u64 - 1));
    let page = ctx.caps.granularity as u64;

    // gpu-arena: one growable buffer.
    let shared = SharedArena::new(
        ctx.backends.driver()?,
        Kind::Device(ctx.device),
        ArenaConfig::default(),
    )?;
    let mut grow_times = Vec::new();
    {
        let mut buf = GrowBuffer::with_max(&shared, end)?;
        buf.resize(start)?;
        fill(&shared, buf.as_ptr(), start)?;
        for w in sizes.windows(2) {
            pb.set_message(format!("grow {}", fmt_bytes(w[1])));
            let t = Instant::now();
            buf.resize(w[1])?;
            grow_times.push(t.elapsed().as_nanos() as f64);
            fill(&shared, buf.as_ptr().byte_add(w[0]), w[1] - w[0])?;
            pb.inc(1);
        }
    }
    let grow_peak = shared.stats().peak_committed;
    drop(shared);

    // Anchor: alloc-new + copy + free-old.
    let shared = SharedArena::new(
        ctx.backends.driver()?,
        Kind::Device(ctx.device),
        ArenaConfig::default(),
    )?;
    let mut copy_times = Vec::new();
    let mut cur = shared.alloc(start, page, Stream::DEFAULT)?;
    fill(&shared, cur, start)?;
    for w in sizes.windows(2) {
        pb.set_message(format!("copy {}", fmt_bytes(w[1])));
        let t = Instant::now();
        let new = shared.alloc(w[1], page, Stream::DEFAULT)?;
        {
            let a = shared.lock();
            // SAFETY: both are live blocks of this arena, at least w[0]
            // bytes long, and distinct (so they do not overlap).
            unsafe {
                a.driver()
                    .copy(new.addr(), cur.addr(), w[0] as usize, Stream::DEFAULT)
            }?;
        }
        shared.free(cur, Stream::DEFAULT)?;
        copy_times.push(t.elapsed().as_nanos() as f64);
        cur = new;
        fill(&shared, cur.byte_add(w[0]), w[1] - w[0])?;
        pb.inc(1);
    }
    shared.free(cur, Stream::DEFAULT)?;
    let copy_peak = shared.stats().peak_committed;
    drop(shared);
    pb.finish_and_clear();

    for (i, w) in sizes.windows(2).enumerate() {
        s.rows.push(Row::new(
            format!("{} → {}", fmt_bytes(w[0]), fmt_bytes(w[1])),
            Unit::Ns,
            Some(grow_times[i]),
            vec![Some(copy_times[i])],
        ));
    }
    let (g, c): (f64, f64) = (grow_times.iter().sum(), copy_times.iter().sum());
    let speedup = c / g;
    s.rows.push(
        Row::new(
            format!("all steps {} → {}", fmt_bytes(start), fmt_bytes(end)),
            Unit::Ns,
            Some(g),
            vec![Some(c)],
        )
        .target(
            format!("≥ {TARGET}x faster"),
            Some(speedup >= TARGET),
            format!("{} faster", fmt_ratio(speedup)),
        ),
    );
    s.rows.push(
        Row::new(
            "peak committed",
            Unit::Bytes,
            Some(grow_peak as f64),
            vec![Some(copy_peak as f64)],
        )
        .target(
            format!("= final ({})", fmt_bytes(end)),
            Some(grow_peak == end),
            fmt_bytes(grow_peak),
        ),
    );
    s.notes.push(format!(
        "both sides start from a committed, filled {} buffer; each step's new tail is filled afterwards (untimed); copies through the driver on the default stream",
        fmt_bytes(start)
    ));
    if end < if ctx.is_cuda() { 32 << 30 } else { 2 << 30 } && !ctx.quick {
        s.notes.push(format!(
            "capped at {}: the copy needs 1.5x the final size and the device memory (host capacity) is {}",
            fmt_bytes(end),
            fmt_bytes(ctx.caps.device_memory)
        ));
    }
    Ok(s)
}
