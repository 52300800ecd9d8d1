//! Backing a range of pages with physical memory before a block takes it.
//!
//! For each page of the range that holds no live bytes yet:
//! - mapped to an idle unit that the block's stream may use: nothing to do;
//! - mapped to a unit in use elsewhere (or one whose fences forbid this
//!   stream, or a second alias of a unit the range already takes): the
//!   mapping is removed (once its fences completed) and the page is backed
//!   afresh;
//! - unmapped: backed afresh, by idle units found anywhere in the pool,
//!   oldest idle first, each mapped at the next pages (an alias: map, no
//!   create), then by a new handle for what is left. One `set_access`
//!   covers each run of new mappings.
//!
//! No unit backs a partly used boundary page of the block together with
//! other pages, whether a new handle, an idle unit mapped there, or one
//! brought from elsewhere: that page is shared with the neighbours, and a
//! unit only moves and empties whole, so a neighbour living on it would
//! keep the unit's other pages committed for nothing once the block is
//! freed. New handles respect the limit, and the out-of-memory
//! ladder runs before an error: give idle units back, then wait on the
//! oldest pending fences (single events, never the device), then
//! [`Error::OutOfMemory`]. On error every mapping and handle this call made
//! is undone; the range is as before.

use super::pages::NIL;
use super::pool::Fenced;
use super::{Backing, Commit};
use crate::driver::Driver;
use crate::error::{Error, ErrorKind, Result};
use crate::meta::MetaVec;

/// What one call made, to undo on error, and the units the range takes
/// (kept mappings and new ones), which nothing may take or give back
/// before the block is accounted.
struct Made {
    maps: MetaVec<u32>,
    units: MetaVec<u32>,
    taken: MetaVec<u32>,
    /// Idle units are taken least mapped first ([`Backing::Repair`]).
    least_mapped: bool,
}

pub(super) fn is_oom(e: &Error) -> bool {
    matches!(e, Error::OutOfMemory(_)) || e.driver_kind() == Some(ErrorKind::OutOfMemory)
}

impl<D: Driver> Commit<D> {
    /// Records the fences that the stamps of `h` wait for (once per open
    /// epoch) and polls once. Never blocks.
    fn fence(&mut self, h: Fenced) {
        self.pool.flush_fenced(h);
        let stamps = self.pool.stamps(h);
        for i in 0..stamps.len() {
            let Some(s) = stamps.get(i) else {
                break;
            };
            if !self.streams.done(s) && self.streams.ensure_fence(&self.res.driver, s).is_err() {
                self.calls.failed += 1;
            }
        }
        self.streams.poll(&self.res.driver);
    }

    /// Whether the unit behind mapping `m` may serve work of `slot` now.
    pub(super) fn allows(&mut self, m: u32, slot: u16) -> bool {
        self.allows_unit(self.pool.map(m).unit, slot)
    }

    /// Whether unit `u` may serve work of `slot` now.
    pub(super) fn allows_unit(&mut self, u: u32, slot: u16) -> bool {
        let streams = &self.streams;
        if self.pool.unit_allows(u, slot, |s| streams.done(s)) {
            return true;
        }
        let u = Fenced::Unit(u);
        self.fence(u);
        let streams = &self.streams;
        self.pool.stamps(u).allows(slot, |s| streams.done(s))
    }

    /// Whether every free through `h` is known complete (records fences
    /// and polls once; never blocks).
    fn settled(&mut self, h: Fenced) -> bool {
        self.pool.flush_fenced(h);
        let streams = &self.streams;
        if self.pool.stamps_mut(h).prune(|s| streams.done(s)) {
            return true;
        }
        self.fence(h);
        let streams = &self.streams;
        self.pool.stamps_mut(h).prune(|s| streams.done(s))
    }

    /// Whether every free through unit `u`'s mappings is known complete.
    pub(super) fn unit_settled(&mut self, u: u32) -> bool {
        self.settled(Fenced::Unit(u))
    }

    /// Whether every free through mapping `m` is known complete, so that
    /// it may be unmapped.
    pub(super) fn mapping_settled(&mut self, m: u32) -> bool {
        self.settled(Fenced::Mapping(m))
    }

