//! Blocks in stitched ranges (see [`stitch`](super::stitch)): taking a
//! cached range back, making a new one, freeing.

use super::Commit;
use super::calls::counters;
use super::pages::NIL;
use super::pool::GroupId;
use super::stitch::Walk;
use crate::driver::{DevicePtr, Driver};
use crate::error::{BadPointer, Error, Result};
use crate::meta::MetaVec;
use crate::sync::Stamp;

/// A cached range of up to `k + k / RANGE_SLACK` pages serves a block of
/// `k` pages: fewer ranges to keep (measured on the shared traces: 1/2
/// keeps 140 ranges for BERT inference where exact sizes keep 212), and no
/// memory lost (the pages past the block stay idle, free for others).
const RANGE_SLACK: u64 = 2;

/// Cached ranges looked at when none serves at once (to repair one, or to
/// say why none served).
const LOOK: usize = 8;

/// Cached ranges of about one size (`k..=k + k / RANGE_SLACK` pages) kept
/// when another of that size is made: the least recently used one beyond
/// goes (one unmap call per run of its pages). Ranges are otherwise kept
/// until their region fills, so a workload that keeps making ranges of one
/// size (one that never settles) would keep mappings, and a longer walk
/// over them on every allocation of that size, without bound. Measured
/// with the host replays (`docs/pytorch/experiments/cached-per-size-*.log`):
/// with 48 every trace makes the same calls as with no bound; fewer change
/// BERT inference's second repetition (the shared trace run 5 times: 14.2,
/// 3.0 and 10.3 calls per 1,000 allocations with 16, 24 and 32, against
/// none), and 8 keeps training from settling. Training settles before it
/// made 48 ranges of one size (15,249 mappings after 20 repetitions, 8,249
/// with 16).
const CACHED_PER_SIZE: usize = 48;

/// What the stitched-range allocations decided, to see where steady-state
/// driver calls come from: each new range maps all its pages again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StitchCounts {
    /// Blocks served by a cached range with no driver call.
    pub reused: u64,
    /// Blocks served by a cached range after remapping its busy pages
    /// ([`CommitConfig::stitch_repair`](super::CommitConfig::stitch_repair)).
    pub repaired: u64,
    /// New ranges made.
    pub made: u64,
    /// Pages of the new ranges.
    pub made_pages: u64,
    /// Over the new ranges: pages of the cached range of that size that
    /// came closest to serving (fewest pages in use elsewhere), whose
    /// units were held by another live stitched range.
    pub busy_in_ranges: u64,
    /// The same, held by a live block outside stitched ranges.
    pub busy_in_blocks: u64,
    /// The same, idle but with fences forbidding the block's stream.
    pub fenced: u64,
    /// Frees that parked their range's units as a group (see
    /// [`parked`](super::pool::parked)).
    pub parked: u64,
    /// Of `reused`: blocks that took a parked group back in one step.
    pub retaken: u64,
    /// Groups flushed (those of stitched ranges and of blocks): something
    /// else wanted one of their units (another range or block, a fence, an
    /// unmap, the decay) before their block was taken back, or it was
    /// taken back page by page.
    pub flushed: u64,
    /// Frees of blocks outside stitched ranges that parked the units of
    /// the pages they cover whole as a group (see
    /// [`parked`](super::pool::parked)).
    pub blocks_parked: u64,
    /// Blocks outside stitched ranges that took such a group back in one
    /// step (same place, length and stream).
    pub blocks_retaken: u64,
    /// Blocks placed in the end of a live stitched block's last page (see
    /// [`tails`](super::tails)).
    pub tails: u64,
    /// Stitched blocks freed while blocks in their tails lived (their
    /// ranges cached only once those were freed).
    pub drained: u64,
}

counters!(StitchCounts {
    reused,
    repaired,
    made,
    made_pages,
    busy_in_ranges,
    busy_in_blocks,
    fenced,
    parked,
    retaken,
    flushed,
    blocks_parked,
    blocks_retaken,
    tails,
    drained,
});

/// Why the pages of a cached range cannot serve a block now.
#[derive(Clone, Copy, Default)]
struct Busy {
    in_ranges: u64,
    in_blocks: u64,
    fenced: u64,
}

impl Busy {
    fn total(&self) -> u64 {
        self.in_ranges + self.in_blocks + self.fenced
    }
}

impl<D: Driver> Commit<D> {
    /// Whether offset `off` lies in the stitch region.
    #[inline]
    pub fn in_stitch_region(&self, off: u64) -> bool {
        self.stitch.contains_page(off >> self.shift)
    }

    /// The stitch region: (offset, bytes).
    pub fn stitch_region(&self) -> (u64, u64) {
        let (f, n) = self.stitch.region();
        (f << self.shift, n << self.shift)
    }

    /// Bytes and count of live blocks in stitched ranges.
    pub fn stitched_live(&self) -> (u64, u64) {
        (
            self.stitch.live_bytes() + self.tails.live_bytes(),
            self.stitch.live_count() + self.tails.live_count(),
        )
    }

    /// The pages of a block of `size` bytes, and the most a cached range
    /// serving it may have ([`RANGE_SLACK`]).
    fn range_pages(&self, size: u64) -> (u64, u64) {
        let k = size.div_ceil(self.page);
        (k, k + k / RANGE_SLACK)
    }

    /// Allocates `size` bytes in a cached stitched range of about that
    /// size whose units are all idle and usable by stream slot `slot`, if
    /// one is: no driver call. Returns the block's offset.
    pub fn stitch_reuse(&mut self, size: u64, slot: u16) -> Option<u64> {
        let (k, max) = self.range_pages(size);
        let heads = core::mem::replace(&mut self.walk_heads, MetaVec::new_in(std::alloc::System));
        let mut walk = self.stitch.walk(self.config.range_order, k, max, heads);
        let found = self.reuse_in(&mut walk, k, max, size, slot);
        self.walk_heads = walk.into_heads();
        found
    }

    /// Places a block of `len` bytes in the tail of a live stitched block
    /// of stream slot `slot` (see [`tails`](super::tails)): no driver
    /// call, no memory but what that block's last page holds already.
    /// Returns its offset, if a tail holds it.
    pub fn stitch_tail(&mut self, len: u64, slot: u16) -> Option<u64> {
        if self.asleep || len == 0 {
            return None;
        }
        let off = self.tails.alloc(&mut self.stitch, self.shift, len, slot)?;
        // The tail's page holds its range's block's last bytes: it is live
        // through the range's mapping, and taking it needs nothing else.
        if self.try_take(off, len, slot) {
            self.stitch_counts.tails += 1;
            return Some(off);
        }
        debug_assert!(false, "a tail's page was not ready");
        self.tails.free(&mut self.stitch, off, Stamp::SAFE);
        None
    }

