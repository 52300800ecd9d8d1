//! Giving idle physical memory back: along the decay curve, at once on
//! `trim`, and on the out-of-memory ladder.
//!
//! The mechanism half of jemalloc's split (the policy is [`Decay`]): every
//! few hundred frees, the free path looks at the clock, and once per
//! `decay_ms / 8` it gives back the oldest idle units beyond what the curve
//! allows, and dissolves stitched ranges unused for `decay_ms`. An engine
//! can instead call [`Commit::reclaim`] from a thread of its own (the
//! global arenas' background reclaimer does), so that the allocating
//! threads make no driver call at all. Nothing is unmapped before the fences
//! of the frees through that mapping completed; a unit whose fences are
//! pending is skipped, never waited on (only the out-of-memory ladder waits).
//!
//! [`Decay`]: super::decay::Decay

use super::Commit;
use super::pages::NIL;
use super::vmm::UNMAP_TRIES;
use crate::driver::Driver;
use crate::meta::MetaVec;

impl<D: Driver> Commit<D> {
    /// How often (ms) idle memory is looked at while there is some.
    pub(super) fn reclaim_period(&self) -> u64 {
        (self.decay.ms / 8).max(1)
    }

    /// Gives back what the decay curve no longer allows, if the time to look
    /// has come (cheap otherwise: one clock read).
    pub fn maybe_reclaim(&mut self) -> u64 {
        if self.next_reclaim == u64::MAX {
            return 0;
        }
        if self.clock.now_ms() < self.next_reclaim {
            return 0;
        }
        self.reclaim(false)
    }

    /// Gives back idle units beyond what the decay curve allows now (all
    /// of them with `force`), the shared units whose fences completed, and
    /// the stitched ranges unused for `decay_ms` (all unused ones with
    /// `force`). Never blocks: memory whose fences are pending stays.
    /// Returns the bytes given back.
    pub fn reclaim(&mut self, force: bool) -> u64 {
        self.reclaim_except(force, &[])
    }

    /// Gives back every idle unit whose fences completed, at once. Returns
    /// the bytes given back.
    pub fn trim(&mut self) -> u64 {
        self.reclaim(true)
    }

    /// [`Commit::reclaim`]: gives back what the decay curve no longer
    /// allows (everything idle with `force`). Never blocks.
    pub fn collect(&mut self, force: bool) -> u64 {
        self.reclaim(force)
    }

    /// [`Commit::reclaim`], leaving the units in `keep` alone.
    pub(super) fn reclaim_except(&mut self, force: bool, keep: &[u32]) -> u64 {
        let retried = self.retry_releases();
        if self.asleep {
            return retried << self.shift;
        }
        let now = self.clock.now_ms();
        self.streams.poll(&self.res.driver);
        let mut pages = retried + self.release_shared();
        // Stitched ranges nobody used for a while.
        let ids: MetaVec<u32> = {
            let mut v = MetaVec::new_in(std::alloc::System);
            v.extend(self.stitch.ids());
            v
        };
        for r in ids {
            let x = *self.stitch.range(r);
            let stale = force || now.saturating_sub(x.last_used) >= self.decay.ms;
            if !x.in_use && stale && !self.range_holds(r, keep) {
                self.dissolve_range(r);
            }
        }
        // Idle units, oldest first, beyond the allowance.
        let allowed = if force {
            0
        } else {
            let decay = self.decay;
            let mut idle: MetaVec<(u64, u64)> = MetaVec::new_in(std::alloc::System);
            for u in self.pool.idle_units() {
                idle.push((self.pool.idle_since(u), self.pool.unit(u).pages));
            }
            decay.allowed(now, idle.into_iter())
        };
        let mut u = self.pool.first_idle();
        while u != NIL && self.pool.idle_pages() > allowed {
            // A parked group's units follow its first on the list from now.
            self.pool.flush_unit(u);
            let next = self.pool.next_idle(u);
            if !keep.contains(&u) && self.releasable(u) {
                pages += self.release_unit(u);
            }
            u = next;
        }
        self.next_reclaim = if self.pool.idle_pages() > 0 {
            now + self.reclaim_period()
        } else {
            u64::MAX
        };
        pages << self.shift
    }

