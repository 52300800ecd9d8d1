//! Reports: accounting, stats and epochs summed over tags and shards, as
//! values or JSON, and the report printed at exit.

use super::{GlobalArena, arenas, timing};
use crate::arena::Accounting;
use crate::driver::Driver;
use crate::lock::lock;
use crate::stats::Stats;

/// What happened between two calls of [`GlobalArena::epoch`] (a phase of a
/// program: one repetition of a workload, one training step, a batch).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Epoch {
    /// Peak live bytes in the epoch (all tags).
    pub peak_live: u64,
    /// Peak committed bytes in the epoch (all tags).
    pub peak_committed: u64,
    /// `peak_committed / peak_live`.
    pub peak_ratio: f64,
    /// Driver calls made in the epoch.
    pub driver_calls: crate::commit::DriverCalls,
    /// VMM calls (create, map, set_access, unmap, release) in the epoch.
    pub vmm_calls: u64,
    /// Allocations served in the epoch.
    pub allocs: u64,
    /// Frees served in the epoch.
    pub frees: u64,
    /// Time inside the C ABI's calls in the epoch, every device together
    /// (measured only with `report:1`; zeros otherwise).
    pub times: timing::Times,
    /// What stitched-range allocations decided in the epoch.
    pub stitch: crate::commit::StitchCounts,
}

/// The counters at the start of the current epoch.
#[derive(Default)]
pub(super) struct EpochStart {
    calls: crate::commit::DriverCalls,
    stitch: crate::commit::StitchCounts,
    allocs: u64,
    frees: u64,
    times: timing::Times,
    /// The highest peaks of the epochs ended so far (epochs reset the
    /// shards' peaks): (live, committed).
    run_peaks: (u64, u64),
}

impl EpochStart {
    /// The run's peaks with the current epoch's (`s`) counted: (live,
    /// committed).
    fn run_peaks_with(&self, s: &Stats) -> (u64, u64) {
        let (live, committed) = self.run_peaks;
        (live.max(s.peak_live), committed.max(s.peak_committed))
    }
}

/// Set once the exit report is registered (by the first arena of any device).
pub(super) static REPORT: std::sync::Once = std::sync::Once::new();

extern "C" fn print_report() {
    for a in arenas() {
        let s = a.stats();
        let (live, committed) = lock(&a.epoch_start).run_peaks_with(&s);
        eprintln!(
            "gpu-arena: device {}: peak live {:.1} MiB, peak committed {:.1} MiB, peak committed / peak live {:.4}, driver calls {} (VMM {}), handles {}, mappings {}",
            a.device(),
            live as f64 / 1048576.0,
            committed as f64 / 1048576.0,
            committed as f64 / live.max(1) as f64,
            s.driver_calls.total(),
            s.driver_calls.vmm(),
            s.handles,
            s.mappings,
        );
    }
    let t = timing::total();
    if t.calls() > 0 {
        eprintln!(
            "gpu-arena: allocator time: {} allocs, {} frees, {:.3} us per call ({:.3} per alloc, {:.3} per free), {:.1} ms in all",
            t.allocs,
            t.frees,
            t.nanos_per_call() / 1e3,
            t.alloc_nanos as f64 / t.allocs.max(1) as f64 / 1e3,
            t.free_nanos as f64 / t.frees.max(1) as f64 / 1e3,
            (t.alloc_nanos + t.free_nanos) as f64 / 1e6,
        );
    }
}

pub(super) fn register_report() {
    // SAFETY: print_report is an extern "C" fn with no arguments that only
    // reads the statics; atexit has no other precondition.
    unsafe { libc::atexit(print_report) };
}

impl GlobalArena {
    /// Accounting of the whole device (`tag = None`) or of one tag.
    pub fn accounting(&self, tag: Option<u32>) -> Accounting {
        let mut t = Accounting::default();
        let mut limit = 0u64;
        for (i, ta) in self.tags_indexed() {
            if tag.is_some_and(|x| x != i) {
                continue;
            }
            for s in ta.shards.iter() {
                let a = s.lock().accounting();
                t.live += a.live;
                t.committed += a.committed;
                t.reclaimable += a.reclaimable;
                t.pending += a.pending;
                limit = limit.saturating_add(a.limit);
                t.largest_free_committed = t.largest_free_committed.max(a.largest_free_committed);
                t.asleep |= a.asleep;
                t.staged += a.staged;
            }
        }
        t.limit = limit.min(self.budget.limit());
        t
    }

