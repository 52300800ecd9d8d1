//! Replays the shared traces with an emulated GPU that lags behind the CPU:
//! the host backend holds the stream, so fences recorded at frees stay
//! pending, and completes everything every LAG events (0: no lag, fences
//! complete at once as on the plain host backend). Shows how much of the
//! peak committed / peak live ratio comes from empty pages waiting on queued
//! work (see docs/pytorch.md).
//!
//! `cargo run --release --example replay_lag -- LAG TRACE...`
//! (env `MAXRUN` in MiB, `FRAC` and `WAIT=1` set `max_run`,
//! `keep_alive_fraction` and `wait_for_reuse`)

use gpu_arena::driver::{HostDriver, Stream};
use gpu_arena::replay::Event;
use gpu_arena::{Arena, ArenaConfig, Kind};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let lag: usize = args[0].parse()?;
    for path in &args[1..] {
        let events = gpu_arena::replay::read_trace(path.as_ref())?;
        let d = HostDriver::new()?;
        let mut cfg = ArenaConfig::default();
        if let Ok(m) = std::env::var("MAXRUN") {
            cfg.commit.max_run = m.parse::<u64>()? << 20;
        }
        cfg.commit.wait_for_reuse = std::env::var("WAIT").is_ok_and(|v| v == "1");
        if let Ok(m) = std::env::var("FRAC") {
            cfg.commit.keep_alive_fraction = m.parse()?;
        }
        let mut arena = Arena::new(&d, Kind::Device(0), cfg)?;
        let mut live = std::collections::HashMap::new();
        if lag > 0 {
            d.hold(Stream::DEFAULT);
        }
        for (i, e) in events.iter().enumerate() {
            match *e {
                Event::Alloc { addr, size, .. } => {
                    let p = arena.alloc(size, 512)?;
                    live.insert(addr, p);
                }
                Event::Free { addr, .. } => {
                    arena.free(live.remove(&addr).unwrap())?;
                }
            }
            if lag > 0 && i % lag == lag - 1 {
                d.complete(Stream::DEFAULT);
                d.hold(Stream::DEFAULT);
            }
        }
        let s = arena.stats();
        let name = std::path::Path::new(path)
            .file_name()
            .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
        println!(
            "lag {lag} {name}: peak committed / peak live {:.4}, driver calls {}, creates {}",
            s.peak_ratio(),
            s.driver_calls.total(),
            s.driver_calls.create
        );
    }
    Ok(())
}