    /// Waits until every free through `h` completed (single fences of the
    /// streams involved, never the device, nor other streams' fences).
    pub(super) fn settle_fenced(&mut self, h: Fenced) -> Result<()> {
        while !self.settled(h) {
            // `settled` left only stamps not known complete, their fences
            // recorded where recording worked.
            let pending = self.pool.stamps(h).iter().next();
            let waited = match pending {
                Some(s) => self.streams.wait_for(&self.res.driver, s)?,
                None => false,
            };
            if !waited {
                return Err(Error::Unsupported(
                    "the work that last used this memory cannot be waited on (recording its fence failed); retry later",
                ));
            }
        }
        Ok(())
    }

    /// Makes pages `a..=b` ready for a block at `off..off+len` of stream
    /// `slot` (see the module docs); `backing` says how new handles are cut.
    pub(super) fn back(
        &mut self,
        a: u64,
        b: u64,
        off: u64,
        len: u64,
        slot: u16,
        backing: Backing,
    ) -> Result<()> {
        if self.asleep {
            return Err(Error::Unsupported("an asleep arena cannot commit (bug)"));
        }
        // A driver out of memory while mapping (not creating: creates have
        // their own ladder) gets one more try once idle memory went back.
        let r = match self.back_once(a, b, off, len, slot, backing) {
            Err(e)
                if is_oom(&e) && !matches!(e, Error::OutOfMemory(_)) && self.reclaim(true) > 0 =>
            {
                self.back_once(a, b, off, len, slot, backing)
            }
            r => r,
        };
        match r {
            // The state the caller sees, for the block it asked for.
            Err(e) if is_oom(&e) => Err(Error::oom(self.oom_report(len))),
            r => r,
        }
    }

    fn back_once(
        &mut self,
        a: u64,
        b: u64,
        off: u64,
        len: u64,
        slot: u16,
        backing: Backing,
    ) -> Result<()> {
        let edges = self.partial_edges(off, len);
        // Pages that must be backed afresh: drop mappings that cannot serve.
        let taken = self.clear_unusable(a, b, slot, edges)?;
        let need = self.pages.cost(a, b).unmapped;
        self.check_room(need, len)?;
        let mut made = Made {
            maps: MetaVec::new_in(std::alloc::System),
            units: MetaVec::new_in(std::alloc::System),
            taken,
            least_mapped: backing == Backing::Repair,
        };
        let mut p = a;
        let r = loop {
            if p > b {
                break Ok(());
            }
            if self.pages.map(p) != NIL {
                p += 1;
                continue;
            }
            let mut q = p;
            while q < b && self.pages.map(q + 1) == NIL {
                q += 1;
            }
            // Fresh run p..=q; a larger handle may extend it past b.
            let (bulk, ahead) = match backing {
                Backing::Pages | Backing::Repair => (false, 0),
                // With no streak asked for (a tag's arenas: memory loaded
                // to stay and put to sleep), a block's fresh pages are one
                // handle wherever the block lies: below the top too, where
                // it is placed again after a free and a trim.
                Backing::Block => (self.config.bulk_streak == 0, 0),
                Backing::Whole => (true, 0),
                Backing::Top(room) => (
                    self.streak >= self.config.bulk_streak,
                    if q == b { self.ahead_pages(room) } else { 0 },
                ),
            };
            let run_edges = (p == a && edges.0, q == b && edges.1);
            let r = self.fill(p, q, ahead, bulk, slot, run_edges, &mut made);
            if r.is_err() {
                break r;
            }
            p = q + 1;
        };
        if let Err(e) = r {
            self.undo(made);
            return Err(e);
        }
        if let Backing::Top(_) = backing {
            self.streak += 1;
        }
        Ok(())
    }

    /// Removes the mappings of empty pages in `a..=b` that cannot serve the
    /// block (unit in use elsewhere, fences forbidding `slot`, or a second
    /// mapping of a unit the range already takes), waiting on their fences
    /// if need be. Returns the units the range keeps. `edges`: whether the
    /// first and last page are shared with neighbours.
    fn clear_unusable(
        &mut self,
        a: u64,
        b: u64,
        slot: u16,
        edges: (bool, bool),
    ) -> Result<MetaVec<u32>> {
        let mut taken: MetaVec<u32> = MetaVec::new_in(std::alloc::System);
        let mut p = a;
        while let Some((_, m)) = self.pages.next_mapped(p, b) {
            let (first, pages, unit, live) = {
                let x = self.pool.map(m);
                (x.first, x.pages, x.unit, self.pool.live_pages(m))
            };
            let next = first + pages;
            if live > 0 {
                // Already live (a neighbour's): it serves.
                p = next;
                continue;
            }
            // An idle mapping that would strand pages (reaching past the
            // range, or joining a partly used boundary page to others) goes,
            // if its fences allow, else serves.
            let strands = Self::strands(first, pages, a, b, edges) && self.unit_settled(unit);
            let usable =
                !strands && self.pool.can_take(m) && !taken.contains(&unit) && self.allows(m, slot);
            if usable {
                taken.push(unit);
            } else {
                // Only the frees through this range must be complete to
                // unmap it; the unit's other mappings keep their own.
                self.settle_fenced(Fenced::Mapping(m))?;
                self.unmap_mapping(m)?;
                self.drop_if_orphan_shared(unit);
            }
            p = next;
        }
        Ok(taken)
    }

