//! `gpu-arena pressure`: another process needs most of the device while
//! this one runs on gpu-arena; what an engine can do about it, measured.
//!
//! Process A (this one) loads a workload on a global arena with a soft
//! limit: `weights` (kept: offloaded to pinned host memory on sleep),
//! `kv_cache` (recomputable: discarded on sleep), activations freed and
//! kept committed (an allocator's cache of idle memory), and a compute
//! buffer that kernels keep updating all along, on a stream of their own.
//! It starts process B (this binary again, `pressure --taker`), which knows
//! nothing of gpu-arena and asks the driver for most of the device with a
//! plain `cuMemAlloc`. Each round:
//!
//! 1. B tries once (refused: A holds the memory), tells A it needs the
//!    memory, and tries again every half millisecond;
//! 2. A, while its compute kernels keep running, puts `kv_cache` to sleep
//!    (discard), `weights` to sleep (offload), and trims its idle memory;
//! 3. B's allocation succeeds: the time from B's request to that moment is
//!    how fast the memory reached B. B writes all of it, holds it, frees it
//!    and says so;
//! 4. A wakes both tags at the same addresses, checks every word of the
//!    weights (identical to what was loaded), recomputes the cache and
//!    checks it.
//!
//! At the end A checks that the compute buffer counts every launch (no step
//! lost or redone while memory moved), tears its arena down and checks that
//! the device's free memory is back where it started. Round 1 includes
//! making the pinned host memory; later rounds reuse it.
//!
//! On the host backend the same sequence runs with no device to share
//! (B's allocation is granted at once): a check of the protocol and of
//! sleep/wake under running compute, not a measurement.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use gpu_arena::driver::{Driver, Stream, SystemDriver};
use gpu_arena::global::config::parse_size;
use gpu_arena::global::{GlobalArena, GlobalConfig};
use gpu_arena::{ArenaConfig, CommitConfig, SleepMode, SleepReport};

use crate::soak::dev::{Block, Dev};
use crate::{AnyResult, BackendArg, Backends, fmt_bytes};

/// `pressure` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rounds of B asking, A giving back, B freeing, A waking.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// A's weights (offloaded on sleep) [default: CUDA a fifth of the
    /// device, host 64MiB].
    #[arg(long, value_parser = size_arg)]
    weights: Option<u64>,
    /// A's cache (discarded on sleep) [default: CUDA a quarter of the
    /// device, host 64MiB].
    #[arg(long, value_parser = size_arg)]
    kv_cache: Option<u64>,
    /// A's activations, freed and kept committed as idle memory [default:
    /// CUDA a fifth of the device, host 64MiB].
    #[arg(long, value_parser = size_arg)]
    idle: Option<u64>,
    /// A's compute buffer, which stays [default: CUDA 1/64 of the device,
    /// host 16MiB].
    #[arg(long, value_parser = size_arg)]
    compute: Option<u64>,
    /// A's soft limit [default: 70% of the device; host 1GiB].
    #[arg(long, value_parser = size_arg)]
    limit: Option<u64>,
    /// What B leaves free besides A's compute buffer (CUDA) [default: 2GiB].
    #[arg(long, value_parser = size_arg, default_value = "2GiB")]
    margin: u64,
    /// How long B holds its memory before freeing it (ms).
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// How long B keeps trying before it gives up (ms).
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Device memory that may stay in use after A's teardown (CUDA), in bytes.
    #[arg(long, value_parser = size_arg, default_value = "64MiB")]
    mem_tolerance: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// Run as process B (A starts it; not for direct use).
    #[arg(long, hide = true)]
    taker: bool,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// What one round measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Round {
    /// Round number (1: the pinned host memory is made during the offload).
    pub round: u32,
    /// Bytes B asked for.
    pub asked: u64,
    /// Whether B's first try was refused (A held the memory).
    pub first_try_refused: bool,
    /// A's committed bytes when B asked.
    pub a_committed_before: u64,
    /// A's committed bytes once it gave memory back.
    pub a_committed_after: u64,
    /// Device free memory when B asked, and once A gave memory back (CUDA).
    pub free_before: Option<u64>,
    /// See `free_before`.
    pub free_after_release: Option<u64>,
    /// A: sleep of `kv_cache` (discard).
    pub discard: SleepReport,
    /// Milliseconds of that sleep.
    pub discard_ms: f64,
    /// A: sleep of `weights` (offload).
    pub offload: SleepReport,
    /// Milliseconds of that sleep.
    pub offload_ms: f64,
    /// A: bytes the trim gave back.
    pub trimmed: u64,
    /// Milliseconds of the trim.
    pub trim_ms: f64,
    /// Milliseconds from B's request to the end of A's release (A's clock).
    pub release_ms: f64,
    /// Milliseconds from B's request to B's allocation succeeding (B's clock).
    pub to_b_ms: f64,
    /// B's allocation attempts.
    pub b_tries: u64,
    /// Milliseconds B took to write all of its memory.
    pub b_write_ms: f64,
    /// A's compute launches between B's request and B's allocation.
    pub launches_during_handover: u64,
    /// A: the wake of both tags.
    pub wake: SleepReport,
    /// Milliseconds of the wake.
    pub wake_ms: f64,
    /// Words of the weights that differ after the wake (must be 0).
    pub weights_words_differing: u64,
    /// Words of the recomputed cache that differ (must be 0).
    pub cache_words_differing: u64,
}

