//! Giving idle memory back: trimming empty pages, collecting what the decay
//! curve no longer keeps, and returning small blocks freed on other streams
//! to their slabs once their fences completed.

use super::Arena;
use crate::driver::Driver;
use crate::meta::MetaVec;
use crate::sync::Stamp;

impl<D: Driver> Arena<D> {
    /// Gives back every empty page whose fences completed (and empty slabs).
    /// Never blocks. Returns the bytes given back.
    ///
    /// An asleep arena has nothing committed to give back; its page table
    /// stays as it was when it went to sleep (wake restores exactly those
    /// pages), so its slabs are left alone too.
    ///
    /// The pinned host memory kept for the next offload goes back too (see
    /// [`Arena::prepare_offload`]); [`Arena::trim_idle`] keeps it.
    pub fn trim(&mut self) -> u64 {
        if !self.is_asleep() {
            self.commit.drop_spare_stage();
        }
        self.trim_idle()
    }

    /// [`Arena::trim`] without giving back the pinned host memory kept for
    /// the next offload: what a retry after running out of device memory
    /// gives back (that memory is the host's, and obtaining it again would
    /// slow the next offload down by seconds for tens of GiB).
    pub fn trim_idle(&mut self) -> u64 {
        if self.is_asleep() {
            return self.commit.trim();
        }
        self.drain_deferred_slabs(true);
        self.commit.trim()
    }

    /// Records the fences that slab objects freed on another stream wait
    /// for (once per open epoch): without one, such an object never becomes
    /// reusable and its slab is never given back.
    fn fence_deferred(&mut self) {
        let commit = &mut self.commit;
        self.slabs.for_each_deferred_stamp(|st| {
            let _ = commit.ensure_fence(st);
        });
    }

    /// Moves small blocks freed on other streams whose fences completed back
    /// to their slabs (recording the fences they still lack), and gives the
    /// slabs that emptied — all empty slabs when `all_empty` — back.
    pub(super) fn drain_deferred_slabs(&mut self, all_empty: bool) {
        self.fence_deferred();
        self.commit.poll();
        let mut empty = MetaVec::new_in(std::alloc::System);
        let streams = &self.commit.streams;
        self.slabs
            .drain(|s| streams.done(s), |o, b, st| empty.push((o, b, st)));
        if all_empty {
            self.slabs.release_empty(|o, b, st| empty.push((o, b, st)));
        }
        self.release_slab_spans(empty);
    }

    /// Gives emptied slab spans back to the blocks region and the page table.
    fn release_slab_spans(&mut self, spans: MetaVec<(u64, u64, Stamp)>) {
        for (o, b, st) in spans {
            let streams = &self.commit.streams;
            self.blocks.free(o, st, |s| streams.done(s));
            self.commit.sub_live(o, b, st);
        }
    }

    /// Gives back idle memory beyond what the decay curve allows now (and
    /// stitched ranges unused for `decay_ms`). Never blocks.
    pub fn collect(&mut self) -> u64 {
        self.commit.collect(false)
    }

    /// Whether the free path gives idle memory back itself (see
    /// [`CommitConfig::reclaim_on_free`](crate::commit::CommitConfig::reclaim_on_free)).
    pub fn set_reclaim_on_free(&mut self, on: bool) {
        self.commit.set_reclaim_on_free(on);
        self.config.commit.reclaim_on_free = on;
    }

    /// [`Arena::collect`] when the time to look has come (a clock read
    /// otherwise): what a background reclaimer calls periodically.
    pub fn reclaim_due(&mut self) -> u64 {
        self.commit.maybe_reclaim()
    }

    /// Replaces the clock the decay of idle memory reads (tests and trace
    /// replays step a [`Clock::manual`](crate::sync::Clock::manual) by hand).
    pub fn set_clock(&mut self, clock: crate::sync::Clock) {
        self.commit.set_clock(clock);
    }
}
