//! Scratch ranges in the buffers region: one reserved range with a bump
//! cursor. [`Bump`] plans where each allocation goes, how far ahead to
//! commit and what a reset keeps; the pages are committed and given back
//! here, and the bytes bumped are counted through the cursor the arena
//! tracks ([`Arena::track_scratch`]).
//!
//! A bump below [`ScratchRange::fast_end`] needs no arena: the scratch
//! arena users hold (`Scratch`, in the api layer) does it on its lock-free
//! fast path, over a copy of the range, and comes here for the rest.

use core::sync::atomic::Ordering::Relaxed;

use super::{Arena, ScratchCursor};
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::policy::scratch::{Bump, Place};

/// Committed bytes a scratch arena keeps across resets unless configured.
pub const DEFAULT_RETAIN: u64 = 64 << 20;
/// Most bytes committed ahead of an allocation unless configured.
pub const DEFAULT_COMMIT_AHEAD: u64 = 1 << 30;

/// Settings of a scratch arena; `ScratchConfig::default()` is what
/// `Scratch::new` (in `api`) uses.
///
/// ```
/// use gpu_arena::{SharedArena, Scratch, ScratchConfig, Kind, ArenaConfig};
/// use gpu_arena::driver::HostDriver;
/// let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
/// let scratch = Scratch::with_config(&arena, ScratchConfig {
///     max: 1 << 30,      // reserve 1 GiB of address space
///     retain: 8 << 20,   // keep 8 MiB committed across resets
///     ..ScratchConfig::default()
/// })?;
/// assert_eq!(scratch.reserved_bytes(), 1 << 30);
/// assert_eq!(scratch.committed_bytes(), 0);
/// # Ok::<(), gpu_arena::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchConfig {
    /// Bytes of address space to reserve (rounded up to pages): the most
    /// the scratch arena can ever hold between two resets. 0 (the default):
    /// an eighth of the arena's buffers region not reserved yet (so every
    /// further scratch arena still finds room), halved while no free range
    /// holds it.
    pub max: u64,
    /// Committed bytes kept across resets (rounded up to pages); the rest
    /// is given back on reset, once the device's work on it completed.
    pub retain: u64,
    /// Bytes committed at creation (as `bumpalo::Bump::with_capacity`).
    pub capacity: u64,
    /// Most bytes committed beyond an allocation's end when the scratch
    /// arena grows (growth doubles the committed bytes, up to this much ahead).
    pub commit_ahead: u64,
    /// The allocation limit at creation (see
    /// `Scratch::set_allocation_limit` in `api`).
    pub allocation_limit: Option<usize>,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            max: 0,
            retain: DEFAULT_RETAIN,
            capacity: 0,
            commit_ahead: DEFAULT_COMMIT_AHEAD,
            allocation_limit: None,
        }
    }
}

/// A scratch range of the buffers region: its base and the bump policy's
/// state. Made by [`Arena::reserve_scratch`]; its slow path
/// ([`Arena::scratch_alloc`]), reset ([`Arena::reset_scratch`]) and release
/// ([`Arena::free_scratch`]) are the arena's. A plain value: its owner keeps
/// it beside the cursor, outside the arena's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchRange {
    base: DevicePtr,
    bump: Bump,
}

impl ScratchRange {
    /// The base address; stable for the range's life.
    pub fn base(&self) -> DevicePtr {
        self.base
    }
    /// Bytes of address space reserved: the most the range holds between
    /// two resets.
    pub fn max(&self) -> u64 {
        self.bump.max
    }
    /// Bytes of physical memory committed (from the base).
    pub fn committed(&self) -> u64 {
        self.bump.committed
    }
    /// Resets so far.
    pub fn generation(&self) -> u64 {
        self.bump.generation
    }
    /// The most bytes (cursor offset, padding included) allocated between
    /// two resets, or `None`.
    pub fn allocation_limit(&self) -> Option<u64> {
        (self.bump.limit != u64::MAX).then_some(self.bump.limit)
    }
    /// Sets the allocation limit (`None`: no limit but the reservation).
    pub fn set_allocation_limit(&mut self, limit: Option<u64>) {
        self.bump.limit = limit.unwrap_or(u64::MAX);
    }
    /// The end (address) of what a bump may hand out without the arena:
    /// committed memory under the allocation limit.
    #[inline]
    pub fn fast_end(&self) -> DevicePtr {
        self.base.byte_add(self.bump.fast_end())
    }
    /// Whether `addr` lies in the range: one range check (the range is
    /// contiguous and never moves).
    #[inline]
    pub fn contains(&self, addr: DevicePtr) -> bool {
        addr.addr().wrapping_sub(self.base.addr()) < self.bump.max
    }
}

