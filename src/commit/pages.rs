//! The page table: for every granularity-sized page of a reservation, its
//! live bytes and the mapping that backs it, plus two bitmaps that let the
//! placement price a range in a few word operations.
//!
//! - `mapped`: the page has a mapping (of some physical unit).
//! - `blocked`: the page is mapped, holds no live bytes, and its unit is in
//!   use through another mapping (an alias elsewhere): placing a block here
//!   would need a remap.
//!
//! A page is *ready* when it has live bytes (a neighbour already holds it)
//! or is mapped and not blocked: a block covering only ready pages costs no
//! driver call. Pure bookkeeping: no driver, no pointers.
#![deny(unsafe_code, clippy::unwrap_used)]

use crate::meta::MetaVec;

/// "No mapping".
pub const NIL: u32 = u32::MAX;

const CHUNK_SHIFT: u32 = 12;
/// Pages per chunk (allocated on first touch).
const CHUNK: usize = 1 << CHUNK_SHIFT;
const WORDS: usize = CHUNK / 64;

/// One page's entry: what a block's take or free reads and writes
/// together lies together (one cache line per 8 pages, where separate
/// arrays of live bytes and mappings cost two).
#[derive(Clone, Copy)]
struct Page {
    /// Live bytes.
    live: u32,
    /// Mapping id, or NIL.
    map: u32,
}

/// The two bitmaps of 64 pages, side by side: pricing a range reads both.
#[derive(Clone, Copy)]
struct Bits {
    /// Bit set iff the page's `map != NIL`.
    mapped: u64,
    /// Bit set iff mapped, no live bytes, and the unit is used elsewhere.
    blocked: u64,
}

struct Chunk {
    pages: [Page; CHUNK],
    bits: [Bits; WORDS],
}

/// What placing a block on a range of pages would take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Pages with no mapping (a fresh mapping each).
    pub unmapped: u64,
    /// Mapped pages whose unit is in use elsewhere (a remap each).
    pub blocked: u64,
}

impl Cost {
    /// No driver call needed.
    pub const fn is_free(&self) -> bool {
        self.unmapped == 0 && self.blocked == 0
    }
}

/// The page table of one reservation.
pub struct PageTable {
    chunks: MetaVec<Option<allocator_api2::boxed::Box<Chunk, std::alloc::System>>>,
}

impl core::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTable")
            .field(
                "chunks",
                &self.chunks.iter().filter(|c| c.is_some()).count(),
            )
            .finish()
    }
}

impl Default for PageTable {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn split(p: u64) -> (usize, usize) {
    ((p >> CHUNK_SHIFT) as usize, (p as usize) & (CHUNK - 1))
}

/// The pieces of pages `a..=b` that lie in one chunk each, in order:
/// (chunk, index of the first page in it, first page, last page).
#[inline]
fn chunk_spans(a: u64, b: u64) -> impl Iterator<Item = (usize, usize, u64, u64)> {
    let mut p = a;
    core::iter::from_fn(move || {
        if p > b {
            return None;
        }
        let (c, i) = split(p);
        let stop = b.min((((c as u64) + 1) << CHUNK_SHIFT) - 1);
        let span = (c, i, p, stop);
        p = stop + 1;
        Some(span)
    })
}

/// Mask of bits `lo..hi` (hi <= 64) of a word.
#[inline]
fn mask(lo: usize, hi: usize) -> u64 {
    let high = if hi == 64 { u64::MAX } else { (1u64 << hi) - 1 };
    high & !((1u64 << lo) - 1)
}

/// The words of a chunk's bitmaps that pages `i..end` of it (indices in
/// the chunk) fall in, each with the mask of those pages' bits.
#[inline(always)]
fn word_masks(mut i: usize, end: usize) -> impl Iterator<Item = (usize, u64)> {
    core::iter::from_fn(move || {
        if i >= end {
            return None;
        }
        let w = i / 64;
        let hi = (end - w * 64).min(64);
        let m = mask(i % 64, hi);
        i = w * 64 + hi;
        Some((w, m))
    })
}

impl PageTable {
    /// An empty table (every page unmapped, no live bytes).
    pub fn new() -> Self {
        PageTable {
            chunks: MetaVec::new_in(std::alloc::System),
        }
    }

