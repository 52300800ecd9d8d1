//! f. scratch arena vs `bumpalo::Bump` on host-visible memory: rounds of
//! many small allocations (8–256 B, align 8, the same pseudo-random sizes on
//! both sides) followed by a reset; nanoseconds per allocation (the reset
//! included), median over rounds after one warm-up round. Both are sized
//! up front so no round grows them.

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

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let mut s = Section::new(
        SectionId::Scratch,
        "f. scratch arena vs bumpalo (time per allocation, reset included)",
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
        s.rows
            .push(Row::new("small allocs + reset", Unit::Ns, None, vec![None]));
        s.notes
            .push("n/a: this backend has no host-visible memory".into());
        return Ok(s);
    };
    let layouts = sizes(n);
    let total: usize = layouts.iter().map(|l| l.size().next_multiple_of(8)).sum();
    let capacity = (total as u64 * 2).next_power_of_two();
    let pb = ctx.progress(SectionId::Scratch, 2 * (rounds as u64 + 1));

    let shared = SharedArena::new(ctx.backends.driver()?, kind, ArenaConfig::default())?;
    let mut scratch = Scratch::with_capacity(&shared, capacity as usize)?;
    let mut ours = Vec::new();
    pb.set_message("gpu-arena");
    for round in 0..=rounds {
        let t = Instant::now();
        for &l in &layouts {
            black_box(scratch.alloc_layout(l));
        }
        scratch.reset();
        if round > 0 {
            ours.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        pb.inc(1);
    }
    drop(scratch);

    let mut bump = bumpalo::Bump::with_capacity(capacity as usize);
    let mut theirs = Vec::new();
    pb.set_message("bumpalo");
    for round in 0..=rounds {
        let t = Instant::now();
        for &l in &layouts {
            black_box(bump.alloc_layout(l));
        }
        bump.reset();
        if round > 0 {
            theirs.push(t.elapsed().as_nanos() as f64 / n as f64);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (ours, theirs) = (median(ours), median(theirs));
    let ratio = theirs / ours;
    s.rows.push(
        Row::new(
            format!(
                "{} allocs of 8–256 B + reset",
                if n >= 1_000_000 {
                    format!("{}M", n / 1_000_000)
                } else {
                    format!("{}k", n / 1000)
                }
            ),
            Unit::Ns,
            Some(ours),
            vec![Some(theirs)],
        )
        .target(
            "no slower than bumpalo",
            Some(ratio >= 1.0),
            format!("{} bumpalo's speed", fmt_ratio(ratio)),
        ),
    );
    s.notes.push(format!(
        "{kind:?} memory of the {} backend; Scratch::alloc_layout vs Bump::alloc_layout; median of {rounds} rounds after a warm-up round; capacity {} kept committed across resets on both sides",
        ctx.caps.backend,
        crate::fmt_bytes(capacity)
    ));
    Ok(s)
}
