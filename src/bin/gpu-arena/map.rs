//! `gpu-arena map`: draws an arena as SVG, written by hand (no drawing
//! library): the regions of the reservation as grids of pages (uncommitted,
//! committed with live bytes, committed and empty = pending decommit) with
//! the live blocks on them coloured by policy; with `--trace`, above that, a
//! chart of committed and live bytes over the trace's replay.
//!
//! Without `--trace` the snapshot is of a small built-in workload: slab
//! objects and large spans (a third of them freed again), a scratch arena
//! and a growable buffer.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use gpu_arena::driver::{Driver, Stream, SystemDriver};
use gpu_arena::policy::Policy;
use gpu_arena::replay::replay_observed;
use gpu_arena::stats::PageStateReport;
use gpu_arena::{
    Arena, ArenaConfig, GrowBuffer, Kind, Scratch, ScratchConfig, SharedArena, Snapshot,
};

use crate::{AnyResult, BackendArg, Backends, fmt_bytes};

/// `map` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Replay this trace: chart committed vs live bytes over time, then the
    /// page map.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// With --trace: sample every N events (default: about 1000 samples).
    #[arg(long)]
    every: Option<u64>,
    /// With --trace: draw the page map at the end of the trace, or at the
    /// sample with the most live bytes.
    #[arg(long, value_enum, default_value_t = At::End)]
    at: At,
    /// Wrap the SVG in an HTML page.
    #[arg(long)]
    html: bool,
    /// Output file (default: standard output).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// When the page map of a replay is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum At {
    /// After the last event (blocks never freed are still live).
    End,
    /// At the sample with the most live bytes.
    Peak,
}

/// One sample of a replay: events done, live bytes, committed bytes.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    done: u64,
    live: u64,
    committed: u64,
}

const WIDTH: f64 = 1000.0;
const MARGIN: f64 = 20.0;
const COLS: u64 = 64;
const CELL_W: f64 = (WIDTH - 2.0 * MARGIN) / COLS as f64;
const CELL_H: f64 = 18.0;
const ROW_H: f64 = CELL_H + 3.0;
/// Most pages drawn per region.
const MAX_PAGES: u64 = 4096;

const FREE: &str = "#f3f3f3";
const LIVE: &str = "#cdeccd";
const PENDING: &str = "#ffd59e";
const COMMITTED_LINE: &str = "#d62728";
const LIVE_LINE: &str = "#1f77b4";

fn policy_colour(p: Policy) -> &'static str {
    match p {
        Policy::Slab => "#4c78a8",
        Policy::Large => "#9467bd",
        Policy::Scratch => "#17becf",
        Policy::Grow => "#e45756",
    }
}

/// Escapes text for SVG/HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// SVG under construction: elements appended top to bottom.
struct Svg {
    body: String,
    y: f64,
}

impl Svg {
    fn new() -> Self {
        Svg {
            body: String::new(),
            y: MARGIN,
        }
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, extra: &str) {
        let _ = write!(
            self.body,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" fill="{fill}"{extra}/>"#
        );
    }

    fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, s: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}">{}</text>"#,
            esc(s)
        );
        self.body.push('\n');
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str) {
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="1"/>"#
        );
    }

    /// Swatches with labels in one line at the current height.
    fn legend(&mut self, items: &[(&str, &str)]) {
        let mut x = MARGIN;
        for (colour, label) in items {
            self.rect(x, self.y, 12.0, 12.0, colour, r##" stroke="#999""##);
            self.text(x + 16.0, self.y + 10.5, 12.0, "start", label);
            x += 16.0 + 7.0 * label.chars().count() as f64 + 18.0;
        }
        self.y += 20.0;
    }

    fn finish(self) -> String {
        let h = self.y + MARGIN;
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{h:.0}\" viewBox=\"0 0 {WIDTH} {h:.0}\" font-family=\"sans-serif\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{}</svg>\n",
            self.body
        )
    }
}

/// A step of about `max / ticks` rounded to 1, 2 or 5 times a power of ten.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let n = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    n * mag
}

/// `12k`, `1.5M`, `300`.
fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
    }
}

