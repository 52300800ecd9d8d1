//! Growable ranges in the buffers region: a maximum reserved once, pages
//! committed at the end as the length grows and given back past it as it
//! shrinks ([`Grow`] plans each resize), the length counted as the grow
//! policy's live bytes. `GrowBuffer` (api) is the handle users hold.

use super::Arena;
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::policy::grow::{Grow, Resize};

/// A growable range of the buffers region: its base and the grow policy's
/// state. Made by [`Arena::reserve_grow`], resized by
/// [`Arena::resize_grow`], given back by [`Arena::free_grow`].
#[derive(Debug, PartialEq, Eq)]
pub struct GrowRange {
    base: DevicePtr,
    state: Grow,
}

impl GrowRange {
    /// The base address; stable for the range's life.
    pub fn base(&self) -> DevicePtr {
        self.base
    }
    /// Current length.
    pub fn len(&self) -> u64 {
        self.state.len
    }
    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.state.len == 0
    }
    /// Bytes committed (the length rounded up to pages).
    pub fn committed(&self) -> u64 {
        self.state.committed
    }
    /// The reserved maximum (whole pages; 0 once given back).
    pub fn max(&self) -> u64 {
        self.state.max
    }
}

impl<D: Driver> Arena<D> {
    /// Reserves `max` bytes (rounded up to pages) of the buffers region for
    /// a growable range of length 0. Reserves address space only (no driver
    /// call).
    pub fn reserve_grow(&mut self, max: u64) -> Result<GrowRange> {
        let page = self.page();
        let base = self.reserve_buffer(max, Policy::Grow)?;
        let max = crate::driver::round_up(max, page).unwrap_or(max);
        Ok(GrowRange {
            base,
            state: Grow::new(max),
        })
    }

    /// Grows or shrinks `range` to `len` bytes: commits pages at the end,
    /// or gives back (once `stream`'s work on them completed) the whole
    /// pages past it. On error the range is unchanged. May call the driver.
    pub fn resize_grow(&mut self, range: &mut GrowRange, len: u64, stream: Stream) -> Result<()> {
        self.awake()?;
        self.check_grow(range)?;
        match range.state.plan(len, self.page(), 0) {
            Resize::TooLarge => {
                return Err(Error::GrowBeyondMax {
                    requested: len,
                    max: range.state.max,
                });
            }
            Resize::Commit { from, to } => {
                self.commit_buffer(range.base, from, to)?;
                range.state.committed = to;
            }
            Resize::Decommit { from, to } => {
                self.decommit_buffer(range.base, from, to, stream)?;
                range.state.committed = from;
            }
            Resize::InPlace => {}
        }
        self.account_buffer(Policy::Grow, range.state.len, len);
        range.state.len = len;
        Ok(())
    }

    /// Gives `range` back, its memory last used on `stream`: its length
    /// leaves the stats, its committed pages go once that stream's work on
    /// them completed, its addresses return to the buffers region. The
    /// range is left empty (maximum 0), and giving it back again does
    /// nothing.
    pub fn free_grow(&mut self, range: &mut GrowRange, stream: Stream) {
        if range.state.max == 0 || self.check_grow(range).is_err() {
            return;
        }
        self.account_buffer(Policy::Grow, range.state.len, 0);
        self.free_buffer(range.base, Policy::Grow, stream);
        range.state = Grow::new(0);
    }

    /// Whether `range` is a growable range of this arena (not another's).
    fn check_grow(&self, range: &GrowRange) -> Result<()> {
        if range.state.max == 0 {
            return Ok(()); // given back: only `len` 0 fits, and changes nothing
        }
        match self.buffer(range.base)? {
            (_, b)
                if b.policy == Policy::Grow
                    && !b.shared
                    && b.committed == range.state.committed =>
            {
                Ok(())
            }
            _ => Err(Error::BadPointer {
                addr: range.base,
                kind: crate::error::BadPointer::Foreign,
            }),
        }
    }
}
