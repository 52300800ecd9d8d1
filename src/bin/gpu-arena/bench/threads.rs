//! b. thread scaling: 1/2/4/8/16 threads each allocating and freeing 256 B
//! in a loop for a fixed time, through a global-style arena (per-thread
//! caches, one shard per thread) and, for comparison, through one
//! [`SharedArena`] (a single mutex); million pairs per second over all threads. Anchors: the
//! system allocator, on CUDA the stream-ordered pool (one stream per
//! thread), and PyTorch's caching allocator where `--torch-anchor` loads it
//! (every thread on the legacy default stream, as gpu-arena's). Fixed figures of PyTorch's allocator and `cudaMallocAsync` from
//! an earlier run on an H100 are printed apart ([`REF_SOURCE`]).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use gpu_arena::driver::Stream;
use gpu_arena::global::{GlobalArena, GlobalConfig};
use gpu_arena::{ArenaConfig, Kind, SharedArena};

use super::{Anchor, Ctx, References, Row, Section, SectionId, Unit, fmt_ratio, system_pair};
use crate::AnyResult;

const THREADS: [usize; 5] = [1, 2, 4, 8, 16];
const SIZE: u64 = 256;
/// Target: 16 threads give at least this many times the pairs of one.
const TARGET_SCALING: f64 = 12.0;
/// Where the fixed reference figures come from.
const REF_SOURCE: &str = "alloc+free pairs of 256 B at 1, 4 and 16 threads through cudaMallocAsync and \
    through PyTorch's caching allocator, measured on an H100 machine (CUDA 13) in an earlier run, \
    outside this binary, and given to the project with this section's target";
/// `cudaMallocAsync` and PyTorch, M pairs/s at 1, 4 and 16 threads.
const REF_POOL: [(usize, f64); 3] = [(1, 0.30), (4, 0.35), (16, 0.28)];
const REF_TORCH: [(usize, f64); 3] = [(1, 1.83), (4, 0.31), (16, 0.25)];

