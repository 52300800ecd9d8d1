//! `gpu-arena replay`: replays allocation traces (the format of
//! `shared/traces/README.md`) through an arena and reports peak committed /
//! peak live, time per operation and driver calls, beside PyTorch's figures
//! for the shared traces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpu_arena::driver::Driver;
use gpu_arena::replay::{Event, ReplayResult, read_trace, replay};
use gpu_arena::{Arena, ArenaConfig, Kind};
use indicatif::{ProgressBar, ProgressStyle};

use crate::table::Table;
use crate::{AnyResult, BackendArg, Backends, fmt_bytes};

/// `replay` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trace files (gzip'd or plain JSON lines).
    #[arg(required = true)]
    traces: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// PyTorch's peak reserved / peak allocated on a shared trace
/// (`shared/traces/README.md`, H100, torch 2.11).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Pytorch {
    /// Default caching allocator.
    pub default: f64,
    /// With `expandable_segments:True`.
    pub expandable: f64,
}

/// PyTorch's figures for a trace whose file name matches a shared one.
pub fn pytorch(path: &Path) -> Option<Pytorch> {
    let name = path.file_name()?.to_string_lossy();
    if name.contains("gpt2_generate") {
        Some(Pytorch {
            default: 1.039,
            expandable: 1.050,
        })
    } else if name.contains("bert_infer") {
        Some(Pytorch {
            default: 3.436,
            expandable: 1.211,
        })
    } else {
        None
    }
}

/// Reads a trace, with a spinner on stderr.
pub fn load(path: &Path) -> AnyResult<Vec<Event>> {
    let pb = ProgressBar::new_spinner();
    pb.set_message(format!("reading {}", path.display()));
    pb.enable_steady_tick(Duration::from_millis(100));
    let events = read_trace(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    pb.finish_and_clear();
    Ok(events?)
}

/// A progress bar over `events` events on stderr.
pub fn bar(events: usize, name: &str) -> ProgressBar {
    let pb = ProgressBar::new(events as u64);
    if let Ok(style) =
        ProgressStyle::with_template("replay [{bar:30}] {pos}/{len} events {elapsed} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(name.to_string());
    pb
}

#[derive(serde::Serialize)]
struct Replayed {
    trace: String,
    backend: String,
    pytorch: Option<Pytorch>,
    result: ReplayResult,
}

/// Runs `replay`.
pub fn run(backend: BackendArg, device: u32, args: &Args) -> AnyResult<()> {
    let (backends, first) = Backends::open(backend, device)?;
    let mut first = Some(first);
    let mut out = Vec::new();
    for path in &args.traces {
        let events = load(path)?;
        let driver = match first.take() {
            Some(d) => d,
            None => backends.driver()?,
        };
        let mut arena = Arena::new(driver, Kind::Device(device), ArenaConfig::default())?;
        let backend = arena.driver().capabilities().backend.name().to_string();
        let pb = bar(events.len(), &path.display().to_string());
        let result = replay(&mut arena, &events, |done| pb.set_position(done))
            .map_err(|e| format!("replay of {} failed: {e}", path.display()))?;
        pb.finish_and_clear();
        out.push(Replayed {
            trace: path.display().to_string(),
            backend,
            pytorch: pytorch(path),
            result,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = Table::new([
        "trace",
        "events",
        "peak live",
        "peak committed",
        "ratio",
        "PyTorch default",
        "PyTorch expandable",
        "ops/s",
        "driver calls",
    ]);
    for r in &out {
        let name = Path::new(&r.trace)
            .file_name()
            .map_or(r.trace.clone(), |n| n.to_string_lossy().into_owned());
        let py = |f: fn(&Pytorch) -> f64| {
            r.pytorch
                .as_ref()
                .map_or("—".to_string(), |p| format!("{:.3}", f(p)))
        };
        t.row([
            name,
            r.result.events.to_string(),
            fmt_bytes(r.result.stats.peak_live),
            fmt_bytes(r.result.stats.peak_committed),
            format!("{:.4}", r.result.ratio),
            py(|p| p.default),
            py(|p| p.expandable),
            format!("{:.2} M", r.result.ops_per_sec / 1e6),
            r.result.stats.driver_calls.total().to_string(),
        ]);
    }
    println!(
        "replay through a {} arena (default config)",
        out.first().map_or("", |r| r.backend.as_str())
    );
    print!("{}", t.render());
    println!(
        "ratio = peak committed / peak live (PyTorch: peak reserved / peak allocated, H100, shared/traces/README.md); lower is better"
    );
    Ok(())
}
