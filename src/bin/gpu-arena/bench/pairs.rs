//! a. alloc+free pair latency: allocate then free the same size in a hot
//! loop, after warm-up; nanoseconds per pair, median of several batches.
//! Anchors: the system allocator (`malloc`/`free` through
//! `std::alloc::System`), and on CUDA `cuMemAlloc_v2`/`cuMemFree_v2` and the
//! stream-ordered pool (`cuMemAllocAsync`/`cuMemFreeAsync`, release
//! threshold `u64::MAX`), and PyTorch's caching allocator where
//! `--torch-anchor` loads it.

use std::alloc::Layout;
use std::hint::black_box;
use std::time::Duration;

use gpu_arena::{Arena, ArenaConfig, Kind};

use super::{Anchor, Ctx, Row, Section, SectionId, Unit, per_call_ns, system_pair};
use crate::{AnyResult, fmt_bytes};

/// Target: a hot pair costs at most this.
const TARGET_NS: f64 = 30.0;
/// Sizes measured.
const SIZES: [u64; 4] = [256, 64 << 10, 1 << 20, 64 << 20];
/// Alignment asked of gpu-arena (what `cuMemAlloc` guarantees).
const ALIGN: u64 = 256;

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let mut anchors = vec![Anchor::measured("System malloc")];
    if ctx.is_cuda() {
        anchors.push(Anchor::measured("cuMemAlloc/Free"));
        anchors.push(Anchor::measured("cuMemAllocAsync pool"));
    }
    anchors.extend(ctx.torch_column());
    let (target, batches) = if ctx.quick {
        (Duration::from_millis(2), 5)
    } else {
        (Duration::from_millis(20), 15)
    };
    let mut s = Section::new(
        SectionId::Pairs,
        format!(
            "a. alloc+free pair latency (time per pair, median of {batches} batches after warm-up)"
        ),
        anchors,
    );
    let pb = ctx.progress(SectionId::Pairs, SIZES.len() as u64);
    for size in SIZES {
        pb.set_message(fmt_bytes(size));
        // A fresh arena per size: each case on its own.
        let mut arena = Arena::new(
            ctx.backends.driver()?,
            Kind::Device(ctx.device),
            ArenaConfig::default(),
        )?;
        let mut pairs = 0u64;
        let ours = per_call_ns(target, batches, || {
            let p = arena.alloc(size, ALIGN)?;
            arena.free(black_box(p))?;
            pairs += 1;
            Ok(())
        })?;
        let per_pair = arena.stats().driver_calls.total() as f64 / pairs as f64;
        let mut anchors = Vec::new();
        let layout = Layout::from_size_align(size as usize, 16)?;
        anchors.push(Some(per_call_ns(target, batches, || system_pair(layout))?));
        #[cfg(feature = "cuda")]
        if let Some(cu) = ctx.cu {
            anchors.push(Some(per_call_ns(target, batches, || {
                let p = cu.mem_alloc(size as usize)?;
                cu.mem_free(black_box(p))
            })?));
            let stream = gpu_arena::driver::Driver::create_stream(ctx.main)?;
            let pool = per_call_ns(target, batches, || {
                let p = cu.alloc_async(size as usize, stream)?;
                cu.free_async(black_box(p), stream)
            });
            cu.sync(stream)?;
            // SAFETY: the stream is idle (synchronized) and not used again.
            unsafe { gpu_arena::driver::Driver::destroy_stream(ctx.main, stream) }?;
            anchors.push(Some(pool?));
        }
        if let Some(t) = &ctx.torch {
            anchors.push(Some(per_call_ns(target, batches, || {
                t.pair(size as usize)
            })?));
        }
        let met = ours <= TARGET_NS;
        s.rows.push(
            Row::new(fmt_bytes(size), Unit::Ns, Some(ours), anchors).target(
                format!("≤ {TARGET_NS} ns"),
                Some(met),
                format!("{} ({per_pair:.2} driver calls/pair)", Unit::Ns.fmt(ours)),
            ),
        );
        pb.inc(1);
    }
    pb.finish_and_clear();
    s.notes.push(format!(
        "gpu-arena: a fresh Arena (&mut, no lock) per size over the {} backend, align {ALIGN}; driver calls/pair = the arena's commit \
         and decommit calls over every pair run (warm-up included); System malloc: plain malloc(size)/free, align 16",
        ctx.caps.backend
    ));
    if ctx.is_cuda() {
        s.notes.push(
            "cuMemAllocAsync pool: the device's default pool, release threshold u64::MAX, one stream; \
             stream-ordered calls are timed in batches (host-side cost per call)"
                .into(),
        );
    }
    s.notes.extend(ctx.torch_note());
    Ok(s)
}