    /// Whether idle unit `u` has no pending fence (records the missing
    /// fences and polls; never blocks). Its stamps cover every free through
    /// any of its mappings.
    fn releasable(&mut self, u: u32) -> bool {
        self.unit_settled(u)
    }

    /// Whether stitched range `r` is backed by one of the units in `keep`.
    fn range_holds(&self, r: u32, keep: &[u32]) -> bool {
        if keep.is_empty() {
            return false;
        }
        let x = self.stitch.range(r);
        (x.first..x.first + x.pages).any(|p| {
            let m = self.pages.map(p);
            m != NIL && keep.contains(&self.pool.map(m).unit)
        })
    }

    /// Unmaps the mappings of unused stitched range `r` and forgets it, if
    /// every fence of the frees through them completed (never blocks).
    /// Their units stay (idle, maybe mapped elsewhere). Returns whether the
    /// range is gone.
    pub(super) fn dissolve_range(&mut self, r: u32) -> bool {
        let (first, pages) = {
            let x = self.stitch.range(r);
            debug_assert!(!x.in_use, "dissolving range {r} in use");
            (x.first, x.pages)
        };
        let mut maps: MetaVec<u32> = MetaVec::new_in(std::alloc::System);
        for p in first..first + pages {
            let m = self.pages.map(p);
            if m == NIL || maps.last() == Some(&m) {
                continue;
            }
            // A mapping reaching past the range (one a refused undo left
            // behind, then taken by this range and the next) stays: past the
            // range it may back another range's live block. It goes when no
            // range holds it.
            let x = self.pool.map(m);
            if x.first < first || x.first + x.pages > first + pages {
                continue;
            }
            maps.push(m);
        }
        if !maps.iter().all(|&m| {
            let u = self.pool.map(m).unit;
            self.unit_settled(u)
        }) {
            return false;
        }
        // One unmap per run of adjacent mappings (the range's pages are
        // adjacent; a released unit leaves a hole).
        let mut i = 0;
        while i < maps.len() {
            let start = self.pool.map(maps[i]).first;
            let mut end = start + self.pool.map(maps[i]).pages;
            let mut j = i + 1;
            while j < maps.len() && self.pool.map(maps[j]).first == end {
                end += self.pool.map(maps[j]).pages;
                j += 1;
            }
            // SAFETY: the range holds no block and the fences of every free
            // through its mappings completed (checked above): nothing uses
            // start..end, which is tiled by the mappings i..j.
            if unsafe { self.vmm_unmap(start, end - start) }.is_err() {
                // The runs before it went; the range stays cached with
                // holes (unusable until it goes).
                return false;
            }
            for &m in &maps[i..j] {
                self.forget_mapping(m);
            }
            i = j;
        }
        self.stitch.remove(r);
        true
    }

    /// Gives back the idle shared units whose fences completed, whatever
    /// the decay says (they are never reused). Returns pages.
    pub(super) fn release_shared(&mut self) -> u64 {
        let mut pages = 0;
        let mut i = 0;
        while i < self.shared_pending.len() {
            let u = self.shared_pending[i];
            if self.pool.owner(u) != NIL {
                self.shared_pending.swap_remove(i);
                continue;
            }
            if self.releasable(u) {
                let n = self.release_unit(u);
                if n > 0 {
                    pages += n;
                    self.shared_pending.swap_remove(i);
                    continue;
                }
            }
            i += 1;
        }
        pages
    }

    /// Gives every unit back and drops the fences (arena teardown). Only
    /// call when nothing uses the memory any more.
    pub fn release_all(&mut self) {
        self.streams.clear(&self.res.driver);
        self.drop_everything();
        self.retry_releases();
    }

