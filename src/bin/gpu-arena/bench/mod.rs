//! `gpu-arena bench`: one run measuring gpu-arena against its anchors, all
//! measured in the same run, printed as one table per section, as Markdown
//! (`--markdown`, for the docs) or as JSON. Fixed figures from an earlier
//! run on other hardware are printed apart, labelled with where they come
//! from, and never enter a ratio.
//!
//! Sections: a. alloc+free pair latency; b. thread scaling; c. commit
//! bandwidth; d. free while a kernel runs (CUDA); e. growth; f. scratch
//! arena vs `bumpalo`. `--quick` shrinks every section to a smoke run (CI,
//! tests); its figures are noisy.

mod commit;
mod growth;
mod kernel;
mod pairs;
mod scratch;
mod sleep;
mod threads;
mod torch;

use std::time::{Duration, Instant};

use clap::ValueEnum;
use gpu_arena::driver::{Capabilities, Driver, SystemDriver};
use indicatif::{ProgressBar, ProgressStyle};

use crate::table::Table;
use crate::{AnyResult, BackendArg, Backends, fmt_bytes, fmt_ns};

/// `bench` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run (seconds): fewer sizes, batches and rounds.
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of tables.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print the tables as Markdown (headings, pipe tables, notes as lists).
    #[arg(long)]
    markdown: bool,
    /// Run only these sections (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<SectionId>,
    /// Also measure PyTorch's caching allocator (sections a and b), through
    /// this library built against torch from `scripts/torch_anchor.cpp`.
    #[arg(long, value_name = "PATH")]
    torch_anchor: Option<std::path::PathBuf>,
}

/// The sections, in run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionId {
    /// a. alloc+free pair latency.
    Pairs,
    /// b. thread scaling.
    Threads,
    /// c. commit bandwidth.
    Commit,
    /// d. free while a kernel runs (CUDA).
    Kernel,
    /// e. growth: grow in place vs alloc-new + copy + free-old.
    Growth,
    /// f. scratch arena vs bumpalo.
    Scratch,
    /// g. sleep and wake vs per-tensor handles.
    Sleep,
}

impl SectionId {
    /// The name, as `--only` takes it.
    pub const fn name(self) -> &'static str {
        match self {
            SectionId::Pairs => "pairs",
            SectionId::Threads => "threads",
            SectionId::Commit => "commit",
            SectionId::Kernel => "kernel",
            SectionId::Growth => "growth",
            SectionId::Scratch => "scratch",
            SectionId::Sleep => "sleep",
        }
    }
}

/// What a figure measures; ratios are oriented so that > 1 means gpu-arena
/// is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Unit {
    /// Nanoseconds (lower is better).
    #[serde(rename = "ns")]
    Ns,
    /// GiB per second (higher is better).
    #[serde(rename = "GiB/s")]
    GiBps,
    /// Million alloc+free pairs per second (higher is better).
    #[serde(rename = "M pairs/s")]
    Mpairs,
    /// Bytes (lower is better).
    #[serde(rename = "bytes")]
    Bytes,
}

impl Unit {
    fn lower_is_better(self) -> bool {
        matches!(self, Unit::Ns | Unit::Bytes)
    }

    /// The figure as text.
    pub fn fmt(self, v: f64) -> String {
        match self {
            Unit::Ns => fmt_ns(v),
            Unit::GiBps if v >= 100.0 => format!("{v:.0} GiB/s"),
            Unit::GiBps => format!("{v:.1} GiB/s"),
            Unit::Mpairs => format!("{v:.2} M/s"),
            Unit::Bytes => fmt_bytes(v as u64),
        }
    }
}

/// A column of anchors, measured in this run.
#[derive(Debug, serde::Serialize)]
pub struct Anchor {
    /// Name, as printed.
    pub name: String,
}

impl Anchor {
    /// An anchor measured in this run.
    pub fn measured(name: &str) -> Self {
        Anchor { name: name.into() }
    }
}

/// Fixed figures from an earlier run elsewhere, printed apart from the
/// measured table: no ratio or target check uses them.
#[derive(Debug, serde::Serialize)]
pub struct References {
    /// Where and how they were measured.
    pub source: String,
    /// Unit of every figure.
    pub unit: Unit,
    /// Column names.
    pub columns: Vec<String>,
    /// One row per case: the case and one figure per column.
    pub rows: Vec<(String, Vec<Option<f64>>)>,
}

impl References {
    /// The heading line printed above the reference table.
    fn heading(&self) -> String {
        format!(
            "reference figures, not measured in this run (no ratio or target uses them): {}",
            self.source
        )
    }