    #[inline]
    fn chunk_mut(&mut self, c: usize) -> &mut Chunk {
        if !matches!(self.chunks.get(c), Some(Some(_))) {
            self.new_chunk(c);
        }
        match self.chunks.get_mut(c) {
            Some(Some(ch)) => ch,
            // new_chunk made it.
            _ => unreachable!("page-table chunk {c} missing"),
        }
    }

    #[cold]
    #[inline(never)]
    fn new_chunk(&mut self, c: usize) {
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
        }
        self.chunks[c].get_or_insert_with(|| {
            allocator_api2::boxed::Box::new_in(
                Chunk {
                    pages: [Page { live: 0, map: NIL }; CHUNK],
                    bits: [Bits {
                        mapped: 0,
                        blocked: 0,
                    }; WORDS],
                },
                std::alloc::System,
            )
        });
    }

    #[inline]
    fn chunk(&self, c: usize) -> Option<&Chunk> {
        self.chunks.get(c).and_then(|c| c.as_deref())
    }

    /// Live bytes on page `p`.
    #[inline]
    pub fn live(&self, p: u64) -> u32 {
        let (c, i) = split(p);
        self.chunk(c).map_or(0, |c| c.pages[i].live)
    }

    /// The mapping backing page `p`, or [`NIL`].
    #[inline]
    pub fn map(&self, p: u64) -> u32 {
        let (c, i) = split(p);
        self.chunk(c).map_or(NIL, |c| c.pages[i].map)
    }

    /// The first mapped page of `p..=b`, with its mapping.
    #[inline]
    pub fn next_mapped(&self, mut p: u64, b: u64) -> Option<(u64, u32)> {
        while p <= b {
            let m = self.map(p);
            if m != NIL {
                return Some((p, m));
            }
            p += 1;
        }
        None
    }

    /// Whether page `p` is marked blocked.
    #[inline]
    pub fn is_blocked(&self, p: u64) -> bool {
        let (c, i) = split(p);
        self.chunk(c)
            .is_some_and(|c| c.bits[i / 64].blocked & (1 << (i % 64)) != 0)
    }

    /// Live bytes and mapping of page `p` (one lookup).
    #[inline]
    pub fn live_map(&self, p: u64) -> (u32, u32) {
        let (c, i) = split(p);
        self.chunk(c)
            .map_or((0, NIL), |c| (c.pages[i].live, c.pages[i].map))
    }

    /// Removes `n` live bytes from page `p`: returns whether it has none
    /// now, and its mapping (one lookup).
    #[inline]
    pub fn sub_live_map(&mut self, p: u64, n: u32) -> (bool, u32) {
        let (c, i) = split(p);
        let ch = self.chunk_mut(c);
        debug_assert!(
            ch.pages[i].live >= n,
            "page {p}: live {} < {n}",
            ch.pages[i].live
        );
        ch.pages[i].live -= n;
        (ch.pages[i].live == 0, ch.pages[i].map)
    }

    /// Adds `n` live bytes to page `p`: returns whether it had none
    /// before, and its mapping (one lookup).
    #[inline]
    pub fn add_live_map(&mut self, p: u64, n: u32) -> (bool, u32) {
        let (c, i) = split(p);
        let page = &mut self.chunk_mut(c).pages[i];
        let was = page.live;
        page.live = was + n;
        (was == 0, page.map)
    }

    /// Calls `f(map)` for each page of `a..=b` in order, with its mapping
    /// (NIL for none). One chunk lookup per chunk.
    #[inline]
    pub fn each_map(&self, a: u64, b: u64, mut f: impl FnMut(u32)) {
        for (c, i, p, stop) in chunk_spans(a, b) {
            let n = (stop - p) as usize + 1;
            match self.chunk(c) {
                Some(ch) => ch.pages[i..i + n].iter().for_each(|x| f(x.map)),
                None => (0..n).for_each(|_| f(NIL)),
            }
        }
    }

    /// Removes a block's `len` bytes at byte offset `off` from its pages
    /// (pages of `1 << shift` bytes) and calls `f(emptied, map)` for each
    /// page in order: whether the page has no live bytes now, and its
    /// mapping. One chunk lookup per chunk.
    #[inline]
    pub fn sub_block(&mut self, off: u64, len: u64, shift: u32, mut f: impl FnMut(bool, u32)) {
        self.each_page_of(off, len, shift, |page, n| {
            debug_assert!(page.live >= n, "live {} < {n}", page.live);
            page.live -= n;
            f(page.live == 0, page.map);
        });
    }