    /// [`Commit::stitch_reuse`] along `walk`.
    fn reuse_in(&mut self, walk: &mut Walk, k: u64, max: u64, size: u64, slot: u16) -> Option<u64> {
        while let Some(r) = self.stitch.next_in(walk, max) {
            let (first, blocker) = {
                let x = self.stitch.range(r);
                (x.first, x.first + x.blocker)
            };
            // The page that stopped this range last time is asked first: a
            // range passed over is most often passed over again (a live
            // range still holds that page's unit), and then one look says
            // so instead of a walk up to it.
            if blocker < first + k && self.held_elsewhere(blocker) {
                continue;
            }
            // A range whose block's units are parked as a group is taken
            // back in one step: a live group's members map every page of
            // the block (unmapping one flushes the group), so no hole needs
            // looking for.
            if self.retake_parked(r, k, size, slot) {
                debug_assert_eq!(self.pages.cost(first, first + k - 1).unmapped, 0);
                return Some(first << self.shift);
            }
            // A hole makes a range unusable for this size; owners and fences
            // are asked of the pool.
            if self.pages.cost(first, first + k - 1).unmapped > 0 {
                continue;
            }
            match self.takeable(first, first + k - 1, slot) {
                Ok(()) => {
                    self.stitch.take(r, size, slot);
                    self.account_live(first << self.shift, size);
                    self.group_range_on_take(r, first, k, slot);
                    self.stitch_counts.reused += 1;
                    return Some(first << self.shift);
                }
                Err(p) => self.stitch.set_blocker(r, p - first),
            }
        }
        None
    }

    /// Takes cached range `r` back for a block of `size` bytes (`k` pages)
    /// for work of stream slot `slot` in one step, if its block's units
    /// were parked as a group that may be taken back at once
    /// ([`Pool::can_retake`](super::pool::Pool::can_retake)): what
    /// [`Commit::takeable`] and [`Commit::account_live`] would do page by
    /// page, with the same outcome (see [`parked`](super::pool::parked)).
    fn retake_parked(&mut self, r: u32, k: u64, size: u64, slot: u16) -> bool {
        let Some(g) = self.stitch.range(r).group else {
            return false;
        };
        let streams = &self.streams;
        if !self.pool.can_retake(g, k, slot, |s| streams.done(s)) {
            return false;
        }
        let off = self.stitch.range(r).first << self.shift;
        self.pages
            .add_block(off, size, self.shift, |first_live, _| {
                debug_assert!(first_live, "a parked range's page is live");
            });
        self.retake_marked(g);
        self.live += size;
        self.peak_live = self.peak_live.max(self.live);
        self.stitch.take(r, size, slot);
        self.stitch_counts.reused += 1;
        self.stitch_counts.retaken += 1;
        true
    }

    /// Frees the block of `size` bytes at `off` that holds range `r` by
    /// parking its units as a group (forming it if need be), if parking is
    /// on and they may be: what [`Commit::sub_live`] would do page by page,
    /// with the same outcome (see [`parked`](super::pool::parked)). Returns false
    /// where the caller must free it page by page. Never asleep: an asleep
    /// range has no units to park ([`Commit::stitch_free`] drops it).
    fn park_range(&mut self, r: u32, off: u64, size: u64, stamp: Stamp) -> bool {
        debug_assert!(!self.asleep, "asleep ranges are dropped, not parked");
        if !self.config.park || size == 0 {
            return false;
        }
        let (first, stream, group) = {
            let x = self.stitch.range(r);
            (x.first, x.stream, x.group)
        };
        let k = size.div_ceil(self.page);
        let g = match group.filter(|&g| self.pool.group_alive(g)) {
            Some(g) => g,
            None => match self.form_range_group(r, first, k, stream) {
                Some(g) => g,
                None => return false,
            },
        };
        self.pages.sub_block(off, size, self.shift, |emptied, _| {
            debug_assert!(emptied, "a stitched range's page stays live");
        });
        let now = self.clock.now_ms();
        self.park_marked(g, stamp, now);
        self.after_free(size, true, false);
        self.stitch_counts.parked += 1;
        true
    }

    /// Forms the group of the units of range `r`'s first `k` pages (from
    /// page `first`; its live block's), whose stamps allow the work of
    /// stream slot `stream`, and names it the range's; none if a page is
    /// unmapped or a unit cannot join.
    fn form_range_group(&mut self, r: u32, first: u64, k: u64, stream: u16) -> Option<GroupId> {
        let mut members =
            core::mem::replace(&mut self.members, MetaVec::new_in(std::alloc::System));
        members.clear();
        let mut last = NIL;
        let mut mapped = true;
        self.pages.each_map(first, first + k - 1, |m| {
            mapped &= m != NIL;
            if m != last {
                members.push(m);
                last = m;
            }
        });
        let g = if mapped {
            self.pool.form_group(&members, k, stream)
        } else {
            None
        };
        self.members = members;
        self.stitch.set_group(r, g);
        g
    }

    /// Forms the group of range `r`'s block (its `k` pages from page
    /// `first`) as it is taken page by page for work of `slot` (or backed
    /// afresh), while the records of its pages are in the caches, where its
    /// free would form it (see
    /// [`Commit::group_on_take`](super::Commit::group_on_take) for the
    /// blocks region's): the free then parks it in one step.
    fn group_range_on_take(&mut self, r: u32, first: u64, k: u64, slot: u16) {
        if self.config.park && k > 0 {
            self.form_range_group(r, first, k, slot);
        }
    }

    /// Allocates `size` bytes in a stitched range for work of stream slot
    /// `slot`: a cached range of about that size whose units are all idle
    /// and usable by `slot` (no driver call), else a new range backed by
    /// idle units from anywhere and new handles for the rest. Returns the
    /// block's offset (page-aligned).
    pub fn stitch_alloc(&mut self, size: u64, slot: u16) -> Result<u64> {
        if let Some(off) = self.stitch_reuse(size, slot) {
            return Ok(off);
        }
        self.stitch_alloc_unreused(size, slot)
    }

    /// [`Commit::stitch_alloc`] for a caller whose
    /// [`Commit::stitch_reuse`] of the same size and slot just found no
    /// cached range, with nothing changed since: the walk over the cached
    /// ranges is not made again (it would find none).
    pub fn stitch_alloc_unreused(&mut self, size: u64, slot: u16) -> Result<u64> {
        let (k, max) = self.range_pages(size);
        let now = self.clock.now_ms();
        if self.repairs(k << self.shift) {
            match self.stitch_repair(size, k, max, slot) {
                Ok(Some(off)) => {
                    self.stitch_counts.repaired += 1;
                    return Ok(off);
                }
                Ok(None) => {}
                // Out of memory: a new range needs at least as much.
                Err(e) if super::back::is_oom(&e) => return Err(e),
                // The driver refused one of the repair's own calls (an
                // unmap of a busy page, say): a new range makes none of
                // them. The range stays cached as the repair left it.
                Err(_) => {}
            }
        }
        // Why the closest cached range could not serve, asked before the
        // trim dissolves any; counted once the new range is made.
        let busy = self.closest_busy(k, max, slot);
        self.trim_cached(k, max);
        let r = loop {
            if let Some(r) = self.stitch.make(k, now) {
                break r;
            }
            // The region is full: the least recently used cached range goes.
            if !self.evict_range() {
                return Err(Error::AddressSpace {
                    requested: size,
                    reserved: self.stitch_region().1,
                });
            }
        };
        let first = self.stitch.range(r).first;
        // In use while it is backed, so that the out-of-memory ladder leaves
        // it alone.
        self.stitch.take(r, size, slot);
        let off = first << self.shift;
        if let Err(e) = self.back(first, first + k - 1, off, size, slot, super::Backing::Pages) {
            self.stitch.put(r, now);
            self.stitch.remove(r);
            return Err(e);
        }
        self.count_made(k, busy);
        self.account_live(off, size);
        self.group_range_on_take(r, first, k, slot);
        Ok(off)
    }