    fn table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut headers = vec!["case".to_string()];
        headers.extend(self.columns.iter().cloned());
        let rows = self
            .rows
            .iter()
            .map(|(case, v)| {
                let mut cells = vec![case.clone()];
                cells.extend(
                    v.iter()
                        .map(|x| x.map_or("n/a".to_string(), |x| self.unit.fmt(x))),
                );
                cells
            })
            .collect();
        (headers, rows)
    }
}

/// One measured case.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    /// What was measured.
    pub case: String,
    /// Unit of every figure of the row.
    pub unit: Unit,
    /// gpu-arena's figure (`None`: not measured here).
    pub arena: Option<f64>,
    /// One figure per anchor column.
    pub anchors: Vec<Option<f64>>,
    /// gpu-arena against each anchor; > 1 means gpu-arena is better.
    pub ratios: Vec<Option<f64>>,
    /// The target, as text.
    pub target: String,
    /// Whether the target was met (`None`: no target for this row).
    pub met: Option<bool>,
    /// The figure compared with the target, or a remark.
    pub check: String,
}

impl Row {
    /// A row; ratios are computed from the figures.
    pub fn new(
        case: impl Into<String>,
        unit: Unit,
        arena: Option<f64>,
        anchors: Vec<Option<f64>>,
    ) -> Self {
        let ratios = anchors
            .iter()
            .map(|a| match (arena, *a) {
                (Some(x), Some(a)) if x > 0.0 && a > 0.0 => {
                    Some(if unit.lower_is_better() { a / x } else { x / a })
                }
                _ => None,
            })
            .collect();
        Row {
            case: case.into(),
            unit,
            arena,
            anchors,
            ratios,
            target: "—".into(),
            met: None,
            check: String::new(),
        }
    }

    /// Sets the target, whether it was met, and the figure compared.
    pub fn target(
        mut self,
        target: impl Into<String>,
        met: Option<bool>,
        check: impl Into<String>,
    ) -> Self {
        self.target = target.into();
        self.met = met;
        self.check = check.into();
        self
    }
}

/// One section of the report.
#[derive(Debug, serde::Serialize)]
pub struct Section {
    /// Which section.
    pub id: SectionId,
    /// Heading.
    pub title: String,
    /// Anchor columns.
    pub anchors: Vec<Anchor>,
    /// Cases.
    pub rows: Vec<Row>,
    /// How it was measured, and anything that did not run.
    pub notes: Vec<String>,
    /// Fixed figures from an earlier run, printed apart.
    pub references: Option<References>,
}

impl Section {
    /// An empty section.
    pub fn new(id: SectionId, title: impl Into<String>, anchors: Vec<Anchor>) -> Self {
        Section {
            id,
            title: title.into(),
            anchors,
            rows: Vec::new(),
            notes: Vec::new(),
            references: None,
        }
    }

    /// The measured table: headers and cells (ratios joined by `sep`).
    fn table(&self, sep: &str) -> (Vec<String>, Vec<Vec<String>>) {
        let mut headers = vec!["case".to_string(), "gpu-arena".to_string()];
        headers.extend(self.anchors.iter().map(|a| a.name.clone()));
        headers.extend(["ratio".into(), "target".into(), "check".into()]);
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| r.unit.fmt(v));
                let mut cells = vec![r.case.clone(), fmt(r.arena)];
                cells.extend(r.anchors.iter().map(|a| fmt(*a)));
                let ratios: Vec<String> = r
                    .ratios
                    .iter()
                    .map(|x| x.map_or("—".to_string(), fmt_ratio))
                    .collect();
                cells.push(ratios.join(sep));
                cells.push(r.target.clone());
                cells.push(match r.met {
                    Some(true) => format!("yes: {}", r.check),
                    Some(false) => format!("NO: {}", r.check),
                    None => r.check.clone(),
                });
                cells
            })
            .collect();
        (headers, rows)
    }

    /// The section as text: heading, table, notes, then any reference
    /// figures in a table of their own.
    pub fn render(&self) -> String {
        let (headers, rows) = self.table(" | ");
        let mut t = Table::new(headers);
        for r in rows {
            t.row(r);
        }
        let mut out = format!("{}\n{}", self.title, t.render());
        for n in &self.notes {
            out.push_str(&format!("  * {n}\n"));
        }
        if let Some(refs) = &self.references {
            let (headers, rows) = refs.table();
            let mut t = Table::new(headers);
            for r in rows {
                t.row(r);
            }
            out.push_str(&format!("{}\n{}", refs.heading(), t.render()));
        }
        out
    }

    /// The section as Markdown: a heading, a pipe table, notes as a list,
    /// then any reference figures under their own label.
    pub fn render_markdown(&self) -> String {
        let (headers, rows) = self.table(" · ");
        let n = headers.len();
        // Figures right-aligned; case, target and check left-aligned.
        let table = markdown_table(&headers, &rows, |i| i == 0 || i + 2 >= n);
        let mut out = format!("#### {}\n\n{table}", self.title);
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {}\n", md_escape(n)));
            }
        }
        if let Some(refs) = &self.references {
            let (headers, rows) = refs.table();
            out.push_str(&format!(
                "\n{}\n\n{}",
                md_escape(&refs.heading()),
                markdown_table(&headers, &rows, |i| i == 0)
            ));
        }
        out
    }
}

