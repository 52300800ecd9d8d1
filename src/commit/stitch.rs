//! Stitched ranges: virtual ranges built from idle units found anywhere in
//! the pool, kept for reuse.
//!
//! When no place in the blocks region can hold a block without a remap (its
//! pages' units are in use through other mappings), the block goes to a
//! *stitched range* instead: a fresh virtual range of whole pages, mapped to
//! idle units wherever they are (GMLake's stitching, ASPLOS'24, without its
//! synchronizations: same-stream reuse needs no fence). A range outlives its
//! block: freed, it is kept with its mappings, and a later block of about
//! the same size takes it back with no driver call when all its units are
//! idle. A workload that repeats finds the ranges it made the first time.
//!
//! This file only manages the stitch region's addresses and the cache of
//! ranges: which pages back a range lives in the page table, and whether a
//! range's units are idle is asked of the pool by the caller.
#![deny(unsafe_code, clippy::unwrap_used)]

use super::config::RangeOrder;
use super::pool::GroupId;
use crate::meta::{Holes, MetaMap, MetaVec};

/// The tail of a stitched range's block, kept in the range's record (see
/// [`tails`](super::tails), which changes it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Bytes handed out past the block's end (the cursor).
    pub used: u64,
    /// Blocks live in it.
    pub live: u32,
    /// Takes no more blocks until the range is taken again (a block freed
    /// on another stream).
    pub closed: bool,
}

/// A stitched range.
#[derive(Clone, Copy, Debug)]
pub struct Range {
    /// First page (index in the reservation).
    pub first: u64,
    /// Pages.
    pub pages: u64,
    /// Bytes of the block it holds (while in use).
    pub size: u64,
    /// Holds a live block.
    pub in_use: bool,
    /// Clock (ms) when its block was last freed (or it was made): for
    /// decay.
    pub last_used: u64,
    /// When its block was last freed (or it was made), in the order of
    /// those events in this region: least recently used first, exactly
    /// (the clock's milliseconds tie for ranges freed close together).
    pub recency: u64,
    /// The page (from `first`) at which the last look found it could not
    /// be taken back: looked at first the next time.
    pub blocker: u64,
    /// The stream slot its block was taken for (every unit of the block
    /// was checked to allow that stream's work).
    pub stream: u16,
    /// The pool's group of its block's units, parked while it is cached
    /// (see [`parked`](super::pool::parked)); it may have been flushed since.
    pub group: Option<GroupId>,
    /// When it was made: the region's recency counter then (it counts
    /// every range made and every block freed, so it orders ranges by
    /// when they were made).
    pub made: u64,
    /// Its block was freed while blocks in its tail live (see
    /// [`tails`](super::tails)): in use until they are freed, its block's
    /// bytes no longer counted.
    pub draining: bool,
    /// What its block's tail holds (see [`tails`](super::tails)).
    pub tail: Tail,
    used: bool,
}

impl Range {
    /// Holds a live block: in use and not draining (see
    /// [`tails`](super::tails)).
    #[inline]
    pub fn holds_block(&self) -> bool {
        self.in_use && !self.draining
    }
}

/// Where a walk over the cached ranges of a block's sizes stands
/// ([`Stitch::walk`], [`Stitch::next_in`]).
#[derive(Debug)]
pub struct Walk {
    order: RangeOrder,
    /// By size: the size and the position among its ranges.
    pages: u64,
    at: usize,
    /// In the order of making: where each size stands.
    heads: MetaVec<Head>,
}

/// Where one size of a walk in the order of making stands.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// Its index in `by_pages`.
    size: usize,
    /// The position of its next cached range.
    at: usize,
    /// When that range was made (`u64::MAX`: none left).
    made: u64,
}

impl Walk {
    /// The walk's buffer, for the next one.
    pub fn into_heads(self) -> MetaVec<Head> {
        self.heads
    }
}