/// The whole run.
#[derive(Debug, Default, serde::Serialize)]
pub struct Outcome {
    backend: String,
    device_memory: u64,
    limit: u64,
    weights: u64,
    kv_cache: u64,
    idle: u64,
    compute: u64,
    rounds: Vec<Round>,
    compute_launches: u64,
    compute_words_differing: u64,
    free_at_start: Option<u64>,
    free_after_teardown: Option<u64>,
    failures: Vec<String>,
}

/// Lines from B.
struct FromB {
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl FromB {
    /// The next line from B, split in words; its first word must be `what`.
    fn expect(&mut self, what: &str) -> AnyResult<Vec<String>> {
        let line = self
            .lines
            .next()
            .ok_or_else(|| format!("process B exited before saying `{what}`"))??;
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if words.first().map(String::as_str) != Some(what) {
            return Err(format!("process B said `{line}`, expected `{what} ...`").into());
        }
        Ok(words)
    }
}

fn num<T: std::str::FromStr>(words: &[String], i: usize) -> AnyResult<T> {
    words
        .get(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("process B sent a malformed line: {words:?}").into())
}

/// Runs `pressure` (process A, or B with `--taker`).
pub fn run(backend: BackendArg, device: u32, args: &Args) -> AnyResult<()> {
    if args.taker {
        return taker(backend, device, args);
    }
    let (backends, driver) = Backends::open(backend, device)?;
    drop(backends);
    let cuda = !matches!(driver.backend(), SystemDriver::Host(_));
    let total = driver.capabilities().device_memory;
    let backend_name = driver.capabilities().backend.name().to_string();
    let (weights, kv_cache, idle, compute) = if cuda {
        (
            args.weights.unwrap_or(total / 5),
            args.kv_cache.unwrap_or(total / 4),
            args.idle.unwrap_or(total / 5),
            args.compute.unwrap_or(total / 64),
        )
    } else {
        (
            args.weights.unwrap_or(64 << 20),
            args.kv_cache.unwrap_or(64 << 20),
            args.idle.unwrap_or(64 << 20),
            args.compute.unwrap_or(16 << 20),
        )
    };
    let compute = compute.div_ceil(4) * 4;
    let limit = args
        .limit
        .unwrap_or(if cuda { total / 10 * 7 } else { 1 << 30 });
    let mut out = Outcome {
        backend: backend_name.clone(),
        device_memory: total,
        limit,
        weights,
        kv_cache,
        idle,
        compute,
        ..Outcome::default()
    };

    let driver = Arc::new(SystemDriver::checked(driver));
    let load = driver.create_stream()?;
    let work = driver.create_stream()?;
    let dev = Dev::new(&driver, &[load, work])?;
    dev.enter()?;
    out.free_at_start = dev.mem_info().map(|m| m.0);

    // Process B: this binary, on the same backend and device.
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "--backend",
            if cuda { "cuda" } else { "host" },
            "--device",
            &device.to_string(),
            "pressure",
            "--taker",
            "--hold-ms",
            &args.hold_ms.to_string(),
            "--timeout-ms",
            &args.timeout_ms.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut to_b = child.stdin.take().ok_or("no pipe to process B")?;
    let mut from_b = FromB {
        lines: BufReader::new(child.stdout.take().ok_or("no pipe from process B")?).lines(),
    };
    let ready = from_b.expect("ready")?;
    let b_free: u64 = num(&ready, 1)?;
    let asked = if cuda {
        b_free.saturating_sub(compute + args.margin)
    } else {
        0
    };
    println!(
        "pressure on the {backend_name} backend: device memory {}, A's soft limit {}",
        fmt_bytes(total),
        fmt_bytes(limit)
    );
    if cuda {
        println!(
            "B (plain cuMemAlloc) sees {} free before A loads; it will ask for {} ({:.0}% of the device)",
            fmt_bytes(b_free),
            fmt_bytes(asked),
            100.0 * asked as f64 / total.max(1) as f64
        );
    }

    let config = GlobalConfig {
        shards: 1,
        arena: ArenaConfig {
            commit: CommitConfig {
                limit,
                // Idle memory stays committed until trimmed: an engine's cache.
                decay_ms: 600_000,
                ..CommitConfig::default()
            },
            ..ArenaConfig::default()
        },
        ..GlobalConfig::default()
    };
    let arena = GlobalArena::leak_with(device, config, driver.clone())?;
    let result = a_rounds(
        arena,
        &dev,
        (load, work),
        args,
        asked,
        &mut to_b,
        &mut from_b,
        &mut out,
    );
    let _ = writeln!(to_b, "quit");
    drop(to_b);
    let status = child.wait()?;
    if !status.success() {
        out.failures.push(format!("process B exited with {status}"));
    }
    if let Err(e) = result {
        out.failures.push(format!("A: {e}"));
    }

    // Teardown: everything back to the driver.
    dev.finish()?;
    // SAFETY: the compute thread was joined, B's pipe is closed, every
    // stream's work completed; only this thread used the arena.
    unsafe { GlobalArena::destroy(arena) }?;
    let checked = driver.as_checked().ok_or("not checked (bug)")?;
    if let Some(l) = checked.leaks() {
        out.failures
            .push(format!("left behind after teardown: {l:?}"));
    }
    let c = checked.counts();
    if c.create != c.release || c.bytes_mapped != c.bytes_unmapped || c.refused != 0 {
        out.failures
            .push(format!("driver calls do not balance: {c:?}"));
    }
    // B's context goes with its process; the driver may take a moment.
    for _ in 0..50 {
        out.free_after_teardown = dev.mem_info().map(|m| m.0);
        match (out.free_at_start, out.free_after_teardown) {
            (Some(a), Some(b)) if a.saturating_sub(b) > args.mem_tolerance => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => break,
        }
    }
    if let (Some(a), Some(b)) = (out.free_at_start, out.free_after_teardown) {
        if a.saturating_sub(b) > args.mem_tolerance {
            out.failures.push(format!(
                "device memory not back: {} free at the start, {} after teardown",
                fmt_bytes(a),
                fmt_bytes(b)
            ));
        }
    }
    for s in [load, work] {
        // SAFETY: every use of the streams completed (`finish`).
        let _ = unsafe { driver.destroy_stream(s) };
    }
    drop(dev);
    print_summary(&out);
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    if out.failures.is_empty() {
        println!("result: PASSED");
        Ok(())
    } else {
        Err(format!("pressure FAILED: {}", out.failures.join("; ")).into())
    }
}

/// Allocates `total` bytes in blocks of at most `block` in the calling
/// thread's tag, filled on `stream` with seeds from `seed`.
fn load_blocks(
    arena: &'static GlobalArena,
    dev: &Dev,
    total: u64,
    block: u64,
    stream: Stream,
    seed: &mut u32,
) -> AnyResult<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut left = total.div_ceil(4) * 4;
    while left > 0 {
        let size = left.min(block);
        let ptr = arena.alloc(size, 512, stream)?;
        *seed += 1;
        let b = Block {
            ptr,
            size,
            seed: *seed,
            stream,
        };
        dev.fill(&b)?;
        blocks.push(b);
        left -= size;
    }
    Ok(blocks)
}

