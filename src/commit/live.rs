//! Live bytes in the page table: a block's bytes are added (backing its
//! pages first), taken back (stamping the mappings and units they freed),
//! pinned for sharing; ownership of units follows the pages that hold live
//! bytes, and the aliases of an owned unit are marked blocked.

use super::pages::NIL;
use super::pool::Transition;
use super::{Backing, Commit};
use crate::driver::Driver;
use crate::error::Result;
use crate::meta::MetaVec;
use crate::sync::Stamp;

impl<D: Driver> Commit<D> {
    /// Adds `len` live bytes at offset `off` (relative to the reservation
    /// base) for work of stream slot `slot`, backing the pages that need it
    /// (see [`back`](super::back); `backing` says how new handles are cut). On error
    /// nothing changed.
    pub fn add_live(&mut self, off: u64, len: u64, slot: u16, backing: Backing) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        debug_assert!(
            off + len <= self.res.size(),
            "range {off:#x}+{len:#x} outside the reservation"
        );
        let (a, b) = self.span(off, len);
        if self.pages.cost(a, b).is_free() && self.try_take(off, len, slot) {
            return Ok(());
        }
        self.back(a, b, off, len, slot, backing)?;
        self.account_live(off, len);
        Ok(())
    }

    /// Whether every empty page of `a..=b` is backed by a unit a block may
    /// take for `slot` (see [`Commit::try_take`]), asked without changing
    /// anything: for stitched ranges, whose pages carry no blocked bits, so
    /// that a range in use elsewhere is passed over at its first such page.
    /// `Err` names that page.
    pub(super) fn takeable(&mut self, a: u64, b: u64, slot: u16) -> Result<(), u64> {
        let token = self.pool.new_mark();
        let mut last = NIL;
        for p in a..=b {
            let (live, m) = self.pages.live_map(p);
            if m == last || live > 0 {
                last = m;
                continue;
            }
            last = m;
            if m == NIL {
                return Err(p);
            }
            match self.pool.claim(m, a, b, token) {
                Some(u) if self.allows_unit(u, slot) => {}
                _ => return Err(p),
            }
        }
        Ok(())
    }

    /// Whether empty page `p` is backed by a unit that another mapping
    /// holds now (or by none): a quick look, without fences, that a
    /// [`Commit::takeable`] over it would say no.
    pub(super) fn held_elsewhere(&self, p: u64) -> bool {
        let (live, m) = self.pages.live_map(p);
        live == 0 && (m == NIL || !self.pool.can_take(m))
    }

    /// Adds `len` live bytes at `off` if every page is backed by a unit the
    /// block may take for `slot` (live already, or idle, fences allowing,
    /// no unit twice, no idle multi-page mapping reaching past the range or
    /// joining a partly used boundary page to others: see
    /// [`back`](super::back)); else changes nothing and says no. One pass:
    /// the common case of a block on ready pages costs one walk over its
    /// pages.
    pub(super) fn try_take(&mut self, off: u64, len: u64, slot: u16) -> bool {
        let (a, b) = self.span(off, len);
        let edges = self.partial_edges(off, len);
        let mut now = None;
        for p in a..=b {
            let lo = off.max(p << self.shift);
            let hi = (off + len).min((p + 1) << self.shift);
            let (live, m) = self.pages.live_map(p);
            if live == 0 {
                let ok = m != NIL && {
                    let x = self.pool.map(m);
                    let strands = x.live_pages == 0 && Self::strands(x.first, x.pages, a, b, edges);
                    !strands && self.pool.can_take(m) && (x.live_pages > 0 || self.allows(m, slot))
                };
                if !ok {
                    // Undo the pages taken so far (no free happened: no stamp).
                    if p > a {
                        let done = (p << self.shift) - off;
                        self.unaccount(off, done, Stamp::SAFE);
                    }
                    return false;
                }
                self.pages.add_live(p, (hi - lo) as u32);
                let t = *now.get_or_insert_with(|| self.clock.now_ms());
                if let Transition::Owned(u) = self.pool.gain_page(m, t) {
                    self.set_aliases_blocked(u, m, true);
                }
            } else {
                self.pages.add_live(p, (hi - lo) as u32);
            }
        }
        self.live += len;
        self.peak_live = self.peak_live.max(self.live);
        true
    }

    /// Adds `len` live bytes at `off` to pages that are all backed and
    /// takeable.
    pub(super) fn account_live(&mut self, off: u64, len: u64) {
        let mut now = None;
        let mut marks = core::mem::replace(&mut self.marks, MetaVec::new_in(std::alloc::System));
        let (pool, clock) = (&mut self.pool, &self.clock);
        self.pages.add_block(off, len, self.shift, |first_live, m| {
            if first_live {
                let t = *now.get_or_insert_with(|| clock.now_ms());
                if let Transition::Owned(u) = pool.gain_page(m, t) {
                    let first = pool.other_aliases(u, m);
                    if first != NIL {
                        marks.push((first, m));
                    }
                }
            }
        });
        self.mark_all(&mut marks, true);
        self.marks = marks;
        self.live += len;
        self.peak_live = self.peak_live.max(self.live);
    }

    /// Marks the pages of every mapping of unit `u` other than `owner`
    /// blocked (the unit went in use) or free (it went idle). Mappings in
    /// stitched ranges carry no blocked bits: a range is only ever taken
    /// whole, after asking the pool ([`Commit::try_take`]), so its pages
    /// need no pricing, and a unit may lie in many ranges.
    #[inline]
    pub(super) fn set_aliases_blocked(&mut self, u: u32, owner: u32, blocked: bool) {
        let m = self.pool.other_aliases(u, owner);
        if m != NIL {
            self.mark_aliases(m, owner, blocked);
        }
    }

    /// [`Commit::mark_aliases`] for each `(first, owner)` that a walk over a
    /// block's pages put aside, in its order, and empties `marks`. The walk
    /// holds the page table; the marks touch only pages of other mappings of
    /// the units (no unit backs two pages of one block), each at most once,
    /// so marking them after the walk leaves the same bits.
    /// One call for all of them: most units have one such mapping, and the
    /// call per unit cost more than its marking.
    pub(super) fn mark_all(&mut self, marks: &mut MetaVec<(u32, u32)>, blocked: bool) {
        if marks.is_empty() {
            return;
        }
        self.mark_each(marks, blocked);
        marks.clear();
    }

    #[inline(never)]
    fn mark_each(&mut self, marks: &[(u32, u32)], blocked: bool) {
        for &(first, owner) in marks {
            self.walk_aliases(first, owner, blocked);
        }
    }

    /// [`Commit::set_aliases_blocked`] from mapping `m` of the list on.
    #[inline(never)]
    fn mark_aliases(&mut self, m: u32, owner: u32, blocked: bool) {
        self.walk_aliases(m, owner, blocked);
    }

    /// [`Commit::mark_aliases`], inline.
    #[inline(always)]
    fn walk_aliases(&mut self, mut m: u32, owner: u32, blocked: bool) {
        while m != NIL {
            let (first, pages, next) = {
                let x = self.pool.map(m);
                (x.first, x.pages, x.next_alias)
            };
            if m != owner {
                for p in first..first + pages {
                    self.pages.set_blocked(p, blocked);
                }
            }
            m = next;
        }
    }

    /// Removes `len` live bytes at `off`, freed on the stream of `stamp`.
    /// Units that empty go idle (reusable at once by that stream, by others
    /// after its fence). Never calls the driver, except that every few
    /// hundred frees it checks the decay deadline and may give idle units
    /// whose allowance ran out back (see [`reclaim`](super::reclaim)).
    pub fn sub_live(&mut self, off: u64, len: u64, stamp: Stamp) {
        if len == 0 {
            return;
        }
        let (idled, shared) = self.unaccount(off, len, stamp);
        self.after_free(len, idled, shared);
    }

    /// What follows taking a free's `len` bytes off the page table: `idled`
    /// whether a page emptied, `shared` whether a shared unit went idle.
    pub(super) fn after_free(&mut self, len: u64, idled: bool, shared: bool) {
        self.live -= len;
        self.streak = 0;
        self.ticks += 1;
        if self.decay.ms == 0 && idled {
            // No decay: idle memory goes back as soon as its fences allow.
            self.reclaim(false);
        } else if shared {
            // Shared memory is never reused: it goes back once its fences
            // completed, now if they did.
            self.release_shared();
        } else if self.ticks >= 256 && self.config.reclaim_on_free {
            self.ticks = 0;
            self.maybe_reclaim();
        }
    }

    /// Removes `len` live bytes at `off`, stamping the units with `stamp`
    /// (the free's stream and epoch: reuse by others and unmapping wait for
    /// it). Returns whether a unit went idle, and whether a shared one did.
    pub(super) fn unaccount(&mut self, off: u64, len: u64, stamp: Stamp) -> (bool, bool) {
        let (a, b) = self.span(off, len);
        let safe = stamp.is_safe();
        let mut last = NIL;
        let mut now = None;
        let mut shared = false;
        for p in a..=b {
            let lo = off.max(p << self.shift);
            let hi = (off + len).min((p + 1) << self.shift);
            let (empty, m) = self.pages.sub_live_map(p, (hi - lo) as u32);
            // Asleep pages have no mapping: only their live bytes change.
            if m == NIL {
                continue;
            }
            let stamp_it = m != last && !safe;
            last = m;
            if !stamp_it && !empty {
                continue;
            }
            let t = if empty {
                *now.get_or_insert_with(|| self.clock.now_ms())
            } else {
                0
            };
            if let Transition::Idle(u) = self.pool.free_page(m, stamp, stamp_it, empty, t) {
                self.set_aliases_blocked(u, m, false);
                if self.pool.unit(u).shared {
                    self.shared_pending.push(u);
                    shared = true;
                }
                self.next_reclaim = self.next_reclaim.min(t + self.reclaim_period());
            }
        }
        (now.is_some(), shared)
    }

    /// Keeps the pages of `off..off+len` committed for an owner that does
    /// its own accounting (scratch arenas, growable buffers).
    pub fn pin(&mut self, off: u64, len: u64) -> Result<()> {
        self.add_live(off, len, 0, Backing::Whole)
    }

    /// Undoes [`Commit::pin`] of a range that was pinned.
    pub fn unpin(&mut self, off: u64, len: u64, stamp: Stamp) {
        self.sub_live(off, len, stamp);
    }
}
