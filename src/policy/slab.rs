//! Slabs: small blocks of one size class carved from a slab span.
//!
//! A slab is a span of [`classes::slab_bytes`] bytes (taken from the large
//! policy, aligned to its size, so neighbouring slabs share pages) cut into
//! objects of one class. Each slab belongs to the stream slot that carved it:
//! objects freed on that stream are reusable at once; objects freed on another
//! stream wait in a deferred list until that stream's fence completed.
//!
//! # Time complexity
//! `alloc` and `free` are O(1) (one two-level table lookup on free).
#![deny(unsafe_code, clippy::unwrap_used)]

use crate::error::BadPointer;
use crate::meta::{MetaVec, SparseIndex};
use crate::policy::classes::{self, COUNT};
use crate::sync::Stamp;

const NIL: u32 = u32::MAX;
/// Slabs are found from an offset by their 64 KiB chunk.
const CHUNK_SHIFT: u32 = 16;

#[derive(Debug)]
struct Slab {
    offset: u64,
    class: u8,
    slot: u16,
    nobj: u32,
    /// Objects `fresh..nobj` were never handed out since the slab was added:
    /// free, and not on `free` (a new slab's objects are not listed one by
    /// one, so that adding a slab costs the same for 16-byte objects as for
    /// 32 KiB ones).
    fresh: u32,
    /// Free object indices handed out before (a stack, taken before the
    /// fresh ones). Invariant: with `fresh..nobj`, exactly the objects whose
    /// `live` bit is clear and that are not in the deferred list.
    free: MetaVec<u32>,
    /// Bit i set iff object i is handed out.
    live: MetaVec<u64>,
    live_count: u32,
    /// Objects freed on another stream, not yet back on `free`.
    deferred: u32,
    prev: u32,
    next: u32,
    in_list: bool,
    used: bool,
    stamp: Stamp,
}

/// What a free did to its slab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freed {
    /// The object went back (or is deferred); the slab still has objects.
    Object {
        /// Bytes of the object's class.
        size: u64,
    },
    /// The slab is now empty and was removed: give its span back.
    SlabEmpty {
        /// Bytes of the object's class.
        size: u64,
        /// Offset of the slab span.
        slab: u64,
        /// Bytes of the slab span.
        slab_bytes: u64,
        /// Stamp to free the span with.
        stamp: Stamp,
    },
}

/// All slabs of one arena.
#[derive(Debug)]
pub struct Slabs {
    slabs: MetaVec<Slab>,
    recycled: MetaVec<u32>,
    chunks: SparseIndex,
    /// Per stream slot, per class: head of the list of slabs with free objects.
    partial: MetaVec<[u32; COUNT]>,
    deferred: MetaVec<(u32, u32, Stamp)>,
    live_bytes: u64,
    live_count: u64,
    slab_bytes: u64,
    /// Keep the last slab of a (slot, class) when it empties.
    keep_empty: bool,
}

impl Default for Slabs {
    fn default() -> Self {
        Self::new()
    }
}

impl Slabs {
    /// No slabs; an emptied slab that is the last of its (slot, class) is
    /// kept.
    pub fn new() -> Self {
        Self::keeping_empty(true)
    }

    /// No slabs; `keep_empty`: whether an emptied slab that is the last of
    /// its (slot, class) is kept (else every emptied slab goes back).
    pub fn keeping_empty(keep_empty: bool) -> Self {
        Slabs {
            slabs: MetaVec::new_in(std::alloc::System),
            recycled: MetaVec::new_in(std::alloc::System),
            chunks: SparseIndex::new(),
            partial: MetaVec::new_in(std::alloc::System),
            deferred: MetaVec::new_in(std::alloc::System),
            live_bytes: 0,
            live_count: 0,
            slab_bytes: 0,
            keep_empty,
        }
    }