    /// Whether stitched blocks of `bytes` have their cached ranges repaired
    /// ([`CommitConfig::stitch_repair`](super::CommitConfig::stitch_repair)
    /// on, and at least `stitch_repair_min` bytes); the free of such a block
    /// records its fence at once, so that a repair need not wait for it.
    fn repairs(&self, bytes: u64) -> bool {
        self.config.stitch_repair && bytes >= self.config.stitch_repair_min
    }

    /// Takes back the cached range of `k..=max` pages that needs the fewest
    /// remaps, remapping only its pages whose units are in use elsewhere (or
    /// whose fences forbid `slot`) to idle units, when that costs less than
    /// mapping a new range of `k` pages. A workload whose large ranges come
    /// back with a few of their pages taken elsewhere (a training loop)
    /// pays for those pages, not for the whole range again. Never blocks: a
    /// range whose busy pages still wait for the fences of the frees
    /// through them is passed over.
    fn stitch_repair(&mut self, size: u64, k: u64, max: u64, slot: u16) -> Result<Option<u64>> {
        /// Cached ranges of about this size that must exist (none fitting)
        /// before one is repaired rather than a new one made.
        const CROWD: usize = 4;
        let candidates = self.first_cached(k, max);
        let mut best: Option<(u64, u32)> = None;
        for &r in candidates.iter() {
            let first = self.stitch.range(r).first;
            if let Some(n) = self.remaps_needed(first, first + k - 1, slot) {
                // A remap is an unmap and a map; a new range maps k pages.
                if 2 * n < k && best.is_none_or(|(b, _)| n < b) {
                    best = Some((n, r));
                }
            }
        }
        // While few ranges of this size exist, a new one is made: a workload
        // that repeats exactly finds, next time, one of them intact. Only
        // when that many were made and none fits is the best one repaired.
        let Some((_, r)) = best.filter(|_| candidates.len() >= CROWD) else {
            return Ok(None);
        };
        let first = self.stitch.range(r).first;
        let off = first << self.shift;
        // In use while it is backed, so that the out-of-memory ladder leaves
        // it alone.
        self.stitch.take(r, size, slot);
        if let Err(e) = self.back(
            first,
            first + k - 1,
            off,
            size,
            slot,
            super::Backing::Repair,
        ) {
            // It stays cached; pages whose mappings went are remapped by
            // its next taker.
            let now = self.clock.now_ms();
            self.stitch.put(r, now);
            return Err(e);
        }
        self.account_live(off, size);
        Ok(Some(off))
    }

    /// Dissolves the least recently used cached range of `k..=max` pages
    /// whose fences completed, if [`CACHED_PER_SIZE`] of them are cached
    /// (never blocks; one unmap call per run of its pages).
    fn trim_cached(&mut self, k: u64, max: u64) {
        let mut ids: MetaVec<(u64, u32)> = MetaVec::new_in(std::alloc::System);
        ids.extend(
            self.stitch
                .cached(k, max)
                .map(|r| (self.stitch.range(r).recency, r)),
        );
        if ids.len() >= CACHED_PER_SIZE {
            self.dissolve_least_recent(ids);
        }
    }

    /// Dissolves the least recently used of the cached ranges `ids`
    /// ((recency, range)) whose mappings can go now. Returns whether one
    /// went.
    fn dissolve_least_recent(&mut self, mut ids: MetaVec<(u64, u32)>) -> bool {
        ids.sort_unstable();
        ids.into_iter().any(|(_, r)| self.dissolve_range(r))
    }

    /// The first [`LOOK`] cached ranges of `k..=max` pages, smallest first
    /// (oldest first within a size).
    fn first_cached(&self, k: u64, max: u64) -> MetaVec<u32> {
        let mut ids = MetaVec::new_in(std::alloc::System);
        ids.extend(self.stitch.cached(k, max).take(LOOK));
        ids
    }

    /// Why the closest cached range of `k..=max` pages (of the first few)
    /// cannot serve a block of `k` pages for `slot`: its busy pages, if
    /// any range of that size is cached.
    fn closest_busy(&self, k: u64, max: u64, slot: u16) -> Option<Busy> {
        let mut best: Option<Busy> = None;
        for r in self.first_cached(k, max) {
            let first = self.stitch.range(r).first;
            let busy = self.busy_pages(first, first + k - 1, slot);
            if best.is_none_or(|b| busy.total() < b.total()) {
                best = Some(busy);
            }
        }
        best
    }

    /// Counts a new range of `k` pages, made because the closest cached
    /// one had `busy` pages.
    fn count_made(&mut self, k: u64, busy: Option<Busy>) {
        let c = &mut self.stitch_counts;
        c.made += 1;
        c.made_pages += k;
        if let Some(b) = busy {
            c.busy_in_ranges += b.in_ranges;
            c.busy_in_blocks += b.in_blocks;
            c.fenced += b.fenced;
        }
    }

    /// The mapped pages of `a..=b` whose units are held by a live mapping
    /// elsewhere, by holder, and those whose fences (as last polled) forbid
    /// `slot`.
    fn busy_pages(&self, a: u64, b: u64, slot: u16) -> Busy {
        let mut busy = Busy::default();
        let mut p = a;
        while let Some((_, m)) = self.pages.next_mapped(p, b) {
            let (u, pages) = (self.pool.map(m).unit, self.pool.map(m).pages);
            let owner = self.pool.owner(u);
            if owner != NIL && owner != m {
                if self.stitch.contains_page(self.pool.map(owner).first) {
                    busy.in_ranges += pages;
                } else {
                    busy.in_blocks += pages;
                }
            } else {
                // Only what is known now: counting records no fence.
                let streams = &self.streams;
                if !self.pool.unit_allows(u, slot, |s| streams.done(s)) {
                    busy.fenced += pages;
                }
            }
            p = self.pool.map(m).first + pages;
        }
        busy
    }

    /// The decisions of stitched-range allocations so far.
    pub fn stitch_counts(&self) -> StitchCounts {
        StitchCounts {
            flushed: self.pool.groups_flushed(),
            ..self.stitch_counts
        }
    }

    /// Pages of `a..=b` (a cached range's) that a block for `slot` would
    /// have to remap: unmapped, or mapped to a unit it may not take now (in
    /// use elsewhere, fences forbidding `slot`, or already taken by an
    /// earlier page). `None` when one of those mappings could not be
    /// unmapped without waiting for the fences of the frees through it.
    fn remaps_needed(&mut self, a: u64, b: u64, slot: u16) -> Option<u64> {
        let token = self.pool.new_mark();
        let (mut n, mut last) = (0, NIL);
        for p in a..=b {
            let m = self.pages.map(p);
            if m == NIL {
                n += 1;
                last = m;
                continue;
            }
            if m == last {
                continue;
            }
            last = m;
            let x = self.pool.map(m);
            let (u, pages) = (x.unit, x.pages);
            let outside = x.first < a || x.first + x.pages > b + 1;
            let usable = !(outside && pages > 1 && self.pool.live_pages(m) == 0)
                && self.pool.can_take(m)
                && !self.pool.mark(u, token)
                && self.allows(m, slot);
            if !usable {
                if !self.mapping_settled(m) {
                    return None;
                }
                n += pages;
            }
        }
        Some(n)
    }