/// The chart of committed and live bytes over the replay.
fn chart(svg: &mut Svg, samples: &[Sample], events: u64) {
    let (x0, x1) = (MARGIN + 60.0, WIDTH - MARGIN - 10.0);
    let (top, bottom) = (svg.y + 10.0, svg.y + 250.0);
    let ymax_bytes = samples
        .iter()
        .map(|s| s.committed.max(s.live))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.08;
    let (unit, div) = if ymax_bytes >= 4.0 * (1u64 << 30) as f64 {
        ("GiB", (1u64 << 30) as f64)
    } else {
        ("MiB", (1u64 << 20) as f64)
    };
    let ymax = ymax_bytes / div;
    let xmax = events.max(1) as f64;
    let px = |done: u64| x0 + (x1 - x0) * done as f64 / xmax;
    let py = |bytes: u64| bottom - (bottom - top) * (bytes as f64 / div) / ymax;
    // Grid and ticks.
    let step = nice_step(ymax, 6.0);
    let mut v = 0.0;
    while v <= ymax {
        let y = bottom - (bottom - top) * v / ymax;
        svg.line(x0, y, x1, y, "#e6e6e6");
        svg.text(x0 - 6.0, y + 4.0, 11.0, "end", &format!("{v} {unit}"));
        v += step;
    }
    let step = nice_step(xmax, 8.0);
    let mut v = 0.0;
    while v <= xmax {
        let x = x0 + (x1 - x0) * v / xmax;
        svg.line(x, bottom, x, bottom + 4.0, "#666");
        svg.text(x, bottom + 16.0, 11.0, "middle", &fmt_count(v));
        v += step;
    }
    svg.line(x0, top, x0, bottom, "#666");
    svg.line(x0, bottom, x1, bottom, "#666");
    svg.text(
        (x0 + x1) / 2.0,
        bottom + 32.0,
        12.0,
        "middle",
        "events replayed",
    );
    for (colour, f) in [
        (
            COMMITTED_LINE,
            (|s: &Sample| s.committed) as fn(&Sample) -> u64,
        ),
        (LIVE_LINE, |s: &Sample| s.live),
    ] {
        let mut pts = String::new();
        for s in samples {
            let _ = write!(pts, "{:.1},{:.1} ", px(s.done), py(f(s)));
        }
        let _ = writeln!(
            svg.body,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            pts.trim_end()
        );
    }
    svg.y = bottom + 42.0;
    svg.legend(&[
        (COMMITTED_LINE, "committed (physical)"),
        (LIVE_LINE, "live (allocated)"),
    ]);
    svg.y += 6.0;
}

/// Merges adjacent blocks of the same policy: (start, end, policy).
fn merged_blocks(snap: &Snapshot) -> Vec<(u64, u64, Policy)> {
    let mut out: Vec<(u64, u64, Policy)> = Vec::new();
    for b in &snap.blocks {
        match out.last_mut() {
            Some(last) if last.1 == b.offset && last.2 == b.policy => last.1 += b.size,
            _ => out.push((b.offset, b.offset + b.size, b.policy)),
        }
    }
    out
}

