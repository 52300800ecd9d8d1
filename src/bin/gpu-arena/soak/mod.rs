//! `gpu-arena soak`: many threads and streams on one global arena for
//! minutes, under a memory limit, faults and sleep/wake cycles, with
//! nothing lost.
//!
//! What runs, until `--seconds` have passed:
//! - `--threads` workers (16) share `--streams` streams (4): each keeps a
//!   current stream (and changes it now and then), allocates blocks of
//!   sizes drawn from the shared allocation traces, fills every block with
//!   a pattern of its own, and frees blocks three ways: on the stream that
//!   wrote them, on another stream (ordered after the write by an event,
//!   as PyTorch's `record_stream` does), or by handing them to another
//!   thread that frees them on its own stream. Every block is checked,
//!   every word, just before its free.
//! - the arena's limit (`--limit`) is below what the workers ask for
//!   together, so the out-of-memory ladder runs again and again; a worker
//!   that gets out-of-memory frees half of what it holds.
//! - a sleeper loads two tags, `weights` and `kv_cache`, puts them to
//!   sleep (offload and discard), checks that the asleep tags refuse
//!   allocations and frees, wakes them, and checks that the weights came
//!   back identical (the discarded cache is refilled and checked).
//! - a janitor trims the arena every half second.
//! - host backend only: a chaos thread keeps one fault pending on each
//!   driver call of the checked layer (create, map, set_access, unmap,
//!   release, record, wait, reserve), and emulated long-running kernels
//!   hold streams so that fences stay pending for tens of milliseconds.
//!
//! At the end every thread frees what it holds, the arena is trimmed and
//! torn down, and the run fails (exit status 1) on any corrupted word, any
//! unexpected error, any handle, mapping or reservation left, driver calls
//! that do not balance (creates = releases, bytes mapped = bytes unmapped,
//! reservations = frees of reservations), or, on CUDA, device memory not
//! back at its level before the arena (`cuMemGetInfo`, within
//! `--mem-tolerance`).

pub mod dev;
mod work;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpu_arena::driver::{CallCounts, Driver, SystemDriver};
use gpu_arena::global::config::parse_size;
use gpu_arena::global::{GlobalArena, GlobalConfig};
use gpu_arena::replay::{Event, read_trace};
use gpu_arena::{ArenaConfig, CommitConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::table::Table;
use crate::{AnyResult, BackendArg, Backends, fmt_bytes, lock};
use dev::Dev;
pub use work::Tally;

/// `soak` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long the workload runs, in seconds (teardown and checks follow).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Allocating threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Streams the threads share (each thread uses all of them).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Shards of the global arena (threads spread over them).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Most bytes committed on the device: below what the threads ask for
    /// together, so that the out-of-memory ladder runs [default: host
    /// 1GiB, CUDA a quarter of the device's memory].
    #[arg(long, value_parser = parse_size_arg)]
    limit: Option<u64>,
    /// Multiply the trace sizes by this [default: host 1, CUDA 8].
    #[arg(long)]
    scale: Option<u64>,
    /// Allocation traces to draw sizes from [default: the shared traces,
    /// found beside the repository, its worktree or the binary].
    #[arg(long)]
    traces: Vec<PathBuf>,
    /// One fault pending on each checked driver call, firing within this
    /// many calls of it (0: no faults) [default: host 64, CUDA 0].
    #[arg(long)]
    fault_every: Option<u64>,
    /// The driver calls that get faults [default: all of them].
    #[arg(long, value_enum, value_delimiter = ',')]
    fault_ops: Vec<FaultOp>,
    /// Idle physical memory decays back to the driver over this many ms.
    #[arg(long, default_value_t = 1000)]
    decay_ms: u64,
    /// Device memory that may stay in use after teardown (CUDA: the
    /// context's own allocations, such as page tables), in bytes.
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    mem_tolerance: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as JSON (on stdout) instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Driver calls that `--fault-ops` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultOp {
    /// `create`
    Create,
    /// `map`
    Map,
    /// `set_access`
    SetAccess,
    /// `unmap`
    Unmap,
    /// `release`
    Release,
    /// `record` (fences)
    Record,
    /// `wait` (one fence)
    Wait,
    /// `reserve`
    Reserve,
}

impl FaultOp {
    /// Every one, in the order above.
    pub const ALL: [FaultOp; 8] = [
        FaultOp::Create,
        FaultOp::Map,
        FaultOp::SetAccess,
        FaultOp::Unmap,
        FaultOp::Release,
        FaultOp::Record,
        FaultOp::Wait,
        FaultOp::Reserve,
    ];

    /// The checked layer's op.
    pub const fn op(self) -> gpu_arena::driver::Op {
        use gpu_arena::driver::Op;
        match self {
            FaultOp::Create => Op::Create,
            FaultOp::Map => Op::Map,
            FaultOp::SetAccess => Op::SetAccess,
            FaultOp::Unmap => Op::Unmap,
            FaultOp::Release => Op::Release,
            FaultOp::Record => Op::Record,
            FaultOp::Wait => Op::Wait,
            FaultOp::Reserve => Op::Reserve,
        }
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Where the shared traces are looked for when `--traces` names none:
/// beside the repository (`../shared`), beside a worktree
/// (`../../shared`), and where `gpu-pack --extra ../shared/traces` puts
/// them (`.gpu/extra/traces`).
fn default_traces() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            roots.push(d.to_path_buf());
        }
    }
    let rel = [
        "../shared/traces",
        "../../shared/traces",
        ".gpu/extra/traces",
        "../extra/traces",
        "../../../shared/traces",
    ];
    for root in roots {
        for r in rel {
            let d = root.join(r);
            let found: Vec<PathBuf> = ["bert_infer.trace.jsonl.gz", "gpt2_generate.trace.jsonl.gz"]
                .iter()
                .map(|n| d.join(n))
                .filter(|p| p.exists())
                .collect();
            if !found.is_empty() {
                return found;
            }
        }
    }
    Vec::new()
}