    /// Visits every live stitched block: (offset, size).
    pub fn for_each_stitched(&self, mut f: impl FnMut(u64, u64)) {
        for r in self.stitch.ids() {
            let x = self.stitch.range(r);
            if x.holds_block() {
                f(x.first << self.shift, x.size);
            }
        }
        self.tails.for_each(f);
    }

    /// Dissolves the least recently used cached range whose mappings can go
    /// now (never blocks). Returns whether one went.
    fn evict_range(&mut self) -> bool {
        let mut ids: MetaVec<(u64, u32)> = MetaVec::new_in(std::alloc::System);
        for r in self.stitch.ids() {
            let x = self.stitch.range(r);
            if !x.in_use {
                ids.push((x.recency, r));
            }
        }
        self.dissolve_least_recent(ids)
    }

    /// The size of the live stitched block at `off`, if any.
    pub fn stitch_size(&self, off: u64) -> Option<u64> {
        if off & (self.page - 1) != 0 {
            return self.tails.size(off);
        }
        let r = self.stitch.at(off >> self.shift)?;
        let x = self.stitch.range(r);
        x.holds_block().then_some(x.size)
    }

    /// Frees the stitched block at `off`, last used on the stream of
    /// `stamp`; its range stays cached with its mappings (while asleep it
    /// has none, and goes). Returns its size.
    pub fn stitch_free(&mut self, off: u64, stamp: Stamp) -> Result<u64> {
        if off & (self.page - 1) != 0 {
            if let Some(bytes) = self.tail_free(off, stamp) {
                return Ok(bytes);
            }
        }
        let p = off >> self.shift;
        let r = match self.stitch.at(p) {
            Some(r) if off & (self.page - 1) == 0 => r,
            _ => {
                // Inside a live block: an interior pointer. Elsewhere below
                // the region's top (handed out before) nothing is allocated
                // now: a block freed before, its range cached, dissolved or
                // another made over it (as the blocks region says). Past
                // the top nothing was handed out.
                let inside = self.tails.containing(off)
                    || self.stitch.containing(p).is_some_and(|r| {
                        let x = self.stitch.range(r);
                        x.holds_block() && off < (x.first << self.shift) + x.size
                    });
                let (first, _) = self.stitch.region();
                let kind = if inside {
                    BadPointer::Interior
                } else if p < first + self.stitch.top() {
                    BadPointer::DoubleFree
                } else {
                    BadPointer::Foreign
                };
                return Err(Error::BadPointer {
                    addr: DevicePtr::new(self.res.base() + off),
                    kind,
                });
            }
        };
        if !self.stitch.range(r).holds_block() {
            return Err(Error::BadPointer {
                addr: DevicePtr::new(self.res.base() + off),
                kind: BadPointer::DoubleFree,
            });
        }
        if self.stitch.range(r).tail.live > 0 {
            return Ok(self.drain_range(r, off, stamp));
        }
        let now = self.clock.now_ms();
        let size = self.stitch.put(r, now);
        if self.asleep {
            // No mapping to keep or fence to wait for: the range's addresses
            // go back to the region, and the wake does not recommit them.
            self.sub_live(off, size, stamp);
            self.stitch.remove(r);
            return Ok(size);
        }
        // A tail closed by another stream's free left that stream's stamp
        // on the last unit, which a parked group's retake would not ask:
        // such a block goes page by page.
        if self.stitch.range(r).tail.closed || !self.park_range(r, off, size, stamp) {
            self.sub_live(off, size, stamp);
        }
        self.fence_for_repair(size, stamp);
        Ok(size)
    }

    /// Records the fence of a stitched block's free of `size` bytes with
    /// `stamp` at once where a repair may ask for it (see
    /// [`Commit::repairs`]); asleep, none is needed.
    fn fence_for_repair(&mut self, size: u64, stamp: Stamp) {
        if !self.asleep
            && self.repairs(size)
            && self.streams.ensure_fence(&self.res.driver, stamp).is_err()
        {
            self.calls.failed += 1;
        }
    }

    /// Flushes the group recorded for range `r` (if it still lives) and
    /// forgets it: a free page by page follows.
    fn forget_group(&mut self, r: u32) {
        if let Some(g) = self.stitch.range(r).group {
            self.pool.flush(g);
            self.stitch.set_group(r, None);
        }
    }

    /// Frees the tail block at `off` with `stamp`, if one starts there:
    /// takes it off the page table and caches its range if that drained it
    /// (drops it while asleep, as [`Commit::stitch_free`] does). Returns
    /// its bytes.
    #[cold]
    #[inline(never)]
    fn tail_free(&mut self, off: u64, stamp: Stamp) -> Option<u64> {
        let f = self.tails.free(&mut self.stitch, off, stamp)?;
        self.sub_live(off, f.bytes, stamp);
        // Another stream's stamp on a unit of the range's group, which a
        // retake asks only of the group's pending ones: the group goes (the
        // tail is closed, and the host's free will not park either). The
        // free above flushed it already where it stamped a member
        // (`Pool::free_page`); this says so whatever the stamp.
        if self.stitch.range(f.range).tail.closed {
            self.forget_group(f.range);
        }
        if f.drained {
            let now = self.clock.now_ms();
            self.stitch.put(f.range, now);
            if self.asleep {
                self.stitch.remove(f.range);
            }
        }
        Some(f.bytes)
    }

    /// Frees the block of range `r` at `off` with `stamp` while blocks in
    /// its tail live: the range stays in use, draining, and its block's
    /// bytes go page by page (the last page stays live); its fence is
    /// recorded as [`Commit::stitch_free`] records it. Returns the block's
    /// size.
    #[cold]
    #[inline(never)]
    fn drain_range(&mut self, r: u32, off: u64, stamp: Stamp) -> u64 {
        let size = self.stitch.drain(r);
        self.stitch_counts.drained += 1;
        self.forget_group(r);
        self.sub_live(off, size, stamp);
        self.fence_for_repair(size, stamp);
        size
    }
}

#[cfg(test)]
mod tests {
    use super::CACHED_PER_SIZE;
    use crate::commit::testing::{self, finish};
    use crate::commit::{Backing, Commit, CommitConfig};
    use crate::driver::{Checked, Driver, Fault, FaultKind, HostDriver, Op, Stream};
    use crate::error::{BadPointer, Error};
    use crate::sync::Stamp;

    /// The kind of bad pointer `free(off)` reports (it must refuse).
    fn refused<D: Driver>(c: &mut Commit<D>, off: u64) -> BadPointer {
        match c.stitch_free(off, Stamp::SAFE) {
            Err(Error::BadPointer { kind, .. }) => kind,
            r => panic!("free({off:#x}) gave {r:?}"),
        }
    }

    #[test]
    fn a_bad_free_in_the_stitch_region_says_what_lies_there() {
        let d = HostDriver::new().unwrap();
        let page = 2u64 << 20;
        let mut c = Commit::for_tests(&d, 64, (0, 64));
        let (region, _) = c.stitch_region();
        // A range of 4 pages, freed and cached, then taken back by a block
        // of 3 pages (a range serves up to half again its block).
        let a = c.stitch_alloc(4 * page, 0).unwrap();
        assert_eq!(a, region);
        c.stitch_free(a, Stamp::SAFE).unwrap();
        assert_eq!(c.stitch_alloc(3 * page, 0).unwrap(), a, "the cached range");
        let live = c.live();
        assert_eq!(refused(&mut c, a + page), BadPointer::Interior);
        assert_eq!(refused(&mut c, a + 512), BadPointer::Interior);
        // Past the block, inside its range: nothing allocated there.
        assert_eq!(refused(&mut c, a + 3 * page), BadPointer::DoubleFree);
        // Past everything the region ever handed out.
        assert_eq!(refused(&mut c, a + 8 * page), BadPointer::Foreign);
        assert_eq!(c.live(), live, "nothing changed");
        c.stitch_free(a, Stamp::SAFE).unwrap();
        assert_eq!(refused(&mut c, a), BadPointer::DoubleFree);
        assert_eq!(refused(&mut c, a + page), BadPointer::DoubleFree);
        c.check_invariants();
    }

