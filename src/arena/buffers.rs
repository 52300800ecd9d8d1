//! The buffers region: reserving, committing and releasing the ranges of
//! scratch arenas and growable buffers, and counting their live bytes.
//!
//! The calls here are safe: each checks that its pointer is a buffer of
//! this arena and that its range is the end of what that buffer has
//! committed (a buffer commits and gives back a prefix), so that no call
//! takes live bytes off pages that blocks or other buffers hold.

use super::{Arena, ScratchCursor};
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{BadPointer, Error, Result};
use crate::policy::Policy;

/// What an arena knows of one buffer of its buffers region.
#[derive(Clone, Copy, Debug)]
pub(super) struct BufferRec {
    /// Scratch arena or growable buffer.
    pub(super) policy: Policy,
    /// Bytes committed from its base.
    pub(super) committed: u64,
    /// Committed whole in shareable runs, or imported: given back by
    /// [`Arena::free_shared_buffer`] only.
    pub(super) shared: bool,
}

impl<D: Driver> Arena<D> {
    /// The offset in the buffers region and the record of the buffer at
    /// `base`, if it is one of this arena's buffers now.
    pub(super) fn buffer(&self, base: DevicePtr) -> Result<(u64, BufferRec)> {
        self.off_of(base)
            .checked_sub(self.buffers_start)
            .filter(|&o| o < self.buffers.capacity())
            .and_then(|o| self.buffer_kinds.get(&o).map(|&b| (o, b)))
            .ok_or(Self::bad(base, BadPointer::Foreign))
    }

    /// Sets the committed prefix of the buffer at `o` (buffers region).
    pub(super) fn set_buffer_committed(&mut self, o: u64, committed: u64, shared: bool) {
        if let Some(b) = self.buffer_kinds.get_mut(&o) {
            b.committed = committed;
            b.shared = shared;
        }
    }

    /// Bytes of the buffers region (scratch arenas and growable buffers)
    /// and, of those, bytes not reserved by any buffer now.
    pub fn buffers_space(&self) -> (u64, u64) {
        let b = &self.buffers;
        (b.capacity(), b.capacity() - b.top() + b.free_bytes())
    }

    /// Counts the scratch arena at `base` (from [`Arena::reserve_buffer`])
    /// by its bump cursor: its live bytes are `cursor - base` at every
    /// moment. [`Arena::free_buffer`] forgets it.
    pub(crate) fn track_scratch(&mut self, base: DevicePtr, cursor: ScratchCursor) {
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
        self.buffer_kinds.insert(
            a.offset,
            BufferRec {
                policy,
                committed: 0,
                shared: false,
            },
        );
        Ok(self.ptr_at(self.buffers_start + a.offset))
    }

    /// Commits `from..to` (page-aligned offsets) of the buffer at `base`:
    /// `from` is what it has committed, `to` at most its reserved size.
    /// Anything else is refused ([`Error::BadPointer`]) and changes nothing.
    pub fn commit_buffer(&mut self, base: DevicePtr, from: u64, to: u64) -> Result<()> {
        self.awake()?;
        let (o, b) = self.buffer(base)?;
        let size = self.buffers.size_of(o).unwrap_or(0);
        if b.shared || from != b.committed || to < from || to > size || to % self.page() != 0 {
            return Err(Self::bad(base, BadPointer::LayoutMismatch));
        }
        self.commit
            .pin(self.buffers_start + o + from, to - from)
            .map_err(|e| self.live_in_report(e))?;
        self.set_buffer_committed(o, to, false);
        Ok(())
    }

    /// Gives back `from..to` of the buffer at `base` (once `stream`'s work
    /// on it completed): `to` is what it has committed, `from` a page
    /// boundary below. Anything else is refused ([`Error::BadPointer`])
    /// and changes nothing.
    pub fn decommit_buffer(
        &mut self,
        base: DevicePtr,
        from: u64,
        to: u64,
        stream: Stream,
    ) -> Result<()> {
        self.awake()?;
        let (o, b) = self.buffer(base)?;
        if b.shared || to != b.committed || from > to || from % self.page() != 0 {
            return Err(Self::bad(base, BadPointer::LayoutMismatch));
        }
        let stamp = self.commit.stamp_on(stream);
        self.commit
            .unpin(self.buffers_start + o + from, to - from, stamp);
        self.set_buffer_committed(o, from, false);
        Ok(())
    }

    /// Releases the buffer at `base` (of `policy`: a scratch arena, or
    /// else a growable buffer), last used on `stream`: its committed pages
    /// (as the arena recorded them) go once that stream's work on them
    /// completed, and its addresses carry the same stamp (pages given back
    /// earlier, as a reset gives them, may still be mapped there, waiting
    /// for that stream too). A pointer that is no such buffer of this
    /// arena, or a shared one, is left alone.
    pub fn free_buffer(&mut self, base: DevicePtr, policy: Policy, stream: Stream) {
        let Ok((o, b)) = self.buffer(base) else {
            return;
        };
        if b.shared || (b.policy == Policy::Scratch) != (policy == Policy::Scratch) {
            return;
        }
        self.release_buffer(base, o, b, stream);
    }

    /// [`Arena::free_buffer`] of the buffer at `base`, checked (`o`, `b`:
    /// [`Arena::buffer`]).
    pub(super) fn release_buffer(&mut self, base: DevicePtr, o: u64, b: BufferRec, stream: Stream) {
        let stamp = self.commit.stamp_on(stream);
        if b.committed > 0 {
            // Allowed while asleep: the buffer's pages just will not be restored.
            self.commit
                .unpin(self.buffers_start + o, b.committed, stamp);
        }
        // A fence now, so that a later reservation can see the addresses
        // free once the work completed (a failed record leaves them to be
        // reused last).
        let _ = self.commit.ensure_fence(stamp);
        let streams = &self.commit.streams;
        self.buffers.free(o, stamp, |s| streams.done(s));
        self.buffer_kinds.remove(&o);
        match b.policy {
            Policy::Scratch => {
                self.note_peak();
                // The scratch arena still holds its cursor: dropping this
                // clone never frees (no allocation under the arena's lock).
                self.scratch_cursors.retain(|(c, _)| *c != base);
                self.hot.scratch = !self.scratch_cursors.is_empty();
                self.scratch.blocks -= 1
            }
            _ => self.grow.blocks -= 1,
        }
    }

    /// Accounts live bytes of a buffer policy (scratch bump, grow length).
    pub(crate) fn account_buffer(&mut self, policy: Policy, before: u64, after: u64) {
        let s = match policy {
            Policy::Scratch => &mut self.scratch,
            _ => &mut self.grow,
        };
        s.bytes = s.bytes + after - before;
        self.hot.live = self.hot.live + after - before;
        self.note_peak();
    }
}