    /// Adds a block's `len` bytes at byte offset `off` to its pages and
    /// calls `f(first_live, map)` for each page in order: whether the page
    /// had no live bytes before, and its mapping. One chunk lookup per
    /// chunk, where [`PageTable::add_live_map`] per page looks its chunk up
    /// every time.
    #[inline]
    pub fn add_block(&mut self, off: u64, len: u64, shift: u32, mut f: impl FnMut(bool, u32)) {
        self.each_page_of(off, len, shift, |page, n| {
            let was = page.live;
            page.live = was + n;
            f(was == 0, page.map);
        });
    }

    /// Calls `f(entry, bytes)` for each page of the block of `len > 0`
    /// bytes at `off`, with the block's bytes on that page: the whole page
    /// but for the first and the last.
    #[inline]
    fn each_page_of(&mut self, off: u64, len: u64, shift: u32, mut f: impl FnMut(&mut Page, u32)) {
        let end = off + len;
        let (a, b) = (off >> shift, (end - 1) >> shift);
        let on = |p: u64| (end.min((p + 1) << shift) - off.max(p << shift)) as u32;
        let whole = 1u32 << shift;
        for (c, i, p, stop) in chunk_spans(a, b) {
            let mut pages = &mut self.chunk_mut(c).pages[i..=i + (stop - p) as usize];
            // The block's first and last page apart, so that the loop over
            // the whole pages between them asks nothing per page.
            if p == a {
                if let Some((first, rest)) = core::mem::take(&mut pages).split_first_mut() {
                    f(first, on(a));
                    pages = rest;
                }
            }
            let mut last = None;
            if stop == b && b != a {
                if let Some((l, rest)) = core::mem::take(&mut pages).split_last_mut() {
                    last = Some(l);
                    pages = rest;
                }
            }
            for page in pages.iter_mut() {
                f(page, whole);
            }
            if let Some(last) = last {
                f(last, on(b));
            }
        }
    }

    /// Adds `n` live bytes to page `p`; returns whether it had none before.
    #[inline]
    pub fn add_live(&mut self, p: u64, n: u32) -> bool {
        let (c, i) = split(p);
        let ch = self.chunk_mut(c);
        let was = ch.pages[i].live;
        ch.pages[i].live = was + n;
        was == 0
    }

    /// Removes `n` live bytes from page `p`; returns whether it has none now.
    #[inline]
    pub fn sub_live(&mut self, p: u64, n: u32) -> bool {
        self.sub_live_map(p, n).0
    }

    /// Backs page `p` with mapping `m` (clears its blocked bit).
    #[inline]
    pub fn set_map(&mut self, p: u64, m: u32) {
        let (c, i) = split(p);
        let ch = self.chunk_mut(c);
        ch.pages[i].map = m;
        let bit = 1u64 << (i % 64);
        if m == NIL {
            ch.bits[i / 64].mapped &= !bit;
        } else {
            ch.bits[i / 64].mapped |= bit;
        }
        ch.bits[i / 64].blocked &= !bit;
    }

    /// Marks page `p` blocked or not.
    #[inline]
    pub fn set_blocked(&mut self, p: u64, blocked: bool) {
        let (c, i) = split(p);
        let ch = self.chunk_mut(c);
        let bit = 1u64 << (i % 64);
        if blocked {
            ch.bits[i / 64].blocked |= bit;
        } else {
            ch.bits[i / 64].blocked &= !bit;
        }
    }

    /// Marks pages `a..=b` blocked or not: a word at a time, where a
    /// mapping of many pages (a large handle mapped again elsewhere) cost
    /// a call per page each time its unit changed hands.
    pub fn set_blocked_range(&mut self, a: u64, b: u64, blocked: bool) {
        for (c, i, p, stop) in chunk_spans(a, b) {
            let ch = self.chunk_mut(c);
            for (w, m) in word_masks(i, i + (stop - p) as usize + 1) {
                if blocked {
                    ch.bits[w].blocked |= m;
                } else {
                    ch.bits[w].blocked &= !m;
                }
            }
        }
    }