/// The page map: each region as a grid of pages with its blocks.
fn page_map(svg: &mut Svg, snap: &Snapshot) {
    let page = snap.page;
    let pages: HashMap<u64, (PageStateReport, u64)> = snap
        .pages
        .iter()
        .map(|p| (p.index, (p.state, p.live)))
        .collect();
    let blocks = merged_blocks(snap);
    for r in &snap.regions {
        let first = r.offset / page;
        let used = r.used.div_ceil(page);
        let shown = used.min(MAX_PAGES);
        let mut label = format!(
            "region {}: {} reserved, {} used (high-water), {} pages of {}",
            r.name,
            fmt_bytes(r.size),
            fmt_bytes(r.used),
            used,
            fmt_bytes(page)
        );
        if shown < used {
            let _ = write!(label, " (first {shown} drawn)");
        }
        svg.text(MARGIN, svg.y + 12.0, 13.0, "start", &label);
        svg.y += 20.0;
        if shown == 0 {
            svg.text(
                MARGIN,
                svg.y + 10.0,
                11.0,
                "start",
                "(nothing allocated here)",
            );
            svg.y += 20.0;
            continue;
        }
        let top = svg.y;
        let cell = |p: u64| {
            let i = p - first;
            (
                MARGIN + (i % COLS) as f64 * CELL_W,
                top + (i / COLS) as f64 * ROW_H,
            )
        };
        for p in first..first + shown {
            let (x, y) = cell(p);
            let (fill, state) = match pages.get(&p) {
                Some((PageStateReport::Live, live)) => {
                    (LIVE, format!("committed, {} live", fmt_bytes(*live)))
                }
                Some((PageStateReport::Pending, _)) => {
                    (PENDING, "committed, empty: pending decommit".to_string())
                }
                _ => (FREE, "not committed".to_string()),
            };
            let _ = write!(
                svg.body,
                r##"<rect x="{x:.2}" y="{y:.2}" width="{:.2}" height="{CELL_H}" fill="{fill}" stroke="#c8c8c8" stroke-width="0.5"><title>page {p} (+{}): {state}</title></rect>"##,
                CELL_W - 1.0,
                fmt_bytes(p * page)
            );
        }
        svg.body.push('\n');
        let (lo, hi) = (first * page, (first + shown) * page);
        for &(s, e, policy) in &blocks {
            let (s, e) = (s.max(lo), e.min(hi));
            if s >= e {
                continue;
            }
            let mut a = s;
            while a < e {
                let p = a / page;
                let b = e.min((p + 1) * page);
                let (x, y) = cell(p);
                let w = ((b - a) as f64 / page as f64 * (CELL_W - 1.0)).max(0.6);
                let x = x + (a - p * page) as f64 / page as f64 * (CELL_W - 1.0);
                // On uncommitted pages (reserved, not yet grown into: scratch
                // arenas and growable buffers) only a thin line.
                let (y, h) = if pages.contains_key(&p) {
                    (y + 4.0, CELL_H - 8.0)
                } else {
                    (y + CELL_H - 6.0, 2.0)
                };
                svg.rect(x, y, w, h, policy_colour(policy), "");
                a = b;
            }
        }
        svg.body.push('\n');
        svg.y = top + shown.div_ceil(COLS) as f64 * ROW_H + 8.0;
    }
    svg.legend(&[
        (FREE, "not committed"),
        (LIVE, "committed, live"),
        (PENDING, "committed, empty (pending)"),
    ]);
    svg.legend(&[
        (policy_colour(Policy::Slab), "slab"),
        (policy_colour(Policy::Large), "large"),
        (policy_colour(Policy::Scratch), "scratch"),
        (
            policy_colour(Policy::Grow),
            "grow (blocks by policy; a thin line = reserved, not committed)",
        ),
    ]);
}

/// Splits `line` at ` · ` separators into lines of at most about `max` characters.
fn wrap(line: &str, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for part in line.split(" · ") {
        match out.last_mut() {
            Some(l) if l.chars().count() + 3 + part.chars().count() <= max => {
                l.push_str(" · ");
                l.push_str(part);
            }
            _ => out.push(part.to_string()),
        }
    }
    out
}

/// The summary line of a snapshot's counters.
fn summary(snap: &Snapshot) -> String {
    let s = &snap.stats;
    format!(
        "{} backend · committed {} · live {} · peak committed {} · peak live {} · pending decommit {} · handles {} · driver calls {}",
        snap.backend,
        fmt_bytes(s.committed),
        fmt_bytes(s.live),
        fmt_bytes(s.peak_committed),
        fmt_bytes(s.peak_live),
        fmt_bytes(s.pending_decommit),
        s.handles,
        s.driver_calls.total()
    )
}

/// The SVG of a snapshot, with a chart above it when `samples` are given.
pub fn render(
    title: &str,
    lines: &[String],
    samples: Option<(&[Sample], u64)>,
    snap: &Snapshot,
) -> String {
    let mut svg = Svg::new();
    svg.text(MARGIN, svg.y + 16.0, 18.0, "start", title);
    svg.y += 26.0;
    for l in lines.iter().flat_map(|l| wrap(l, 150)) {
        svg.text(MARGIN, svg.y + 12.0, 12.0, "start", &l);
        svg.y += 17.0;
    }
    svg.y += 6.0;
    if let Some((samples, events)) = samples {
        chart(&mut svg, samples, events);
    }
    page_map(&mut svg, snap);
    svg.finish()
}

/// The built-in workload's snapshot (no `--trace`).
fn demo(driver: SystemDriver, device: u32) -> AnyResult<Snapshot> {
    let shared = SharedArena::new(driver, Kind::Device(device), ArenaConfig::default())?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |m: u64| crate::xorshift(&mut x) % m;
    let mut blocks = Vec::new();
    for _ in 0..3000 {
        blocks.push(shared.alloc(64 << next(9), 256, Stream::DEFAULT)?);
    }
    for _ in 0..24 {
        blocks.push(shared.alloc((256 << 10) * (1 + next(96)), 512, Stream::DEFAULT)?);
    }
    let mut kept = Vec::new();
    for (i, p) in blocks.into_iter().enumerate() {
        if i % 3 == 1 {
            shared.free(p, Stream::DEFAULT)?;
        } else {
            kept.push(p);
        }
    }
    let scratch = Scratch::with_config(
        &shared,
        ScratchConfig {
            max: 64 << 20,
            retain: 8 << 20,
            ..ScratchConfig::default()
        },
    )?;
    for _ in 0..1200 {
        scratch.alloc_raw(4096, 256)?;
    }
    let mut grow = GrowBuffer::with_max(&shared, 256 << 20)?;
    grow.resize(20 << 20)?;
    let snap = shared.snapshot();
    drop((scratch, grow));
    for p in kept {
        shared.free(p, Stream::DEFAULT)?;
    }
    Ok(snap)
}