/// The rounds, on A's side (see the module docs).
#[allow(clippy::too_many_arguments)]
fn a_rounds(
    arena: &'static GlobalArena,
    dev: &Dev,
    (load, work): (Stream, Stream),
    args: &Args,
    asked: u64,
    to_b: &mut std::process::ChildStdin,
    from_b: &mut FromB,
    out: &mut Outcome,
) -> AnyResult<()> {
    let mut seed = 0u32;
    let block = |total: u64, parts: u64| (total / parts).div_ceil(2 << 20) * (2 << 20);
    // The compute buffer (default tag), zeroed, then the tags.
    let c = arena.alloc(out.compute, 512, work)?;
    let words = out.compute / 4;
    // SAFETY: a live block of that many bytes, ours; the fill is in
    // stream order before every kernel on `work`.
    unsafe { arena.driver().fill(c.addr(), 0, out.compute as usize, work) }?;
    let weights = {
        let _g = arena.tag_scope("weights")?;
        load_blocks(
            arena,
            dev,
            out.weights,
            block(out.weights, 32),
            load,
            &mut seed,
        )?
    };
    let mut cache = {
        let _g = arena.tag_scope("kv_cache")?;
        load_blocks(
            arena,
            dev,
            out.kv_cache,
            block(out.kv_cache, 64),
            load,
            &mut seed,
        )?
    };
    dev.sync(load)?;
    println!(
        "A loaded: weights {} ({} blocks), kv_cache {} ({} blocks), compute buffer {}",
        fmt_bytes(out.weights),
        weights.len(),
        fmt_bytes(out.kv_cache),
        cache.len(),
        fmt_bytes(out.compute)
    );

    let stop = AtomicBool::new(false);
    let launches = AtomicU64::new(0);
    let r = std::thread::scope(|sc| -> AnyResult<()> {
        // Compute: add 1 to every word of the buffer, again and again, on
        // its own stream; at most a few launches queued.
        let computing = sc.spawn(|| -> Result<(), String> {
            let step = || -> AnyResult<()> {
                for _ in 0..8 {
                    dev.add_one(c, words, work)?;
                    launches.fetch_add(1, Relaxed);
                }
                dev.sync(work)
            };
            dev.enter().map_err(|e| e.to_string())?;
            while !stop.load(Relaxed) {
                step().map_err(|e| format!("compute: {e}"))?;
            }
            Ok(())
        });
        let r = (|| -> AnyResult<()> {
            for round in 1..=args.rounds {
                let r = a_round(
                    arena, dev, load, round, asked, &weights, &mut cache, &mut seed, &launches,
                    to_b, from_b, out,
                )?;
                out.rounds.push(r);
            }
            Ok(())
        })();
        stop.store(true, Relaxed);
        let computed = computing
            .join()
            .map_err(|_| "the compute thread panicked")?;
        r.and(computed.map_err(Into::into))
    });
    // Whatever happened, the tags are awake again before the checks.
    let _ = arena.wake(&["weights", "kv_cache"], load);
    // The compute buffer counts every launch.
    dev.sync(work)?;
    out.compute_launches = launches.load(Relaxed);
    let before = dev.corrupted()?;
    dev.check_value(c, words, out.compute_launches as u32, work)?;
    dev.sync(work)?;
    out.compute_words_differing = dev.corrupted()? - before;
    if out.compute_words_differing != 0 {
        out.failures.push(format!(
            "{} words of the compute buffer do not count the {} launches",
            out.compute_words_differing, out.compute_launches
        ));
    }
    for b in weights.iter().chain(cache.iter()) {
        arena.free(b.ptr, Some(b.size), load)?;
    }
    arena.free(c, Some(out.compute), work)?;
    dev.finish()?;
    arena.trim();
    r
}

