//! d. free while a kernel runs on another stream (CUDA only): a ~0.5 s
//! kernel (`Kernels::spin`) runs on stream A; a 64 MiB arena block last used
//! on stream B is freed (and, in a second row, also given back with `trim`:
//! unmap + release) → microseconds. Anchors: `cuMemFree_v2` in the same
//! situation (it waits for the device: ~the kernel's remaining time) and
//! `cuMemFreeAsync` on stream B.

use super::{Anchor, Ctx, Row, Section, SectionId, Unit};
use crate::AnyResult;

/// Target: a free during a running kernel returns within this.
const TARGET_NS: f64 = 10_000.0;
/// The block freed.
const BLOCK: u64 = 64 << 20;

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
        "d. free while a 0.5 s kernel runs on another stream (time for the free call to return)",
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

    use super::{BLOCK, TARGET_NS, cases, target};
    use crate::AnyResult;
    use crate::bench::{Ctx, Row, Section, SectionId, Unit};
    use crate::cuda::Cu;

    /// The kernel's duration.
    const SPIN_NS: u64 = 500_000_000;

    /// Launches the spin kernel on `a`, gives it time to start, runs `f`
    /// (timed) and reports whether the kernel was still running after it;
    /// then waits for the kernel (that fence only).
    fn during_kernel<T>(
        driver: &SystemDriver,
        a: Stream,
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
        let t = Instant::now();
        let r = f();
        let ns = t.elapsed().as_nanos() as f64;
        let running = !driver.is_complete(&fence)?;
        driver.wait(&fence)?;
        driver.drop_fence(fence);
        Ok((ns, running, r?))
    }

    pub fn run(ctx: &Ctx, cu: Cu, mut s: Section) -> AnyResult<Section> {
        let pb = ctx.progress(SectionId::Kernel, 5);
        let mut arena = Arena::new(
            ctx.backends.driver()?,
            Kind::Device(ctx.device),
            ArenaConfig::default(),
        )?;
        let a = arena.driver().create_stream()?;
        let b = arena.driver().create_stream()?;
        let mut running = true;
        // gpu-arena: free only, then free + trim.
        pb.set_message("gpu-arena free");
        let p = arena.alloc_on(BLOCK, 512, b)?;
        let (free_ns, r, ()) = during_kernel(ctx.main, a, || Ok(arena.free_on(p, b)?))?;
        running &= r;
        arena.trim();
        pb.inc(1);
        pb.set_message("gpu-arena free + trim");
        let p = arena.alloc_on(BLOCK, 512, b)?;
        let (trim_ns, r, given) = during_kernel(ctx.main, a, || {
            arena.free_on(p, b)?;
            Ok(arena.trim())
        })?;
        running &= r;
        pb.inc(1);
        // cuMemFree in the same situation.
        pb.set_message("cuMemFree");
        cu.make_current()?;
        let q = cu.mem_alloc(BLOCK as usize)?;
        let (cufree_ns, r, ()) = during_kernel(ctx.main, a, || cu.mem_free(q))?;
        let cufree_running = r;
        pb.inc(1);
        // cuMemFreeAsync on stream B.
        pb.set_message("cuMemFreeAsync");
        let q = cu.alloc_async(BLOCK as usize, b)?;
        cu.sync(b)?;
        let (async_ns, r, ()) = during_kernel(ctx.main, a, || cu.free_async(q, b))?;
        running &= r;
        cu.sync(b)?;
        pb.inc(1);
        for st in [a, b] {
            // SAFETY: both streams are idle (their work was waited on) and not used again.
            unsafe { arena.driver().destroy_stream(st) }?;
        }
        pb.finish_and_clear();
        for (case, trimmed) in cases() {
            let ns = if trimmed { trim_ns } else { free_ns };
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
            "the kernel was still running after each gpu-arena and cuMemFreeAsync free: {}; after cuMemFree returned: {}",
            if running { "yes" } else { "NO (figures not meaningful)" },
            if cufree_running { "yes" } else { "no (cuMemFree waited for it)" }
        ));
        s.notes.push(format!(
            "trim gave back {} while the kernel ran",
            crate::fmt_bytes(given)
        ));
        Ok(s)
    }
}