    /// Unmaps every mapping and releases every unit, whatever their state
    /// (sleep, teardown); the page table keeps its live bytes. Returns the
    /// bytes given back.
    pub(super) fn drop_everything(&mut self) -> u64 {
        let bytes = self.committed();
        // One unmap per run of adjacent mapped pages; a refused unmap is
        // tried again at once (the page table forgets the mappings, so a
        // mapping left behind would make later maps there fail).
        for (f, n) in self.mapped_runs() {
            for _ in 0..UNMAP_TRIES {
                // SAFETY: the caller guarantees that nothing uses the memory
                // (sleep quiesced the arena's streams; teardown has no user);
                // each run is tiled by whole mappings.
                if unsafe { self.vmm_unmap(f, n) }.is_ok() {
                    break;
                }
            }
            for p in f..f + n {
                self.pages.set_map(p, NIL);
            }
        }
        for (h, pages) in self.pool.take_all() {
            self.vmm_release(h, pages);
        }
        // Cached stitched ranges had only mappings; ranges in use keep their
        // addresses (their blocks are live).
        let ids: MetaVec<u32> = {
            let mut v = MetaVec::new_in(std::alloc::System);
            v.extend(self.stitch.ids());
            v
        };
        for r in ids {
            if !self.stitch.range(r).in_use {
                self.stitch.remove(r);
            }
        }
        self.shared_pending.clear();
        self.shared_pages = 0;
        self.next_reclaim = u64::MAX;
        bytes
    }
}

#[cfg(test)]
mod tests {
    use crate::commit::testing::{PAGE, driver, finish};
    use crate::commit::{Backing, Commit, CommitConfig};
    use crate::driver::{Checked, Driver, HostDriver};
    use crate::sync::{Clock, Stamp};

    /// 32 pages of blocks, 32 of stitched ranges, idle memory decaying over
    /// one second of a clock the test moves.
    fn commit(d: &Checked<HostDriver>) -> (Commit<&Checked<HostDriver>>, Clock) {
        let config = CommitConfig {
            decay_ms: 1000,
            ..CommitConfig::default()
        };
        let mut c = Commit::for_tests_with(d, 64, (32, 32), config);
        let clock = Clock::manual();
        c.set_clock(clock.clone());
        (c, clock)
    }

    /// Idle units go back oldest first, as far as the decay curve no longer
    /// allows them: at 1 s, four pages idle since 0 ms are past their
    /// allowance and four idle since 600 ms are still whole. Nothing is
    /// looked at before the next period; a trim gives back the rest.
    #[test]
    fn idle_units_go_back_oldest_first_beyond_the_decay_allowance() {
        let d = driver();
        let (mut c, clock) = commit(&d);
        c.add_live(0, 4 * PAGE, 1, Backing::Pages).unwrap();
        c.add_live(8 * PAGE, 4 * PAGE, 1, Backing::Pages).unwrap();
        c.sub_live(0, 4 * PAGE, Stamp::SAFE);
        clock.set(600);
        c.sub_live(8 * PAGE, 4 * PAGE, Stamp::SAFE);
        clock.set(1000);
        assert_eq!(c.reclaim(false), 4 * PAGE);
        assert_eq!(c.committed(), 4 * PAGE);
        assert!(!c.is_committed(0, PAGE), "the oldest went");
        assert!(c.is_committed(8 * PAGE, 4 * PAGE), "the newer stay");
        c.check_invariants();
        // The next look is a period (decay_ms / 8) away.
        assert_eq!(c.maybe_reclaim(), 0);
        // At 1350 ms the newer units are 750 ms idle: half allowed.
        clock.set(1350);
        assert_eq!(c.maybe_reclaim(), 2 * PAGE);
        assert_eq!(c.trim(), 2 * PAGE);
        assert_eq!(c.committed(), 0);
        assert_eq!(c.maybe_reclaim(), 0, "nothing idle, nothing to look at");
    }