/// Text safe inside a Markdown table cell or list item (pipes escaped).
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A GitHub pipe table; columns for which `left` holds are left-aligned,
/// the others right-aligned.
pub fn markdown_table(
    headers: &[String],
    rows: &[Vec<String>],
    left: impl Fn(usize) -> bool,
) -> String {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| md_escape(c)).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = line(headers);
    let rule: Vec<&str> = (0..headers.len())
        .map(|i| if left(i) { ":---" } else { "---:" })
        .collect();
    out.push_str(&format!("|{}|\n", rule.join("|")));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// How to read the ratio column.
const RATIO_NOTE: &str = "ratio: gpu-arena against each anchor column in order (anchors measured in this run only), > 1 = gpu-arena better (anchor ÷ gpu-arena for times and bytes, gpu-arena ÷ anchor for rates)";

/// `0.93x`, `12.4x`, `3400x`.
pub fn fmt_ratio(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}x")
    } else if x < 100.0 {
        format!("{x:.1}x")
    } else {
        format!("{x:.0}x")
    }
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Backend name.
    pub backend: String,
    /// The device, in words.
    pub device: String,
    /// The backend line said on stderr.
    pub note: String,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Whether this was a `--quick` run.
    pub quick: bool,
    /// Wall time of the whole run.
    pub seconds: f64,
    /// The sections run.
    pub sections: Vec<Section>,
}

/// What every section gets.
pub struct Ctx<'a> {
    /// Opens more drivers of the chosen backend (fresh arenas).
    pub backends: &'a Backends,
    /// The driver opened first (raw anchors use its context).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub main: &'a SystemDriver,
    /// Its capabilities.
    pub caps: Capabilities,
    /// A short run.
    pub quick: bool,
    /// The device ordinal (`--device`).
    pub device: u32,
    /// Raw CUDA calls, on the CUDA backend.
    #[cfg(feature = "cuda")]
    pub cu: Option<crate::cuda::Cu>,
    /// PyTorch's caching allocator (`--torch-anchor`).
    pub torch: Option<torch::TorchAnchor>,
}

impl Ctx<'_> {
    /// The anchor column of PyTorch's caching allocator, where it is
    /// measured (`--torch-anchor`).
    pub fn torch_column(&self) -> Option<Anchor> {
        self.torch.as_ref().map(|t| Anchor::measured(t.name()))
    }

    /// The note saying how PyTorch's caching allocator was measured, or, on
    /// CUDA, how to measure it (none on other backends without the flag).
    pub fn torch_note(&self) -> Option<String> {
        Some(match &self.torch {
            Some(t) => format!(
                "{}: the library of --torch-anchor {} (built from scripts/torch_anchor.cpp, it calls \
                 raw_alloc_with_stream / raw_delete of c10::cuda::CUDACachingAllocator on the legacy default stream, \
                 as a tensor's allocation does)",
                t.name(),
                t.path().display()
            ),
            None if self.is_cuda() => format!(
                "PyTorch's caching allocator: not measured in this run; {}",
                torch::HOW
            ),
            None => return None,
        })
    }

    /// A progress bar of `len` steps on stderr (drawn only on a terminal).
    pub fn progress(&self, id: SectionId, len: u64) -> ProgressBar {
        let pb = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {elapsed} {msg}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_prefix(id.name());
        pb
    }

    /// Whether this is the CUDA backend.
    pub fn is_cuda(&self) -> bool {
        self.caps.backend == gpu_arena::Backend::Cuda
    }
}

/// The settings the global arenas give a tag's arenas (see
/// [`GlobalConfig::tag_bulk_streak`](gpu_arena::global::GlobalConfig::tag_bulk_streak)):
/// memory an engine loads to stay and puts to sleep, laid out in large
/// handles from the first block (sections c and g).
pub fn tag_config() -> gpu_arena::ArenaConfig {
    let mut c = gpu_arena::ArenaConfig::default();
    c.commit.bulk_streak = gpu_arena::global::GlobalConfig::default().tag_bulk_streak;
    c
}

