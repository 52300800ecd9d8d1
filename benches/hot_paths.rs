//! Criterion benchmarks of gpu-arena's hot paths, with the system allocator
//! and `bumpalo` beside them where they compare:
//!
//! - `slab`: alloc+free pair of 64 B, 256 B, 4 KiB;
//! - `large`: alloc+free pair of 64 KiB, 1 MiB;
//! - `scratch`: 1000 bump allocations of 8–256 B then `reset`, vs `bumpalo`;
//! - `grow`: a growable buffer resized 2 MiB → 256 MiB by doubling, then
//!   dropped: `warm` reuses the pages the keep-alive kept from the previous
//!   iteration (no driver call); `cold` trims after each drop, so every
//!   iteration commits and gives back 256 MiB.
//!
//! The backend is chosen as the CLI's `auto` does (CUDA where a GPU is found,
//! else host), so on the GPU machine these run on CUDA. Short measurement
//! times keep `cargo bench` to a few minutes:
//! `cargo bench --bench hot_paths` (or `-- slab` for one group).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gpu_arena::driver::{Driver, Select, SystemDriver};
use gpu_arena::{Arena, ArenaConfig, GrowBuffer, Kind, Scratch, SharedArena};

fn driver() -> SystemDriver {
    SystemDriver::open(Select::Auto, 0, |n| eprintln!("{n}")).expect("a backend opens")
}

/// A kind the CPU may touch (for the scratch group's `alloc_layout`).
fn host_kind(d: &SystemDriver) -> Kind {
    if d.capabilities().cpu_reads_device_memory {
        Kind::Device(0)
    } else {
        Kind::PinnedHost
    }
}

fn pairs(c: &mut Criterion, group: &str, sizes: &[u64]) {
    let mut g = c.benchmark_group(group);
    for &size in sizes {
        // A fresh arena per size, as `gpu-arena bench` does.
        let mut arena =
            Arena::new(driver(), Kind::Device(0), ArenaConfig::default()).expect("arena");
        g.bench_with_input(BenchmarkId::new("gpu-arena", size), &size, |b, &size| {
            b.iter(|| {
                let p = arena.alloc(size, 256).expect("alloc");
                arena.free(black_box(p)).expect("free");
            })
        });
        let layout = Layout::from_size_align(size as usize, 16).expect("layout");
        g.bench_with_input(
            BenchmarkId::new("system-malloc", size),
            &layout,
            |b, &layout| {
                b.iter(|| {
                    // SAFETY: nonzero size; freed with the same layout below.
                    let p = unsafe { System.alloc(layout) };
                    assert!(!p.is_null());
                    // SAFETY: allocated just above with this layout.
                    unsafe { System.dealloc(black_box(p), layout) };
                })
            },
        );
    }
    g.finish();
}

fn slab(c: &mut Criterion) {
    pairs(c, "slab", &[64, 256, 4096]);
}

fn large(c: &mut Criterion) {
    pairs(c, "large", &[64 << 10, 1 << 20]);
}

/// 1000 layouts of 8–256 B, align 8 (xorshift, fixed seed).
fn layouts() -> Vec<Layout> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            Layout::from_size_align(8 + (x % 249) as usize, 8).expect("layout")
        })
        .collect()
}

fn scratch(c: &mut Criterion) {
    let ls = layouts();
    let mut g = c.benchmark_group("scratch");
    g.throughput(Throughput::Elements(ls.len() as u64));
    let d = driver();
    let kind = host_kind(&d);
    let shared = SharedArena::new(d, kind, ArenaConfig::default()).expect("arena");
    let mut s = Scratch::with_capacity(&shared, 4 << 20).expect("scratch");
    g.bench_function("gpu-arena", |b| {
        b.iter(|| {
            for &l in &ls {
                black_box(s.alloc_layout(l));
            }
            s.reset();
        })
    });
    let mut bump = bumpalo::Bump::with_capacity(4 << 20);
    g.bench_function("bumpalo", |b| {
        b.iter(|| {
            for &l in &ls {
                black_box(bump.alloc_layout(l));
            }
            bump.reset();
        })
    });
    g.finish();
}

fn grow(c: &mut Criterion) {
    let mut g = c.benchmark_group("grow");
    let shared =
        SharedArena::new(driver(), Kind::Device(0), ArenaConfig::default()).expect("arena");
    let steps = || {
        let mut buf = GrowBuffer::with_max(&shared, 256 << 20).expect("buffer");
        let mut len = 2 << 20;
        while len <= 256 << 20 {
            buf.resize(len).expect("resize");
            len *= 2;
        }
        black_box(buf.as_ptr());
    };
    g.bench_function("warm/2MiB-to-256MiB", |b| b.iter(steps));
    g.bench_function("cold/2MiB-to-256MiB", |b| {
        b.iter(|| {
            steps();
            shared.trim();
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = slab, large, scratch, grow
}
criterion_main!(hot_paths);
