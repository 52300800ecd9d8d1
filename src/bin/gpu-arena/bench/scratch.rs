//! f. scratch arena vs `bumpalo::Bump` on host-visible memory, the same
//! pseudo-random sizes (8–256 B, align 8) on both sides; nanoseconds per
//! allocation, median over rounds after one warm-up round:
//!
//! - small allocations + reset: both sized up front (`with_capacity`), so no
//!   round grows them; the reset is included;
//! - growth: a fresh arena per round (`Scratch::new` / `Bump::new`), no
//!   sizing, dropped at the end of the round: `Bump` adds chunks (doubling),
//!   `Scratch` commits ahead of its cursor in its one reservation. Creation,
//!   growth and drop are included.

use std::alloc::Layout;
use std::hint::black_box;
use std::time::Instant;

use gpu_arena::{ArenaConfig, Kind, Scratch, SharedArena};

use super::{Anchor, Ctx, Row, Section, SectionId, Unit, fmt_ratio, median};
use crate::AnyResult;

/// `n` sizes in 8..=256 (xorshift, fixed seed).
fn sizes(n: usize) -> Vec<Layout> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            let size = 8 + (crate::xorshift(&mut x) % 249) as usize;
            Layout::from_size_align(size, 8).unwrap_or(Layout::new::<u64>())
        })
        .collect()
}

fn count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1000)
    }
}

/// A row comparing two medians (ns per allocation), targeting "no slower".
fn row(case: String, ours: Vec<f64>, theirs: Vec<f64>) -> Row {
    let (ours, theirs) = (median(ours), median(theirs));
    let ratio = theirs / ours;
    Row::new(case, Unit::Ns, Some(ours), vec![Some(theirs)]).target(
        "no slower than bumpalo",
        Some(ratio >= 1.0),
        format!("{} bumpalo's speed", fmt_ratio(ratio)),
    )
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let mut s = Section::new(
        SectionId::Scratch,
        "f. scratch arena vs bumpalo (time per allocation)",
        vec![Anchor::measured("bumpalo::Bump")],
    );
    let (n, rounds) = if ctx.quick {
        (100_000, 3)
    } else {
        (1_000_000, 9)
    };
    // Host-visible memory: the host backend's device memory, else pinned host memory.
    let kind = if ctx.caps.cpu_reads_device_memory {
        Kind::Device(ctx.device)
    } else if ctx.caps.host_memory {
        Kind::PinnedHost
    } else {
        for case in ["small allocs + reset", "growth"] {
            s.rows.push(Row::new(case, Unit::Ns, None, vec![None]));
        }
        s.notes
            .push("n/a: this backend has no host-visible memory".into());
        return Ok(s);
    };
    let layouts = sizes(n);
    let total: usize = layouts.iter().map(|l| l.size().next_multiple_of(8)).sum();
    let capacity = (total as u64 * 2).next_power_of_two();
    let pb = ctx.progress(SectionId::Scratch, 4 * (rounds as u64 + 1));
    let shared = SharedArena::new(ctx.backends.driver()?, kind, ArenaConfig::default())?;
    let per_alloc = |t: Instant| t.elapsed().as_nanos() as f64 / n as f64;

    // Small allocations + reset, sized up front.
    let mut scratch = Scratch::with_capacity(&shared, capacity as usize)?;
    let mut ours = Vec::new();
    pb.set_message("gpu-arena, reset");
    for round in 0..=rounds {
        let t = Instant::now();
        for &l in &layouts {
            black_box(scratch.alloc_layout(l));
        }
        scratch.reset();
        if round > 0 {
            ours.push(per_alloc(t));
        }
        pb.inc(1);
    }
    drop(scratch);
    let mut bump = bumpalo::Bump::with_capacity(capacity as usize);
    let mut theirs = Vec::new();
    pb.set_message("bumpalo, reset");
    for round in 0..=rounds {
        let t = Instant::now();
        for &l in &layouts {
            black_box(bump.alloc_layout(l));
        }
        bump.reset();
        if round > 0 {
            theirs.push(per_alloc(t));
        }
        pb.inc(1);
    }
    drop(bump);
    s.rows.push(row(
        format!("{} allocs of 8–256 B + reset", count(n)),
        ours,
        theirs,
    ));

    // Growth: a fresh arena per round, grown from nothing, dropped.
    let mut ours = Vec::new();
    pb.set_message("gpu-arena, growth");
    for round in 0..=rounds {
        let t = Instant::now();
        let scratch = Scratch::new(&shared)?;
        for &l in &layouts {
            black_box(scratch.alloc_layout(l));
        }
        drop(black_box(scratch));
        if round > 0 {
            ours.push(per_alloc(t));
        }
        pb.inc(1);
    }
    let mut theirs = Vec::new();
    let mut chunks = 0;
    pb.set_message("bumpalo, growth");
    for round in 0..=rounds {
        let t = Instant::now();
        let mut bump = bumpalo::Bump::new();
        for &l in &layouts {
            black_box(bump.alloc_layout(l));
        }
        chunks = bump.iter_allocated_chunks().count();
        drop(black_box(bump));
        if round > 0 {
            theirs.push(per_alloc(t));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    s.rows.push(row(
        format!("growth: fresh arena, {} allocs, drop", count(n)),
        ours,
        theirs,
    ));
    s.notes.push(format!(
        "{kind:?} memory of the {} backend; Scratch::alloc_layout vs Bump::alloc_layout; median of {rounds} rounds after a warm-up round; reset row: capacity {} committed up front and kept across resets on both sides; growth row: {} allocated from nothing per round, bumpalo in {chunks} chunks, Scratch in its one reservation (the arena's keep-alive may keep pages from the previous round)",
        ctx.caps.backend,
        crate::fmt_bytes(capacity),
        crate::fmt_bytes(total as u64),
    ));
    Ok(s)
}
