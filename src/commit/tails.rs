//! Tails: blocks placed in the unused end of a stitched block's last page.
//!
//! A stitched range maps whole pages, so its block's last page is used in
//! part, and the rest of that page's unit can hold nothing else (a unit
//! holds the live bytes of one mapping at a time). At the peak of the
//! shared traces this was the largest excess left: about 45 % of BERT
//! inference's, most of training's (`docs/pytorch/layouts-20261129/`,
//! `peak-split.log`). A *tail* is that end: `[block end, page end)` of
//! the range, through the same mapping, so a block placed there shares the
//! unit with the stitched block the way neighbours share a page in the
//! blocks region.
//!
//! Rules (the caller keeps the page table; this file only keeps what the
//! tails hold):
//! - every live stitched block has a tail; it serves blocks of that
//!   block's stream only (its bytes were checked for that stream when the
//!   range was taken; while the page stays live, no fence guards them);
//! - blocks go at the tail's cursor, bump style, into the tail of that
//!   stream with the least room that holds them; the cursor goes back to
//!   the tail's start when its last block is freed (as bumpalo's reset);
//! - a block freed with another stream's stamp closes the tail until the
//!   range is taken again (its bytes must wait for that fence, which the
//!   tail does not track), and the range's block is then freed page by
//!   page, not parked: a parked group's retake asks only the stamps of the
//!   group's own free (see [`parked`](super::pool::parked));
//! - a range whose block is freed while its tail holds blocks *drains*
//!   ([`Stitch::drain`]): it stays in use (neither cached nor dissolved)
//!   until the last of them is freed.
//!
//! The state of a tail lives in its range's record
//! ([`Tail`](super::stitch::Tail)): taking a range resets it, freeing its
//! block reads one count, so that stitched blocks that never use their
//! tails pay nothing else. Finding a tail walks the ranges, which only a
//! block that would otherwise need a driver call does.
//!
//! Pure bookkeeping: no driver, no pointers.
#![deny(unsafe_code, clippy::unwrap_used)]

use super::stitch::Stitch;
use crate::meta::MetaMap;
use crate::sync::Stamp;

/// The live tail blocks of one reservation's stitched ranges.
#[derive(Debug)]
pub struct Tails {
    /// Offset → (range, bytes).
    blocks: MetaMap<u64, (u32, u64)>,
    live_bytes: u64,
}

/// What freeing a tail block did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailFree {
    /// The range whose tail held it.
    pub range: u32,
    /// Its bytes.
    pub bytes: u64,
    /// It was the last block of a draining range's tail: the range may
    /// now be cached ([`Stitch::put`]).
    pub drained: bool,
}

impl Default for Tails {
    fn default() -> Self {
        Self::new()
    }
}

impl Tails {
    /// No tail blocks.
    pub fn new() -> Self {
        Tails {
            blocks: MetaMap::with_hasher_in(Default::default(), std::alloc::System),
            live_bytes: 0,
        }
    }

