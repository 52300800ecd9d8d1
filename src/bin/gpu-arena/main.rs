//! `gpu-arena`: inspect, benchmark and picture the gpu-arena allocator.
//!
//! ```text
//! gpu-arena [--backend auto|host|cuda|hip] [--device N] info [--json]
//! gpu-arena bench [--quick] [--json | --markdown] [--only pairs,threads,commit,kernel,growth,scratch,sleep]
//! gpu-arena replay TRACE... [--json]
//! gpu-arena map [--trace FILE [--every N] [--at end|peak]] [--html] [-o FILE]
//! gpu-arena soak [--seconds N] [--threads 16] [--streams 4] [--limit SIZE] [--json]
//! gpu-arena pressure [--rounds 2] [--weights SIZE] [--kv-cache SIZE] [--json-out FILE]
//! ```
//!
//! `info`, `bench`, `soak` and `pressure` default to `--backend auto` (CUDA when a GPU is found,
//! else the host backend); `replay` and `map` default to the host backend so
//! their figures do not depend on the machine. The backend chosen is said in
//! one line on stderr; machine output (`--json`, SVG on stdout) stays on
//! stdout.

mod bench;
mod crash;
#[cfg(feature = "cuda")]
mod cuda;
mod info;
mod map;
mod pressure;
mod replay;
mod soak;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use gpu_arena::driver::{Driver, Select, SystemDriver};

/// Errors of the CLI: any error, printed with its message.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(
    name = "gpu-arena",
    version,
    about = "Inspect, benchmark and picture the gpu-arena allocator"
)]
struct Cli {
    /// Backend: auto = CUDA when a GPU is found, else host (default for
    /// info and bench); replay and map default to host.
    #[arg(long, value_enum, global = true)]
    backend: Option<BackendArg>,
    /// Device ordinal.
    #[arg(long, default_value_t = 0, global = true)]
    device: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Backend, devices, granularity, memory, the reservation an arena gets,
    /// and the configuration in force.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Measure gpu-arena against its anchors, all in one run.
    Bench(bench::Args),
    /// Replay allocation traces (gzip'd JSON lines) through an arena.
    Replay(replay::Args),
    /// Draw an arena as SVG: a snapshot, or a trace's replay over time.
    Map(map::Args),
    /// Many threads and streams on a global arena for a while, under a
    /// limit, faults and sleep/wake: fails on any lost byte or handle.
    Soak(soak::Args),
    /// Another process needs most of the device: this one gives its memory
    /// back while its kernels run, and wakes with identical data.
    Pressure(pressure::Args),
}

/// The `--backend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// CUDA when a GPU is found, else host.
    Auto,
    /// The host backend (memfd + mmap).
    Host,
    /// The CUDA backend (error where unusable).
    Cuda,
    /// The HIP backend (error where unusable or not built).
    Hip,
}

impl BackendArg {
    /// The value as typed on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            BackendArg::Auto => "auto",
            BackendArg::Host => "host",
            BackendArg::Cuda => "cuda",
            BackendArg::Hip => "hip",
        }
    }
}

/// Opens backends: the first call resolves `auto` and prints the one-line
/// note; later calls open the same backend again (fresh driver instances
/// for fresh arenas).
pub struct Backends {
    select: Select,
    device: u32,
    /// The line said on stderr when the backend was chosen.
    pub note: String,
}

impl Backends {
    /// Opens `arg` on `device` once, saying which backend was chosen and why.
    pub fn open(arg: BackendArg, device: u32) -> AnyResult<(Self, SystemDriver)> {
        let select = match arg {
            BackendArg::Auto => Select::Auto,
            BackendArg::Host => Select::Host,
            BackendArg::Cuda => Select::Cuda,
            BackendArg::Hip => Select::Hip,
        };
        let mut notes = Vec::new();
        let driver = SystemDriver::open(select, device, |n| notes.push(n.to_string()))
            .map_err(|e| format!("cannot open the {} backend: {e}", arg.name()))?;
        let backend = driver.capabilities().backend;
        if notes.is_empty() {
            notes.push(format!("gpu-arena: using the {backend} backend"));
        }
        let note = notes
            .iter()
            .map(|n| {
                n.trim_start_matches("gpu-arena: ")
                    .trim_end_matches("; trying the next backend")
            })
            .collect::<Vec<_>>()
            .join("; ");
        let note = format!("gpu-arena: {note}");
        eprintln!("{note}");
        let resolved = match driver.backend() {
            #[cfg(feature = "cuda")]
            SystemDriver::Cuda(_) => Select::Cuda,
            #[cfg(feature = "hip")]
            SystemDriver::Hip(_) => Select::Hip,
            _ => Select::Host,
        };
        Ok((
            Backends {
                select: resolved,
                device,
                note,
            },
            driver,
        ))
    }

    /// Another driver instance of the backend chosen.
    pub fn driver(&self) -> AnyResult<SystemDriver> {
        Ok(SystemDriver::open(self.select, self.device, |_| {})?)
    }

    /// The backend selection in force (for arenas that open their own driver).
    pub fn select(&self) -> Select {
        self.select
    }
}

/// The next value of a xorshift64 generator (fixed seeds make the
/// benchmark and demo workloads the same on every run).
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Locks `m`, taking the guard of a poisoned lock as well (a thread that
/// panicked is reported as a failure; the others go on).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `1.5 GiB`, `64 MiB`, `512 B`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || (v.fract() == 0.0 && v < 1e4) {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration in nanoseconds: `21.4 ns`, `1.20 µs`, `85.1 µs`, `496 ms`, `1.20 s`.
pub fn fmt_ns(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    if v < 10.0 {
        format!("{v:.2} {unit}")
    } else if v < 100.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

fn main() -> ExitCode {
    crash::install();
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Info { json } => {
            info::run(cli.backend.unwrap_or(BackendArg::Auto), cli.device, json)
        }
        Command::Bench(args) => {
            bench::run(cli.backend.unwrap_or(BackendArg::Auto), cli.device, &args)
        }
        Command::Replay(args) => {
            replay::run(cli.backend.unwrap_or(BackendArg::Host), cli.device, &args)
        }
        Command::Map(args) => map::run(cli.backend.unwrap_or(BackendArg::Host), cli.device, &args),
        Command::Soak(args) => {
            soak::run(cli.backend.unwrap_or(BackendArg::Auto), cli.device, &args)
        }
        Command::Pressure(args) => {
            pressure::run(cli.backend.unwrap_or(BackendArg::Auto), cli.device, &args)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu-arena: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(64 << 20), "64 MiB");
        assert_eq!(fmt_bytes(3 << 29), "1.5 GiB");
        assert_eq!(fmt_ns(21.37), "21.4 ns");
        assert_eq!(fmt_ns(1200.0), "1.20 µs");
        assert_eq!(fmt_ns(496e6), "496 ms");
    }
}
