//! What the committed bytes hold at an arena's peak: replays a trace (or a
//! part of it) on the host backend and, at the moment of the highest
//! committed bytes, prints how the committed pages split into full pages,
//! partly used ones (and what lies on those: large blocks, slab objects,
//! and the rest of their slab spans) and empty ones.
//!
//! `cargo run --release --example peak_anatomy -- TRACE [all|work|weights]`
//!
//! `work` leaves out the blocks that live through the trace, as the default
//! tag of an engine that keeps its weights in a tag of their own sees it;
//! `weights` keeps only those, in an arena laid out as the global arenas
//! lay out a tag's (`bulk_streak` 0). `PRELUDE=M` allocates M MiB first,
//! never freed (where the work starts against the pages); `RUN_ON=N` runs a
//! recorded trace on to N repetitions.
use gpu_arena::arena::{Arena, ArenaConfig, Kind};
use gpu_arena::driver::{HostDriver, Stream};
use gpu_arena::policy::Policy;
use gpu_arena::replay::Part;
use gpu_arena::stats::PageStateReport;

const MIB: f64 = 1048576.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: peak_anatomy TRACE [all|work|weights]")?;
    let part = match args.next().as_deref() {
        Some("all") => Part::All,
        Some("work") | None => Part::Work,
        Some("weights") => Part::Persistent,
        Some(_) => return Err("the part is all, work or weights".into()),
    };
    let (mut events, mut marks) = gpu_arena::replay::read_trace_marked(path.as_ref())?;
    if let Some(n) = std::env::var("RUN_ON").ok().and_then(|n| n.parse().ok()) {
        (events, marks) = gpu_arena::replay::run_on(&events, &marks, n).ok_or("RUN_ON")?;
    }
    let (events, _) = gpu_arena::replay::select(&events, &marks, part);
    let mut config = ArenaConfig::default();
    if part == Part::Persistent {
        config.commit.bulk_streak = 0;
    }
    let mut arena = Arena::new(HostDriver::new()?, Kind::Device(0), config)?;
    if let Some(m) = std::env::var("PRELUDE")
        .ok()
        .and_then(|m| m.parse::<f64>().ok())
    {
        let bytes = (m * MIB) as u64 / 512 * 512;
        if bytes > 0 {
            arena.alloc_on(bytes, 512, Stream::DEFAULT)?;
        }
    }
    let mut best = 0u64;
    let mut at_best = None;
    let r = gpu_arena::replay::replay_observed(&mut arena, &events, 1, |done, arena| {
        let s = arena.stats();
        if s.committed > best {
            best = s.committed;
            at_best = Some((done, s, arena.snapshot()));
        }
    })?;
    let s = r.stats;
    println!(
        "{path} ({part:?}): peak committed {:.1} MiB, peak live {:.1} MiB (requested {:.1}), ratio {:.4}",
        s.peak_committed as f64 / MIB,
        s.peak_live as f64 / MIB,
        r.peak_requested as f64 / MIB,
        s.peak_ratio()
    );
    let (done, s, snap) = at_best.ok_or("nothing committed")?;
    let page = arena.page();
    let (mut empty, mut partial, mut full, mut tails) = (0, 0, 0, 0u64);
    for p in &snap.pages {
        match p.state {
            PageStateReport::Pending => empty += 1,
            PageStateReport::Live if p.live == page => full += 1,
            PageStateReport::Live => {
                partial += 1;
                tails += page - p.live;
            }
            PageStateReport::Free => {}
        }
    }
    println!(
        "after {done} events: committed {:.1} MiB, live {:.1} MiB ({:.1} below the peak), \
         pages: {full} full, {partial} partly used ({:.2} MiB unused), {empty} mapped without live bytes \
         (idle mappings, cached stitched ranges); pending_decommit {:.1} MiB, handles {}, mappings {}",
        s.committed as f64 / MIB,
        s.live as f64 / MIB,
        (s.peak_live - s.live) as f64 / MIB,
        tails as f64 / MIB,
        s.pending_decommit as f64 / MIB,
        s.handles,
        s.mappings
    );
    for r in &snap.regions {
        println!(
            "  region {}: from page {}, {} MiB, {} MiB used",
            r.name,
            r.offset / page,
            r.size >> 20,
            r.used >> 20
        );
    }
    // Partly used pages by region: the blocks region's are shared by
    // neighbours, a stitched range's are the last page of its block.
    for r in &snap.regions {
        let (lo, hi) = (r.offset / page, (r.offset + r.size) / page);
        let (n, unused) = snap
            .pages
            .iter()
            .filter(|p| matches!(p.state, PageStateReport::Live) && p.live < page)
            .filter(|p| (lo..hi).contains(&p.index))
            .fold((0, 0), |(n, u), p| (n + 1, u + page - p.live));
        println!(
            "  partly used in {}: {n} pages, {:.2} MiB unused",
            r.name,
            unused as f64 / MIB
        );
    }
    // Partly used pages: what lies on them.
    let mut blocks = snap.blocks.clone();
    blocks.sort_by_key(|b| b.offset);
    for p in &snap.pages {
        if !matches!(p.state, PageStateReport::Live) || p.live == page {
            continue;
        }
        let (lo, hi) = (p.index * page, (p.index + 1) * page);
        let on: Vec<_> = blocks
            .iter()
            .filter(|b| b.offset < hi && b.offset + b.size > lo)
            .collect();
        let (mut large, mut small) = (0u64, 0u64);
        for b in &on {
            let bytes = (b.offset + b.size).min(hi) - b.offset.max(lo);
            match b.policy {
                Policy::Slab => small += bytes,
                _ => large += bytes,
            }
        }
        let shown: Vec<String> = on
            .iter()
            .take(8)
            .map(|b| {
                let at = (b.offset as i64 - lo as i64) >> 10;
                format!("{:?} {} KiB at {at} KiB", b.policy, b.size >> 10)
            })
            .collect();
        println!(
            "  page {}: {} KiB live: large blocks {} KiB, slab objects {} KiB, the rest of slab spans {} KiB; {} blocks: {}{}",
            p.index,
            p.live >> 10,
            large >> 10,
            small >> 10,
            p.live.saturating_sub(large + small) >> 10,
            on.len(),
            shown.join(", "),
            if on.len() > 8 { ", …" } else { "" }
        );
    }
    Ok(())
}