/// Million pairs per second over `threads` threads, each running `pair` for
/// `dur` on its own state from `init` (made before the common start),
/// finished by `fini` (timed: it waits for queued work).
fn scaled<S>(
    threads: usize,
    dur: Duration,
    init: impl Fn() -> AnyResult<S> + Sync,
    pair: impl Fn(&mut S) -> AnyResult<()> + Sync,
    fini: impl Fn(S) -> AnyResult<()> + Sync,
) -> AnyResult<f64> {
    let barrier = Barrier::new(threads + 1);
    let (t0, results) = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                sc.spawn(|| -> Result<(u64, Instant), String> {
                    let st = init();
                    barrier.wait();
                    let mut st = st.map_err(|e| e.to_string())?;
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < dur {
                        for _ in 0..64 {
                            pair(&mut st).map_err(|e| e.to_string())?;
                        }
                        n += 64;
                    }
                    fini(st).map_err(|e| e.to_string())?;
                    Ok((n, Instant::now()))
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a benchmark thread panicked".into()))
            })
            .collect();
        (t0, results)
    });
    let (mut pairs, mut end) = (0u64, t0);
    for r in results {
        let (n, e) = r?;
        pairs += n;
        end = end.max(e);
    }
    Ok(pairs as f64 / (end - t0).as_secs_f64() / 1e6)
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let mut anchors = vec![
        Anchor::measured("one mutex (SharedArena)"),
        Anchor::measured("System malloc"),
    ];
    if ctx.is_cuda() {
        anchors.push(Anchor::measured("cuMemAllocAsync pool"));
    }
    anchors.extend(ctx.torch_column());
    let mut s = Section::new(
        SectionId::Threads,
        format!("b. thread scaling (alloc+free pairs of {SIZE} B, M pairs/s over all threads)"),
        anchors,
    );
    let dur = if ctx.quick {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(300)
    };
    let pb = ctx.progress(SectionId::Threads, THREADS.len() as u64);
    let shared = SharedArena::new(
        ctx.backends.driver()?,
        Kind::Device(ctx.device),
        ArenaConfig::default(),
    )?;
    let global: &'static GlobalArena = GlobalArena::leak(
        ctx.device,
        GlobalConfig {
            backend: ctx.backends.select(),
            shards: 16,
            thread_cache: 1 << 20,
            ..GlobalConfig::default()
        },
    )?;
    let layout = std::alloc::Layout::from_size_align(SIZE as usize, 16)?;
    let mut one = None;
    for threads in THREADS {
        pb.set_message(format!("{threads} threads"));
        let ours = scaled(
            threads,
            dur,
            || Ok(()),
            |_| {
                let p = global.alloc(SIZE, 256, Stream::DEFAULT)?;
                global.free(black_box(p), Some(SIZE), Stream::DEFAULT)?;
                Ok(())
            },
            |_| Ok(()),
        )?;
        let mutex = scaled(
            threads,
            dur,
            || Ok(()),
            |_| {
                let p = shared.alloc(SIZE, 256, Stream::DEFAULT)?;
                shared.free(black_box(p), Stream::DEFAULT)?;
                Ok(())
            },
            |_| Ok(()),
        )?;
        let system = scaled(threads, dur, || Ok(()), |_| system_pair(layout), |_| Ok(()))?;
        // The CUDA pool's column is pushed on CUDA builds only.
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let mut anchors = vec![Some(mutex), Some(system)];
        #[cfg(feature = "cuda")]
        if let Some(cu) = ctx.cu {
            use gpu_arena::driver::Driver;
            let main = ctx.main;
            anchors.push(Some(scaled(
                threads,
                dur,
                || {
                    cu.make_current()?;
                    Ok(main.create_stream()?)
                },
                |stream| {
                    let p = cu.alloc_async(SIZE as usize, *stream)?;
                    cu.free_async(black_box(p), *stream)
                },
                |stream| {
                    cu.sync(stream)?;
                    // SAFETY: the stream is idle and not used again.
                    unsafe { main.destroy_stream(stream) }?;
                    Ok(())
                },
            )?));
        }
        if let Some(t) = &ctx.torch {
            anchors.push(Some(scaled(
                threads,
                dur,
                || t.enter(),
                |_| t.pair(SIZE as usize),
                |_| Ok(()),
            )?));
        }
        let base = *one.get_or_insert(ours);
        let scaling = ours / base;
        let row = Row::new(
            format!("{threads} thread{}", if threads == 1 { "" } else { "s" }),
            Unit::Mpairs,
            Some(ours),
            anchors,
        );
        let check = format!("{} vs 1 thread", fmt_ratio(scaling));
        s.rows.push(if threads == 16 {
            row.target(
                format!("≥ {TARGET_SCALING}x vs 1 thread"),
                Some(scaling >= TARGET_SCALING),
                check,
            )
        } else {
            row.target("—", None, check)
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    s.notes.push(format!(
        "gpu-arena: the global arena (per-thread caches, 16 shards, a thread allocates from its own shard and frees to the owner); one mutex: a single SharedArena shared by all threads; default stream; {} per case; this machine has {cpus} CPUs",
        crate::fmt_ns(dur.as_nanos() as f64)
    ));
    if ctx.is_cuda() {
        s.notes.push(
            "cuMemAllocAsync pool: default pool, release threshold u64::MAX, one stream per thread, synchronized at the end (timed)".into(),
        );
    }
    s.notes.extend(ctx.torch_note());
    s.references = Some(References {
        source: REF_SOURCE.into(),
        unit: Unit::Mpairs,
        columns: vec!["cudaMallocAsync".into(), "PyTorch".into()],
        rows: REF_POOL
            .iter()
            .zip(REF_TORCH)
            .map(|(&(threads, pool), (_, torch))| {
                (
                    format!("{threads} thread{}", if threads == 1 { "" } else { "s" }),
                    vec![Some(pool), Some(torch)],
                )
            })
            .collect(),
    });
    Ok(s)
}