    /// Four cached ranges of 8 pages, each with its first page's unit now
    /// held by a one-page block of the blocks region: a block of 8 pages
    /// then repairs one of them (`stitch_repair` from 2 pages).
    fn with_ranges_to_repair(d: &Checked<HostDriver>) -> (Commit<&Checked<HostDriver>>, Vec<u64>) {
        let page = d.capabilities().granularity as u64;
        let config = CommitConfig {
            stitch_repair: true,
            stitch_repair_min: 2 * page,
            ..CommitConfig::default()
        };
        let mut c = Commit::for_tests_with(d, 256, (64, 192), config);
        let blocks: Vec<u64> = (0..4).map(|i| i * 4 * page).collect();
        for &b in &blocks {
            c.add_live(b, page, 0, Backing::Pages).unwrap();
        }
        let mut ranges = vec![];
        for &b in &blocks {
            c.sub_live(b, page, Stamp::SAFE);
            ranges.push(c.stitch_alloc(8 * page, 0).unwrap());
        }
        for r in ranges {
            c.stitch_free(r, Stamp::SAFE).unwrap();
        }
        for &b in &blocks {
            c.add_live(b, page, 0, Backing::Pages).unwrap();
        }
        (c, blocks)
    }

    #[test]
    fn a_range_repair_is_reached() {
        let d = Checked::new(HostDriver::new().unwrap());
        let page = d.capabilities().granularity as u64;
        let (mut c, _) = with_ranges_to_repair(&d);
        let off = c.stitch_alloc(8 * page, 0).unwrap();
        assert_eq!(c.stitch_counts().repaired, 1, "{:?}", c.stitch_counts());
        c.stitch_free(off, Stamp::SAFE).unwrap();
        c.check_invariants();
    }

    #[test]
    fn a_refused_unmap_in_a_repair_makes_a_new_range_instead() {
        let d = Checked::new(HostDriver::new().unwrap());
        let page = d.capabilities().granularity as u64;
        let (mut c, blocks) = with_ranges_to_repair(&d);
        let (made, live) = (c.stitch_counts().made, c.live());
        d.inject(Fault {
            op: Op::Unmap,
            nth: 1,
            kind: FaultKind::DriverError,
        });
        let off = c.stitch_alloc(8 * page, 0).expect("a new range");
        d.clear_faults();
        let counts = c.stitch_counts();
        assert_eq!((counts.repaired, counts.made), (0, made + 1), "{counts:?}");
        assert_eq!(c.live(), live + 8 * page);
        c.check_invariants();
        for &b in &blocks {
            assert!(c.is_committed(b, page), "block {b:#x} keeps its page");
        }
        c.stitch_free(off, Stamp::SAFE).unwrap();
        for &b in &blocks {
            c.sub_live(b, page, Stamp::SAFE);
        }
        gives_everything_back(c, &d);
    }

    /// A new range that fails to back (out of memory past the idle units)
    /// undoes its mappings; an unmap the driver refuses every time leaves
    /// that mapping behind, with access, in addresses given back to the
    /// stitch region. A range made there later finds it like any idle
    /// mapping: it serves, or goes where it would reach past the range.
    /// Nothing is lost from the accounting and nothing leaks.
    /// The leftover of a refused undo, its fences still pending, is kept by
    /// a one-page range and reaches into the next range's page; when the
    /// first range goes, the second range's live page stays mapped (found
    /// by review: it was unmapped under the live block).
    #[test]
    fn a_leftover_mapping_reaching_into_another_range_stays_under_its_block() {
        use crate::commit::testing::{PAGE, commit, driver};
        let d = driver();
        let s = d.create_stream().unwrap();
        {
            let mut c = commit(&d, 64, (32, 32));
            let ss = c.streams.slot(s);
            for b in 0..4 {
                c.add_live(b * PAGE, PAGE, ss, Backing::Pages).unwrap();
            }
            c.add_live(8 * PAGE, 2 * PAGE, ss, Backing::Whole).unwrap();
            for b in 0..4 {
                c.sub_live(b * PAGE, PAGE, Stamp::SAFE);
            }
            // The two-page unit's free waits for work still running on s.
            d.inner().hold(s);
            c.sub_live(8 * PAGE, 2 * PAGE, c.streams.stamp(ss));
            testing::refuse(&d, Op::Create, FaultKind::OutOfMemory, 8);
            testing::refuse(&d, Op::Unmap, FaultKind::DriverError, 3);
            assert!(matches!(
                c.stitch_alloc(8 * PAGE, ss),
                Err(Error::OutOfMemory(_))
            ));
            d.clear_faults();
            let (region, _) = c.stitch_region();
            let r0 = c.stitch_alloc(4 * PAGE, ss).unwrap();
            let r1 = c.stitch_alloc(PAGE, ss).unwrap();
            let r2 = c.stitch_alloc(PAGE, ss).unwrap();
            assert_eq!((r0, r1, r2), (region, region + 4 * PAGE, region + 5 * PAGE));
            // SAFETY: r2's page is live and host-visible.
            unsafe { ((c.base() + r2) as *mut u64).write(0xfeed) };
            c.stitch_free(r1, c.streams.stamp(ss)).unwrap();
            d.inner().complete(s);
            c.trim();
            assert!(c.is_committed(r2, PAGE), "r2's live page stays mapped");
            // SAFETY: as above.
            assert_eq!(unsafe { ((c.base() + r2) as *const u64).read() }, 0xfeed);
            c.check_invariants();
            for r in [r2, r0] {
                c.stitch_free(r, c.streams.stamp(ss)).unwrap();
            }
            c.trim();
            c.check_invariants();
            assert_eq!((c.live(), c.committed()), (0, 0));
        }
        finish(&d, &[s]);
    }