    /// Accounting per tag, as JSON (allocates).
    pub fn accounting_json(&self) -> String {
        let tags: Vec<_> = self
            .tags_indexed()
            .map(
                |(i, t)| serde_json::json!({"tag": t.name, "accounting": self.accounting(Some(i))}),
            )
            .collect();
        serde_json::json!({"device": self.device, "total": self.accounting(None), "tags": tags})
            .to_string()
    }

    pub(super) fn sum(it: impl Iterator<Item = Stats>) -> Stats {
        let mut t = Stats::default();
        for x in it {
            t.reserved += x.reserved;
            t.committed += x.committed;
            t.live += x.live;
            t.peak_committed += x.peak_committed;
            t.peak_live += x.peak_live;
            t.pending_decommit += x.pending_decommit;
            t.reclaimable += x.reclaimable;
            t.pending_fences += x.pending_fences;
            t.handles += x.handles;
            t.mappings += x.mappings;
            t.staged += x.staged;
            t.stitched_ranges += x.stitched_ranges;
            for (a, b) in [
                (&mut t.slab, x.slab),
                (&mut t.large, x.large),
                (&mut t.scratch, x.scratch),
                (&mut t.grow, x.grow),
            ] {
                a.blocks += b.blocks;
                a.bytes += b.bytes;
            }
            t.driver_calls.add(&x.driver_calls);
            t.stitch.add(&x.stitch);
            t.allocs += x.allocs;
            t.frees += x.frees;
        }
        t
    }

    /// Counters summed over every tag and shard (cached blocks count as
    /// live; peaks are sums of per-arena peaks, since the last
    /// [`epoch`](Self::epoch); [`run_peaks`](Self::run_peaks) has the whole
    /// run's).
    pub fn stats(&self) -> Stats {
        Self::sum(self.tags().flat_map(|t| t.shards.iter()).map(|a| a.stats()))
    }

    /// Ends the current epoch and starts the next: returns the peaks, driver
    /// calls, allocations and time since the last call (or since the arena
    /// was made), then resets every shard's peaks to their current values.
    pub fn epoch(&self) -> Epoch {
        let mut start = lock(&self.epoch_start);
        let s = self.stats();
        let times = timing::total();
        let calls = s.driver_calls.since(&start.calls);
        let e = Epoch {
            peak_live: s.peak_live,
            peak_committed: s.peak_committed,
            peak_ratio: s.peak_ratio(),
            driver_calls: calls,
            vmm_calls: calls.vmm(),
            allocs: s.allocs - start.allocs,
            frees: s.frees - start.frees,
            times: times.since(&start.times),
            stitch: s.stitch.since(&start.stitch),
        };
        for shard in self.tags().flat_map(|t| t.shards.iter()) {
            shard.lock().reset_peaks();
        }
        timing::reset_peak_handed();
        *start = EpochStart {
            calls: s.driver_calls,
            stitch: s.stitch,
            allocs: s.allocs,
            frees: s.frees,
            times,
            run_peaks: start.run_peaks_with(&s),
        };
        e
    }

    /// Peak live and peak committed bytes since the arena was made, over
    /// every epoch ([`stats`](Self::stats) and [`epoch`](Self::epoch) give
    /// the current epoch's): the highest of the epochs' peaks, each a sum
    /// over tags and shards.
    pub fn run_peaks(&self) -> (u64, u64) {
        let start = lock(&self.epoch_start);
        start.run_peaks_with(&self.stats())
    }

    /// Counters of one tag.
    pub fn tag_stats(&self, tag: u32) -> Stats {
        Self::sum(self.shards(tag).iter().map(|a| a.stats()))
    }

    /// Stats as a JSON object, with a per-tag breakdown (allocates).
    pub fn stats_json(&self) -> String {
        let s = self.stats();
        let tags: Vec<_> = self
            .tags_indexed()
            .map(|(i, t)| serde_json::json!({"tag": t.name, "asleep": t.is_asleep(), "stats": self.tag_stats(i)}))
            .collect();
        serde_json::json!({
            "device": self.device,
            "backend": self.driver.capabilities().backend.name(),
            "peak_ratio": s.peak_ratio(),
            "stats": s,
            "tags": tags,
        })
        .to_string()
    }
}
