//! The buffers region: reserving, committing and releasing the ranges of
//! scratch arenas and growable buffers, and counting their live bytes.

use super::{Arena, ScratchCursor};
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::sync::Stamp;

impl<D: Driver> Arena<D> {
    /// Bytes of the buffers region (scratch arenas and growable buffers)
    /// and, of those, bytes not reserved by any buffer now.
    pub fn buffers_space(&self) -> (u64, u64) {
        let b = &self.buffers;
        (b.capacity(), b.capacity() - b.top() + b.free_bytes())
    }

    /// Counts the scratch arena at `base` (from [`Arena::reserve_buffer`])
    /// by its bump cursor: its live bytes are `cursor - base` at every
    /// moment. [`Arena::free_buffer`] forgets it.
    pub fn track_scratch(&mut self, base: DevicePtr, cursor: ScratchCursor) {
        cursor
            .asleep
            .store(self.hot.asleep, core::sync::atomic::Ordering::Relaxed);
        self.scratch_cursors.push((base, cursor));
        self.hot.scratch = true;
    }

    /// Bytes bumped in every tracked scratch arena now. O(scratch arenas).
    pub(super) fn scratch_bumped(&self) -> u64 {
        self.scratch_cursors
            .iter()
            .map(|(base, c)| c.load(core::sync::atomic::Ordering::Relaxed) - base.addr())
            .sum()
    }

    /// Live bytes, scratch arenas' bumps included.
    pub(super) fn live_now(&self) -> u64 {
        self.hot.live + self.scratch_bumped()
    }

    /// Takes the live bytes now (scratch bumps included) into the peak.
    /// Scratch arenas call it before a reset or drop takes their bytes back;
    /// between such calls a scratch arena's bytes enter the peak when
    /// another policy's allocation, a commit or a stats read sees them.
    pub fn note_peak(&mut self) {
        self.hot.peak_live = self.hot.peak_live.max(self.live_now());
    }

    /// Reserves `max` bytes (rounded to pages) of the buffers region for a
    /// scratch arena or growable buffer. Nothing is committed.
    pub fn reserve_buffer(&mut self, max: u64, policy: Policy) -> Result<DevicePtr> {
        if max == 0 {
            return Err(Error::ZeroSize);
        }
        let page = self.page();
        let capacity = self.buffers.capacity();
        // Larger than the whole region is a different error from a full one.
        let max = crate::driver::round_up(max, page)
            .filter(|&m| m <= capacity)
            .ok_or(Error::ExceedsReservation {
                requested: max,
                capacity,
            })?;
        // Addresses whose last buffer's pages a stream's work may still use
        // are passed over while others fit (their mappings would have to
        // wait for that work before this buffer commits there); their
        // fences were recorded at the free, and are polled here.
        self.commit.poll();
        let streams = &self.commit.streams;
        let a = self
            .buffers
            .alloc(max, page, |s| s.is_safe() || streams.done(s))
            .or_else(|| self.buffers.alloc(max, page, |_| true))
            .ok_or(Error::AddressSpace {
                requested: max,
                reserved: self.buffers.capacity(),
            })?;
        match policy {
            Policy::Scratch => self.scratch.blocks += 1,
            _ => self.grow.blocks += 1,
        }
        self.buffer_kinds.insert(a.offset, policy);
        Ok(self.ptr_at(self.buffers_start + a.offset))
    }

    /// Commits `from..to` (page-aligned offsets) of the buffer at `base`.
    pub fn commit_buffer(&mut self, base: DevicePtr, from: u64, to: u64) -> Result<()> {
        self.awake()?;
        let off = base.offset_from(self.base_ptr()) + from;
        self.commit
            .pin(off, to - from)
            .map_err(|e| self.live_in_report(e))
    }

    /// Gives back `from..to` of the buffer at `base` (once `stream`'s work on it completed).
    pub fn decommit_buffer(
        &mut self,
        base: DevicePtr,
        from: u64,
        to: u64,
        stream: Stream,
    ) -> Result<()> {
        self.awake()?;
        let stamp = self.commit.streams.stamp_on(stream);
        self.release_buffer_range(base, from, to, stamp);
        Ok(())
    }

    /// Gives back `from..to` of the buffer at `base`, freed with `stamp`.
    fn release_buffer_range(&mut self, base: DevicePtr, from: u64, to: u64, stamp: Stamp) {
        let off = base.offset_from(self.base_ptr()) + from;
        self.commit.unpin(off, to - from, stamp);
    }

    /// Releases the buffer at `base` whose committed prefix is `committed`
    /// bytes, last used on `stream`: its pages go once that stream's work
    /// on them completed, and its addresses carry the same stamp (pages
    /// given back earlier, as a reset gives them, may still be mapped
    /// there, waiting for that stream too).
    pub fn free_buffer(&mut self, base: DevicePtr, committed: u64, policy: Policy, stream: Stream) {
        let stamp = self.commit.streams.stamp_on(stream);
        if committed > 0 {
            // Allowed while asleep: the buffer's pages just will not be restored.
            self.release_buffer_range(base, 0, committed, stamp);
        }
        // A fence now, so that a later reservation can see the addresses
        // free once the work completed (a failed record leaves them to be
        // reused last).
        let _ = self.commit.ensure_fence(stamp);
        let off = base.offset_from(self.base_ptr()) - self.buffers_start;
        let streams = &self.commit.streams;
        self.buffers.free(off, stamp, |s| streams.done(s));
        self.buffer_kinds.remove(&off);
        match policy {
            Policy::Scratch => {
                self.note_peak();
                // The scratch arena still holds its cursor: dropping this
                // clone never frees (no allocation under the arena's lock).
                self.scratch_cursors.retain(|(b, _)| *b != base);
                self.hot.scratch = !self.scratch_cursors.is_empty();
                self.scratch.blocks -= 1
            }
            _ => self.grow.blocks -= 1,
        }
    }

    /// Accounts live bytes of a buffer policy (scratch bump, grow length).
    pub fn account_buffer(&mut self, policy: Policy, before: u64, after: u64) {
        let s = match policy {
            Policy::Scratch => &mut self.scratch,
            _ => &mut self.grow,
        };
        s.bytes = s.bytes + after - before;
        self.hot.live = self.hot.live + after - before;
        self.note_peak();
    }
}
