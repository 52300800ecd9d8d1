//! Replaying allocation traces (the format of `shared/traces/README.md`)
//! through an arena: peak committed / peak live, time per op, driver calls.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use crate::arena::Arena;
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};
use crate::stats::Stats;

/// One trace event that an allocator replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `alloc`: a block of `size` bytes known by `addr` until its free.
    Alloc {
        /// The traced address (an identity, not an address of ours).
        addr: u64,
        /// Bytes.
        size: u64,
        /// Traced stream.
        stream: u64,
    },
    /// `free_completed`: the block known by `addr` became reusable.
    Free {
        /// The traced address.
        addr: u64,
        /// Traced stream.
        stream: u64,
    },
}

#[derive(serde::Deserialize)]
struct Line {
    action: String,
    addr: u64,
    size: u64,
    #[serde(default)]
    stream: u64,
}

/// Reads a trace (gzip'd JSON lines, or plain JSON lines), keeping `alloc`
/// and `free_completed` events.
pub fn read_trace(path: &Path) -> std::io::Result<Vec<Event>> {
    read_trace_marked(path).map(|(events, _)| events)
}

/// Reads a trace like [`read_trace`], and also where its repetitions end:
/// a trace recorded with `scripts/torch_bench.py --repeat N --trace` has a
/// `rep_end` line after each repetition. Returns the events and, for each
/// `rep_end`, the number of events before it (ascending).
pub fn read_trace_marked(path: &Path) -> std::io::Result<(Vec<Event>, Vec<usize>)> {
    let file = std::fs::File::open(path)?;
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut events = Vec::new();
    let mut marks = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        match l.action.as_str() {
            "alloc" => events.push(Event::Alloc {
                addr: l.addr,
                size: l.size,
                stream: l.stream,
            }),
            "free_completed" => events.push(Event::Free {
                addr: l.addr,
                stream: l.stream,
            }),
            "rep_end" => marks.push(events.len()),
            _ => {}
        }
    }
    Ok((events, marks))
}

/// A trace with recorded repetitions (`marks` from [`read_trace_marked`])
/// run on to `total` repetitions: where its last two recorded repetitions
/// are the same events (addresses included, as a program that repeats with
/// the same inputs under PyTorch's allocator records them), the last one is
/// appended again until there are `total`. Returns the longer trace and its
/// marks, or `None` when the last two differ (or fewer than two were
/// recorded).
pub fn run_on(events: &[Event], marks: &[usize], total: usize) -> Option<(Vec<Event>, Vec<usize>)> {
    let n = marks.len();
    if n < 2 {
        return None;
    }
    let start = if n >= 3 { marks[n - 3] } else { 0 };
    let (prev, last) = (
        &events[start..marks[n - 2]],
        &events[marks[n - 2]..marks[n - 1]],
    );
    if prev != last {
        return None;
    }
    let mut longer = events[..marks[n - 1]].to_vec();
    let mut more = marks.to_vec();
    while more.len() < total {
        longer.extend_from_slice(last);
        more.push(longer.len());
    }
    Some((longer, more))
}

/// What a replay measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplayResult {
    /// Events replayed.
    pub events: u64,
    /// Allocations replayed.
    pub allocs: u64,
    /// Highest sum of live traced sizes.
    pub peak_requested: u64,
    /// Arena counters at the end (peaks included).
    pub stats: Stats,
    /// Peak committed / peak live.
    pub ratio: f64,
    /// Wall time of the replay loop (seconds).
    pub seconds: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Blocks live at the end of the trace (never freed there).
    pub live_at_end: u64,
}

/// Replays `events` through `arena` (all on the default stream, as traced),
/// calling `progress(done)` every 4096 events. Blocks still live at the end
/// are freed afterwards (not timed).
pub fn replay<D: Driver>(
    arena: &mut Arena<D>,
    events: &[Event],
    mut progress: impl FnMut(u64),
) -> Result<ReplayResult> {
    replay_observed(arena, events, 4096, |done, _| progress(done))
}