    #[test]
    fn a_mapping_left_by_a_refused_undo_is_handled_by_the_next_range() {
        let d = Checked::new(HostDriver::new().unwrap());
        let page = d.capabilities().granularity as u64;
        let mut c = Commit::for_tests(&d, 64, (32, 32));
        // Idle units: four of one page, then (idle last, so mapped last)
        // one of two pages.
        for b in 0..4 {
            c.add_live(b * page, page, 0, Backing::Pages).unwrap();
        }
        c.add_live(8 * page, 2 * page, 0, Backing::Whole).unwrap();
        for b in 0..4 {
            c.sub_live(b * page, page, Stamp::SAFE);
        }
        c.sub_live(8 * page, 2 * page, Stamp::SAFE);
        assert_eq!(c.unit_count(), 5);
        // A range of 8 pages maps the idle units (6 pages), then the device
        // has no memory for a new handle: undone. The undo's first unmap
        // (the last mapping made) is refused three times.
        testing::refuse(&d, Op::Create, FaultKind::OutOfMemory, 8);
        testing::refuse(&d, Op::Unmap, FaultKind::DriverError, 3);
        let before = (c.stitched_ranges(), c.live(), c.committed());
        assert!(matches!(
            c.stitch_alloc(8 * page, 0),
            Err(Error::OutOfMemory(_))
        ));
        d.clear_faults();
        assert_eq!((c.stitched_ranges(), c.live(), c.committed()), before);
        let (region, _) = c.stitch_region();
        let first = region / page;
        let left = (first..first + 8)
            .filter(|&p| c.pages.map(p) != super::NIL)
            .count();
        assert_eq!(
            left, 2,
            "the two-page mapping stays behind at pages 4 and 5"
        );
        c.check_invariants();
        // Ranges made over those addresses: the third (pages 3 and 4) would
        // hold the leftover's first page only, so the leftover goes (its
        // fences are done) and the page is backed afresh; the fourth gets
        // page 5 afresh. Data written through each block's pages is read
        // back.
        let mut offs = vec![];
        for k in [2u64, 1, 2, 3] {
            let off = c.stitch_alloc(k * page, 0).unwrap();
            c.check_invariants();
            offs.push((off, k));
            if offs.len() == 3 {
                assert_eq!(off, region + 3 * page);
                assert_eq!(c.pages.map(first + 5), super::NIL, "the leftover went");
            }
        }
        for &(off, k) in &offs {
            for i in 0..k {
                let p = (c.base() + off + i * page) as *mut u64;
                // SAFETY: the page is committed (the block is live) and host memory.
                unsafe { p.write(off + i) };
            }
        }
        for &(off, k) in &offs {
            for i in 0..k {
                let p = (c.base() + off + i * page) as *const u64;
                // SAFETY: as above.
                assert_eq!(unsafe { p.read() }, off + i, "page {i} of block {off:#x}");
            }
        }
        for (off, _) in offs {
            c.stitch_free(off, Stamp::SAFE).unwrap();
        }
        gives_everything_back(c, &d);
    }

    /// With nothing live any more, a trim leaves nothing committed, the
    /// invariants hold, and once `c` is dropped the driver holds nothing.
    fn gives_everything_back(mut c: Commit<&Checked<HostDriver>>, d: &Checked<HostDriver>) {
        c.trim();
        c.check_invariants();
        assert_eq!(c.committed(), 0);
        drop(c);
        assert!(d.leaks().is_none(), "{:?}", d.leaks());
    }

    /// A page table on `d` with streams `s` and `t`, and a stitched block
    /// of 2 pages and 1,024 bytes for `s`'s work (its tail: the rest of
    /// its third page): (table, `s`'s slot, `t`'s slot, the block).
    fn with_a_host(
        d: &Checked<HostDriver>,
        s: Stream,
        t: Stream,
    ) -> (Commit<&Checked<HostDriver>>, u16, u16, u64) {
        let mut c = testing::commit(d, 64, (32, 32));
        let (ss, ts) = (c.streams.slot(s), c.streams.slot(t));
        let host = c.stitch_alloc(2 * testing::PAGE + 1024, ss).unwrap();
        (c, ss, ts, host)
    }

    /// A block in the tail of a stitched block's last page costs no driver
    /// call and no memory; the range drains while it lives past its host
    /// block, and is cached (and taken back) once it is freed. Another
    /// stream's blocks and a free on another stream keep to the rules of
    /// [`tails`](crate::commit::tails).
    #[test]
    fn a_tail_block_shares_the_last_page_and_its_range_drains_after_it() {
        let d = testing::driver();
        let page = testing::PAGE;
        let (s, t) = (d.create_stream().unwrap(), d.create_stream().unwrap());
        {
            let (mut c, ss, ts, host) = with_a_host(&d, s, t);
            let (calls, committed) = (c.calls().vmm(), c.committed());
            assert_eq!(c.stitch_tail(page, ss), None, "larger than the tail");
            assert_eq!(c.stitch_tail(512, ts), None, "another stream's");
            let t1 = c.stitch_tail(4096, ss).expect("a tail block");
            assert_eq!(t1, host + 2 * page + 1024, "just past the block");
            let t2 = c.stitch_tail(1024, ss).expect("a second");
            assert_eq!(t2, t1 + 4096);
            assert_eq!((c.calls().vmm(), c.committed()), (calls, committed));
            assert_eq!(c.stitch_size(t1), Some(4096));
            assert_eq!(c.stitched_live(), (2 * page + 1024 + 5120, 3));
            c.check_invariants();
            // A pointer inside a tail block, or past the tail's blocks.
            assert_eq!(refused(&mut c, t1 + 512), BadPointer::Interior);
            assert_eq!(refused(&mut c, t2 + 1024), BadPointer::DoubleFree);
            // The host block goes first: its range drains.
            let stamp = c.streams.stamp(ss);
            assert_eq!(c.stitch_free(host, stamp).unwrap(), 2 * page + 1024);
            assert_eq!(c.stitch_counts().drained, 1);
            assert_eq!(c.stitch_size(host), None);
            assert_eq!(refused(&mut c, host), BadPointer::DoubleFree);
            assert_eq!(refused(&mut c, host + 512), BadPointer::DoubleFree);
            assert_eq!(
                c.stitch_tail(512, ss),
                None,
                "a draining range takes nothing"
            );
            assert_eq!(c.stitched_live(), (5120, 2));
            c.check_invariants();
            // Not taken back while it drains: a block of its size gets
            // another range.
            let other = c.stitch_alloc(2 * page + 1024, ss).unwrap();
            assert_ne!(other, host);
            for off in [other, t1, t2] {
                let stamp = c.streams.stamp(ss);
                c.stitch_free(off, stamp).unwrap();
            }
            assert_eq!(refused(&mut c, t2), BadPointer::DoubleFree);
            assert_eq!(c.stitched_live(), (0, 0));
            c.check_invariants();
            // Cached now: the oldest range of that size serves the next
            // block, and its tail is open again from the block's end.
            let (made, calls) = (c.stitch_counts().made, c.calls().vmm());
            assert_eq!(c.stitch_alloc(2 * page + 1024, ss).unwrap(), host);
            assert_eq!((c.stitch_counts().made, c.calls().vmm()), (made, calls));
            let t3 = c.stitch_tail(512, ss).expect("the tail again");
            assert_eq!(t3, t1);
            // A free on another stream closes the tail until the host goes.
            let stamp = c.streams.stamp(ts);
            c.stitch_free(t3, stamp).unwrap();
            assert_eq!(c.stitch_tail(512, ss), None, "closed");
            let stamp = c.streams.stamp(ss);
            c.stitch_free(host, stamp).unwrap();
            assert_eq!(c.stitch_counts().drained, 1, "nothing to drain");
            assert_eq!(c.stitch_counts().tails, 3);
            c.check_invariants();
        }
        finish(&d, &[s, t]);
    }