    /// Releases shared unit `u` if it is empty and mapped nowhere any more
    /// (it is never reused; its fences completed, as its last mapping's did).
    pub(super) fn drop_if_orphan_shared(&mut self, u: u32) {
        let x = self.pool.unit(u);
        if x.shared && self.pool.owner(u) == NIL && x.aliases == 0 {
            self.shared_pending.retain(|&v| v != u);
            self.release_unit(u);
        }
    }

    /// Pages of a larger handle allowed past a block that grows the top.
    fn ahead_pages(&self, room: u64) -> u64 {
        if self.config.growth_ahead == 0 || self.streak < self.config.bulk_streak {
            return 0;
        }
        let want = (self.live / self.config.growth_ahead) >> self.shift;
        want.min(room).min(self.config.max_run >> self.shift)
    }

    /// Refuses up front a request that cannot fit under the limit even
    /// using every idle unit, so that no handle is made and released for it.
    fn check_room(&mut self, need: u64, len: u64) -> Result<()> {
        if self.config.limit == u64::MAX {
            return Ok(());
        }
        let limit_pages = self.config.limit >> self.shift;
        let owned = self.pool.committed_pages() - self.pool.idle_pages() + self.unreleased_pages;
        if owned + need > limit_pages {
            return Err(Error::oom(self.oom_report(len)));
        }
        Ok(())
    }

