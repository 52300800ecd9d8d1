//! Replays the shared traces with an emulated GPU that lags behind the CPU:
//! the host backend holds the stream, so fences recorded at frees stay
//! pending, and completes everything every LAG events (0: no lag, fences
//! complete at once as on the plain host backend). Each trace runs REPEAT
//! times in one arena (the weights once), as `torch_workloads.py --repeat`
//! does; every repetition prints its peak committed / peak live and its VMM
//! driver calls.
//!
//! `cargo run --release --example replay_lag -- LAG [REPEAT] TRACE...`

use gpu_arena::driver::{HostDriver, Stream};
use gpu_arena::replay::{Repeat, replay_repeated};
use gpu_arena::{Arena, ArenaConfig, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let lag: usize = args.remove(0).parse()?;
    let times = match args.first().map(|a| a.parse::<usize>()) {
        Some(Ok(n)) => {
            args.remove(0);
            n
        }
        _ => 1,
    };
    for path in &args {
        let events = gpu_arena::replay::read_trace(path.as_ref())?;
        let d = HostDriver::new()?;
        let mut cfg = ArenaConfig::default();
        // Experiments: MAXRUN (MiB), AHEAD (growth_ahead), STITCHMIN (KiB),
        // REPAIR (stitch_repair: 1).
        if let Ok(v) = std::env::var("MAXRUN") {
            cfg.commit.max_run = v.parse::<u64>()? << 20;
        }
        if let Ok(v) = std::env::var("AHEAD") {
            cfg.commit.growth_ahead = v.parse()?;
        }
        if let Ok(v) = std::env::var("RESERVATION") {
            cfg.reservation = v.parse::<u64>()? << 30;
        }
        if let Ok(v) = std::env::var("STITCHMIN") {
            cfg.commit.stitch_min = v.parse::<u64>()? << 10;
        }
        if let Ok(v) = std::env::var("REPAIR") {
            cfg.commit.stitch_repair = v == "1";
        }
        let mut arena = Arena::new(&d, Kind::Device(0), cfg)?;
        // Trace time, not wall time: nothing decays during a replay.
        arena.set_clock(gpu_arena::sync::Clock::manual());
        let reps = replay_repeated(
            &mut arena,
            &events,
            Repeat { times, lag },
            || d.hold(Stream::DEFAULT),
            || d.complete(Stream::DEFAULT),
        );
        let reps = reps?;
        let name = std::path::Path::new(path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        for (i, r) in reps.iter().enumerate() {
            println!(
                "lag {lag} {name} rep {}: peak committed / peak live {:.4}, VMM calls {} ({:.2} per 1000 allocs), allocs {}, {:.0} ns per alloc or free",
                i + 1,
                r.ratio,
                r.vmm_calls,
                r.vmm_calls as f64 * 1000.0 / r.allocs.max(1) as f64,
                r.allocs,
                r.seconds * 1e9 / r.events.max(1) as f64
            );
        }
        let s = arena.stats();
        println!(
            "lag {lag} {name}: whole run {:.4}, handles {}, mappings {}, stitched ranges {}",
            s.peak_ratio(),
            s.handles,
            s.mappings,
            s.stitched_ranges,
        );
    }
    Ok(())
}
