//! Reports: counters and peaks, visits of every mapping, full snapshots of
//! regions, pages and blocks, and the structural self-check.

use super::Arena;
use crate::driver::Driver;
use crate::policy::Policy;
use crate::stats::{BlockReport, PageReport, PolicyStats, RegionReport, Snapshot, Stats};

impl<D: Driver> Arena<D> {
    /// Counters (cheap: constant time plus one load per scratch arena).
    /// Scratch arenas' live bytes are read from their cursors, so they are
    /// exact at every moment, with no lag behind the lock-free fast path.
    pub fn stats(&self) -> Stats {
        let slab_bytes = self.slabs.slab_bytes();
        let (stitched_bytes, stitched_blocks) = self.commit.stitched_live();
        let bumped = self.scratch_bumped();
        let live = self.hot.live + bumped;
        Stats {
            reserved: self.commit.size(),
            committed: self.commit.committed(),
            live,
            peak_committed: self.commit.peak_committed(),
            peak_live: self.hot.peak_live.max(live),
            pending_decommit: self.commit.candidate_bytes(),
            reclaimable: self.commit.reclaimable(),
            pending_fences: self.commit.streams.pending_fences() as u64,
            handles: self.commit.unit_count(),
            mappings: self.commit.mapping_count(),
            stitched_ranges: self.commit.stitched_ranges() as u64,
            staged: self.commit.stage_bytes(),
            slab: PolicyStats {
                blocks: self.slabs.live_count(),
                bytes: self.slabs.live_bytes(),
            },
            large: PolicyStats {
                blocks: self.blocks.live_count() as u64 - self.slab_count() + stitched_blocks,
                bytes: self.blocks.live_bytes() - slab_bytes + stitched_bytes,
            },
            scratch: PolicyStats {
                blocks: self.scratch.blocks,
                bytes: self.scratch.bytes + bumped,
            },
            grow: self.grow,
            driver_calls: self.commit.calls(),
            stitch: self.commit.stitch_counts(),
            allocs: self.hot.allocs,
            frees: self.hot.frees,
        }
    }

    fn slab_count(&self) -> u64 {
        let mut n = 0;
        self.slabs.for_each_slab(|_, _, _, _| n += 1);
        n
    }

    /// Visits every mapping of a physical handle: (first page, pages, pages
    /// with live bytes, whether its handle is idle). A handle mapped at two
    /// addresses shows twice.
    pub fn for_each_mapping(&self, f: impl FnMut(u64, u64, u64, bool)) {
        self.commit.for_each_run(f);
    }

    /// Resets the peaks to the current values.
    pub fn reset_peaks(&mut self) {
        self.hot.peak_live = self.live_now();
        self.commit.reset_peak();
    }

    /// A full snapshot: regions, committed pages, live blocks (allocates).
    pub fn snapshot(&self) -> Snapshot {
        let mut pages = Vec::new();
        self.commit.for_each_page(|index, state, live| {
            pages.push(PageReport {
                index,
                state: state.into(),
                live,
            })
        });
        let mut blocks = Vec::new();
        let mut slab_spans = std::collections::HashSet::new();
        self.slabs.for_each_slab(|o, _, _, _| {
            slab_spans.insert(o);
        });
        self.slabs.for_each_object(|offset, size| {
            blocks.push(BlockReport {
                offset,
                size,
                policy: Policy::Slab,
            })
        });
        self.blocks.for_each_span(|offset, size, allocated| {
            if allocated && !slab_spans.contains(&offset) {
                blocks.push(BlockReport {
                    offset,
                    size,
                    policy: Policy::Large,
                })
            }
        });
        self.commit.for_each_stitched(|offset, size| {
            blocks.push(BlockReport {
                offset,
                size,
                policy: Policy::Large,
            })
        });
        self.buffers.for_each_span(|offset, size, allocated| {
            if allocated {
                blocks.push(BlockReport {
                    offset: self.buffers_start + offset,
                    size,
                    policy: self
                        .buffer_kinds
                        .get(&offset)
                        .map_or(Policy::Scratch, |b| b.policy),
                })
            }
        });
        blocks.sort_by_key(|b| b.offset);
        Snapshot {
            backend: self.driver().capabilities().backend.name().to_string(),
            base: self.base_ptr(),
            page: self.page(),
            stats: self.stats(),
            regions: vec![
                RegionReport {
                    name: "blocks".into(),
                    offset: 0,
                    size: self.hot.blocks_size,
                    used: self.blocks.top(),
                },
                RegionReport {
                    name: "stitch".into(),
                    offset: self.hot.blocks_size,
                    size: self.buffers_start - self.hot.blocks_size,
                    used: self.commit.stitch_top(),
                },
                RegionReport {
                    name: "buffers".into(),
                    offset: self.buffers_start,
                    size: self.commit.size() - self.buffers_start,
                    used: self.buffers.top(),
                },
            ],
            pages,
            blocks,
        }
    }

    /// Full structural check of every layer (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check_invariants(&self) {
        self.blocks.check_invariants();
        self.buffers.check_invariants();
        self.slabs.check_invariants();
        self.commit.check_invariants();
        let s = self.stats();
        assert!(s.committed >= s.live.min(s.committed), "committed >= live");
        assert_eq!(
            s.slab.bytes + s.large.bytes + s.scratch.bytes + s.grow.bytes,
            s.live,
            "policies add up to live"
        );
        assert_eq!(self.hot.asleep, self.sleeping.is_some(), "asleep flag");
        assert_eq!(
            self.hot.stitch_min, self.config.commit.stitch_min,
            "stitch_min"
        );
    }
}