    /// Bytes in live objects (class sizes).
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }
    /// Live objects.
    pub fn live_count(&self) -> u64 {
        self.live_count
    }
    /// Bytes in slab spans.
    pub fn slab_bytes(&self) -> u64 {
        self.slab_bytes
    }
    /// Objects waiting for another stream's fence.
    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    fn heads(&mut self, slot: u16) -> &mut [u32; COUNT] {
        let s = slot as usize;
        if self.partial.len() <= s {
            self.partial.resize(s + 1, [NIL; COUNT]);
        }
        &mut self.partial[s]
    }

    /// Takes an object of class `class` for stream slot `slot`; `None` when
    /// that slot has no slab of the class with a free object.
    #[inline(always)]
    pub fn alloc(&mut self, slot: u16, class: usize) -> Option<u64> {
        let head = *self.partial.get(slot as usize)?.get(class)?;
        if head == NIL {
            return None;
        }
        let s = &mut self.slabs[head as usize];
        // The last freed first, then the fresh ones in order: the order a
        // stack of all the objects, lowest on top, gave.
        let i = match s.free.pop() {
            Some(i) => i,
            None if s.fresh < s.nobj => {
                s.fresh += 1;
                s.fresh - 1
            }
            None => return None,
        };
        s.live[(i / 64) as usize] |= 1 << (i % 64);
        s.live_count += 1;
        let size = classes::SIZES[class] as u64;
        let off = s.offset + i as u64 * size;
        if s.free.is_empty() && s.fresh == s.nobj {
            self.unlink(head);
        }
        self.live_bytes += size;
        self.live_count += 1;
        Some(off)
    }

    /// Adds a slab span at `offset` (aligned to `slab_bytes(class)`) for `slot`.
    pub fn add_slab(&mut self, offset: u64, class: usize, slot: u16) {
        let bytes = classes::slab_bytes(class);
        debug_assert_eq!(offset % bytes, 0);
        let nobj = classes::objects(class);
        // A recycled record's lists keep their memory (slabs come and go
        // with their objects where emptied slabs are not kept).
        let recycled = self.recycled.pop();
        let (mut free, mut live) = match recycled {
            Some(id) => {
                let s = &mut self.slabs[id as usize];
                (
                    core::mem::replace(&mut s.free, MetaVec::new_in(std::alloc::System)),
                    core::mem::replace(&mut s.live, MetaVec::new_in(std::alloc::System)),
                )
            }
            None => (
                MetaVec::new_in(std::alloc::System),
                MetaVec::new_in(std::alloc::System),
            ),
        };
        free.clear();
        live.clear();
        live.resize(nobj.div_ceil(64) as usize, 0u64);
        let slab = Slab {
            offset,
            class: class as u8,
            slot,
            nobj,
            fresh: 0,
            free,
            live,
            live_count: 0,
            deferred: 0,
            prev: NIL,
            next: NIL,
            in_list: false,
            used: true,
            stamp: Stamp::SAFE,
        };
        let id = if let Some(id) = recycled {
            self.slabs[id as usize] = slab;
            id
        } else {
            self.slabs.push(slab);
            (self.slabs.len() - 1) as u32
        };
        for c in 0..bytes >> CHUNK_SHIFT {
            self.chunks.insert((offset >> CHUNK_SHIFT) + c, id);
        }
        self.slab_bytes += bytes;
        self.link(id);
    }

    fn link(&mut self, id: u32) {
        let (slot, class) = {
            let s = &self.slabs[id as usize];
            (s.slot, s.class as usize)
        };
        let head = self.heads(slot)[class];
        {
            let s = &mut self.slabs[id as usize];
            s.prev = NIL;
            s.next = head;
            s.in_list = true;
        }
        if head != NIL {
            self.slabs[head as usize].prev = id;
        }
        self.heads(slot)[class] = id;
    }

    fn unlink(&mut self, id: u32) {
        let (slot, class, prev, next) = {
            let s = &self.slabs[id as usize];
            (s.slot, s.class as usize, s.prev, s.next)
        };
        if prev != NIL {
            self.slabs[prev as usize].next = next;
        } else {
            self.heads(slot)[class] = next;
        }
        if next != NIL {
            self.slabs[next as usize].prev = prev;
        }
        let s = &mut self.slabs[id as usize];
        s.in_list = false;
        s.prev = NIL;
        s.next = NIL;
    }

    /// The slab containing `offset`, if any.
    #[inline]
    fn find(&self, offset: u64) -> Option<u32> {
        self.chunks.get(offset >> CHUNK_SHIFT)
    }

    /// Whether `offset` lies in a slab span.
    pub fn owns(&self, offset: u64) -> bool {
        self.find(offset).is_some()
    }

    /// Size of the live object starting at `offset`, if any.
    pub fn size_of(&self, offset: u64) -> Option<u64> {
        let id = self.find(offset)?;
        let s = &self.slabs[id as usize];
        let size = classes::SIZES[s.class as usize] as u64;
        let i = classes::object_index(offset - s.offset, s.class as usize)?;
        (i < s.nobj && s.live[(i / 64) as usize] >> (i % 64) & 1 == 1).then_some(size)
    }

    /// Frees the object at `offset`, freed on stream slot `slot` with `stamp`.
    /// `size`, when given, is the size the caller allocated the object with
    /// (any alignment up to 4096 may have raised its class: see
    /// [`classes::may_serve`]).
    ///
    /// Errors (nothing changed): `Interior` (not an object start, or past
    /// the last object), `DoubleFree` (object not live), `Foreign` (no slab),
    /// `LayoutMismatch` (the object is of another class).
    #[inline]
    pub fn free(
        &mut self,
        offset: u64,
        slot: u16,
        stamp: Stamp,
        size: Option<u64>,
    ) -> Result<Freed, BadPointer> {
        let id = self.find(offset).ok_or(BadPointer::Foreign)?;
        let s = &mut self.slabs[id as usize];
        let expected = size;
        let class = s.class as usize;
        let size = classes::SIZES[class] as u64;
        let i = match classes::object_index(offset - s.offset, class) {
            Some(i) if i < s.nobj => i,
            _ => return Err(BadPointer::Interior),
        };
        let (w, b) = ((i / 64) as usize, i % 64);
        if s.live[w] >> b & 1 == 0 {
            return Err(BadPointer::DoubleFree);
        }
        if let Some(n) = expected {
            // The class of `n` itself, or one an alignment raised it to.
            let fits = n > 0
                && ((n <= classes::MAX_SMALL && classes::class_of(n) == class)
                    || classes::may_serve_class(n, class));
            if !fits {
                return Err(BadPointer::LayoutMismatch);
            }
        }
        s.live[w] &= !(1 << b);
        s.live_count -= 1;
        self.live_bytes -= size;
        self.live_count -= 1;
        if slot != s.slot && !stamp.is_safe() {
            s.deferred += 1;
            self.deferred.push((id, i, stamp));
            return Ok(Freed::Object { size });
        }
        s.stamp = stamp;
        s.free.push(i);
        let was_full = !s.in_list;
        if was_full {
            self.link(id);
        }
        self.maybe_release(id, size)
    }

    /// Returns the slab if it is empty and another slab of its class can
    /// serve its stream (one empty slab per (slot, class) is kept, against
    /// thrashing, unless `keep_empty` is off). The common case, a slab still
    /// in use or kept, is inline.
    #[inline(always)]
    fn maybe_release(&mut self, id: u32, size: u64) -> Result<Freed, BadPointer> {
        let s = &self.slabs[id as usize];
        let alone = self.keep_empty && s.prev == NIL && s.next == NIL;
        if s.live_count != 0 || s.deferred != 0 || alone {
            return Ok(Freed::Object { size });
        }
        self.release(id, size)
    }

    /// [`Slabs::maybe_release`] of a slab it gives back (rare: out of line).
    #[inline(never)]
    fn release(&mut self, id: u32, size: u64) -> Result<Freed, BadPointer> {
        let (slab, slab_bytes, stamp) = self.remove_slab(id);
        Ok(Freed::SlabEmpty {
            size,
            slab,
            slab_bytes,
            stamp,
        })
    }

    /// Removes an empty slab; returns its span (offset, bytes) and stamp.
    fn remove_slab(&mut self, id: u32) -> (u64, u64, Stamp) {
        let s = &self.slabs[id as usize];
        let (offset, class, stamp) = (s.offset, s.class as usize, s.stamp);
        if s.in_list {
            self.unlink(id);
        }
        let bytes = classes::slab_bytes(class);
        for c in 0..bytes >> CHUNK_SHIFT {
            self.chunks.remove((offset >> CHUNK_SHIFT) + c);
        }
        let s = &mut self.slabs[id as usize];
        s.used = false;
        self.recycled.push(id);
        self.slab_bytes -= bytes;
        (offset, bytes, stamp)
    }

    /// Visits the stamps of deferred objects (several per stream epoch).
    pub fn for_each_deferred_stamp(&self, mut f: impl FnMut(Stamp)) {
        for &(_, _, stamp) in &self.deferred {
            f(stamp);
        }
    }

    /// Moves deferred objects whose stamp is `done` back to their slabs;
    /// `on_empty(slab_offset, slab_bytes, stamp)` receives slabs that emptied.
    pub fn drain(
        &mut self,
        done: impl Fn(Stamp) -> bool,
        mut on_empty: impl FnMut(u64, u64, Stamp),
    ) {
        let mut k = 0;
        while k < self.deferred.len() {
            let (id, i, stamp) = self.deferred[k];
            if !done(stamp) {
                k += 1;
                continue;
            }
            self.deferred.swap_remove(k);
            let s = &mut self.slabs[id as usize];
            s.deferred -= 1;
            s.free.push(i);
            let size = classes::SIZES[s.class as usize] as u64;
            if !s.in_list {
                self.link(id);
            }
            if let Ok(Freed::SlabEmpty {
                slab,
                slab_bytes,
                stamp,
                ..
            }) = self.maybe_release(id, size)
            {
                on_empty(slab, slab_bytes, stamp);
            }
        }
    }

    /// Releases every empty slab (trim): `on_empty` as in [`Slabs::drain`].
    pub fn release_empty(&mut self, mut on_empty: impl FnMut(u64, u64, Stamp)) {
        for id in 0..self.slabs.len() as u32 {
            let s = &self.slabs[id as usize];
            if s.used && s.live_count == 0 && s.deferred == 0 {
                let (offset, bytes, stamp) = self.remove_slab(id);
                on_empty(offset, bytes, stamp);
            }
        }
    }

    /// Visits live objects: (offset, size).
    pub fn for_each_object(&self, mut f: impl FnMut(u64, u64)) {
        for s in self.slabs.iter().filter(|s| s.used) {
            let size = classes::SIZES[s.class as usize] as u64;
            for i in 0..s.nobj {
                if s.live[(i / 64) as usize] >> (i % 64) & 1 == 1 {
                    f(s.offset + i as u64 * size, size);
                }
            }
        }
    }

    /// Visits slabs: (offset, bytes, class size, live objects).
    pub fn for_each_slab(&self, mut f: impl FnMut(u64, u64, u64, u32)) {
        for s in self.slabs.iter().filter(|s| s.used) {
            f(
                s.offset,
                classes::slab_bytes(s.class as usize),
                classes::SIZES[s.class as usize] as u64,
                s.live_count,
            );
        }
    }

    /// Full structural check (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check_invariants(&self) {
        let mut live = 0;
        for (id, s) in self.slabs.iter().enumerate().filter(|(_, s)| s.used) {
            let ones: u32 = s.live.iter().map(|w| w.count_ones()).sum();
            assert_eq!(ones, s.live_count, "slab {id}");
            assert!(
                s.fresh <= s.nobj,
                "slab {id}: fresh objects within the slab"
            );
            assert_eq!(
                s.free.len() as u32 + (s.nobj - s.fresh) + s.live_count + s.deferred,
                s.nobj,
                "slab {id}: free + fresh + live + deferred = objects"
            );
            assert_eq!(
                s.in_list,
                !s.free.is_empty() || s.fresh < s.nobj,
                "slab {id}: listed iff it has free objects"
            );
            assert!(
                (s.fresh..s.nobj).all(|i| s.live[(i / 64) as usize] >> (i % 64) & 1 == 0),
                "slab {id}: fresh objects are not live"
            );
            live += s.live_count as u64 * classes::SIZES[s.class as usize] as u64;
        }
        assert_eq!(live, self.live_bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_last_empty_slab_of_a_class_is_kept_only_when_asked() {
        let c = classes::class_of(100);
        for keep in [true, false] {
            let mut s = Slabs::keeping_empty(keep);
            s.add_slab(0, c, 1);
            let a = s.alloc(1, c).unwrap();
            let freed = s.free(a, 1, Stamp::SAFE, None).unwrap();
            if keep {
                assert_eq!(freed, Freed::Object { size: 112 });
                assert!(s.owns(0), "kept for the class's next object");
                assert_eq!(s.alloc(1, c), Some(a));
            } else {
                assert!(
                    matches!(freed, Freed::SlabEmpty { slab: 0, slab_bytes, .. } if slab_bytes == classes::slab_bytes(c)),
                    "{freed:?}"
                );
                assert!(!s.owns(0));
                assert_eq!(s.slab_bytes(), 0);
                assert_eq!(s.alloc(1, c), None, "the next object needs a new slab");
            }
            s.check_invariants();
        }
    }

    #[test]
    fn objects_come_and_go_and_slabs_empty() {
        let mut s = Slabs::new();
        let c = classes::class_of(100);
        assert_eq!(s.alloc(1, c), None);
        s.add_slab(0, c, 1);
        let n = classes::objects(c);
        let offs: std::vec::Vec<u64> = (0..n).map(|_| s.alloc(1, c).unwrap()).collect();
        assert_eq!(s.alloc(1, c), None, "slab full");
        s.check_invariants();
        s.add_slab(64 << 10, c, 1);
        let extra = s.alloc(1, c).unwrap();
        assert_eq!(
            s.free(offs[3] + 1, 1, Stamp::SAFE, None),
            Err(BadPointer::Interior)
        );
        assert_eq!(
            s.free(offs[3], 1, Stamp::SAFE, None),
            Ok(Freed::Object { size: 112 })
        );
        assert_eq!(
            s.free(offs[3], 1, Stamp::SAFE, None),
            Err(BadPointer::DoubleFree)
        );
        s.check_invariants();
        let mut emptied = 0;
        for (k, &o) in offs.iter().enumerate() {
            if k == 3 {
                continue;
            }
            if let Ok(Freed::SlabEmpty { slab, .. }) = s.free(o, 1, Stamp::SAFE, None) {
                assert_eq!(slab, 0);
                emptied += 1;
            }
        }
        assert_eq!(
            emptied, 1,
            "the first slab is given back while another serves"
        );
        assert!(!s.owns(0));
        s.free(extra, 1, Stamp::SAFE, None).unwrap();
        s.check_invariants();
        assert_eq!(s.live_bytes(), 0);
    }

    #[test]
    fn cross_stream_frees_wait_for_their_fence() {
        let mut s = Slabs::new();
        let c = classes::class_of(64);
        s.add_slab(0, c, 1);
        let a = s.alloc(1, c).unwrap();
        s.free(a, 2, Stamp::new(2, 7), None).unwrap();
        assert_eq!(s.deferred_count(), 1);
        s.check_invariants();
        s.drain(|_| false, |_, _, _| {});
        assert_eq!(s.deferred_count(), 1);
        s.drain(|st| st.epoch() <= 7, |_, _, _| {});
        assert_eq!(s.deferred_count(), 0);
        s.check_invariants();
    }
}