/// The stitch region of one reservation and its cached ranges.
#[derive(Debug)]
pub struct Stitch {
    first: u64,
    pages: u64,
    /// Pages handed out from the region's start at least once.
    top: u64,
    /// Free runs below `top` (first page, pages).
    holes: Holes,
    ranges: MetaVec<Range>,
    spare: MetaVec<u32>,
    by_first: MetaMap<u64, u32>,
    /// Ranges by page count: (pages, ids oldest first), ascending by
    /// pages, one entry per page count that has a range. A sorted vector
    /// rather than a map: the walk over sizes `k..=max` finds its first
    /// size by one binary search and the ids of each without hashing.
    by_pages: MetaVec<(u64, MetaVec<u32>)>,
    live_bytes: u64,
    live_count: u64,
    /// The last [`Range::recency`] given.
    recency: u64,
}

impl Stitch {
    /// A stitch region of `pages` pages starting at page `first`.
    pub fn new(first: u64, pages: u64) -> Self {
        Stitch {
            first,
            pages,
            top: 0,
            holes: Holes::new(),
            ranges: MetaVec::new_in(std::alloc::System),
            spare: MetaVec::new_in(std::alloc::System),
            by_first: MetaMap::with_hasher_in(Default::default(), std::alloc::System),
            by_pages: MetaVec::new_in(std::alloc::System),
            live_bytes: 0,
            live_count: 0,
            recency: 0,
        }
    }

    /// First page and pages of the region.
    pub fn region(&self) -> (u64, u64) {
        (self.first, self.pages)
    }
    /// Whether page `p` lies in the region.
    #[inline]
    pub fn contains_page(&self, p: u64) -> bool {
        p.wrapping_sub(self.first) < self.pages
    }
    /// Bytes of live blocks in stitched ranges.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
    /// Number of live blocks in stitched ranges.
    pub fn live_count(&self) -> u64 {
        self.live_count
    }
    /// Number of ranges (in use or cached).
    pub fn range_count(&self) -> usize {
        self.by_first.len()
    }
    /// Pages handed out from the region at least once.
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Range `r`.
    pub fn range(&self, r: u32) -> &Range {
        &self.ranges[r as usize]
    }

    /// The range starting at page `first`.
    pub fn at(&self, first: u64) -> Option<u32> {
        self.by_first.get(&first).copied()
    }

    /// The range holding page `p`.
    ///
    /// # Time complexity
    /// O(ranges).
    pub fn containing(&self, p: u64) -> Option<u32> {
        self.by_first.values().copied().find(|&r| {
            let x = &self.ranges[r as usize];
            p >= x.first && p < x.first + x.pages
        })
    }

    /// Where page count `pages` is or would go in `by_pages`.
    #[inline]
    fn size_index(&self, pages: u64) -> usize {
        self.by_pages.partition_point(|e| e.0 < pages)
    }

    /// The next cached (not in use) range of `cursor.0..=max_pages` pages,
    /// starting at `cursor` ((pages, index among ranges of that size);
    /// start with `(pages, 0)`), with the cursor to continue from. Lets the
    /// caller check each candidate with `&mut` access to its own state.
    ///
    /// # Time complexity
    /// O(cached ranges of those sizes) over a whole walk.
    pub fn next_cached(&self, cursor: (u64, usize), max_pages: u64) -> Option<(u32, (u64, usize))> {
        let mut i = self.size_index(cursor.0);
        let mut at = cursor.1;
        while let Some((n, ids)) = self.by_pages.get(i) {
            let n = *n;
            if n > max_pages {
                break;
            }
            if n != cursor.0 {
                // A size past the cursor's: from its first range.
                at = 0;
            }
            while let Some(&r) = ids.get(at) {
                at += 1;
                if !self.ranges[r as usize].in_use {
                    return Some((r, (n, at)));
                }
            }
            (i, at) = (i + 1, 0);
        }
        None
    }

    /// A walk over the cached ranges of `pages..=max_pages` pages in
    /// `order`, to go through with [`next_in`](Self::next_in); `heads` is
    /// the buffer a walk in the order of making keeps its place in (that of
    /// an earlier walk, [`Walk::into_heads`], saves allocating one).
    pub fn walk(
        &self,
        order: RangeOrder,
        pages: u64,
        max_pages: u64,
        mut heads: MetaVec<Head>,
    ) -> Walk {
        heads.clear();
        if order == RangeOrder::Made {
            let mut i = self.size_index(pages);
            while self.by_pages.get(i).is_some_and(|e| e.0 <= max_pages) {
                heads.push(self.head(i, 0));
                i += 1;
            }
        }
        Walk {
            order,
            pages,
            at: 0,
            heads,
        }
    }