    /// A tail block freed on another stream stamps its host's last unit
    /// while the range's group lives: the host's free must not park that
    /// group (a retake for the host's stream asks only the group's pending
    /// stamps), so that the range waits for the other stream's fence before
    /// its stream takes it back.
    #[test]
    fn a_tail_freed_on_another_stream_keeps_its_range_from_a_retake_before_the_fence() {
        let d = testing::driver();
        let page = testing::PAGE;
        let (s, t) = (d.create_stream().unwrap(), d.create_stream().unwrap());
        {
            let (mut c, ss, ts, host) = with_a_host(&d, s, t);
            let tail = c.stitch_tail(4096, ss).expect("a tail block");
            // Handed to stream T, whose work is still running when freed.
            d.inner().hold(t);
            let stamp = c.streams.stamp(ts);
            c.stitch_free(tail, stamp).unwrap();
            let stamp = c.streams.stamp(ss);
            c.stitch_free(host, stamp).unwrap();
            let again = c.stitch_alloc(2 * page + 1024, ss).unwrap();
            assert_ne!(again, host, "T's fence is pending on the host's last unit");
            c.check_invariants();
            d.inner().complete(t);
            let stamp = c.streams.stamp(ss);
            c.stitch_free(again, stamp).unwrap();
            let later = c.stitch_alloc(2 * page + 1024, ss).unwrap();
            assert_eq!(later, host, "once it completed, the oldest range serves");
            let stamp = c.streams.stamp(ss);
            c.stitch_free(later, stamp).unwrap();
            c.check_invariants();
        }
        finish(&d, &[s, t]);
    }

    #[test]
    fn a_failed_stitch_alloc_counts_no_range_made() {
        let d = HostDriver::new().unwrap();
        let page = 2u64 << 20;
        let mut c = Commit::for_tests(&d, 8, (0, 4));
        let a = c.stitch_alloc(4 * page, 0).unwrap();
        assert_eq!(c.stitch_counts().made, 1);
        // The region is full: no range can be made.
        assert!(c.stitch_alloc(2 * page, 0).is_err());
        assert_eq!(c.stitched_ranges(), 1);
        let counts = c.stitch_counts();
        assert_eq!((counts.made, counts.made_pages), (1, 4), "{counts:?}");
        c.stitch_free(a, Stamp::SAFE).unwrap();
        c.check_invariants();
    }

    /// A cached range passed over because another mapping holds the unit
    /// of one of its pages remembers that page: it is passed over again
    /// while the holder lives, and taken back, with no driver call, once the
    /// holder lets go.
    #[test]
    fn a_range_passed_over_is_looked_at_first_where_it_was_stopped() {
        let d = Checked::new(HostDriver::new().unwrap());
        let page = 2u64 << 20;
        let mut c = Commit::for_tests(&d, 16, (8, 8));
        let a = c.stitch_alloc(3 * page, 0).unwrap();
        c.stitch_free(a, Stamp::SAFE).unwrap();
        let r = c.stitch.at(a >> c.shift).unwrap();
        // Blocks at pages 0 and 1 take the oldest idle units, the range's
        // first two (an alias map each); the first is freed again.
        c.add_live(0, page, 0, Backing::Pages).unwrap();
        c.add_live(page, page, 0, Backing::Pages).unwrap();
        c.sub_live(0, page, Stamp::SAFE);
        assert_eq!(c.stitch_reuse(3 * page, 0), None);
        assert_eq!(c.stitch.range(r).blocker, 1, "stopped at its second page");
        assert_eq!(c.stitch_reuse(3 * page, 0), None);
        assert_eq!(c.stitch.range(r).blocker, 1);
        c.sub_live(page, page, Stamp::SAFE);
        let maps = d.counts().map;
        assert_eq!(c.stitch_reuse(3 * page, 0), Some(a));
        assert_eq!(d.counts().map, maps, "taken back with no driver call");
        c.stitch_free(a, Stamp::SAFE).unwrap();
        c.check_invariants();
        gives_everything_back(c, &d);
    }

    /// A new range made after a walk that found no cached range
    /// (`stitch_alloc_unreused`, as the arena does when it asked the cached
    /// ranges first) is the one `stitch_alloc` makes: the same offset, the
    /// same driver calls, the same ranges, in two commits run in lockstep.
    #[test]
    fn a_new_range_after_a_failed_walk_is_the_one_stitch_alloc_makes() {
        let page = 2u64 << 20;
        let drivers = [
            Checked::new(HostDriver::new().unwrap()),
            Checked::new(HostDriver::new().unwrap()),
        ];
        let mut commits = drivers.each_ref().map(|d| Commit::for_tests(d, 16, (8, 8)));
        let mut made = Vec::new();
        for (i, c) in commits.iter_mut().enumerate() {
            // A cached range of 3 pages whose second page's unit a block
            // of the blocks region holds: no cached range serves.
            let a = c.stitch_alloc(3 * page, 0).unwrap();
            c.stitch_free(a, Stamp::SAFE).unwrap();
            c.add_live(0, page, 0, Backing::Pages).unwrap();
            c.add_live(page, page, 0, Backing::Pages).unwrap();
            c.sub_live(0, page, Stamp::SAFE);
            let off = if i == 0 {
                c.stitch_alloc(3 * page, 0).unwrap()
            } else {
                assert_eq!(c.stitch_reuse(3 * page, 0), None);
                c.stitch_alloc_unreused(3 * page, 0).unwrap()
            };
            assert_ne!(off, a, "a new range");
            c.check_invariants();
            made.push((off, c.stitched_ranges(), c.stitch_counts().made));
        }
        assert_eq!(made[0], made[1]);
        assert_eq!(drivers[0].counts(), drivers[1].counts());
        for (mut c, d) in commits.into_iter().zip(&drivers) {
            c.stitch_free(made[0].0, Stamp::SAFE).unwrap();
            c.sub_live(page, page, Stamp::SAFE);
            c.check_invariants();
            gives_everything_back(c, d);
        }
    }

    /// `CACHED_PER_SIZE + 4` one-page ranges, freed (last made first with
    /// `reverse`, the clock standing still with `still`), then a block of
    /// as many pages that takes every idle unit, so that no one-page range
    /// can serve the next one-page block. Returns the commit, the one-page
    /// ranges and the large block.
    fn past_the_bound(
        d: &HostDriver,
        still: bool,
        reverse: bool,
    ) -> (Commit<&HostDriver>, Vec<u64>, u64) {
        let page = 2u64 << 20;
        let n = CACHED_PER_SIZE as u64 + 4;
        let mut c = Commit::for_tests(d, 8 * n, (0, 8 * n));
        assert_eq!(c.page(), page);
        if still {
            c.set_clock(crate::sync::Clock::manual());
        }
        let offs: Vec<u64> = (0..n).map(|_| c.stitch_alloc(page, 0).unwrap()).collect();
        let mut order = offs.clone();
        if reverse {
            order.reverse();
        }
        for o in order {
            c.stitch_free(o, Stamp::SAFE).unwrap();
        }
        assert_eq!(c.stitched_ranges() as u64, n);
        let big = c.stitch_alloc(n * page, 0).unwrap();
        (c, offs, big)
    }

    /// After [`past_the_bound`]'s new one-page range `one` dissolved one
    /// cached range: every range of `kept` is still there, and freeing
    /// `one` and the large block `big` leaves the page table consistent.
    fn the_others_stay(mut c: Commit<&HostDriver>, one: u64, big: u64, kept: &[u64]) {
        assert!(kept.iter().all(|&o| c.stitch.at(o >> c.shift).is_some()));
        c.check_invariants();
        c.stitch_free(one, Stamp::SAFE).unwrap();
        c.stitch_free(big, Stamp::SAFE).unwrap();
        c.check_invariants();
    }