    /// What placing a block on pages `a..=b` takes.
    ///
    /// # Time complexity
    /// O((b - a) / 64 + 1) word operations.
    #[inline]
    pub fn cost(&self, a: u64, b: u64) -> Cost {
        if a == b {
            // One page (most blocks): two bit tests.
            let (c, i) = split(a);
            return match self.chunk(c) {
                None => Cost {
                    unmapped: 1,
                    blocked: 0,
                },
                Some(ch) => {
                    let (w, bit) = (ch.bits[i / 64], 1u64 << (i % 64));
                    Cost {
                        unmapped: u64::from(w.mapped & bit == 0),
                        blocked: u64::from(w.blocked & bit != 0),
                    }
                }
            };
        }
        self.cost_run(a, b)
    }

    /// [`PageTable::cost`] of two pages or more.
    fn cost_run(&self, a: u64, b: u64) -> Cost {
        // Its own walk over the chunks rather than `chunk_spans`: the
        // placement prices many candidates per call, and through the
        // iterator a settled BERT call ran 26 instructions more.
        let mut cost = Cost::default();
        let mut p = a;
        while p <= b {
            let (c, i) = split(p);
            let end_in_chunk = (CHUNK - i) as u64;
            let n = end_in_chunk.min(b - p + 1) as usize;
            match self.chunk(c) {
                None => cost.unmapped += n as u64,
                Some(ch) => {
                    for (w, m) in word_masks(i, i + n) {
                        cost.unmapped += (m & !ch.bits[w].mapped).count_ones() as u64;
                        cost.blocked += (m & ch.bits[w].blocked).count_ones() as u64;
                    }
                }
            }
            p += n as u64;
        }
        cost
    }

    /// Visits every page that is mapped or holds live bytes, in order:
    /// (page, live bytes, mapping or NIL, blocked).
    pub fn for_each_touched(&self, mut f: impl FnMut(u64, u32, u32, bool)) {
        for (c, ch) in self.chunks.iter().enumerate() {
            let Some(ch) = ch else { continue };
            for i in 0..CHUNK {
                if ch.pages[i].map != NIL || ch.pages[i].live != 0 {
                    let blocked = ch.bits[i / 64].blocked & (1 << (i % 64)) != 0;
                    f(
                        ((c as u64) << CHUNK_SHIFT) + i as u64,
                        ch.pages[i].live,
                        ch.pages[i].map,
                        blocked,
                    );
                }
            }
        }
    }