    /// The head of size `by_pages[i]` at its first cached range from
    /// position `at` on.
    #[inline]
    fn head(&self, i: usize, mut at: usize) -> Head {
        let ids = &self.by_pages[i].1;
        while let Some(&r) = ids.get(at) {
            let x = &self.ranges[r as usize];
            if !x.in_use {
                return Head {
                    size: i,
                    at,
                    made: x.made,
                };
            }
            at += 1;
        }
        Head {
            size: i,
            at,
            made: u64::MAX,
        }
    }

    /// The next cached range of `walk` (see [`walk`](Self::walk)). The
    /// caller may change anything between two steps but which ranges exist
    /// and are in use (it stops walking once it takes one).
    ///
    /// # Time complexity
    /// By size, O(cached ranges of those sizes) over a whole walk; in the
    /// order of making, that and O(sizes) per step.
    pub fn next_in(&self, walk: &mut Walk, max_pages: u64) -> Option<u32> {
        if walk.order == RangeOrder::Size {
            let (r, (pages, at)) = self.next_cached((walk.pages, walk.at), max_pages)?;
            (walk.pages, walk.at) = (pages, at);
            return Some(r);
        }
        // Each size's list is in the order of making: the oldest of the
        // sizes' next cached ranges is the walk's next.
        let (j, head) = walk
            .heads
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(_, h)| h.made)
            .filter(|(_, h)| h.made != u64::MAX)?;
        let r = self.by_pages[head.size].1[head.at];
        walk.heads[j] = self.head(head.size, head.at + 1);
        Some(r)
    }

    /// The cached (not in use) ranges of `pages..=max_pages` pages,
    /// smallest first (oldest first within a size): the walk of
    /// [`next_cached`](Self::next_cached), for callers that change nothing
    /// while walking.
    ///
    /// # Time complexity
    /// O(cached ranges of those sizes) over a whole walk.
    pub fn cached(&self, pages: u64, max_pages: u64) -> impl Iterator<Item = u32> + '_ {
        let mut cursor = (pages, 0);
        core::iter::from_fn(move || {
            let (r, next) = self.next_cached(cursor, max_pages)?;
            cursor = next;
            Some(r)
        })
    }

    /// A new range of `pages` pages (not in use); `None` when the region is full.
    pub fn make(&mut self, pages: u64, now: u64) -> Option<u32> {
        let first = self.take_va(pages)?;
        self.recency += 1;
        let range = Range {
            first,
            pages,
            size: 0,
            in_use: false,
            last_used: now,
            recency: self.recency,
            blocker: 0,
            stream: 0,
            group: None,
            made: self.recency,
            draining: false,
            tail: Tail::default(),
            used: true,
        };
        let r = match self.spare.pop() {
            Some(r) => {
                self.ranges[r as usize] = range;
                r
            }
            None => {
                self.ranges.push(range);
                (self.ranges.len() - 1) as u32
            }
        };
        self.by_first.insert(first, r);
        let i = self.size_index(pages);
        if self.by_pages.get(i).is_none_or(|e| e.0 != pages) {
            self.by_pages
                .insert(i, (pages, MetaVec::new_in(std::alloc::System)));
        }
        self.by_pages[i].1.push(r);
        Some(r)
    }

    /// Marks range `r` in use by a block of `size` bytes for work of stream
    /// slot `stream`.
    pub fn take(&mut self, r: u32, size: u64, stream: u16) {
        let x = &mut self.ranges[r as usize];
        debug_assert!(x.used && !x.in_use && !x.draining, "range {r} not free");
        x.in_use = true;
        x.size = size;
        x.stream = stream;
        x.tail = Tail::default();
        self.live_bytes += size;
        self.live_count += 1;
    }

    /// Marks range `r` free (kept for reuse); returns the block's size
    /// (0 for a range that was draining: [`drain`](Self::drain) returned it).
    pub fn put(&mut self, r: u32, now: u64) -> u64 {
        let x = &mut self.ranges[r as usize];
        debug_assert!(x.used && x.in_use, "range {r} not in use");
        x.in_use = false;
        x.last_used = now;
        self.recency += 1;
        x.recency = self.recency;
        if core::mem::take(&mut x.draining) {
            x.size = 0;
            return 0;
        }
        self.live_bytes -= x.size;
        self.live_count -= 1;
        core::mem::take(&mut x.size)
    }

    /// Frees range `r`'s block while its range stays in use (blocks in its
    /// tail still live: see [`tails`](super::tails)); returns the block's
    /// size. [`put`](Self::put) caches the range once they are freed.
    pub fn drain(&mut self, r: u32) -> u64 {
        let x = &mut self.ranges[r as usize];
        debug_assert!(x.used && x.holds_block(), "range {r} not live");
        x.draining = true;
        self.live_bytes -= x.size;
        self.live_count -= 1;
        x.size
    }

    /// Records the pool's group of range `r`'s block's units.
    pub fn set_group(&mut self, r: u32, g: Option<GroupId>) {
        self.ranges[r as usize].group = g;
    }

    /// Records the page (from the range's first) at which range `r` could
    /// not be taken back.
    pub fn set_blocker(&mut self, r: u32, page: u64) {
        self.ranges[r as usize].blocker = page;
    }

    /// Forgets cached range `r` and gives its addresses back to the region
    /// (its mappings must be gone).
    pub fn remove(&mut self, r: u32) {
        let x = self.ranges[r as usize];
        debug_assert!(x.used && !x.in_use, "range {r} in use");
        self.ranges[r as usize].used = false;
        self.by_first.remove(&x.first);
        let i = self.size_index(x.pages);
        debug_assert!(
            self.by_pages.get(i).is_some_and(|e| e.0 == x.pages),
            "range {r}'s size is listed"
        );
        if let Some((_, ids)) = self.by_pages.get_mut(i).filter(|e| e.0 == x.pages) {
            ids.retain(|&i| i != r);
            if ids.is_empty() {
                self.by_pages.remove(i);
            }
        }
        self.spare.push(r);
        self.give_va(x.first, x.pages);
    }

    /// The ranges holding a live block: (id, range).
    pub fn live(&self) -> impl Iterator<Item = (u32, &Range)> + '_ {
        self.live_or_draining().filter(|(_, x)| x.holds_block())
    }

    /// The ranges in use: holding a live block, or draining.
    pub fn live_or_draining(&self) -> impl Iterator<Item = (u32, &Range)> + '_ {
        self.ranges
            .iter()
            .enumerate()
            .filter(|(_, x)| x.used && x.in_use)
            .map(|(r, x)| (r as u32, x))
    }

    /// The tail of range `r`'s block, to change.
    pub fn tail_mut(&mut self, r: u32) -> &mut Tail {
        &mut self.ranges[r as usize].tail
    }

    /// Every range id (in use or cached).
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_first.values().copied()
    }

    fn take_va(&mut self, pages: u64) -> Option<u64> {
        if let Some(f) = self.holes.take(pages) {
            return Some(f);
        }
        if self.top + pages > self.pages {
            return None;
        }
        let f = self.first + self.top;
        self.top += pages;
        Some(f)
    }

    fn give_va(&mut self, first: u64, pages: u64) {
        self.holes.give(first, pages);
        // A hole reaching the top lowers it (only the one just given can:
        // every earlier one that reached it lowered it then).
        if let Some(f) = self.holes.pop_ending_at(self.first + self.top) {
            self.top = f - self.first;
        }
    }

    /// Full structural check (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check(&self) {
        let mut spans: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|r| r.used)
            .map(|r| (r.first, r.pages))
            .collect();
        spans.extend(self.holes.iter());
        spans.sort_unstable();
        let mut at = self.first;
        for (f, n) in spans {
            assert_eq!(f, at, "stitch region: ranges and holes tile it");
            at += n;
        }
        assert_eq!(at, self.first + self.top, "stitch region top");
        let (mut bytes, mut count) = (0, 0);
        for r in self.ranges.iter().filter(|r| r.used && r.holds_block()) {
            bytes += r.size;
            count += 1;
        }
        assert_eq!(bytes, self.live_bytes, "stitched live bytes");
        assert_eq!(count, self.live_count, "stitched live blocks");
        let listed: usize = self.by_pages.iter().map(|(_, v)| v.len()).sum();
        assert_eq!(listed, self.by_first.len(), "size index");
        assert!(
            self.by_pages.windows(2).all(|w| w[0].0 < w[1].0)
                && self.by_pages.iter().all(|(_, ids)| !ids.is_empty()),
            "sizes listed once each, ascending, none empty"
        );
        for (n, ids) in self.by_pages.iter() {
            for &r in ids.iter() {
                assert_eq!(
                    self.ranges[r as usize].pages, *n,
                    "range {r} listed by its size"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_size_reused_and_their_addresses_recycled() {
        let mut s = Stitch::new(1000, 64);
        let a = s.make(4, 0).expect("room");
        let b = s.make(8, 0).expect("room");
        assert_eq!(s.range(a).first, 1000);
        assert_eq!(s.range(b).first, 1004);
        s.take(a, 7 << 20, 1);
        assert_eq!(s.cached(4, 5).next(), None, "in use");
        assert_eq!(s.cached(4, 8).next(), Some(b));
        assert_eq!(s.put(a, 3), 7 << 20);
        assert_eq!(s.cached(4, 5).next(), Some(a));
        assert_eq!(s.cached(4, 5).find(|&r| s.range(r).first != 1000), None);
        s.remove(a);
        s.check();
        let c = s.make(2, 4).expect("room");
        assert_eq!(s.range(c).first, 1000, "first fit in the freed addresses");
        s.remove(b);
        s.remove(c);
        s.check();
        assert_eq!(s.top(), 0, "everything back");
        assert!(s.make(65, 0).is_none(), "larger than the region");
    }

    /// Every cached range of `pages..=max` pages, along a walk in `order`.
    fn walked(s: &Stitch, order: RangeOrder, pages: u64, max: u64) -> Vec<u32> {
        let mut w = s.walk(order, pages, max, MetaVec::new_in(std::alloc::System));
        core::iter::from_fn(|| s.next_in(&mut w, max)).collect()
    }

    #[test]
    fn walks_go_by_size_or_in_the_order_of_making() {
        let mut s = Stitch::new(0, 1 << 10);
        // Made in this order: 23, 21, 30, 21, 40 and 22 pages (the one of
        // 40 too long for a block of 21).
        let r: Vec<u32> = [23, 21, 30, 21, 40, 22]
            .iter()
            .map(|&n| s.make(n, 0).expect("room"))
            .collect();
        assert_eq!(
            walked(&s, RangeOrder::Made, 21, 31),
            [r[0], r[1], r[2], r[3], r[5]],
            "oldest first, whatever the size"
        );
        assert_eq!(
            walked(&s, RangeOrder::Size, 21, 31),
            [r[1], r[3], r[5], r[0], r[2]],
            "smallest first, then oldest"
        );
        // Ranges in use are passed over, and a freed one keeps its place.
        s.take(r[0], 40 << 20, 1);
        s.take(r[3], 40 << 20, 1);
        assert_eq!(walked(&s, RangeOrder::Made, 21, 31), [r[1], r[2], r[5]]);
        s.put(r[0], 1);
        assert_eq!(
            walked(&s, RangeOrder::Made, 21, 31),
            [r[0], r[1], r[2], r[5]]
        );
        // The buffer of one walk serves the next.
        let w = s.walk(
            RangeOrder::Made,
            21,
            31,
            MetaVec::new_in(std::alloc::System),
        );
        let heads = w.into_heads();
        let mut w = s.walk(RangeOrder::Made, 30, 45, heads);
        assert_eq!(s.next_in(&mut w, 45), Some(r[2]));
        assert_eq!(s.next_in(&mut w, 45), Some(r[4]));
        assert_eq!(s.next_in(&mut w, 45), None);
        assert!(walked(&s, RangeOrder::Made, 50, 75).is_empty());
    }
}