/// One round on A's side.
#[allow(clippy::too_many_arguments)]
fn a_round(
    arena: &'static GlobalArena,
    dev: &Dev,
    load: Stream,
    round: u32,
    asked: u64,
    weights: &[Block],
    cache: &mut [Block],
    seed: &mut u32,
    launches: &AtomicU64,
    to_b: &mut std::process::ChildStdin,
    from_b: &mut FromB,
    out: &mut Outcome,
) -> AnyResult<Round> {
    // Activations: used, freed, kept committed (idle) by the arena.
    let act = load_blocks(arena, dev, out.idle, (out.idle / 16).max(4096), load, seed)?;
    for b in &act {
        arena.free(b.ptr, Some(b.size), load)?;
    }
    dev.sync(load)?;
    let acc = arena.accounting(None);
    let mut r = Round {
        round,
        asked,
        a_committed_before: acc.committed,
        free_before: dev.mem_info().map(|m| m.0),
        ..Round::default()
    };
    println!(
        "\nround {round}: A holds {} committed ({} live, {} idle); compute kernels running",
        fmt_bytes(acc.committed),
        fmt_bytes(acc.live),
        fmt_bytes(acc.committed - acc.live)
    );

    writeln!(to_b, "take {asked}")?;
    to_b.flush()?;
    let need = from_b.expect("need")?;
    let t_need = Instant::now();
    let at_need = launches.load(Relaxed);
    r.first_try_refused = need.get(2).map(String::as_str) == Some("refused");

    // What an engine does: drop what it can recompute, move what it must
    // keep to host memory, give idle memory back. Compute keeps running.
    let t = Instant::now();
    r.discard = arena.sleep(&["kv_cache"], SleepMode::Discard, load)?;
    r.discard_ms = ms(t.elapsed());
    let t = Instant::now();
    r.offload = arena.sleep(&["weights"], SleepMode::Offload, load)?;
    r.offload_ms = ms(t.elapsed());
    let t = Instant::now();
    r.trimmed = arena.trim();
    r.trim_ms = ms(t.elapsed());
    r.release_ms = ms(t_need.elapsed());
    r.a_committed_after = arena.accounting(None).committed;
    r.free_after_release = dev.mem_info().map(|m| m.0);

    let got = match from_b.expect("got") {
        Ok(g) => g,
        Err(e) => {
            out.failures
                .push(format!("round {round}: B did not get its memory: {e}"));
            return Err(e);
        }
    };
    r.launches_during_handover = launches.load(Relaxed) - at_need;
    r.to_b_ms = num::<f64>(&got, 2)? / 1e3;
    r.b_tries = num(&got, 3)?;
    let freed = from_b.expect("freed")?;
    r.b_write_ms = num(&freed, 1)?;

    let t = Instant::now();
    r.wake = arena.wake(&["weights", "kv_cache"], load)?;
    r.wake_ms = ms(t.elapsed());
    // The weights came back identical; the cache is recomputed.
    let before = dev.corrupted()?;
    for b in weights {
        dev.check(b, load)?;
    }
    dev.sync(load)?;
    let after_weights = dev.corrupted()?;
    r.weights_words_differing = after_weights - before;
    for b in cache.iter_mut() {
        *seed += 1;
        b.seed = *seed;
        dev.fill(b)?;
        dev.check(b, load)?;
    }
    dev.sync(load)?;
    r.cache_words_differing = dev.corrupted()? - after_weights;
    if r.weights_words_differing + r.cache_words_differing != 0 {
        out.failures.push(format!(
            "round {round}: {} words of the weights and {} of the cache differ",
            r.weights_words_differing, r.cache_words_differing
        ));
    }
    if asked > 0 && !r.first_try_refused {
        out.failures.push(format!(
            "round {round}: B's first try was granted: A did not hold the memory B needed"
        ));
    }
    print_round(&r);
    Ok(r)
}