/// [`replay`], calling `observe(done, arena)` every `every` events (`every`
/// is at least 1) and once after the last event, before the blocks still
/// live are freed: what the CLI samples to draw committed and live bytes
/// over time.
pub fn replay_observed<D: Driver>(
    arena: &mut Arena<D>,
    events: &[Event],
    every: u64,
    mut observe: impl FnMut(u64, &Arena<D>),
) -> Result<ReplayResult> {
    let every = every.max(1);
    let mut live: std::collections::HashMap<u64, (DevicePtr, u64)> =
        std::collections::HashMap::new();
    let (mut cur, mut peak, mut allocs) = (0u64, 0u64, 0u64);
    let t = Instant::now();
    for (i, e) in events.iter().enumerate() {
        match *e {
            Event::Alloc { addr, size, .. } => {
                let p = arena.alloc_on(size.max(1), 512, Stream::DEFAULT)?;
                live.insert(addr, (p, size));
                cur += size;
                peak = peak.max(cur);
                allocs += 1;
            }
            Event::Free { addr, .. } => {
                let Some((p, size)) = live.remove(&addr) else {
                    return Err(Error::Config("trace frees a block it never allocated"));
                };
                arena.free_on(p, Stream::DEFAULT)?;
                cur -= size;
            }
        }
        if (i as u64 + 1) % every == 0 {
            observe(i as u64 + 1, arena);
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    observe(events.len() as u64, arena);
    let stats = arena.stats();
    let live_at_end = live.len() as u64;
    for (_, (p, _)) in live {
        arena.free(p)?;
    }
    Ok(ReplayResult {
        events: events.len() as u64,
        allocs,
        peak_requested: peak,
        ratio: stats.peak_ratio(),
        stats,
        seconds,
        ops_per_sec: events.len() as f64 / seconds.max(1e-9),
        live_at_end,
    })
}

/// How [`replay_repeated`] plays a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repeat {
    /// Times the trace's workload runs (1: as traced).
    pub times: usize,
    /// Emulated GPU lag: fences of frees complete only every `lag` events
    /// (0: at once). See [`replay_repeated`].
    pub lag: usize,
}

/// What one repetition of [`replay_repeated`] measured.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Repetition {
    /// Allocations replayed in this repetition.
    pub allocs: u64,
    /// Peak committed / peak live within this repetition.
    pub ratio: f64,
    /// Peak committed and peak live within this repetition (bytes).
    pub peak_committed: u64,
    /// Peak live bytes within this repetition.
    pub peak_live: u64,
    /// VMM driver calls (create, map, set_access, unmap, release) made in it.
    pub vmm_calls: u64,
    /// All driver calls (VMM calls, fence records and waits) made in it.
    pub calls: u64,
    /// Events replayed (allocations and frees).
    pub events: u64,
    /// Wall time of the repetition's events (seconds).
    pub seconds: f64,
    /// A fingerprint of where the repetition's blocks went: a hash of each
    /// allocation's offset in the arena's reservation, in order. Two runs
    /// that made the same decisions have the same fingerprints.
    pub placements: u64,
}

/// Blocks of a trace that live through the whole workload (allocated in its
/// first 5 % of events and freed in its last 5 %, or never freed): the
/// model's weights. Returns (their alloc event indices, their free event
/// indices).
pub fn persistent(
    events: &[Event],
) -> (
    std::collections::HashSet<usize>,
    std::collections::HashSet<usize>,
) {
    let n = events.len();
    let (mut allocs, mut frees) = (
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    );
    let mut open: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    // Allocations per address: a persistent block's address must be its
    // alone in the whole trace, else, run again, another block of the trace
    // would find the address still taken (or take it over).
    let mut uses: std::collections::HashMap<u64, u32> = std::collections::HashMap::new();
    let mut pairs: Vec<(u64, usize, Option<usize>)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match *e {
            Event::Alloc { addr, .. } => {
                open.insert(addr, i);
                *uses.entry(addr).or_default() += 1;
            }
            Event::Free { addr, .. } => {
                if let Some(s) = open.remove(&addr) {
                    if s * 20 < n && i * 20 > 19 * n {
                        pairs.push((addr, s, Some(i)));
                    }
                }
            }
        }
    }
    pairs.extend(open.into_iter().map(|(addr, s)| (addr, s, None)));
    for (addr, s, f) in pairs {
        if uses.get(&addr) == Some(&1) {
            allocs.insert(s);
            frees.extend(f);
        }
    }
    (allocs, frees)
}

/// Which blocks of a trace [`select`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Every block.
    All,
    /// The work alone: the blocks that live through the trace ([`persistent`])
    /// left out, as the default tag of an engine that keeps its weights in
    /// a tag of their own sees the trace.
    Work,
    /// Only the blocks that live through the trace: that engine's weights tag.
    Persistent,
}