    /// Bytes of live tail blocks.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
    /// Number of live tail blocks.
    pub fn live_count(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// Places a block of `len` bytes in the tail of a live stitched block
    /// of stream slot `stream` (pages of `1 << shift` bytes): the one with
    /// the least room that holds it, the lowest first among equals.
    /// Returns its offset.
    ///
    /// # Time complexity
    /// O(ranges).
    pub fn alloc(&mut self, stitch: &mut Stitch, shift: u32, len: u64, stream: u16) -> Option<u64> {
        let mut best: Option<(u64, u64, u32)> = None;
        for (r, x) in stitch.live() {
            if x.stream != stream || x.tail.closed {
                continue;
            }
            let end = x.size.div_ceil(1 << shift) << shift;
            let room = end - x.size - x.tail.used;
            if room >= len && best.is_none_or(|b| (room, x.first) < (b.0, b.1)) {
                best = Some((room, x.first, r));
            }
        }
        let (_, first, r) = best?;
        let x = stitch.range(r);
        let off = (first << shift) + x.size + x.tail.used;
        let t = stitch.tail_mut(r);
        t.used += len;
        t.live += 1;
        self.blocks.insert(off, (r, len));
        self.live_bytes += len;
        Some(off)
    }

    /// The size of the live tail block at `off`, if any.
    pub fn size(&self, off: u64) -> Option<u64> {
        self.blocks.get(&off).map(|&(_, len)| len)
    }

    /// Whether `off` lies inside a live tail block (past its start).
    ///
    /// # Time complexity
    /// O(live tail blocks): for refusing a bad free.
    pub fn containing(&self, off: u64) -> bool {
        self.blocks
            .iter()
            .any(|(&b, &(_, len))| off > b && off < b + len)
    }

    /// Frees the tail block at `off`, freed with `stamp`; `None` if no
    /// tail block starts there.
    pub fn free(&mut self, stitch: &mut Stitch, off: u64, stamp: Stamp) -> Option<TailFree> {
        let (r, bytes) = self.blocks.remove(&off)?;
        self.live_bytes -= bytes;
        let (stream, draining) = {
            let x = stitch.range(r);
            (x.stream, x.draining)
        };
        let t = stitch.tail_mut(r);
        t.live -= 1;
        if !stamp.is_safe() && stamp.slot() != stream {
            t.closed = true;
        }
        if t.live == 0 {
            t.used = 0;
        }
        Some(TailFree {
            range: r,
            bytes,
            drained: t.live == 0 && draining,
        })
    }

    /// Visits every live tail block: (offset, bytes).
    pub fn for_each(&self, mut f: impl FnMut(u64, u64)) {
        for (&off, &(_, len)) in self.blocks.iter() {
            f(off, len);
        }
    }

    /// Full structural check against the ranges (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check(&self, stitch: &Stitch, shift: u32) {
        let mut live: std::collections::HashMap<u32, u32> = Default::default();
        let mut bytes = 0;
        for (&off, &(r, len)) in self.blocks.iter() {
            let x = stitch.range(r);
            assert!(x.in_use, "tail block {off:#x}'s range is in use");
            let start = (x.first << shift) + x.size;
            assert!(
                off >= start && off + len <= start + x.tail.used,
                "tail block {off:#x} inside its tail's used part"
            );
            assert_eq!(
                (off + len - 1) >> shift,
                (start - 1) >> shift,
                "tail block {off:#x} on its block's last page"
            );
            *live.entry(r).or_default() += 1;
            bytes += len;
        }
        assert_eq!(bytes, self.live_bytes, "tail live bytes");
        for (r, x) in stitch.live_or_draining() {
            assert_eq!(
                live.get(&r).copied().unwrap_or(0),
                x.tail.live,
                "range {r}'s tail blocks"
            );
            assert!(
                x.tail.live > 0 || x.tail.used == 0,
                "range {r}'s tail reset"
            );
            assert!(
                !x.draining || x.tail.live > 0,
                "draining range {r} holds tail blocks"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::stitch::Tail;

    const S: u16 = 1;
    const SHIFT: u32 = 16;
    const PAGE: u64 = 1 << SHIFT;

    /// Three live stitched blocks: range 0 (stream S) with 1,000 bytes of
    /// tail, range 1 (S) with 300, range 2 (S + 1) with 200.
    fn three() -> (Stitch, [u32; 3], [u64; 3]) {
        let mut s = Stitch::new(100, 64);
        let r = [
            s.make(2, 0).expect("room"),
            s.make(2, 0).expect("room"),
            s.make(2, 0).expect("room"),
        ];
        s.take(r[0], 2 * PAGE - 1000, S);
        s.take(r[1], 2 * PAGE - 300, S);
        s.take(r[2], 2 * PAGE - 200, S + 1);
        let ends = r.map(|r| {
            let x = s.range(r);
            (x.first << SHIFT) + x.size
        });
        (s, r, ends)
    }

    #[test]
    fn blocks_go_to_the_tightest_tail_of_their_stream_and_the_cursor_resets() {
        let (mut s, _, end) = three();
        let mut t = Tails::new();
        assert_eq!(t.alloc(&mut s, SHIFT, 200, S), Some(end[1]), "the tightest");
        assert_eq!(
            t.alloc(&mut s, SHIFT, 200, S),
            Some(end[0]),
            "range 1 has 100 left"
        );
        assert_eq!(
            t.alloc(&mut s, SHIFT, 200, S + 1),
            Some(end[2]),
            "its stream's"
        );
        assert_eq!(t.alloc(&mut s, SHIFT, 1, S + 1), None, "full");
        assert_eq!(t.alloc(&mut s, SHIFT, 900, S), None, "no tail holds it");
        t.check(&s, SHIFT);
        let f = t
            .free(&mut s, end[1], Stamp::new(S, 3))
            .expect("a tail block");
        assert_eq!((f.bytes, f.drained), (200, false));
        assert_eq!(
            t.alloc(&mut s, SHIFT, 300, S),
            Some(end[1]),
            "the cursor went back"
        );
        assert_eq!((t.live_bytes(), t.live_count()), (700, 3));
        t.check(&s, SHIFT);
    }

    #[test]
    fn a_foreign_free_closes_the_tail_and_a_freed_block_drains_its_range() {
        let (mut s, r, end) = three();
        let mut t = Tails::new();
        let a = t.alloc(&mut s, SHIFT, 100, S).expect("room");
        assert_eq!(a, end[1]);
        let b = t.alloc(&mut s, SHIFT, 100, S).expect("room");
        t.free(&mut s, a, Stamp::new(S + 1, 7))
            .expect("a tail block");
        assert_eq!(
            t.alloc(&mut s, SHIFT, 100, S),
            Some(end[0]),
            "range 1 closed"
        );
        let c = end[0];
        t.free(&mut s, c, Stamp::SAFE).expect("a tail block");
        // Range 1's block is freed while b lives: it drains.
        assert_eq!(s.range(r[1]).tail.live, 1);
        s.drain(r[1]);
        assert_eq!(t.size(b), Some(100));
        assert!(t.containing(b + 1) && !t.containing(b));
        t.check(&s, SHIFT);
        let f = t.free(&mut s, b, Stamp::new(S, 8)).expect("a tail block");
        assert!(f.drained && f.range == r[1], "its last block drained it");
        assert_eq!(t.free(&mut s, b, Stamp::SAFE), None, "freed twice");
        s.put(r[1], 9);
        t.check(&s, SHIFT);
        // Taken again, its tail is open and empty.
        s.take(r[1], PAGE + 1, S);
        assert_eq!(s.range(r[1]).tail, Tail::default());
    }
}
