//! Stream slots, epochs and fences: when may memory freed on a stream be
//! reused elsewhere or given back?
//!
//! Each stream the arena sees gets a slot. Frees are stamped with the slot's
//! open epoch; recording a fence closes the epoch. A stamp `(slot, e)` is done
//! once the fence that closed `e` completed. Fences are recorded lazily, only
//! when someone needs a stamp to complete (decommit, cross-stream reuse), so a
//! single-stream program records one fence per page that empties, not per free.
//! Completion is only ever *queried* ([`Driver::is_complete`]); the only wait is
//! [`Streams::wait_oldest`], the last resort before out-of-memory, and it waits
//! on single fences, never on the device.

use crate::driver::{Driver, Stream};
use crate::error::Result;
use crate::meta::MetaVec;
use crate::sync::Stamp;

struct Slot<F> {
    stream: Stream,
    /// The overflow slot ([`OVERFLOW`]): its fences are of many streams,
    /// one per free, each closing its own epoch.
    shared: bool,
    /// Epoch stamped on frees now. Invariant: `completed < open`.
    open: u64,
    /// Every epoch `<= completed` is done.
    completed: u64,
    /// Fences recorded and not yet seen complete, oldest first: (epoch closed, fence).
    fences: MetaVec<(u64, F)>,
}

/// Most streams with a slot of their own (stamps keep a slot in 16 bits,
/// and slot 0 is no stream's).
pub const MAX_SLOTS: usize = u16::MAX as usize - 1;
/// The slot of frees on streams seen after [`MAX_SLOTS`] others: each
/// such free records a fence on its stream at once and closes an epoch of
/// this slot, so no allocation counts as ordered after it.
pub const OVERFLOW: u16 = u16::MAX;
/// The stream value the overflow slot holds (a placeholder: `slot` never
/// matches the overflow slot).
const NO_STREAM: Stream = Stream(u64::MAX);
/// The slot an allocation on a stream past [`MAX_SLOTS`] gets: no stamp
/// has it, so the allocation takes only memory whose fences completed.
pub const NO_SLOT: u16 = 0;

/// The stream slots of one arena.
pub struct Streams<F> {
    slots: MetaVec<Slot<F>>,
    /// Streams seen after [`MAX_SLOTS`] others (no slot of their own):
    /// [`Streams::quiesce`] waits on their work too.
    unslotted: MetaVec<Stream>,
    /// Fences recorded (driver calls), for stats.
    pub recorded: u64,
    /// Waits on single fences (OOM last resort), for stats.
    pub waits: u64,
}

impl<F> core::fmt::Debug for Streams<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Streams")
            .field("slots", &self.slots.len())
            .field("pending", &self.pending_fences())
            .finish()
    }
}

impl<F> Default for Streams<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> Slot<F> {
    /// Waits on this stream's pending fence `n` (oldest first): the work
    /// before it and before every older fence completed; drops those fences.
    fn wait_through<D: Driver<Fence = F>>(&mut self, driver: &D, n: usize) -> Result<()> {
        // The overflow slot's fences are of different streams: each one.
        let first = if self.shared { 0 } else { n };
        for i in first..=n {
            driver.wait(&self.fences[i].1)?;
        }
        self.completed = self.fences[n].0;
        for (_, f) in self.fences.drain(..=n) {
            driver.drop_fence(f);
        }
        Ok(())
    }
}

impl<F> Streams<F> {
    /// No slots yet.
    pub fn new() -> Self {
        Streams {
            slots: MetaVec::new_in(std::alloc::System),
            unslotted: MetaVec::new_in(std::alloc::System),
            recorded: 0,
            waits: 0,
        }
    }

    /// The slot of `stream` (1-based), registering it on first sight;
    /// [`NO_SLOT`] once [`MAX_SLOTS`] other streams have one (such a
    /// stream is remembered for [`Streams::quiesce`]). The overflow slot,
    /// past those, is no stream's: the look passes over it.
    #[inline]
    pub fn slot(&mut self, stream: Stream) -> u16 {
        if let Some(i) = self.slots.iter().position(|s| s.stream == stream) {
            if i + 1 != OVERFLOW as usize {
                return i as u16 + 1;
            }
        }
        self.register(stream)
    }

    /// [`Streams::slot`] of a stream seen for the first time.
    #[cold]
    #[inline(never)]
    fn register(&mut self, stream: Stream) -> u16 {
        if self.slots.len() >= MAX_SLOTS {
            if !self.unslotted.contains(&stream) {
                self.unslotted.push(stream);
            }
            return NO_SLOT;
        }
        self.slots.push(Slot {
            stream,
            shared: false,
            open: 1,
            completed: 0,
            fences: MetaVec::new_in(std::alloc::System),
        });
        self.slots.len() as u16
    }

    /// The stream of a slot.
    pub fn stream(&self, slot: u16) -> Option<Stream> {
        self.slots.get(slot as usize - 1).map(|s| s.stream)
    }

    /// The stamp a free on `slot` gets now (a slot [`Streams::slot`]
    /// gave, not [`NO_SLOT`]: see [`Streams::stamp_for`]).
    #[inline]
    pub fn stamp(&self, slot: u16) -> Stamp {
        Stamp::new(slot, self.slots[slot as usize - 1].open)
    }

    /// The stamp a free on `stream` gets now, registering the stream; for
    /// a stream without a slot of its own, a fence recorded on it now
    /// under [`OVERFLOW`] (a stamp never done if that record fails).
    pub fn stamp_for<D: Driver<Fence = F>>(&mut self, driver: &D, stream: Stream) -> Stamp {
        let slot = self.slot(stream);
        if slot != NO_SLOT {
            return self.stamp(slot);
        }
        self.overflow_stamp(driver, stream)
    }