fn print_round(r: &Round) {
    let free =
        |f: Option<u64>| f.map_or(String::new(), |f| format!(", device free {}", fmt_bytes(f)));
    println!(
        "  B asked for {} (first try {}){}",
        fmt_bytes(r.asked),
        if r.first_try_refused {
            "refused"
        } else {
            "granted"
        },
        free(r.free_before)
    );
    println!(
        "  A gave back: kv_cache discarded {} in {:.1} ms; weights offloaded {} in {:.1} ms (copy {} in {:.1} ms, pinned host memory obtained in {:.1} ms); trim {} in {:.1} ms",
        fmt_bytes(r.discard.bytes),
        r.discard_ms,
        fmt_bytes(r.offload.bytes),
        r.offload_ms,
        fmt_bytes(r.offload.copied),
        r.offload.copy_seconds * 1e3,
        r.offload.stage_seconds * 1e3,
        fmt_bytes(r.trimmed),
        r.trim_ms
    );
    println!(
        "  A now holds {}{}; release done {:.1} ms after B's request",
        fmt_bytes(r.a_committed_after),
        free(r.free_after_release),
        r.release_ms
    );
    println!(
        "  B got {} {:.1} ms after its request ({} tries); wrote all of it in {:.1} ms, held it, freed it",
        fmt_bytes(r.asked),
        r.to_b_ms,
        r.b_tries,
        r.b_write_ms
    );
    println!(
        "  A's compute launches meanwhile: {} (kernels kept running)",
        r.launches_during_handover
    );
    println!(
        "  A woke both tags in {:.1} ms ({} recommitted, {} copied back); weights: {} words differ; cache recomputed: {} words differ",
        r.wake_ms,
        fmt_bytes(r.wake.bytes),
        fmt_bytes(r.wake.copied),
        r.weights_words_differing,
        r.cache_words_differing
    );
}