    /// Maximal runs of pages with live bytes: (first page, pages).
    pub fn live_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        self.for_each_touched(|p, live, _, _| {
            if live == 0 {
                return;
            }
            match out.last_mut() {
                Some((f, n)) if *f + *n == p => *n += 1,
                _ => out.push((p, 1)),
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shadow model: the same facts in plain vectors.
    #[derive(Default)]
    struct Shadow {
        live: std::collections::BTreeMap<u64, u32>,
        map: std::collections::BTreeMap<u64, u32>,
        blocked: std::collections::BTreeSet<u64>,
    }

    impl Shadow {
        fn cost(&self, a: u64, b: u64) -> Cost {
            let mut c = Cost::default();
            for p in a..=b {
                if !self.map.contains_key(&p) {
                    c.unmapped += 1;
                }
                if self.blocked.contains(&p) {
                    c.blocked += 1;
                }
            }
            c
        }
    }

    #[test]
    fn cost_counts_unmapped_and_blocked_pages_across_words_and_chunks_and_runs_mark_as_pages_do() {
        let mut t = PageTable::new();
        let mut s = Shadow::default();
        // A deterministic pseudo-random program over 3 chunks.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let p = x % (3 * CHUNK as u64);
            match step % 5 {
                0 => {
                    t.set_map(p, (x >> 32) as u32 % 1000);
                    s.map.insert(p, (x >> 32) as u32 % 1000);
                    s.blocked.remove(&p);
                }
                1 => {
                    t.set_map(p, NIL);
                    s.map.remove(&p);
                    s.blocked.remove(&p);
                }
                2 if x & 2 == 0 => {
                    // A run of pages (a mapping of a unit of many), within
                    // a word, across words and across chunks.
                    let b = x & 1 == 0;
                    let last = (p + (x >> 40) % 200).min(3 * CHUNK as u64 - 1);
                    t.set_blocked_range(p, last, b);
                    for q in p..=last {
                        if b {
                            s.blocked.insert(q);
                        } else {
                            s.blocked.remove(&q);
                        }
                    }
                }
                2 if s.map.contains_key(&p) => {
                    let b = x & 1 == 0;
                    t.set_blocked(p, b);
                    if b {
                        s.blocked.insert(p);
                    } else {
                        s.blocked.remove(&p);
                    }
                }
                3 => {
                    t.add_live(p, 7);
                    *s.live.entry(p).or_default() += 7;
                }
                _ => {
                    let a = x % (3 * CHUNK as u64);
                    let b = (a + (x >> 40) % 300).min(3 * CHUNK as u64 - 1);
                    assert_eq!(t.cost(a, b), s.cost(a, b), "pages {a}..={b}");
                }
            }
        }
        for (&p, &l) in &s.live {
            assert_eq!(t.live(p), l);
        }
        for p in 0..3 * CHUNK as u64 {
            assert_eq!(t.map(p), s.map.get(&p).copied().unwrap_or(NIL));
            assert_eq!(t.is_blocked(p), s.blocked.contains(&p));
            // One page takes the short path.
            assert_eq!(t.cost(p, p), s.cost(p, p), "page {p}");
        }
        // A page of a chunk never touched is unmapped.
        let far = 5 * CHUNK as u64 + 3;
        assert_eq!(t.cost(far, far), s.cost(far, far));
    }

    /// `add_block` and `sub_block` against the same block added and taken
    /// off page by page: blocks of any byte size and offset, within one
    /// page, across pages and across chunks.
    #[test]
    fn blocks_add_and_take_off_the_bytes_on_each_page() {
        const SHIFT: u32 = 21;
        let page = 1u64 << SHIFT;
        let mut t = PageTable::new();
        let mut s = Shadow::default();
        for p in 0..3 * CHUNK as u64 {
            t.set_map(p, p as u32 % 7);
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut live: Vec<(u64, u64)> = Vec::new();
        for step in 0..4_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let visited = core::cell::RefCell::new(Vec::new());
            if step % 3 == 2 && !live.is_empty() {
                let (off, len) = live.swap_remove((x % live.len() as u64) as usize);
                t.sub_block(off, len, SHIFT, |empty, m| {
                    visited.borrow_mut().push((empty, m))
                });
                let mut want = Vec::new();
                for p in off >> SHIFT..=(off + len - 1) >> SHIFT {
                    let on = (off + len).min((p + 1) * page) - off.max(p * page);
                    let l = s.live.get_mut(&p).expect("page live in the shadow");
                    *l -= on as u32;
                    want.push((*l == 0, p as u32 % 7));
                }
                assert_eq!(visited.into_inner(), want, "free of {off:#x}+{len:#x}");
            } else {
                // Up to 70 pages, anywhere in the first 3 chunks.
                let len = 1 + (x >> 20) % (70 * page);
                let off = (x % (3 * CHUNK as u64 * page - len)) & !511;
                t.add_block(off, len, SHIFT, |first, m| {
                    visited.borrow_mut().push((first, m))
                });
                let mut want = Vec::new();
                for p in off >> SHIFT..=(off + len - 1) >> SHIFT {
                    let on = (off + len).min((p + 1) * page) - off.max(p * page);
                    let l = s.live.entry(p).or_default();
                    want.push((*l == 0, p as u32 % 7));
                    *l += on as u32;
                }
                assert_eq!(visited.into_inner(), want, "block {off:#x}+{len:#x}");
                live.push((off, len));
            }
        }
        for p in 0..3 * CHUNK as u64 {
            assert_eq!(t.live(p), s.live.get(&p).copied().unwrap_or(0), "page {p}");
        }
    }

    #[test]
    fn untouched_pages_are_unmapped_and_live_ranges_merge() {
        let mut t = PageTable::new();
        assert_eq!(
            t.cost(10, 20_000),
            Cost {
                unmapped: 19_991,
                blocked: 0
            }
        );
        for p in [5, 6, 7, 9, 4096, 4097] {
            t.set_map(p, 1);
            t.add_live(p, 1);
        }
        assert_eq!(t.live_ranges(), vec![(5, 3), (9, 1), (4096, 2)]);
        assert!(t.sub_live(9, 1));
        assert_eq!(t.live_ranges(), vec![(5, 3), (4096, 2)]);
    }
}