    /// [`Streams::stamp_for`] of a stream without a slot of its own.
    #[cold]
    pub fn overflow_stamp<D: Driver<Fence = F>>(&mut self, driver: &D, stream: Stream) -> Stamp {
        if self.slots.len() == MAX_SLOTS {
            self.slots.push(Slot {
                // Never found by `slot` (it passes over the shared slot),
                // never recorded on.
                stream: NO_STREAM,
                shared: true,
                open: 1,
                completed: 0,
                fences: MetaVec::new_in(std::alloc::System),
            });
        }
        let s = &mut self.slots[OVERFLOW as usize - 1];
        match driver.record(stream) {
            Ok(f) => {
                self.recorded += 1;
                let epoch = s.open;
                s.fences.push((epoch, f));
                s.open += 1;
                Stamp::new(OVERFLOW, epoch)
            }
            // No fence: the memory is never reused elsewhere nor given back.
            Err(_) => Stamp::new(OVERFLOW, (1 << 48) - 1),
        }
    }

    /// Whether the work before `stamp` has completed (as last polled).
    #[inline]
    pub fn done(&self, stamp: Stamp) -> bool {
        stamp.is_safe()
            || self
                .slots
                .get(stamp.slot() as usize - 1)
                .is_none_or(|s| s.completed >= stamp.epoch())
    }

    /// Fences recorded and not yet seen complete.
    pub fn pending_fences(&self) -> usize {
        self.slots.iter().map(|s| s.fences.len()).sum()
    }

    /// Number of stream slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Whether no stream was seen yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl<F> Streams<F> {
    /// Makes sure a fence covering `stamp` was recorded (records one and
    /// closes the epoch if not).
    pub fn ensure_fence<D: Driver<Fence = F>>(&mut self, driver: &D, stamp: Stamp) -> Result<()> {
        if stamp.is_safe() {
            return Ok(());
        }
        let Some(s) = self.slots.get_mut(stamp.slot() as usize - 1) else {
            return Ok(());
        };
        if s.open == stamp.epoch() && !s.shared {
            let f = driver.record(s.stream)?;
            self.recorded += 1;
            s.fences.push((s.open, f));
            s.open += 1;
        }
        Ok(())
    }

    /// Queries the oldest fences of every slot (never blocks).
    pub fn poll<D: Driver<Fence = F>>(&mut self, driver: &D) {
        for s in self.slots.iter_mut() {
            let mut n = 0;
            for (epoch, f) in s.fences.iter() {
                match driver.is_complete(f) {
                    Ok(true) => {
                        s.completed = *epoch;
                        n += 1;
                    }
                    _ => break,
                }
            }
            for (_, f) in s.fences.drain(..n) {
                driver.drop_fence(f);
            }
        }
    }

    /// Waits on the oldest pending fence of each slot (last resort before
    /// out-of-memory). Returns whether there was anything to wait on.
    pub fn wait_oldest<D: Driver<Fence = F>>(&mut self, driver: &D) -> Result<bool> {
        let mut any = false;
        for s in self.slots.iter_mut() {
            if !s.fences.is_empty() {
                s.wait_through(driver, 0)?;
                self.waits += 1;
                any = true;
            }
        }
        Ok(any)
    }

    /// Waits on the fence that covers `stamp` (and drops the older ones of
    /// its stream, which completed before it): only that stream's work, not
    /// the others'. Returns whether such a fence was recorded to wait on.
    pub fn wait_for<D: Driver<Fence = F>>(&mut self, driver: &D, stamp: Stamp) -> Result<bool> {
        if stamp.is_safe() {
            return Ok(false);
        }
        let Some(s) = self.slots.get_mut(stamp.slot() as usize - 1) else {
            return Ok(false);
        };
        let Some(n) = s
            .fences
            .iter()
            .position(|(epoch, _)| *epoch >= stamp.epoch())
        else {
            return Ok(false);
        };
        s.wait_through(driver, n)?;
        self.waits += 1;
        Ok(true)
    }

    /// Records a fence on every slot's stream and waits on each: the work
    /// queued on this arena's streams so far has completed afterwards. Used
    /// before giving back pages that live blocks still hold (sleep); it
    /// waits on those streams' fences only, never on the device.
    pub fn quiesce<D: Driver<Fence = F>>(&mut self, driver: &D) -> Result<()> {
        for s in self.slots.iter_mut() {
            if s.shared {
                // Streams without a slot: the fences of their frees.
                if let Some(n) = s.fences.len().checked_sub(1) {
                    s.wait_through(driver, n)?;
                    self.waits += 1;
                }
                continue;
            }
            let f = driver.record(s.stream)?;
            self.recorded += 1;
            driver.wait(&f)?;
            self.waits += 1;
            driver.drop_fence(f);
            s.completed = s.open;
            s.open += 1;
            for (_, f) in s.fences.drain(..) {
                driver.drop_fence(f);
            }
        }
        // Streams without a slot: their allocations' work too.
        for &stream in self.unslotted.iter() {
            let f = driver.record(stream)?;
            self.recorded += 1;
            driver.wait(&f)?;
            self.waits += 1;
            driver.drop_fence(f);
        }
        Ok(())
    }

    /// Drops every fence (arena teardown).
    pub fn clear<D: Driver<Fence = F>>(&mut self, driver: &D) {
        for s in self.slots.iter_mut() {
            for (_, f) in s.fences.drain(..) {
                driver.drop_fence(f);
            }
        }
    }
}
