//! d. free while a kernel runs on another stream (CUDA only): a ~0.2 s
//! kernel (`Kernels::spin`) runs on stream A; a 64 MiB arena block last used
//! on stream B is freed (and, in a second row, also given back with `trim`:
//! unmap + release) → microseconds. Anchors: `cuMemFree_v2` in the same
//! situation (it waits for the device: ~the kernel's remaining time) and
//! `cuMemFreeAsync` on stream B. Each case runs [`ROUNDS`] times, each
//! under a kernel of its own, the cases alternating round by round; the
//! rows show medians (one slow call cannot flip the check) and a note the
//! spread. Before each timed call the thread, which slept while the kernel
//! started, writes 32 MiB of other memory: the call runs on a thread that is
//! running with its caches cold, as a framework's frees do between its own
//! work. A note gives gpu-arena's free timed right after the sleep as well
//! (the core's wake-up and every cache cold, the machine's share).

use super::{Anchor, Ctx, Row, Section, SectionId, Unit};
use crate::AnyResult;

/// Target: a free during a running kernel returns within this.
const TARGET_NS: f64 = 10_000.0;
/// The block freed.
const BLOCK: u64 = 64 << 20;
/// Frees timed per case.
const ROUNDS: usize = 5;

/// The cases: the free alone, and the free followed by `trim` (whether trimmed).
fn cases() -> [(String, bool); 2] {
    let b = crate::fmt_bytes(BLOCK);
    [
        (format!("free {b}"), false),
        (format!("free {b} + trim (unmap + release)"), true),
    ]
}