fn print_summary(o: &Outcome) {
    println!(
        "\ncompute buffer after {} launches: {} words differ from the launch count",
        o.compute_launches, o.compute_words_differing
    );
    if let (Some(a), Some(b)) = (o.free_at_start, o.free_after_teardown) {
        println!(
            "device free memory: {} at the start, {} after A's teardown and B's exit",
            fmt_bytes(a),
            fmt_bytes(b)
        );
    }
    if !o.rounds.is_empty() {
        println!(
            "\n| round | B asked | A gave back | memory reached B after | A's release (discard / offload / trim) | A's wake | weights differing |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &o.rounds {
            println!(
                "| {} | {:.1} GiB | {:.1} GiB | {:.0} ms ({} tries) | {:.0} ms ({:.0} / {:.0} / {:.0}) | {:.0} ms | {} |",
                r.round,
                gib(r.asked),
                gib(r.discard.bytes + r.offload.bytes + r.trimmed),
                r.to_b_ms,
                r.b_tries,
                r.release_ms,
                r.discard_ms,
                r.offload_ms,
                r.trim_ms,
                r.wake_ms,
                r.weights_words_differing
            );
        }
    }
    for f in &o.failures {
        println!("failure: {f}");
    }
}

/// Process B: plain driver allocations, told what to ask for by A.
fn taker(backend: BackendArg, device: u32, args: &Args) -> AnyResult<()> {
    let say = |line: String| -> AnyResult<()> {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}")?;
        o.flush()?;
        Ok(())
    };
    let plain = Plain::open(backend, device)?;
    let (free, total) = plain.mem_info()?;
    eprintln!(
        "B: {} free of {} as B starts",
        fmt_bytes(free),
        fmt_bytes(total)
    );
    say(format!("ready {free} {total}"))?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("take") => {
                let want: u64 = words
                    .get(1)
                    .and_then(|w| w.parse().ok())
                    .ok_or("bad take")?;
                let t0 = Instant::now();
                let (p, refused) = match plain.alloc(want) {
                    Ok(p) => (Some(p), false),
                    Err(_) => (None, true),
                };
                say(format!(
                    "need {want} {}",
                    if refused { "refused" } else { "granted" }
                ))?;
                let mut tries = 1u64;
                let p = match p {
                    Some(p) => p,
                    None => loop {
                        std::thread::sleep(Duration::from_micros(500));
                        tries += 1;
                        if let Ok(p) = plain.alloc(want) {
                            break p;
                        }
                        if t0.elapsed() > Duration::from_millis(args.timeout_ms) {
                            say(format!("timeout {}", ms(t0.elapsed())))?;
                            return Err(format!(
                                "B: {} not granted within {} ms",
                                fmt_bytes(want),
                                args.timeout_ms
                            )
                            .into());
                        }
                    },
                };
                let got_us = t0.elapsed().as_secs_f64() * 1e6;
                say(format!("got {want} {got_us:.0} {tries}"))?;
                let t = Instant::now();
                plain.write(p, want)?;
                let write_ms = ms(t.elapsed());
                eprintln!(
                    "B: got {} {:.1} ms after asking ({tries} tries), wrote it in {write_ms:.1} ms",
                    fmt_bytes(want),
                    got_us / 1e3
                );
                std::thread::sleep(Duration::from_millis(args.hold_ms));
                plain.free(p)?;
                say(format!("freed {write_ms:.3}"))?;
            }
            Some("quit") | None => break,
            Some(other) => return Err(format!("B: unknown request {other}").into()),
        }
    }
    Ok(())
}