/// The allocation sizes of `traces`, rounded up to a multiple of 4 bytes.
fn trace_sizes(traces: &[PathBuf]) -> AnyResult<Vec<u64>> {
    let mut sizes = Vec::new();
    for t in traces {
        let events = read_trace(t).map_err(|e| format!("cannot read {}: {e}", t.display()))?;
        sizes.extend(events.iter().filter_map(|e| match e {
            Event::Alloc { size, .. } if *size > 0 => Some(size.div_ceil(4) * 4),
            _ => None,
        }));
    }
    if sizes.is_empty() {
        return Err("the traces hold no allocation".into());
    }
    Ok(sizes)
}

/// Everything a run measured, as printed.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    backend: String,
    filler: &'static str,
    /// Seconds of workload.
    seconds: f64,
    /// Seconds of teardown and checks after it.
    teardown_seconds: f64,
    threads: usize,
    streams: usize,
    shards: u32,
    limit: u64,
    scale: u64,
    fault_every: u64,
    traces: Vec<String>,
    sizes: usize,
    /// The most bytes committed at once on the device (every shard and tag).
    peak_committed: u64,
    tally: Tally,
    errors: BTreeMap<String, u64>,
    unexpected: Vec<String>,
    corrupted_words: u64,
    mismatches: Vec<String>,
    stats: gpu_arena::Stats,
    driver: Option<CallCounts>,
    device_memory: Option<DeviceMemory>,
    failures: Vec<String>,
}

/// Device memory around the run (CUDA).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct DeviceMemory {
    /// Device memory in all.
    pub total: u64,
    /// Free before the arena was made.
    pub free_before: u64,
    /// Lowest free seen during the run.
    pub free_lowest: u64,
    /// Free after teardown.
    pub free_after: u64,
    /// What may stay in use after teardown.
    pub tolerance: u64,
}