/// One `malloc` + `free` of `layout` through the system allocator (the
/// anchor of sections a and b).
pub fn system_pair(layout: std::alloc::Layout) -> AnyResult<()> {
    use std::alloc::{GlobalAlloc, System};
    if layout.size() == 0 {
        return Err("system_pair needs a nonzero size".into());
    }
    // SAFETY: the layout has a nonzero size (checked above).
    let p = unsafe { System.alloc(layout) };
    if p.is_null() {
        return Err("malloc returned null".into());
    }
    // SAFETY: `p` was allocated just above with the same layout.
    unsafe { System.dealloc(std::hint::black_box(p), layout) };
    Ok(())
}

/// Median of `v` (NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Nanoseconds per call of `f`: the batch size is calibrated (doubling, which
/// also warms up) until a batch takes about `target`; the result is the
/// median over `batches` batches.
pub fn per_call_ns(
    target: Duration,
    batches: usize,
    mut f: impl FnMut() -> AnyResult<()>,
) -> AnyResult<f64> {
    let mut n: u64 = 1;
    let batch = loop {
        let t = Instant::now();
        for _ in 0..n {
            f()?;
        }
        let el = t.elapsed();
        if el >= target / 4 || n >= 1 << 26 {
            let per = el.as_secs_f64() / n as f64;
            break ((target.as_secs_f64() / per.max(1e-12)) as u64).clamp(1, 1 << 28);
        }
        n *= 2;
    };
    let mut v = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..batch {
            f()?;
        }
        v.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    Ok(median(v))
}

/// Runs `bench`.
pub fn run(backend: BackendArg, device: u32, args: &Args) -> AnyResult<()> {
    let start = Instant::now();
    let (backends, main) = Backends::open(backend, device)?;
    let caps = *main.capabilities();
    #[cfg(feature = "cuda")]
    let cu = match &main {
        SystemDriver::Cuda(c) => {
            let cu = crate::cuda::Cu::new(c)?;
            cu.keep_default_pool()?;
            Some(cu)
        }
        _ => None,
    };
    let device_name = match &main {
        #[cfg(feature = "cuda")]
        SystemDriver::Cuda(_) => cu.map(|c| c.device_name()).unwrap_or_default(),
        _ => format!("{} emulated device memory", fmt_bytes(caps.device_memory)),
    };
    let torch = match &args.torch_anchor {
        Some(path) => Some(torch::TorchAnchor::load(path, device)?),
        None => None,
    };
    let ctx = Ctx {
        backends: &backends,
        main: &main,
        caps,
        quick: args.quick,
        device,
        #[cfg(feature = "cuda")]
        cu,
        torch,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wanted = |id| args.only.is_empty() || args.only.contains(&id);
    let header = format!(
        "gpu-arena bench: {} backend ({device_name}), {cpus} CPUs{}",
        caps.backend,
        if args.quick {
            ", --quick (smoke run: noisy figures)"
        } else {
            ""
        }
    );
    if args.markdown {
        println!("{header}\n\n{RATIO_NOTE}\n");
    } else if !args.json {
        println!("{header}\n{RATIO_NOTE}\n");
    }
    type SectionFn = fn(&Ctx) -> AnyResult<Section>;
    let all: [(SectionId, SectionFn); 7] = [
        (SectionId::Pairs, pairs::run),
        (SectionId::Threads, threads::run),
        (SectionId::Commit, commit::run),
        (SectionId::Kernel, kernel::run),
        (SectionId::Growth, growth::run),
        (SectionId::Scratch, scratch::run),
        (SectionId::Sleep, sleep::run),
    ];
    let mut sections = Vec::new();
    for (id, f) in all {
        if !wanted(id) {
            continue;
        }
        let s = f(&ctx)?;
        if args.markdown {
            println!("{}", s.render_markdown());
        } else if !args.json {
            println!("{}", s.render());
        }
        sections.push(s);
    }
    let report = Report {
        backend: caps.backend.name().into(),
        device: device_name,
        note: backends.note.clone(),
        cpus,
        quick: args.quick,
        seconds: start.elapsed().as_secs_f64(),
        sections,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let missed: Vec<String> = report
            .sections
            .iter()
            .flat_map(|s| {
                s.rows
                    .iter()
                    .filter(|r| r.met == Some(false))
                    .map(move |r| format!("{}: {}", s.id.name(), r.case))
            })
            .collect();
        let end = if args.markdown { "\n" } else { "" };
        if missed.is_empty() {
            println!("targets: all met{end}");
        } else {
            println!("targets missed: {}{end}", missed.join("; "));
        }
        println!("total {:.1} s", report.seconds);
    }
    Ok(())
}