fn target() -> String {
    format!("≤ {} µs", TARGET_NS / 1e3)
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let s = Section::new(
        SectionId::Kernel,
        format!(
            "d. free while a 0.2 s kernel runs on another stream (time for the free call to return, median of {ROUNDS})"
        ),
        vec![
            Anchor::measured("cuMemFree_v2"),
            Anchor::measured("cuMemFreeAsync"),
        ],
    );
    #[cfg(feature = "cuda")]
    if let (gpu_arena::driver::SystemDriver::Cuda(_), Some(cu)) = (ctx.main, ctx.cu) {
        return cuda::run(ctx, cu, s);
    }
    let mut s = s;
    for (case, _) in cases() {
        s.rows
            .push(Row::new(case, Unit::Ns, None, vec![None, None]).target(
                target(),
                None,
                "n/a: CUDA only",
            ));
    }
    s.notes.push(format!(
        "n/a on the {} backend: there is no kernel to run (CUDA only)",
        ctx.caps.backend
    ));
    Ok(s)
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::time::{Duration, Instant};

    use gpu_arena::driver::{Driver, Stream, SystemDriver};
    use gpu_arena::{Arena, ArenaConfig, Kind};

    use super::{BLOCK, ROUNDS, TARGET_NS, cases, target};
    use crate::AnyResult;
    use crate::bench::{Ctx, Row, Section, SectionId, Unit, median};
    use crate::cuda::Cu;

    /// The kernel's duration.
    const SPIN_NS: u64 = 200_000_000;

    /// Other memory written before a timed call (see the module documentation).
    const COLD_BYTES: usize = 32 << 20;

    /// Launches the spin kernel on `a`, gives it time to start, writes
    /// `cold` (one byte per cache line) if given, runs `f` (timed) and
    /// reports whether the kernel was still running after it; then waits
    /// for the kernel (that fence only).
    fn during_kernel<T>(
        driver: &SystemDriver,
        a: Stream,
        cold: Option<&mut [u8]>,
        f: impl FnOnce() -> AnyResult<T>,
    ) -> AnyResult<(f64, bool, T)> {
        let SystemDriver::Cuda(cd) = driver else {
            return Err("not the CUDA backend".into());
        };
        let kernels = cd.kernels()?;
        // SAFETY: `a` is a live stream of this driver; flag 0: no write.
        unsafe { kernels.spin(a, SPIN_NS, 0, 0) }?;
        let fence = driver.record(a)?;
        std::thread::sleep(Duration::from_millis(20));
        if let Some(buf) = cold {
            for b in buf.iter_mut().step_by(64) {
                *b = b.wrapping_add(1);
            }
            std::hint::black_box(&buf[..]);
        }
        let t = Instant::now();
        let r = f();
        let ns = t.elapsed().as_nanos() as f64;
        let running = !driver.is_complete(&fence)?;
        driver.wait(&fence)?;
        driver.drop_fence(fence);
        Ok((ns, running, r?))
    }

    /// Each case's times, one per round.
    #[derive(Default)]
    struct Times {
        free: Vec<f64>,
        /// gpu-arena's free right after the sleep (no other memory written).
        woken: Vec<f64>,
        trim: Vec<f64>,
        cufree: Vec<f64>,
        free_async: Vec<f64>,
    }

    /// "median (min–max)" of `v`.
    fn spread(v: &[f64]) -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!(
            "{} ({}–{})",
            Unit::Ns.fmt(median(v.to_vec())),
            Unit::Ns.fmt(lo),
            Unit::Ns.fmt(hi)
        )
    }

    pub fn run(ctx: &Ctx, cu: Cu, mut s: Section) -> AnyResult<Section> {
        let pb = ctx.progress(SectionId::Kernel, 4 * ROUNDS as u64);
        let mut arena = Arena::new(
            ctx.backends.driver()?,
            Kind::Device(ctx.device),
            ArenaConfig::default(),
        )?;
        let a = arena.driver().create_stream()?;
        let b = arena.driver().create_stream()?;
        let (mut running, mut cufree_running) = (true, false);
        let mut t = Times::default();
        let mut given = 0;
        let mut cold = vec![0u8; COLD_BYTES];
        for _ in 0..ROUNDS {
            // gpu-arena: free only (the block committed afresh each round,
            // so that every round frees the same thing), right after the
            // sleep and with the caches cold, then free + trim.
            for woken in [true, false] {
                pb.set_message("gpu-arena free");
                let p = arena.alloc_on(BLOCK, 512, b)?;
                let buf = (!woken).then_some(&mut cold[..]);
                let (ns, r, ()) = during_kernel(ctx.main, a, buf, || Ok(arena.free_on(p, b)?))?;
                running &= r;
                if woken { &mut t.woken } else { &mut t.free }.push(ns);
                arena.trim();
            }
            pb.inc(1);
            pb.set_message("gpu-arena free + trim");
            let p = arena.alloc_on(BLOCK, 512, b)?;
            let (ns, r, g) = during_kernel(ctx.main, a, Some(&mut cold), || {
                arena.free_on(p, b)?;
                Ok(arena.trim())
            })?;
            running &= r;
            given = g;
            t.trim.push(ns);
            pb.inc(1);
            // cuMemFree in the same situation.
            pb.set_message("cuMemFree");
            cu.make_current()?;
            let q = cu.mem_alloc(BLOCK as usize)?;
            let (ns, r, ()) = during_kernel(ctx.main, a, Some(&mut cold), || cu.mem_free(q))?;
            cufree_running |= r;
            t.cufree.push(ns);
            pb.inc(1);
            // cuMemFreeAsync on stream B.
            pb.set_message("cuMemFreeAsync");
            let q = cu.alloc_async(BLOCK as usize, b)?;
            cu.sync(b)?;
            let (ns, r, ()) = during_kernel(ctx.main, a, Some(&mut cold), || cu.free_async(q, b))?;
            running &= r;
            t.free_async.push(ns);
            cu.sync(b)?;
            pb.inc(1);
        }
        for st in [a, b] {
            // SAFETY: both streams are idle (their work was waited on) and not used again.
            unsafe { arena.driver().destroy_stream(st) }?;
        }
        pb.finish_and_clear();
        let (cufree_ns, async_ns) = (median(t.cufree.clone()), median(t.free_async.clone()));
        for (case, trimmed) in cases() {
            let ns = median(if trimmed {
                t.trim.clone()
            } else {
                t.free.clone()
            });
            let row = Row::new(
                case,
                Unit::Ns,
                Some(ns),
                vec![Some(cufree_ns), Some(async_ns)],
            );
            s.rows
                .push(row.target(target(), Some(ns <= TARGET_NS), Unit::Ns.fmt(ns)));
        }
        s.notes.push(format!(
            "medians of {ROUNDS} rounds, each call under a kernel of its own with {} of other memory written just before it (min–max): free {}, free + trim {}, cuMemFree {}, cuMemFreeAsync {}",
            crate::fmt_bytes(COLD_BYTES as u64),
            spread(&t.free),
            spread(&t.trim),
            spread(&t.cufree),
            spread(&t.free_async)
        ));
        s.notes.push(format!(
            "gpu-arena's free timed right after the 20 ms sleep instead (the core waking, every cache cold): {}",
            spread(&t.woken)
        ));
        s.notes.push(format!(
            "the kernel was still running after each gpu-arena and cuMemFreeAsync free: {}; after a cuMemFree returned: {}",
            if running { "yes" } else { "NO (figures not meaningful)" },
            if cufree_running { "yes" } else { "no (cuMemFree waited for it)" }
        ));
        s.notes.push(format!(
            "trim gave back {} while the kernel ran (last round)",
            crate::fmt_bytes(given)
        ));
        Ok(s)
    }
}