/// Process B's allocator: `cuMemAlloc` on CUDA; on the host backend,
/// nothing to share (every request granted at once, address 0).
enum Plain {
    Host,
    #[cfg(feature = "cuda")]
    Cuda {
        /// Keeps the context `cu` works in alive.
        _driver: gpu_arena::driver::cuda::CudaDriver,
        cu: crate::cuda::Cu,
    },
}

impl Plain {
    fn open(backend: BackendArg, device: u32) -> AnyResult<Self> {
        match backend {
            #[cfg(feature = "cuda")]
            BackendArg::Cuda => {
                let d = gpu_arena::driver::cuda::CudaDriver::new(device)?;
                let cu = crate::cuda::Cu::new(&d)?;
                Ok(Plain::Cuda { _driver: d, cu })
            }
            BackendArg::Host => {
                let _ = device;
                Ok(Plain::Host)
            }
            other => Err(format!("process B runs on cuda or host, not {}", other.name()).into()),
        }
    }

    fn mem_info(&self) -> AnyResult<(u64, u64)> {
        match self {
            Plain::Host => Ok((0, 0)),
            #[cfg(feature = "cuda")]
            Plain::Cuda { cu, .. } => cu.mem_info(),
        }
    }

    fn alloc(&self, bytes: u64) -> AnyResult<u64> {
        match self {
            Plain::Host => Ok(0),
            #[cfg(feature = "cuda")]
            Plain::Cuda { cu, .. } => cu.mem_alloc(bytes as usize),
        }
    }

    fn write(&self, p: u64, bytes: u64) -> AnyResult<()> {
        match self {
            Plain::Host => Ok(()),
            #[cfg(feature = "cuda")]
            Plain::Cuda { cu, .. } => cu.memset_sync(p, 0x5a, bytes as usize),
        }
    }

    fn free(&self, p: u64) -> AnyResult<()> {
        match self {
            Plain::Host => Ok(()),
            #[cfg(feature = "cuda")]
            Plain::Cuda { cu, .. } => cu.mem_free(p),
        }
    }
}