    #[test]
    fn making_a_range_past_the_bound_dissolves_the_least_recently_used_of_its_size() {
        let d = HostDriver::new().unwrap();
        let (mut c, offs, big) = past_the_bound(&d, false, false);
        let (ranges, maps) = (c.stitched_ranges(), c.mapping_count());
        let calls = c.calls().unmap;
        // So a new one-page range is made, and the oldest cached one goes.
        let one = c.stitch_alloc(c.page(), 0).unwrap();
        assert_eq!(c.stitched_ranges(), ranges, "one made, one dissolved");
        assert_eq!(
            c.mapping_count(),
            maps,
            "its mapping went, the new one came"
        );
        assert_eq!(
            c.calls().unmap,
            calls + 1,
            "one unmap for the dissolved range"
        );
        // The least recently used (the first) went, and its addresses
        // serve the new range; the others stay.
        assert_eq!(one, offs[0]);
        the_others_stay(c, one, big, &offs[1..]);
    }

    /// Ranges freed within one millisecond still go least recently used
    /// first: the order is that of the frees, not of the clock (whose
    /// ties used to fall back on the range's id, so runs of one trace
    /// could evict differently with the machine's timing).
    #[test]
    fn ranges_freed_in_the_same_millisecond_go_in_the_order_they_were_freed() {
        let d = HostDriver::new().unwrap();
        // Freed last made first, all at time 0.
        let (mut c, offs, big) = past_the_bound(&d, true, true);
        let one = c.stitch_alloc(c.page(), 0).unwrap();
        // The range freed first (the last made) went; its addresses serve
        // the new one, and every other range stays.
        let (last, rest) = offs.split_last().unwrap();
        assert_eq!(one, *last);
        the_others_stay(c, one, big, rest);
    }

    /// A stitched range freed on a stream whose work runs is parked: that
    /// stream takes it back at once, in one step; another stream gets
    /// fresh memory while the fence is pending, never the range; once the
    /// fence completed, the other stream reuses it (walked first: made
    /// first) with no driver call.
    #[test]
    fn a_parked_range_goes_back_to_its_stream_at_once_and_to_another_after_the_fence() {
        let d = Checked::new(HostDriver::new().unwrap());
        let page = d.capabilities().granularity as u64;
        let (s, t) = (d.create_stream().unwrap(), d.create_stream().unwrap());
        {
            let mut c = Commit::for_tests(&d, 64, (32, 32));
            let (ss, ts) = (c.streams.slot(s), c.streams.slot(t));
            let off = c.stitch_alloc(4 * page, ss).unwrap();
            d.inner().hold(s);
            c.stitch_free(off, c.streams.stamp(ss)).unwrap();
            assert_eq!(c.stitch_counts().parked, 1);
            let creates = d.counts().create;
            let again = c.stitch_alloc(4 * page, ss).unwrap();
            assert_eq!(again, off, "stream order covers S");
            assert_eq!(c.stitch_counts().retaken, 1, "in one step");
            assert_eq!(d.counts().create, creates);
            c.stitch_free(again, c.streams.stamp(ss)).unwrap();
            let other = c.stitch_alloc(4 * page, ts).unwrap();
            assert_ne!(other, off, "S's range is in flight: T never gets it");
            assert_eq!(d.counts().create, creates + 4, "T got fresh memory");
            assert_eq!(c.stitch_counts().retaken, 1);
            c.stitch_free(other, c.streams.stamp(ts)).unwrap();
            d.inner().complete(s);
            c.poll();
            let creates = d.counts().create;
            let reused = c.stitch_alloc(4 * page, ts).unwrap();
            assert_eq!(
                reused, off,
                "after the fence, T reuses S's range (made first)"
            );
            assert_eq!(d.counts().create, creates);
            c.stitch_free(reused, c.streams.stamp(ts)).unwrap();
            assert_eq!(d.counts().wait, 0, "nothing waited on");
            c.check_invariants();
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[s, t]);
    }

    /// The repair never waits: cached ranges whose pages to remap were
    /// freed on a stream whose work still runs are passed over (a new range
    /// is made instead), where the same ranges freed with their work done
    /// are repaired ([`a_range_repair_is_reached`]).
    #[test]
    fn a_repair_passes_over_ranges_whose_fences_are_pending() {
        let d = Checked::new(HostDriver::new().unwrap());
        let page = d.capabilities().granularity as u64;
        let s = d.create_stream().unwrap();
        {
            let config = CommitConfig {
                stitch_repair: true,
                stitch_repair_min: 2 * page,
                ..CommitConfig::default()
            };
            let mut c = Commit::for_tests_with(&d, 256, (64, 192), config);
            let slot = c.streams.slot(s);
            // As `with_ranges_to_repair`, the ranges freed on S while S runs.
            let blocks: Vec<u64> = (0..4).map(|i| i * 4 * page).collect();
            for &b in &blocks {
                c.add_live(b, page, slot, Backing::Pages).unwrap();
            }
            let mut ranges = vec![];
            for &b in &blocks {
                c.sub_live(b, page, Stamp::SAFE);
                ranges.push(c.stitch_alloc(8 * page, slot).unwrap());
            }
            d.inner().hold(s);
            for r in ranges {
                c.stitch_free(r, c.streams.stamp(slot)).unwrap();
            }
            for &b in &blocks {
                c.add_live(b, page, slot, Backing::Pages).unwrap();
            }
            let made = c.stitch_counts().made;
            let off = c.stitch_alloc(8 * page, slot).unwrap();
            let counts = c.stitch_counts();
            assert_eq!((counts.repaired, counts.made), (0, made + 1), "{counts:?}");
            assert_eq!(d.counts().wait, 0, "never waited on S's fences");
            c.check_invariants();
            d.inner().complete(s);
            c.stitch_free(off, Stamp::SAFE).unwrap();
            for &b in &blocks {
                c.sub_live(b, page, Stamp::SAFE);
            }
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[s]);
    }

    /// A blocks-region mapping of a parked member's unit that stays behind
    /// with no page taken (its backing failed and the driver refused the
    /// undo's unmap) flushes the group when it is added: the group's kept
    /// marks of the unit's other mappings would otherwise miss it, and a
    /// retake would leave its page unblocked while the unit is owned.
    #[test]
    fn an_alias_left_behind_by_a_refused_undo_flushes_the_parked_group() {
        let d = testing::driver();
        let page = testing::PAGE;
        {
            let mut c = testing::commit(&d, 64, (32, 32));
            let a = c.stitch_alloc(page, 1).unwrap();
            c.stitch_free(a, Stamp::SAFE).unwrap();
            assert_eq!(c.stitch_counts().parked, 1);
            d.inject(Fault {
                op: Op::SetAccess,
                nth: 1,
                kind: FaultKind::DriverError,
            });
            for nth in 1..=3 {
                d.inject(Fault {
                    op: Op::Unmap,
                    nth,
                    kind: FaultKind::DriverError,
                });
            }
            assert!(c.add_live(0, page, 1, Backing::Pages).is_err());
            d.clear_faults();
            assert_eq!(c.mapping_count(), 2, "the alias stays behind");
            c.check_invariants();
            let b = c.stitch_alloc(page, 1).unwrap();
            assert_eq!(b, a, "the cached range serves again");
            assert!(c.is_committed(b, page));
            c.check_invariants();
            c.stitch_free(b, Stamp::SAFE).unwrap();
            c.check_invariants();
            c.trim();
            c.check_invariants();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[]);
    }
}