/// The events of `part` of a trace, with its repetition marks (from
/// [`read_trace_marked`]) moved to match. The frees of the blocks that live
/// through the trace are left out in every part: those blocks stay live to
/// the end, as they would in a program that goes on.
pub fn select(events: &[Event], marks: &[usize], part: Part) -> (Vec<Event>, Vec<usize>) {
    let (allocs, frees) = persistent(events);
    let mut kept = Vec::with_capacity(events.len());
    let mut moved = Vec::with_capacity(marks.len());
    let mut m = marks.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        while m.next_if(|&&k| k == i).is_some() {
            moved.push(kept.len());
        }
        let lives = allocs.contains(&i);
        let keep = match part {
            _ if frees.contains(&i) => false,
            Part::All => true,
            Part::Work => !lives,
            Part::Persistent => lives,
        };
        if keep {
            kept.push(*e);
        }
    }
    moved.extend(m.map(|_| kept.len()));
    (kept, moved)
}

/// Replays `events` `repeat.times` times in one arena, as a program that
/// runs its workload again with the same inputs would: the blocks that live
/// through the whole trace (the weights; see [`persistent`]) are allocated
/// once and freed at the end, everything else every time. With
/// `repeat.lag > 0`, `hold()` is called at the start and `complete()` then
/// `hold()` every `lag` events, so the caller can keep fences pending like a
/// GPU running behind the CPU (the host backend's
/// [`HostDriver::hold`](crate::driver::HostDriver::hold)). Returns one
/// [`Repetition`] per run.
pub fn replay_repeated<D: Driver>(
    arena: &mut Arena<D>,
    events: &[Event],
    repeat: Repeat,
    hold: impl Fn(),
    complete: impl Fn(),
) -> Result<Vec<Repetition>> {
    replay_split(arena, events, repeat, &[], hold, complete)
}

/// Replays once, as traced, a trace recorded with several repetitions in
/// one process (`marks`: where each ended, from [`read_trace_marked`]),
/// fences `lag` events behind as in [`replay_repeated`]. Returns one
/// [`Repetition`] per recorded repetition (and one for events after the
/// last mark, if any): the first carries the model's creation and the
/// program's first-time allocations, as on the GPU.
pub fn replay_recorded<D: Driver>(
    arena: &mut Arena<D>,
    events: &[Event],
    marks: &[usize],
    lag: usize,
    hold: impl Fn(),
    complete: impl Fn(),
) -> Result<Vec<Repetition>> {
    replay_split(
        arena,
        events,
        Repeat { times: 1, lag },
        marks,
        hold,
        complete,
    )
}

/// One repetition being replayed: what it started from.
struct Segment {
    before: crate::commit::DriverCalls,
    allocs: u64,
    events: u64,
    start: Instant,
    placements: u64,
}

