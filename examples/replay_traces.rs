//! Replays the shared transformer traces through a host-backend arena and
//! prints peak committed / peak live (PyTorch: 1.039 and 3.436 by default).
//!
//! `cargo run --release --example replay_traces -- ../shared/traces/*.trace.jsonl.gz`

use gpu_arena::driver::HostDriver;
use gpu_arena::{Arena, ArenaConfig, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let events = gpu_arena::replay::read_trace(path.as_ref())?;
        let mut arena = Arena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
        let r = gpu_arena::replay::replay(&mut arena, &events, |_| {})?;
        println!(
            "{path}: {} events, peak live {:.1} MiB, peak committed {:.1} MiB, ratio {:.4}, {:.2} M ops/s, driver calls {}",
            r.events,
            r.stats.peak_live as f64 / 1048576.0,
            r.stats.peak_committed as f64 / 1048576.0,
            r.ratio,
            r.ops_per_sec / 1e6,
            r.stats.driver_calls.total()
        );
    }
    Ok(())
}
