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
        if let Some(w) = self.whole_pages(off, len) {
            self.group_on_take(w, slot);
        }
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
    #[inline(always)]
    pub(super) fn try_take(&mut self, off: u64, len: u64, slot: u16) -> bool {
        let (a, b) = self.span(off, len);
        let edges = self.partial_edges(off, len);
        // The pages the block covers whole, taken back in one step if the
        // last block of this place, length and stream parked their units as
        // a group and it is still parked when the walk reaches them
        // (taking the first page may have flushed it).
        let mut p = a;
        if let Some(w) = self.whole_pages(off, len) {
            let mut retaken = false;
            while p <= b {
                let (live, m) = self.pages.live_map(p);
                if p == w.first && live == 0 && m != NIL {
                    if let Some(g) = self.retakable(m, w, slot) {
                        self.retake_block(g, w);
                        retaken = true;
                        p = w.last + 1;
                        continue;
                    }
                }
                if !self.take_page(p, live, m, off, len, (a, b), edges, slot) {
                    return self.untake(off, a, p);
                }
                p += 1;
            }
            if !retaken {
                self.group_on_take(w, slot);
            }
        } else {
            while p <= b {
                let (live, m) = self.pages.live_map(p);
                if !self.take_page(p, live, m, off, len, (a, b), edges, slot) {
                    return self.untake(off, a, p);
                }
                p += 1;
            }
        }
        self.live += len;
        self.peak_live = self.peak_live.max(self.live);
        true
    }

    /// [`Commit::try_take`] for page `p` (with its live bytes and mapping)
    /// of the block of `len` bytes at `off` on pages `a..=b`: takes the
    /// block's bytes on it, or says no, taking nothing.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn take_page(
        &mut self,
        p: u64,
        live: u32,
        m: u32,
        off: u64,
        len: u64,
        (a, b): (u64, u64),
        edges: (bool, bool),
        slot: u16,
    ) -> bool {
        let lo = off.max(p << self.shift);
        let hi = (off + len).min((p + 1) << self.shift);
        if live == 0 {
            let ok = m != NIL && {
                let x = self.pool.map(m);
                let live = self.pool.live_pages(m);
                let strands = live == 0 && Self::strands(x.first, x.pages, a, b, edges);
                !strands && self.pool.can_take(m) && (live > 0 || self.allows(m, slot))
            };
            if !ok {
                return false;
            }
            self.pages.add_live(p, (hi - lo) as u32);
            if let Transition::Owned(u) = self.pool.gain_page(m) {
                self.set_aliases_blocked(u, m, true);
            }
        } else {
            self.pages.add_live(p, (hi - lo) as u32);
        }
        true
    }

    /// Undoes the pages `a..p` that [`Commit::try_take`] took of the block
    /// at `off` before page `p` said no (no free happened: no stamp), and
    /// says no.
    #[cold]
    fn untake(&mut self, off: u64, a: u64, p: u64) -> bool {
        if p > a {
            let done = (p << self.shift) - off;
            self.unaccount(off, done, Stamp::SAFE);
        }
        false
    }

    /// Adds `len` live bytes at `off` to pages that are all backed and
    /// takeable.
    pub(super) fn account_live(&mut self, off: u64, len: u64) {
        let mut marks = core::mem::replace(&mut self.marks, MetaVec::new_in(std::alloc::System));
        let pool = &mut self.pool;
        self.pages.add_block(off, len, self.shift, |first_live, m| {
            if first_live {
                if let Transition::Owned(u) = pool.gain_page(m) {
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
                if pages == 1 {
                    self.pages.set_blocked(first, blocked);
                } else {
                    self.pages
                        .set_blocked_range(first, first + pages - 1, blocked);
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
        if len == 0
            || self
                .whole_pages(off, len)
                .is_some_and(|w| self.park_block(w, stamp))
        {
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
        let mut now = None;
        let shared = self.unaccount_at(off, len, stamp, &mut now);
        (now.is_some(), shared)
    }

    /// [`Commit::unaccount`] reading the clock into `now` (once, when a
    /// page first empties, if it holds nothing yet: a page emptied here
    /// leaves it set). Returns whether a shared unit went idle.
    pub(super) fn unaccount_at(
        &mut self,
        off: u64,
        len: u64,
        stamp: Stamp,
        now: &mut Option<u64>,
    ) -> bool {
        let (a, b) = self.span(off, len);
        let safe = stamp.is_safe();
        let mut last = NIL;
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
        shared
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::commit::testing::{PAGE, driver, finish, live_pages, state};
    use crate::commit::{Backing, Commit};
    use crate::driver::{Checked, Driver, Fault, FaultKind, HostDriver, Op, Stream};
    use crate::sync::Stamp;

    /// Pages of the blocks region (no stitch region).
    const PAGES: u64 = 48;

    fn commit(d: &Checked<HostDriver>) -> Commit<&Checked<HostDriver>> {
        crate::commit::testing::commit(d, PAGES, (PAGES, 0))
    }

    /// The pattern byte of block `id`.
    fn tag(id: u64) -> u8 {
        (id % 251) as u8 + 1
    }

    /// Writes block `id`'s pattern over `len` bytes at `off`.
    fn fill(c: &Commit<&Checked<HostDriver>>, off: u64, len: u64, id: u64) {
        assert!(c.is_committed(off, len));
        // SAFETY: the pages of `off..off+len` are mapped (checked above)
        // with read-write access, host-visible on the host backend, and no
        // other block of the test lies there.
        unsafe { std::ptr::write_bytes((c.base() + off) as *mut u8, tag(id), len as usize) };
    }

    /// Whether `len` bytes at `off` are mapped and hold block `id`'s pattern.
    fn intact(c: &Commit<&Checked<HostDriver>>, off: u64, len: u64, id: u64) -> bool {
        if !c.is_committed(off, len) {
            return false;
        }
        // SAFETY: mapped (checked above), host-visible, read only.
        let s = unsafe { std::slice::from_raw_parts((c.base() + off) as *const u8, len as usize) };
        s.iter().all(|&b| b == tag(id))
    }

    /// A block of the program: where, on which stream, its pattern.
    #[derive(Clone, Copy, Debug)]
    struct Block {
        off: u64,
        len: u64,
        stream: usize,
        id: u64,
    }

    /// The page table against a shadow of live bytes per page, over
    /// deterministic pseudo-random programs of blocks added and freed on two
    /// streams (byte sizes and offsets: blocks share pages), streams held
    /// and completed, trims, and allocations the driver refuses. After every
    /// step: the live bytes of each page and in all are the shadow's, every
    /// live page is mapped, every block keeps its pattern, the invariants
    /// hold; a block freed on a held stream stays mapped with its pattern
    /// until that stream completes (another stream never takes its units);
    /// a refused allocation changes nothing. At the end everything goes back.
    #[test]
    fn live_bytes_follow_a_shadow_of_the_page_table() {
        for seed in [0x9e37_79b9_7f4a_7c15u64, 0x2545_f491_4f6c_dd1d, 7] {
            let d = driver();
            let streams: Vec<Stream> = (0..2).map(|_| d.create_stream().unwrap()).collect();
            {
                let mut c = commit(&d);
                run_program(&d, &mut c, &streams, seed);
            }
            finish(&d, &streams);
        }
    }

    fn run_program(
        d: &Checked<HostDriver>,
        c: &mut Commit<&Checked<HostDriver>>,
        streams: &[Stream],
        seed: u64,
    ) {
        let slots: Vec<u16> = streams.iter().map(|&s| c.streams.slot(s)).collect();
        let mut shadow: BTreeMap<u64, u64> = BTreeMap::new();
        let mut blocks: Vec<Block> = Vec::new();
        let mut in_flight: Vec<Block> = Vec::new();
        let mut held = [false; 2];
        let (mut x, mut id, mut refused) = (seed, 0u64, 0);
        let mut waits = d.counts().wait;
        for step in 0..3_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let stream = (x >> 60) as usize & 1;
            match x % 16 {
                0..=6 => {
                    // Up to 3 pages at a 512-byte offset, where no live
                    // block lies.
                    let len = (1 + (x >> 8) % (3 * PAGE)).next_multiple_of(512);
                    let off = ((x >> 24) % (PAGES * PAGE - len)) & !511;
                    // Nor over another stream's in-flight bytes: keeping
                    // those apart is the placement's job (the layer above).
                    let overlaps = |b: &Block| off < b.off + b.len && b.off < off + len;
                    if blocks.iter().any(overlaps)
                        || in_flight.iter().any(|b| b.stream != stream && overlaps(b))
                    {
                        continue;
                    }
                    let backing = if x & 0x100 == 0 {
                        Backing::Pages
                    } else {
                        Backing::Whole
                    };
                    // One allocation in 16 meets a driver that refuses.
                    let faulty = (x >> 40) % 16 == 0;
                    if faulty {
                        for nth in 1..=4 {
                            d.inject(Fault {
                                op: if nth % 2 == 0 { Op::Map } else { Op::Create },
                                nth,
                                kind: FaultKind::OutOfMemory,
                            });
                        }
                    }
                    let (before, committed) = (state(c), c.committed());
                    let r = c.add_live(off, len, slots[stream], backing);
                    d.clear_faults();
                    if let Err(e) = r {
                        assert!(faulty, "step {step}: {e}");
                        assert_eq!(state(c), before, "step {step}: a refused add changed state");
                        assert!(c.committed() <= committed, "step {step}: nothing new kept");
                        refused += 1;
                        continue;
                    }
                    // The stream may reuse its own frees at once.
                    in_flight.retain(|b| b.stream != stream);
                    id += 1;
                    fill(c, off, len, id);
                    let (a, z) = c.span(off, len);
                    for p in a..=z {
                        let on = (off + len).min((p + 1) * PAGE) - off.max(p * PAGE);
                        *shadow.entry(p).or_default() += on;
                    }
                    blocks.push(Block {
                        off,
                        len,
                        stream,
                        id,
                    });
                }
                7..=11 if !blocks.is_empty() => {
                    let b = blocks.swap_remove((x >> 20) as usize % blocks.len());
                    assert!(intact(c, b.off, b.len, b.id), "step {step}: {b:?} kept");
                    // Freed on its own stream, or one time in four on the other.
                    let on = if x & 0x300 == 0 {
                        1 - b.stream
                    } else {
                        b.stream
                    };
                    let stamp = c.streams.stamp(slots[on]);
                    c.sub_live(b.off, b.len, stamp);
                    let (a, z) = c.span(b.off, b.len);
                    for p in a..=z {
                        let on = (b.off + b.len).min((p + 1) * PAGE) - b.off.max(p * PAGE);
                        let l = shadow.get_mut(&p).expect("a live page");
                        *l -= on;
                        if *l == 0 {
                            shadow.remove(&p);
                        }
                    }
                    if held[on] {
                        in_flight.push(Block { stream: on, ..b });
                    }
                }
                12 => {
                    d.inner().hold(streams[stream]);
                    held[stream] = true;
                }
                13 => {
                    d.inner().complete(streams[stream]);
                    held[stream] = false;
                    in_flight.retain(|b| b.stream != stream);
                }
                14 => {
                    c.trim();
                }
                _ => c.poll(),
            }
            // A wait (the out-of-memory ladder's last resort) completes the
            // held streams' fences: their frees may be reused from then on.
            if d.counts().wait != waits {
                waits = d.counts().wait;
                in_flight.clear();
            }
            c.check_invariants();
            assert_eq!(live_pages(c), shadow, "step {step}: live bytes per page");
            assert_eq!(c.live(), blocks.iter().map(|b| b.len).sum::<u64>());
            assert!(c.committed() >= shadow.len() as u64 * PAGE);
            for b in &in_flight {
                assert!(
                    intact(c, b.off, b.len, b.id),
                    "step {step}: {b:?}, freed on a held stream, was unmapped or taken by the other stream"
                );
            }
            if step % 64 == 0 {
                for b in &blocks {
                    assert!(intact(c, b.off, b.len, b.id), "step {step}: {b:?} kept");
                }
            }
        }
        assert!(refused > 0, "the program met refused allocations");
        for (i, &s) in streams.iter().enumerate() {
            d.inner().complete(s);
            held[i] = false;
        }
        for b in blocks.drain(..) {
            assert!(intact(c, b.off, b.len, b.id));
            c.sub_live(b.off, b.len, c.streams.stamp(slots[b.stream]));
        }
        c.trim();
        c.check_invariants();
        assert_eq!((c.live(), c.committed(), c.unit_count()), (0, 0, 0));
    }

    /// A unit mapped at two places in the blocks region: while one mapping
    /// holds live bytes, the other's pages price as blocked (a remap each);
    /// once it idles, both are free again, and the other way round.
    #[test]
    fn a_unit_in_use_through_one_mapping_blocks_its_other_mappings() {
        let d = driver();
        let mut c = commit(&d);
        // Two one-page units at pages 0 and 1, idle.
        c.add_live(0, 2 * PAGE, 1, Backing::Pages).unwrap();
        c.sub_live(0, 2 * PAGE, Stamp::SAFE);
        assert_eq!(c.unit_count(), 2);
        // Pages 10 and 11 have no mapping: the idle units are mapped there
        // too (aliases), no new handle.
        c.add_live(10 * PAGE, 2 * PAGE, 1, Backing::Pages).unwrap();
        assert_eq!((c.unit_count(), c.mapping_count()), (2, 4));
        assert_eq!(c.cost(0, 2 * PAGE).blocked, 2, "held through pages 10..=11");
        assert!(c.cost(10 * PAGE, 2 * PAGE).is_free());
        c.check_invariants();
        c.sub_live(10 * PAGE, 2 * PAGE, Stamp::SAFE);
        assert!(c.cost(0, 2 * PAGE).is_free());
        assert!(c.cost(10 * PAGE, 2 * PAGE).is_free());
        // Taken back at pages 0..=1: now pages 10..=11 are blocked.
        c.add_live(0, 2 * PAGE, 1, Backing::Pages).unwrap();
        assert_eq!(c.cost(10 * PAGE, 2 * PAGE).blocked, 2);
        assert_eq!(c.unit_count(), 2, "no handle made");
        c.check_invariants();
        c.sub_live(0, 2 * PAGE, Stamp::SAFE);
        c.trim();
        assert_eq!((c.committed(), c.mapping_count()), (0, 0));
    }

    /// `try_take` over pages one of which another stream's pending free
    /// holds says no and leaves everything as it was (the pages it took
    /// before are given back unstamped); the stream that freed it may take
    /// it at once, and the other one once its fence completed.
    #[test]
    fn a_refused_take_changes_nothing() {
        let d = driver();
        let (s, t) = (d.create_stream().unwrap(), d.create_stream().unwrap());
        {
            let mut c = commit(&d);
            let (ss, ts) = (c.streams.slot(s), c.streams.slot(t));
            // Page 0 freed by T (its work done), page 1 by S while S runs.
            c.add_live(0, PAGE, ts, Backing::Pages).unwrap();
            c.add_live(PAGE, PAGE, ss, Backing::Pages).unwrap();
            c.sub_live(0, PAGE, c.streams.stamp(ts));
            d.inner().hold(s);
            c.sub_live(PAGE, PAGE, c.streams.stamp(ss));
            let before = (state(&c), c.committed(), c.idle_bytes());
            assert!(
                !c.try_take(0, 2 * PAGE, ts),
                "page 1 is S's until its fence"
            );
            let after = (state(&c), c.committed(), c.idle_bytes());
            assert_eq!(after, before, "page 0 given back as it was");
            c.check_invariants();
            assert!(c.try_take(0, 2 * PAGE, ss), "stream order covers S");
            c.sub_live(0, 2 * PAGE, c.streams.stamp(ss));
            d.inner().complete(s);
            c.poll();
            assert!(c.try_take(0, 2 * PAGE, ts), "after S's fence, T too");
            c.check_invariants();
            c.sub_live(0, 2 * PAGE, c.streams.stamp(ts));
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[s, t]);
    }
}