impl Segment {
    fn start<D: Driver>(arena: &mut Arena<D>) -> Self {
        arena.reset_peaks();
        Segment {
            before: arena.stats().driver_calls,
            allocs: 0,
            events: 0,
            start: Instant::now(),
            // FNV-1a's offset basis.
            placements: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Adds an allocation at offset `off` to the fingerprint (FNV-1a over
    /// the offset's bytes).
    fn place(&mut self, off: u64) {
        for b in off.to_le_bytes() {
            self.placements = (self.placements ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn end<D: Driver>(self, arena: &Arena<D>) -> Repetition {
        let seconds = self.start.elapsed().as_secs_f64();
        let s = arena.stats();
        let calls = s.driver_calls.since(&self.before);
        Repetition {
            events: self.events,
            seconds,
            allocs: self.allocs,
            ratio: s.peak_ratio(),
            peak_committed: s.peak_committed,
            peak_live: s.peak_live,
            vmm_calls: calls.vmm(),
            calls: calls.total(),
            placements: self.placements,
        }
    }
}

/// [`replay_repeated`], with each run also split where `marks` say.
fn replay_split<D: Driver>(
    arena: &mut Arena<D>,
    events: &[Event],
    repeat: Repeat,
    marks: &[usize],
    hold: impl Fn(),
    complete: impl Fn(),
) -> Result<Vec<Repetition>> {
    let (keep_allocs, keep_frees) = persistent(events);
    let mut live: std::collections::HashMap<u64, DevicePtr> = std::collections::HashMap::new();
    let mut out = Vec::new();
    if repeat.lag > 0 {
        hold();
    }
    let mut tick = 0usize;
    for r in 0..repeat.times.max(1) {
        let mut seg = Segment::start(arena);
        let last = r + 1 == repeat.times.max(1);
        for (i, e) in events.iter().enumerate() {
            if i > 0 && marks.binary_search(&i).is_ok() {
                out.push(seg.end(arena));
                seg = Segment::start(arena);
            }
            match *e {
                Event::Alloc { addr, size, .. } => {
                    if r > 0 && keep_allocs.contains(&i) {
                        continue;
                    }
                    let p = arena.alloc_on(size.max(1), 512, Stream::DEFAULT)?;
                    live.insert(addr, p);
                    seg.place(p.addr() - arena.reservation().0.addr());
                    seg.allocs += 1;
                    seg.events += 1;
                }
                Event::Free { addr, .. } => {
                    if !last && keep_frees.contains(&i) {
                        continue;
                    }
                    seg.events += 1;
                    let Some(p) = live.remove(&addr) else {
                        return Err(Error::Config("trace frees a block it never allocated"));
                    };
                    arena.free_on(p, Stream::DEFAULT)?;
                }
            }
            tick += 1;
            if repeat.lag > 0 && tick % repeat.lag == 0 {
                complete();
                hold();
            }
        }
        if seg.events > 0 || marks.is_empty() {
            out.push(seg.end(arena));
        }
    }
    if repeat.lag > 0 {
        complete();
    }
    for (_, p) in live {
        arena.free(p)?;
    }
    Ok(out)
}

#[cfg(test)]
mod persistent_tests {
    use super::{Event, persistent};

    fn a(addr: u64) -> Event {
        Event::Alloc {
            addr,
            size: 512,
            stream: 0,
        }
    }
    fn f(addr: u64) -> Event {
        Event::Free { addr, stream: 0 }
    }

    #[test]
    fn a_trace_runs_on_only_where_its_last_two_repetitions_are_the_same() {
        use super::run_on;
        // Repetition 1 allocates a weight; 2 and 3 the same temporary.
        let events = vec![a(1), a(2), f(2), a(2), f(2), a(2), f(2)];
        let (longer, marks) = run_on(&events, &[3, 5, 7], 5).unwrap();
        assert_eq!(marks, vec![3, 5, 7, 9, 11]);
        assert_eq!(&longer[7..], &[a(2), f(2), a(2), f(2)]);
        // A third repetition that differs: nothing to run on.
        let differs = vec![a(1), a(2), f(2), a(3), f(3), a(2), f(2)];
        assert!(run_on(&differs, &[3, 5, 7], 5).is_none());
        assert!(run_on(&events, &[7], 5).is_none(), "one repetition");
    }

    #[test]
    fn a_part_of_a_trace_keeps_its_blocks_and_moves_the_marks() {
        use super::{Part, select};
        // Block 1 lives through the trace (freed in its last 5 %), 2 and 3
        // come and go in each of two repetitions.
        let mut events = vec![a(1)];
        for _ in 0..20 {
            events.extend([a(2), f(2)]);
        }
        let mark = events.len();
        for _ in 0..20 {
            events.extend([a(3), f(3)]);
        }
        events.push(f(1));
        let marks = [mark, events.len()];
        let (all, m) = select(&events, &marks, Part::All);
        assert_eq!(
            all.len(),
            events.len() - 1,
            "the persistent free is left out"
        );
        assert_eq!(m, vec![mark, events.len() - 1]);
        let (work, m) = select(&events, &marks, Part::Work);
        assert_eq!(work.len(), 80);
        assert!(!work.contains(&a(1)));
        assert_eq!(m, vec![40, 80]);
        let (weights, m) = select(&events, &marks, Part::Persistent);
        assert_eq!(weights, vec![a(1)]);
        assert_eq!(m, vec![1, 1]);
    }

    #[test]
    fn a_block_whose_address_the_trace_hands_out_again_is_not_persistent() {
        // 1: a weight, never freed; 2: a temporary, then a block that stays
        // at the same address (run again, the temporary would find it taken).
        let mut events = vec![a(1), a(2), f(2), a(2)];
        events.extend((0..40).flat_map(|i| [a(100 + i), f(100 + i)]));
        let (allocs, frees) = persistent(&events);
        assert!(allocs.contains(&0), "the weight stays");
        assert!(!allocs.contains(&3), "the second block at 2 is run again");
        assert!(frees.is_empty());
    }
}