    /// Idle memory whose fences are pending stays, whatever the decay or a
    /// trim say, and the reclaim never waits for it; it goes at the first
    /// reclaim after the stream's work completed.
    #[test]
    fn pending_fences_keep_idle_memory_and_are_never_waited_on() {
        let d = driver();
        let s = d.create_stream().unwrap();
        {
            let (mut c, clock) = commit(&d);
            let slot = c.streams.slot(s);
            c.add_live(0, 2 * PAGE, slot, Backing::Pages).unwrap();
            d.inner().hold(s);
            c.sub_live(0, 2 * PAGE, c.streams.stamp(slot));
            clock.set(10_000);
            assert_eq!(c.trim(), 0);
            assert_eq!(c.reclaimable(), 0);
            assert_eq!(c.committed(), 2 * PAGE);
            assert_eq!(d.counts().wait, 0, "never waited");
            d.inner().complete(s);
            assert_eq!(c.trim(), 2 * PAGE);
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[s]);
    }

    /// A cached stitched range stays while it was used within `decay_ms`,
    /// and then dissolves: its mappings go, its units stay (idle, mapped
    /// where they were made) as long as their own allowance lasts.
    #[test]
    fn an_unused_stitched_range_dissolves_after_decay_ms_and_keeps_its_units() {
        let d = driver();
        let (mut c, clock) = commit(&d);
        // Four idle one-page units for the range to gather.
        c.add_live(0, 4 * PAGE, 1, Backing::Pages).unwrap();
        c.sub_live(0, 4 * PAGE, Stamp::SAFE);
        let off = c.stitch_alloc(4 * PAGE, 1).unwrap();
        assert_eq!(c.unit_count(), 4, "the range aliases the idle units");
        c.stitch_free(off, Stamp::SAFE).unwrap();
        assert_eq!((c.stitched_ranges(), c.mapping_count()), (1, 8));
        // The units serve their first place again at 600 ms (the range is
        // not used), and idle from then.
        clock.set(600);
        c.add_live(0, 4 * PAGE, 1, Backing::Pages).unwrap();
        c.sub_live(0, 4 * PAGE, Stamp::SAFE);
        c.reclaim(false);
        assert_eq!(c.stitched_ranges(), 1, "used 600 ms ago: kept");
        clock.set(1000);
        c.reclaim(false);
        assert_eq!(c.stitched_ranges(), 0, "unused for decay_ms: dissolved");
        assert!(!c.is_committed(off, PAGE));
        assert_eq!(c.mapping_count(), 4);
        assert_eq!(c.committed(), 4 * PAGE, "idle for 400 ms: kept");
        assert!(c.is_committed(0, 4 * PAGE));
        c.check_invariants();
        assert_eq!(c.trim(), 4 * PAGE);
        assert_eq!((c.committed(), c.mapping_count()), (0, 0));
    }

    /// A cached stitched range whose block was freed on a stream whose work
    /// still runs keeps its mappings whatever a trim says: the queued work
    /// may still address it. It dissolves at the first trim after the fence.
    #[test]
    fn a_cached_range_with_a_pending_fence_is_not_dissolved() {
        let d = driver();
        let s = d.create_stream().unwrap();
        {
            let (mut c, clock) = commit(&d);
            let slot = c.streams.slot(s);
            let off = c.stitch_alloc(4 * PAGE, slot).unwrap();
            d.inner().hold(s);
            c.stitch_free(off, c.streams.stamp(slot)).unwrap();
            clock.set(10_000);
            c.trim();
            assert_eq!(c.stitched_ranges(), 1, "S's work may still use it");
            assert!(c.is_committed(off, 4 * PAGE));
            assert_eq!(d.counts().wait, 0);
            d.inner().complete(s);
            c.trim();
            assert_eq!(c.stitched_ranges(), 0);
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[s]);
    }
}