/// Runs `soak`.
pub fn run(backend: BackendArg, device: u32, args: &Args) -> AnyResult<()> {
    let traces = if args.traces.is_empty() {
        default_traces()
    } else {
        args.traces.clone()
    };
    if traces.is_empty() {
        return Err(
            "no allocation traces found (looked for ../shared/traces, ../../shared/traces, .gpu/extra/traces): pass --traces FILE..."
                .into(),
        );
    }
    let sizes = trace_sizes(&traces)?;
    let (backends, driver) = Backends::open(backend, device)?;
    let cuda = !matches!(driver.backend(), SystemDriver::Host(_));
    let device_memory = driver.capabilities().device_memory;
    let limit = args
        .limit
        .unwrap_or(if cuda { device_memory / 4 } else { 1 << 30 });
    let scale = args.scale.unwrap_or(if cuda { 8 } else { 1 }).max(1);
    let fault_every = args.fault_every.unwrap_or(if cuda { 0 } else { 64 });
    let fault_ops: Vec<_> = if args.fault_ops.is_empty() {
        FaultOp::ALL.iter().map(|f| f.op()).collect()
    } else {
        args.fault_ops.iter().map(|f| f.op()).collect()
    };
    let backend_name = driver.capabilities().backend.name().to_string();
    drop(backends);

    // The backend behind the checked layer: every driver call of the arena
    // is validated and counted (and, on the host, fault-injected).
    let driver = Arc::new(SystemDriver::checked(driver));
    let streams: Vec<_> = (0..args.streams.max(1))
        .map(|_| driver.create_stream())
        .collect::<Result<_, _>>()?;
    let dev = Dev::new(&driver, &streams)?;
    dev.enter()?;
    let free_before = dev.mem_info();

    let config = GlobalConfig {
        shards: args.shards.max(1),
        arena: ArenaConfig {
            commit: CommitConfig {
                limit,
                decay_ms: args.decay_ms,
                ..CommitConfig::default()
            },
            ..ArenaConfig::default()
        },
        ..GlobalConfig::default()
    };
    let arena = GlobalArena::leak_with(device, config, driver.clone())?;
    let threads = args.threads.max(1);
    let budget = limit + limit / 4;
    let soak = work::Soak::new(
        arena,
        &dev,
        &streams,
        &sizes,
        scale,
        budget / threads as u64,
        limit / 32,
        args.seed,
        threads,
    );
    let checked = driver
        .as_checked()
        .ok_or("the soak's driver is not checked (bug)")?;
    eprintln!(
        "soak: {} s, {threads} threads x {} streams, {} shards, limit {}, sizes x{scale} from {} allocations of {}, faults {}, blocks filled and checked by {}",
        args.seconds,
        streams.len(),
        args.shards.max(1),
        fmt_bytes(limit),
        sizes.len(),
        traces
            .iter()
            .map(|t| t.file_name().map_or(t.display().to_string(), |n| n
                .to_string_lossy()
                .into_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        if fault_every == 0 {
            "off".to_string()
        } else {
            format!("one pending per driver call, within {fault_every} calls")
        },
        dev.describe()
    );

    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let pb = progress(args.seconds);
    let mut free_lowest = free_before.map(|f| f.0);
    let barrier = std::sync::Barrier::new(threads);
    let stopped = std::sync::Mutex::new(deadline);
    let (soak, barrier) = (&soak, &barrier);
    std::thread::scope(|sc| -> AnyResult<()> {
        let workers: Vec<_> = (0..threads)
            .map(|t| sc.spawn(move || soak.worker(t, barrier)))
            .collect();
        let sleeper = sc.spawn(move || soak.sleeper());
        let chaos =
            (fault_every > 0).then(|| sc.spawn(|| soak.chaos(checked, fault_every, &fault_ops)));
        let holds = driver.as_host().map(|h| sc.spawn(move || soak.holds(h)));

        // The janitor: trims, progress, the device's lowest free memory.
        let line_every = Duration::from_secs((args.seconds / 20).clamp(5, 60));
        let (mut next_trim, mut next_line) = (start, start + line_every);
        while Instant::now() < deadline {
            std::thread::sleep(
                Duration::from_millis(100).min(deadline - Instant::now().min(deadline)),
            );
            let now = Instant::now();
            if now >= next_trim {
                soak.trim();
                next_trim = now + Duration::from_millis(500);
                if let (Some(low), Some((free, _))) = (free_lowest.as_mut(), dev.mem_info()) {
                    *low = (*low).min(free);
                }
            }
            let t = soak.counters.snapshot();
            let st = arena.stats();
            let line = format!(
                "allocs {} · live {} · committed {} · OOM {} · injected {} · unexpected {}",
                t.allocs,
                fmt_bytes(st.live),
                fmt_bytes(st.committed),
                t.out_of_memory,
                checked.counts().injected,
                soak.unexpected.lock().map_or(0, |u| u.len())
            );
            pb.set_position(start.elapsed().as_secs().min(args.seconds));
            pb.set_message(line.clone());
            if now >= next_line {
                next_line = now + line_every;
                pb.suspend(|| eprintln!("soak: {:>5.0} s  {line}", start.elapsed().as_secs_f64()));
            }
        }
        soak.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        *lock(&stopped) = Instant::now();
        pb.finish_and_clear();
        eprintln!(
            "soak: workload stopped after {:.1} s; freeing everything and tearing down",
            start.elapsed().as_secs_f64()
        );
        if let Some(c) = chaos {
            c.join().map_err(|_| "the chaos thread panicked")?;
        }
        if let Some(h) = holds {
            h.join().map_err(|_| "the stream-holding thread panicked")?;
        }
        for w in workers {
            w.join().map_err(|_| "a worker panicked")?;
        }
        sleeper.join().map_err(|_| "the sleeper panicked")?;
        Ok(())
    })?;
    let teardown = *lock(&stopped);
    let seconds = (teardown - start).as_secs_f64();

    // Teardown: every stream's work done, every idle page given back, then
    // the arena dropped (reservations freed).
    let mut failures = Vec::new();
    dev.finish()?;
    let corrupted = dev.corrupted()?;
    soak.trim();
    let stats = arena.stats();
    let (device_used_peak, device_limit) = (arena.budget().peak(), arena.budget().limit());
    if device_used_peak > device_limit {
        failures.push(format!(
            "{} committed at once, over the limit {}",
            fmt_bytes(device_used_peak),
            fmt_bytes(device_limit)
        ));
    }
    let leaks_before = checked.leaks();
    if stats.live != 0 {
        failures.push(format!(
            "{} still live after every block was freed",
            fmt_bytes(stats.live)
        ));
    }
    if stats.committed != 0 || stats.handles != 0 || stats.mappings != 0 {
        failures.push(format!(
            "after trim: {} committed in {} handles, {} mappings (all should be 0)",
            fmt_bytes(stats.committed),
            stats.handles,
            stats.mappings
        ));
    }
    let dc = stats.driver_calls;
    if dc.create != dc.release {
        failures.push(format!(
            "the arena's counts: {} creates, {} releases",
            dc.create, dc.release
        ));
    }
    if let Some(l) = leaks_before {
        if l.handles != 0 || l.mappings != 0 || l.physical_bytes != 0 {
            failures.push(format!("the checked driver holds {l:?} before teardown"));
        }
    }
    // SAFETY: every thread that allocated was joined (their caches went
    // back); this thread allocated nothing; every stream's work completed
    // (`finish`); nothing refers to the arena after this.
    unsafe { GlobalArena::destroy(arena) }?;
    let counts = checked.counts();
    if let Some(l) = checked.leaks() {
        failures.push(format!("left behind after teardown: {l:?}"));
    }
    if counts.create != counts.release {
        failures.push(format!(
            "driver: {} creates, {} releases",
            counts.create, counts.release
        ));
    }
    if counts.bytes_mapped != counts.bytes_unmapped {
        failures.push(format!(
            "driver: {} mapped, {} unmapped",
            counts.bytes_mapped, counts.bytes_unmapped
        ));
    }
    if counts.reserve != counts.free_reservation {
        failures.push(format!(
            "driver: {} reservations, {} freed",
            counts.reserve, counts.free_reservation
        ));
    }
    if counts.refused != 0 {
        failures.push(format!(
            "the checked layer refused {} calls (rule violations)",
            counts.refused
        ));
    }
    if corrupted != 0 {
        failures.push(format!("{corrupted} corrupted words"));
    }
    let unexpected = soak
        .unexpected
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    if !unexpected.is_empty() {
        failures.push(format!("{} unexpected errors", unexpected.len()));
    }
    let device_memory = match (free_before, dev.mem_info()) {
        (Some((free_before, total)), Some((free_after, _))) => {
            let m = DeviceMemory {
                total,
                free_before,
                free_lowest: free_lowest.unwrap_or(free_before),
                free_after,
                tolerance: args.mem_tolerance,
            };
            if free_before.saturating_sub(free_after) > args.mem_tolerance {
                failures.push(format!(
                    "device memory not back: {} free before, {} after (tolerance {})",
                    fmt_bytes(free_before),
                    fmt_bytes(free_after),
                    fmt_bytes(args.mem_tolerance)
                ));
            }
            Some(m)
        }
        _ => None,
    };
    let report = Report {
        backend: backend_name,
        filler: dev.describe(),
        seconds,
        threads,
        streams: streams.len(),
        shards: args.shards.max(1),
        limit,
        scale,
        fault_every,
        traces: traces.iter().map(|t| t.display().to_string()).collect(),
        sizes: sizes.len(),
        teardown_seconds: teardown.elapsed().as_secs_f64(),
        peak_committed: device_used_peak,
        tally: soak.counters.snapshot(),
        errors: soak.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        unexpected,
        corrupted_words: corrupted,
        mismatches: dev
            .first_mismatches()
            .iter()
            .map(|m| {
                format!(
                    "block {:#x} word {}: expected {:#010x}, found {:#010x}",
                    m.ptr, m.word, m.expected, m.found
                )
            })
            .collect(),
        stats,
        driver: Some(counts),
        device_memory,
        failures,
    };
    for &s in &streams {
        // SAFETY: every thread using the streams was joined and their work
        // completed (`finish`).
        let _ = unsafe { driver.destroy_stream(s) };
    }
    drop(dev);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if report.failures.is_empty() {
        eprintln!("soak: PASSED");
        Ok(())
    } else {
        Err(format!("soak FAILED: {}", report.failures.join("; ")).into())
    }
}

/// A bar over the run's seconds on stderr (hidden where stderr is not a
/// terminal; status lines go to the log then).
fn progress(seconds: u64) -> ProgressBar {
    let pb = ProgressBar::new(seconds);
    if let Ok(style) = ProgressStyle::with_template("soak [{bar:30}] {pos}/{len} s {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The report as text tables.
fn render(r: &Report) -> String {
    let mut out = String::new();
    let t = &r.tally;
    out.push_str(&format!(
        "soak: {:.1} s on the {} backend (teardown and checks {:.1} s): {} threads x {} streams, {} shards, limit {}, sizes x{} from {} trace allocations, faults {}\nblocks filled and checked by {}\n\n",
        r.seconds,
        r.backend,
        r.teardown_seconds,
        r.threads,
        r.streams,
        r.shards,
        fmt_bytes(r.limit),
        r.scale,
        count(r.sizes as u64),
        if r.fault_every == 0 {
            "off".to_string()
        } else {
            format!("one pending per driver call, within {} calls", r.fault_every)
        },
        r.filler
    ));
    let mut w = Table::new(["work", "count", "bytes"]);
    let rows: [(&str, u64, Option<u64>); 15] = [
        ("allocations", t.allocs, Some(t.alloc_bytes)),
        ("frees", t.frees, None),
        (
            "  on the stream that wrote the block",
            t.frees_same_stream,
            None,
        ),
        (
            "  on another stream (after an event)",
            t.frees_other_stream,
            None,
        ),
        ("  by another thread", t.frees_other_thread, None),
        (
            "blocks checked, every word",
            t.checks,
            Some(t.checked_bytes),
        ),
        ("allocations refused: out of memory", t.out_of_memory, None),
        (
            "allocations refused: injected driver error",
            t.injected_errors,
            None,
        ),
        ("trims", t.trims, Some(t.trimmed_bytes)),
        ("sleeps (offload + discard)", t.sleeps, Some(t.sleep_bytes)),
        ("  copied to pinned host memory", 0, Some(t.offloaded_bytes)),
        ("wakes", t.wakes, Some(t.wake_bytes)),
        (
            "sleep/wake attempts failed and retried",
            t.sleep_wake_retries,
            None,
        ),
        (
            "asleep tag refused an allocation (as it must)",
            t.asleep_refusals,
            None,
        ),
        ("asleep tag served a free", t.asleep_frees, None),
    ];
    for (name, n, bytes) in rows {
        w.row([
            name.to_string(),
            if name.starts_with("  copied") {
                String::new()
            } else {
                count(n)
            },
            bytes.map_or(String::new(), fmt_bytes),
        ]);
    }
    if t.held_streams > 0 {
        w.row([
            "emulated long kernels (stream held)".to_string(),
            count(t.held_streams),
            String::new(),
        ]);
    }
    out.push_str(&w.render());
    out.push('\n');
    let mut e = Table::new(["errors by kind", "count"]);
    for (k, n) in &r.errors {
        e.row([k.clone(), count(*n)]);
    }
    if r.errors.is_empty() {
        e.row(["none".to_string(), String::new()]);
    }
    out.push_str(&e.render());
    out.push('\n');
    if let Some(c) = &r.driver {
        let mut d = Table::new(["driver calls (checked layer)", "count", "bytes"]);
        let rows: [(&str, u64, Option<u64>); 14] = [
            ("create", c.create, Some(c.bytes_created)),
            ("release", c.release, None),
            ("map", c.map, Some(c.bytes_mapped)),
            ("unmap", c.unmap, Some(c.bytes_unmapped)),
            ("set_access", c.set_access, None),
            ("reserve", c.reserve, None),
            ("free_reservation", c.free_reservation, None),
            ("record (fences)", c.record, None),
            ("is_complete", c.is_complete, None),
            ("wait (one fence)", c.wait, None),
            ("copy / fill", c.copy, None),
            ("faults injected", c.injected, None),
            ("refused by the rules", c.refused, None),
            ("failed in the driver", c.failed, None),
        ];
        for (name, n, bytes) in rows {
            d.row([
                name.to_string(),
                count(n),
                bytes.map_or(String::new(), fmt_bytes),
            ]);
        }
        out.push_str(&d.render());
        out.push('\n');
    }
    let s = &r.stats;
    let mut a = Table::new(["arena", "value"]).left();
    a.row([
        "most committed at once (every shard and tag)".to_string(),
        format!(
            "{} (limit {})",
            fmt_bytes(r.peak_committed),
            fmt_bytes(r.limit)
        ),
    ]);
    a.row([
        "peak live (sum of shard peaks)".to_string(),
        fmt_bytes(s.peak_live),
    ]);
    a.row([
        "after teardown: live / committed / handles / mappings".to_string(),
        format!(
            "{} / {} / {} / {}",
            s.live, s.committed, s.handles, s.mappings
        ),
    ]);
    let dc = &s.driver_calls;
    a.row([
        "arena's own counts: create / release / map / unmap".to_string(),
        format!("{} / {} / {} / {}", dc.create, dc.release, dc.map, dc.unmap),
    ]);
    a.row(["corrupted words".to_string(), count(r.corrupted_words)]);
    if let Some(m) = &r.device_memory {
        a.row(["device memory".to_string(), fmt_bytes(m.total)]);
        a.row([
            "free before the arena".to_string(),
            fmt_bytes(m.free_before),
        ]);
        a.row([
            "lowest free during the run".to_string(),
            fmt_bytes(m.free_lowest),
        ]);
        a.row([
            "free after teardown".to_string(),
            format!(
                "{} (difference {} , tolerance {})",
                fmt_bytes(m.free_after),
                if m.free_after >= m.free_before {
                    format!("+{}", fmt_bytes(m.free_after - m.free_before))
                } else {
                    format!("-{}", fmt_bytes(m.free_before - m.free_after))
                },
                fmt_bytes(m.tolerance)
            ),
        ]);
    }
    out.push_str(&a.render());
    for m in &r.mismatches {
        out.push_str(&format!("mismatch: {m}\n"));
    }
    for u in &r.unexpected {
        out.push_str(&format!("unexpected: {u}\n"));
    }
    if r.failures.is_empty() {
        out.push_str(
            "\nresult: PASSED (no corrupted word, no unexpected error, nothing left behind)\n",
        );
    } else {
        out.push_str("\nresult: FAILED\n");
        for f in &r.failures {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    out
}