    /// Backs the unmapped pages `p..=q` (plus `ahead` unmapped pages after
    /// `q`, if a new handle is made) with idle units and new handles, then
    /// sets access once over the new mappings. `edges`: whether the first
    /// and last page are shared with neighbours (their own handles).
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        p: u64,
        q: u64,
        ahead: u64,
        bulk: bool,
        slot: u16,
        edges: (bool, bool),
        made: &mut Made,
    ) -> Result<()> {
        let mut at = p;
        let mut end = q + 1;
        while at < end {
            // A boundary page shared with neighbours takes a unit of its
            // own; before the last one, a unit stops short of it. Idle units
            // and new handles alike: a unit only moves and empties whole.
            let edge = (at == p && edges.0) || (at == q && edges.1);
            let room = if edge {
                1
            } else if edges.1 && at < q {
                q - at
            } else {
                end - at
            };
            if let Some(u) = self.idle_unit(room, slot, &made.taken, made.least_mapped) {
                let m = self.map_unit(u, at)?;
                made.maps.push(m);
                made.taken.push(u);
                at += self.pool.unit(u).pages;
                continue;
            }
            // A new handle. One page, so that it can later move anywhere on
            // its own; while the top grows with no free in between (weights
            // or a cache being loaded: memory that stays), and for every
            // block of an arena with no streak asked for (a tag's), the
            // interior in one piece (up to max_run), stretched by `ahead` at
            // the top, since sleep and wake cost per handle. Boundary pages
            // are always alone.
            let max = self.config.max_run >> self.shift;
            let mut n = if bulk { room.min(max) } else { 1 };
            if bulk && at + n == q + 1 && ahead > 0 && !edges.1 {
                let extra = ahead.min(max.saturating_sub(n));
                n += extra;
                end = end.max(at + n);
            }
            let u = self.create_unit(n, &made.taken)?;
            made.units.push(u);
            made.taken.push(u);
            let m = self.map_unit(u, at)?;
            made.maps.push(m);
            at += n;
        }
        // SAFETY: p..end is tiled by the mappings just made.
        unsafe { self.vmm_set_access(p, end - p) }
    }

    /// An idle unit of at most `pages` pages that `slot` may use, not one of
    /// `taken`: the oldest idle one, or with `least_mapped` the one mapped
    /// at the fewest places (the oldest idle of those). A repaired range
    /// that takes units mapped at few other places conflicts with fewer
    /// cached ranges and blocks later, so fewer of its pages need
    /// remapping the next time (measured in `docs/pytorch.md`, "What the
    /// stitched ranges decide").
    fn idle_unit(
        &mut self,
        pages: u64,
        slot: u16,
        taken: &[u32],
        least_mapped: bool,
    ) -> Option<u32> {
        // Idle units looked at: a repair remaps a few pages and may look
        // further for the least mapped.
        let look = if least_mapped { 4096 } else { 256 };
        let mut best: Option<(u32, u32)> = None;
        let streams = &self.streams;
        for u in self.pool.idle_units().take(look) {
            let x = self.pool.unit(u);
            let (fits, aliases) = (x.pages <= pages && !taken.contains(&u), x.aliases);
            if fits
                && best.is_none_or(|(b, _)| aliases < b)
                && self.pool.unit_allows(u, slot, |s| streams.done(s))
            {
                if !least_mapped || aliases == 0 {
                    return Some(u);
                }
                best = Some((aliases, u));
            }
        }
        best.map(|(_, u)| u)
    }

    /// A new unit of `pages` pages, under the limit, with the
    /// out-of-memory ladder (which leaves the units in `keep` alone).
    pub(super) fn create_unit(&mut self, pages: u64, keep: &[u32]) -> Result<u32> {
        let (mut trimmed, mut waited) = (false, false);
        loop {
            let over = self.committed() + (pages << self.shift) > self.config.limit
                || !self.budget_try_take(pages);
            let r = if over {
                Err(Error::oom(self.oom_report(pages << self.shift)))
            } else {
                let r = self.vmm_create(pages, false);
                if r.is_err() {
                    self.budget_give(pages);
                }
                r
            };
            match r {
                Ok(h) => {
                    let now = self.clock.now_ms();
                    let u = self.pool.add_unit(h, pages, false, now);
                    self.peak_committed = self.peak_committed.max(self.committed());
                    return Ok(u);
                }
                Err(e) if is_oom(&e) => {
                    if !trimmed {
                        trimmed = true;
                        if self.reclaim_except(true, keep) > 0 {
                            continue;
                        }
                    }
                    if !waited {
                        waited = true;
                        if self.streams.wait_oldest(&self.res.driver)? {
                            self.reclaim_except(true, keep);
                            continue;
                        }
                    }
                    return Err(Error::oom(self.oom_report(pages << self.shift)));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Undoes what a failed call made: its mappings (nothing used them) and
    /// its new handles.
    fn undo(&mut self, made: Made) {
        for &m in made.maps.iter().rev() {
            self.undo_mapping(m);
        }
        for &u in made.units.iter() {
            if self.pool.unit(u).aliases == 0 {
                let pages = self.pool.unit(u).pages;
                if let Some(h) = self.pool.remove_unit(u) {
                    self.vmm_release(h, pages);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::commit::{Backing, Commit};
    use crate::driver::{Driver, HostDriver};
    use crate::sync::Stamp;

    /// With no streak asked for (a tag's arenas), a block of the blocks
    /// region below the top gets one handle for its fresh pages, where
    /// the default settings give it one per page; a stitched range's pages
    /// stay one handle each either way (they are units that move).
    #[test]
    fn with_no_streak_a_block_below_the_top_gets_one_handle_and_ranges_keep_pages() {
        let d = HostDriver::new().unwrap();
        let page = d.capabilities().granularity as u64;
        for (streak, block_units) in [(0, 1), (64, 4)] {
            let config = crate::commit::CommitConfig {
                bulk_streak: streak,
                ..Default::default()
            };
            let mut c = Commit::for_tests_with(&d, 64, (64, 0), config);
            c.add_live(8 * page, 4 * page, 0, Backing::Block).unwrap();
            assert_eq!(c.unit_count(), block_units, "bulk_streak {streak}");
            c.add_live(20 * page, 4 * page, 0, Backing::Pages).unwrap();
            assert_eq!(c.unit_count(), block_units + 4, "bulk_streak {streak}");
            c.sub_live(8 * page, 4 * page, Stamp::SAFE);
            c.sub_live(20 * page, 4 * page, Stamp::SAFE);
        }
    }

    /// An idle unit of several pages does not back a block's partly used
    /// last page together with its interior: once the block is freed, a
    /// neighbour living on that page would keep every page of the unit
    /// committed (a unit only empties and moves whole).
    #[test]
    fn an_idle_large_unit_never_joins_a_shared_boundary_page() {
        let d = HostDriver::new().unwrap();
        let page = d.capabilities().granularity as u64;
        let mut c = Commit::for_tests(&d, 64, (64, 0));
        // A 4-page buffer: one unit of 4 pages, then idle at pages 0..=3.
        c.add_live(0, 4 * page, 0, Backing::Whole).unwrap();
        assert_eq!(c.unit_count(), 1);
        c.sub_live(0, 4 * page, Stamp::SAFE);
        // A block at pages 10..=13 whose last page it shares with a
        // neighbour right after it.
        let (off, len) = (10 * page, 4 * page - 4096);
        c.add_live(off, len, 0, Backing::Pages).unwrap();
        c.add_live(off + len, 4096, 0, Backing::Pages).unwrap();
        freed_keeps_only_the_neighbours_page(&mut c, off, len);
    }

    /// The same for an idle unit already mapped where the block goes: its
    /// mapping is replaced rather than kept across the shared page.
    #[test]
    fn an_idle_large_mapping_in_place_is_replaced_at_a_shared_boundary_page() {
        let d = HostDriver::new().unwrap();
        let page = d.capabilities().granularity as u64;
        let mut c = Commit::for_tests(&d, 64, (64, 0));
        let (off, len) = (10 * page, 4 * page - 4096);
        c.add_live(off, 4 * page, 0, Backing::Whole).unwrap();
        c.sub_live(off, 4 * page, Stamp::SAFE);
        assert_eq!((c.unit_count(), c.mapping_count()), (1, 1));
        c.add_live(off, len, 0, Backing::Pages).unwrap();
        c.add_live(off + len, 4096, 0, Backing::Pages).unwrap();
        freed_keeps_only_the_neighbours_page(&mut c, off, len);
    }

    /// A mapping that must go before a block of stream A can use its page
    /// (its frees were on stream B, their fence pending) waits on B's
    /// fence alone: not on a fence of stream C, whose work has nothing to
    /// do with that memory (a long kernel there must not hold A up).
    #[test]
    fn making_room_waits_on_the_freeing_streams_fence_alone() {
        use crate::commit::testing::{PAGE, commit, driver, finish};
        let d = driver();
        let streams: Vec<_> = (0..3).map(|_| d.create_stream().unwrap()).collect();
        {
            let mut c = commit(&d, 32, (32, 0));
            let [a, b, cc] = [0, 1, 2].map(|i| c.streams.slot(streams[i]));
            // Stream C's work on a block it freed is still running, its fence
            // recorded; so is stream B's on page 0.
            for (slot, page) in [(cc, 20), (b, 0)] {
                c.add_live(page * PAGE, PAGE, slot, Backing::Pages).unwrap();
                d.inner().hold(streams[slot as usize - 1]);
                let stamp = c.streams.stamp(slot);
                c.sub_live(page * PAGE, PAGE, stamp);
                c.ensure_fence(stamp).unwrap();
            }
            assert_eq!(c.streams.pending_fences(), 2);
            // Stream A needs page 0: its idle mapping goes, after B's fence.
            let waits = d.counts().wait;
            c.add_live(0, PAGE, a, Backing::Pages).unwrap();
            assert_eq!(d.counts().wait - waits, 1, "one fence waited on");
            assert_eq!(
                c.streams.pending_fences(),
                1,
                "stream C's fence still pending"
            );
            assert!(
                !c.streams.done(Stamp::new(cc, 1)),
                "stream C's work is not done"
            );
            c.check_invariants();
            c.sub_live(0, PAGE, c.streams.stamp(a));
            for &s in &streams {
                d.inner().complete(s);
            }
            c.poll();
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &streams);
    }

    /// Frees the block at `off` (`len` bytes), whose neighbour lives on its
    /// last page; after a trim only that page stays committed, and nothing
    /// once the neighbour goes too.
    fn freed_keeps_only_the_neighbours_page(c: &mut Commit<&HostDriver>, off: u64, len: u64) {
        c.check_invariants();
        c.sub_live(off, len, Stamp::SAFE);
        c.trim();
        c.check_invariants();
        assert_eq!(c.committed(), c.page());
        c.sub_live(off + len, 4096, Stamp::SAFE);
        c.trim();
        assert_eq!(c.committed(), 0);
    }
}
