//! Exact accounting for engines sizing their caches, and the figures an
//! out-of-memory error reports.

use super::Arena;
use crate::driver::Driver;
use crate::error::{Error, OomReport, PolicyUsage};

/// Exact accounting for engines sizing their caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    /// Bytes in live blocks.
    pub live: u64,
    /// Physical bytes committed.
    pub committed: u64,
    /// Committed bytes that `trim()` would give back now (completed empty runs).
    pub reclaimable: u64,
    /// Committed empty bytes still waiting on fences.
    pub pending: u64,
    /// The commit limit (`u64::MAX`: none).
    pub limit: u64,
    /// The largest block that can be allocated now without committing new
    /// physical memory (a free span lying on committed pages).
    pub largest_free_committed: u64,
    /// Whether the arena is asleep (committed is then 0).
    pub asleep: bool,
    /// Pinned host bytes held for offloads (see [`Stats::staged`](crate::stats::Stats::staged)).
    pub staged: u64,
}

impl<D: Driver> Arena<D> {
    /// Live, committed, reclaimable, pending, limit and the largest block
    /// that fits in already-committed memory. O(free spans + pages).
    pub fn accounting(&self) -> Accounting {
        let page = self.page();
        let mut largest = 0;
        self.blocks.for_each_free(|off, size, _| {
            // Longest sub-range of the span whose pages are all committed.
            let (mut run_start, mut p) = (off, off);
            let end = off + size;
            while p < end {
                let next = ((p / page) + 1) * page;
                let chunk_end = next.min(end);
                if self.commit.cost(p, chunk_end - p).is_free() {
                    largest = largest.max(chunk_end - run_start);
                } else {
                    run_start = chunk_end;
                }
                p = chunk_end;
            }
        });
        let reclaimable = self.commit.reclaimable();
        Accounting {
            live: self.live_now(),
            committed: self.commit.committed(),
            reclaimable,
            pending: self.commit.candidate_bytes() - reclaimable,
            limit: self.commit.effective_limit(),
            largest_free_committed: largest,
            asleep: self.is_asleep(),
            staged: self.commit.stage_bytes(),
        }
    }

    /// Fills the policy figures of an out-of-memory error.
    pub(super) fn enrich(&self, e: Error) -> Error {
        match e {
            Error::OutOfMemory(mut r) => {
                let s = self.stats();
                r.live = s.live;
                r.policies = [s.slab, s.large, s.scratch, s.grow].map(|p| PolicyUsage {
                    blocks: p.blocks,
                    live: p.bytes,
                });
                Error::OutOfMemory(r)
            }
            e => e,
        }
    }

    /// The out-of-memory figures this arena would report now.
    pub fn oom_report(&self, requested: u64) -> OomReport {
        match self.enrich(Error::oom(self.commit.oom_report(requested))) {
            Error::OutOfMemory(r) => *r,
            _ => OomReport::default(),
        }
    }
}