impl<D: Driver> Arena<D> {
    /// Reserves a scratch range of the buffers region with `config`'s
    /// settings, counted through `cursor` (set to the base here, tracked
    /// until [`Arena::free_scratch`]). Reserves address space, and commits
    /// `config.capacity` bytes (driver calls) when it is not 0; on error
    /// nothing is left behind.
    pub fn reserve_scratch(
        &mut self,
        config: &ScratchConfig,
        cursor: &ScratchCursor,
    ) -> Result<ScratchRange> {
        if config.max != 0 && config.capacity > config.max {
            return Err(Error::Config(
                "scratch capacity must not exceed its max (0: the default max)",
            ));
        }
        let page = self.page();
        let (base, max) = if config.max != 0 {
            (
                self.reserve_buffer(config.max, Policy::Scratch)?,
                config.max,
            )
        } else {
            let least = config.capacity.max(page);
            let mut max = (self.buffers_space().1 / 8).max(least);
            loop {
                match self.reserve_buffer(max, Policy::Scratch) {
                    Ok(base) => break (base, max),
                    Err(Error::AddressSpace { .. }) if max / 2 >= least => max /= 2,
                    Err(e) => return Err(e),
                }
            }
        };
        cursor.store(base.addr(), Relaxed);
        // A clone of an `Arc`: no allocation under the arena's lock.
        self.track_scratch(base, cursor.clone());
        let mut bump = Bump::new(base.addr(), max, page);
        bump.retain = config.retain;
        bump.commit_ahead = config.commit_ahead;
        bump.limit = config.allocation_limit.map_or(u64::MAX, |l| l as u64);
        if config.capacity > 0 {
            let to = bump.min_commit(config.capacity);
            if let Err(e) = self.commit_buffer(base, 0, to) {
                self.free_buffer(base, Policy::Scratch, Stream::DEFAULT);
                return Err(e);
            }
            bump.committed = to;
        }
        Ok(ScratchRange { base, bump })
    }

    /// Places `size` bytes (more than zero) aligned to `align` (a power of
    /// two) in `range` whose cursor is at `cursor` (an address in it),
    /// committing ahead of them where needed (see [`Bump::grow_target`]; only
    /// what they need where memory is short). Returns their (start, end)
    /// addresses: the caller moves its cursor to `end`. On error `range` is
    /// unchanged. May call the driver.
    pub fn scratch_alloc(
        &mut self,
        range: &mut ScratchRange,
        cursor: DevicePtr,
        size: u64,
        align: u64,
    ) -> Result<(DevicePtr, DevicePtr)> {
        self.awake()?;
        let cursor = cursor.offset_from(range.base);
        let b = range.bump;
        let (start, end) = match b.place(cursor, size, align) {
            Place::At { start, end } => (start, end),
            Place::Commit {
                start,
                end,
                commit_to,
            } => {
                self.commit_scratch(range, end, commit_to)?;
                (start, end)
            }
            Place::OverLimit { .. } => {
                return Err(Error::ScratchLimit {
                    requested: size,
                    allocated: cursor,
                    limit: b.limit,
                });
            }
            Place::Full { .. } => {
                return Err(Error::ScratchFull {
                    requested: size,
                    allocated: cursor,
                    max: b.max,
                });
            }
        };
        Ok((range.base.byte_add(start), range.base.byte_add(end)))
    }

    /// Commits `range` up to `target` (offset), or, where that fails for
    /// want of memory, up to the page holding `end`.
    fn commit_scratch(&mut self, range: &mut ScratchRange, end: u64, target: u64) -> Result<()> {
        let b = &mut range.bump;
        let least = b.min_commit(end);
        let to = match self.commit_buffer(range.base, b.committed, target) {
            Ok(()) => target,
            Err(Error::OutOfMemory(_)) if least < target => {
                self.commit_buffer(range.base, b.committed, least)?;
                least
            }
            Err(e) => return Err(e),
        };
        self.note_peak();
        b.committed = to;
        Ok(())
    }

    /// Forgets every allocation of `range`: moves `cursor` back to the
    /// base, keeps [`ScratchConfig::retain`] bytes committed and gives the
    /// rest back once `stream`'s work on it completed (while the arena is
    /// asleep the pages stay as they are, restored on wake). May call the
    /// driver.
    pub fn reset_scratch(
        &mut self,
        range: &mut ScratchRange,
        cursor: &ScratchCursor,
        stream: Stream,
    ) {
        let b = &mut range.bump;
        let keep = b.keep();
        self.note_peak();
        if keep < b.committed
            && self
                .decommit_buffer(range.base, keep, b.committed, stream)
                .is_ok()
        {
            b.committed = keep;
        }
        cursor.store(range.base.addr(), Relaxed);
        b.reset();
    }

    /// Gives `range` back (once), its memory last used on `stream`: its
    /// committed pages go once that stream's work on them completed, its
    /// cursor is no longer tracked, its addresses return to the buffers
    /// region.
    pub fn free_scratch(&mut self, range: ScratchRange, stream: Stream) {
        self.free_buffer(range.base, Policy::Scratch, stream);
    }
}