/// Replays `path`, sampling every `every` events; the snapshot at the end or
/// at the sample with the most live bytes.
fn replayed(
    driver: SystemDriver,
    device: u32,
    path: &Path,
    every: Option<u64>,
    at: At,
) -> AnyResult<(Vec<Sample>, u64, Snapshot, String)> {
    let events = crate::replay::load(path)?;
    let every = every.unwrap_or((events.len() as u64 / 1000).max(1));
    let mut arena = Arena::new(driver, Kind::Device(device), ArenaConfig::default())?;
    let pb = crate::replay::bar(events.len(), &path.display().to_string());
    let mut samples = vec![Sample {
        done: 0,
        live: 0,
        committed: 0,
    }];
    let mut best: Option<(u64, Snapshot)> = None;
    let mut last = None;
    let n = events.len() as u64;
    let r = replay_observed(&mut arena, &events, every, |done, a| {
        let st = a.stats();
        samples.push(Sample {
            done,
            live: st.live,
            committed: st.committed,
        });
        pb.set_position(done);
        if at == At::Peak && best.as_ref().is_none_or(|(l, _)| st.live > *l) {
            best = Some((st.live, a.snapshot()));
        }
        if done == n {
            last = Some(a.snapshot());
        }
    })
    .map_err(|e| format!("replay of {} failed: {e}", path.display()))?;
    pb.finish_and_clear();
    let (snap, when) = match (at, best, last) {
        (At::Peak, Some((_, s)), _) => (s, "at the sample with the most live bytes"),
        (_, _, Some(s)) => (s, "after the last event"),
        _ => (arena.snapshot(), "after the replay"),
    };
    let mut line = format!(
        "{} events ({} allocs) · peak committed {} / peak live {} = {:.4}",
        r.events,
        r.allocs,
        fmt_bytes(r.stats.peak_committed),
        fmt_bytes(r.stats.peak_live),
        r.ratio
    );
    if let Some(p) = crate::replay::pytorch(path) {
        let _ = write!(
            line,
            " (PyTorch on the H100: {:.3} default, {:.3} expandable segments)",
            p.default, p.expandable
        );
    }
    let _ = write!(line, " · page map {when}");
    Ok((samples, n, snap, line))
}

/// Runs `map`.
pub fn run(backend: BackendArg, device: u32, args: &Args) -> AnyResult<()> {
    let (_, driver) = Backends::open(backend, device)?;
    let svg = match &args.trace {
        Some(path) => {
            let (samples, n, snap, line) = replayed(driver, device, path, args.every, args.at)?;
            let name = path.file_name().map_or(path.display().to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
            render(
                &format!("gpu-arena replay of {name}"),
                &[line, summary(&snap)],
                Some((&samples, n)),
                &snap,
            )
        }
        None => {
            let backend = driver.capabilities().backend;
            let snap = demo(driver, device)?;
            render(
                &format!("gpu-arena snapshot (built-in workload, {backend} backend)"),
                &[
                    "3000 slab objects and 24 large spans (a third of each freed again), a scratch arena, a growable buffer".into(),
                    summary(&snap),
                ],
                None,
                &snap,
            )
        }
    };
    let out = if args.html {
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gpu-arena map</title></head>\n<body style=\"margin:0\">\n{svg}</body></html>\n"
        )
    } else {
        svg
    };
    match &args.output {
        Some(p) => {
            std::fs::write(p, out).map_err(|e| format!("cannot write {}: {e}", p.display()))?
        }
        None => print!("{out}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(370.0, 6.0), 100.0);
        assert_eq!(nice_step(253_000.0, 8.0), 50_000.0);
        assert_eq!(fmt_count(50_000.0), "50k");
    }

    #[test]
    fn wraps_at_separators() {
        assert_eq!(wrap("aaa · bbb · ccc", 9), vec!["aaa · bbb", "ccc"]);
        assert_eq!(wrap("aaaaaaaaaaaa · b", 5), vec!["aaaaaaaaaaaa", "b"]);
    }

    #[test]
    fn escapes() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
