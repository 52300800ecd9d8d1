//! A placement rule judged over many layouts of one trace rather than one.
//! What lies below a workload moves its layout against the 2 MiB pages, and
//! with it how tight it is and whether it settles (`docs/pytorch.md`,
//! "One trace, sixteen layouts"). This replays a trace on the host backend
//! after a block of M MiB, allocated first and never freed, for each M of
//! `PRELUDES` (MiB, comma separated; default 0): the spread over preludes
//! shows what a rule does in expectation, where one layout shows one draw.
//!
//! `PRELUDES=0,0.5,1 MODE=work cargo run --release --example layout_ensemble -- TRACE [RUN_ON]`
//!
//! - `MODE=all` (default) plays every block; `MODE=work` leaves out the blocks
//!   that live through the trace, as the default tag of an engine that keeps
//!   its weights in a tag of their own sees it; `MODE=weights` plays only
//!   those, laid out as the global arenas lay out a tag's arena
//!   ([`gpu_arena::replay::select`]).
//! - `RUN_ON=N` runs a recorded trace on to N repetitions
//!   ([`gpu_arena::replay::run_on`]); a trace without repetition marks is
//!   played `PLAYS` times (default 2; its persistent blocks allocated once).
//! - `CONF` takes `GPU_ARENA_CONF`'s syntax for the arena's settings;
//!   `VERBOSE=1` prints the driver calls and stitched-range counts after each
//!   repetition.
//!
//! Prints, per prelude: peak committed and peak live (MiB, the prelude
//! included), the excess in 2 MiB pages, their ratio, and the VMM calls per
//! 1,000 allocations of each repetition.
use gpu_arena::arena::{Arena, ArenaConfig, Kind};
use gpu_arena::driver::{HostDriver, Stream};
use gpu_arena::replay::{Event, Part};

const MIB: f64 = 1048576.0;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: layout_ensemble TRACE [RUN_ON]")?;
    let (mut events, mut marks) = gpu_arena::replay::read_trace_marked(path.as_ref())?;
    if let Some(n) = args.next() {
        (events, marks) = gpu_arena::replay::run_on(&events, &marks, n.parse()?)
            .ok_or("RUN_ON needs a trace whose last two repetitions are alike")?;
    }
    let part = match std::env::var("MODE").as_deref() {
        Ok("work") => Part::Work,
        Ok("weights") => Part::Persistent,
        Ok("all") | Err(_) => Part::All,
        Ok(_) => return Err("MODE is all, work or weights".into()),
    };
    let preludes: Vec<f64> = std::env::var("PRELUDES")
        .unwrap_or_else(|_| "0".into())
        .split(',')
        .map(|m| m.parse())
        .collect::<Result<_, _>>()?;
    let mut config = match std::env::var("CONF") {
        Ok(c) => gpu_arena::global::GlobalConfig::parse(&c)?.arena,
        Err(_) => ArenaConfig::default(),
    };
    if part == Part::Persistent {
        // As the global arenas lay out a tag's arenas (GlobalConfig's
        // `tag_bulk_streak`, 0 by default).
        config.commit.bulk_streak = 0;
    }
    // Each repetition's events: the recorded ones, else the trace twice
    // (the second time without the blocks the first left live).
    let (first, first_marks) = gpu_arena::replay::select(&events, &marks, part);
    let mut reps: Vec<&[Event]> = Vec::new();
    let mut from = 0;
    for &end in first_marks.iter().chain([&first.len()]) {
        if end > from || reps.is_empty() {
            reps.push(&first[from..end]);
        }
        from = end;
    }
    let (again, _) = gpu_arena::replay::select(&events, &[], Part::Work);
    if marks.is_empty() && part != Part::Persistent {
        let plays: usize = match std::env::var("PLAYS") {
            Ok(v) => v.parse()?,
            Err(_) => 2,
        };
        for _ in 1..plays.max(1) {
            reps.push(&again);
        }
    }
    for m in preludes {
        let mut arena = Arena::new(HostDriver::new()?, Kind::Device(0), config)?;
        let prelude = (m * MIB) as u64 / 512 * 512;
        if prelude > 0 {
            arena.alloc_on(prelude, 512, Stream::DEFAULT)?;
        }
        let mut live = std::collections::HashMap::new();
        let mut per_rep = Vec::new();
        for rep in &reps {
            let before = arena.stats();
            let (v0, a0) = (before.driver_calls.vmm(), before.allocs);
            for e in rep.iter() {
                match *e {
                    Event::Alloc { addr, size, .. } => {
                        live.insert(addr, arena.alloc_on(size.max(1), 512, Stream::DEFAULT)?);
                    }
                    Event::Free { addr, .. } => {
                        let p = live.remove(&addr).ok_or("free of unknown block")?;
                        arena.free_on(p, Stream::DEFAULT)?;
                    }
                }
            }
            let st = arena.stats();
            if std::env::var_os("VERBOSE").is_some() {
                eprintln!(
                    "  after repetition {}: allocations {}, {:?}, {:?}",
                    per_rep.len() + 1,
                    st.allocs,
                    st.driver_calls,
                    st.stitch
                );
            }
            let allocs = (st.allocs - a0).max(1);
            per_rep.push(format!(
                "{:.1}",
                1000.0 * (st.driver_calls.vmm() - v0) as f64 / allocs as f64
            ));
        }
        let s = arena.stats();
        println!(
            "prelude {m}: peak committed {:.1} MiB, peak live {:.1} MiB, excess {:.2} pages, ratio {:.4}; VMM calls per 1000 by repetition {}",
            s.peak_committed as f64 / MIB,
            s.peak_live as f64 / MIB,
            (s.peak_committed - s.peak_live) as f64 / (2.0 * MIB),
            s.peak_ratio(),
            per_rep.join(" ")
        );
    }
    Ok(())
}
