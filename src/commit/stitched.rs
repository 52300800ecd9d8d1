//! Blocks in stitched ranges (see [`stitch`](super::stitch)): taking a
//! cached range back, making a new one, freeing.

use super::Commit;
use crate::MetaVec;
use crate::driver::Driver;
use crate::error::{BadPointer, Error, Result};
use crate::sync::Stamp;

/// A cached range of up to `k + k / RANGE_SLACK` pages serves a block of
/// `k` pages: fewer ranges to keep (measured on the shared traces: 1/2
/// keeps 140 ranges for BERT inference where exact sizes keep 212), and no
/// memory lost (the pages past the block stay idle, free for others).
const RANGE_SLACK: u64 = 2;

impl<D: Driver> Commit<D> {
    /// Whether offset `off` lies in the stitch region.
    #[inline]
    pub fn in_stitch_region(&self, off: u64) -> bool {
        self.stitch.contains_page(off >> self.shift)
    }

    /// The stitch region: (offset, bytes).
    pub fn stitch_region(&self) -> (u64, u64) {
        let (f, n) = self.stitch.region();
        (f << self.shift, n << self.shift)
    }

    /// Bytes and count of live blocks in stitched ranges.
    pub fn stitched_live(&self) -> (u64, u64) {
        (self.stitch.live_bytes(), self.stitch.live_count())
    }

    /// Allocates `size` bytes in a stitched range for work of stream slot
    /// `slot`: a cached range of about that size whose units are all idle
    /// and usable by `slot` (no driver call), else a new range backed by
    /// idle units from anywhere and new handles for the rest. Returns the
    /// block's offset (page-aligned).
    pub fn stitch_alloc(&mut self, size: u64, slot: u16) -> Result<u64> {
        let k = size.div_ceil(self.page);
        let max = k + k / RANGE_SLACK;
        let mut cursor = (k, 0);
        while let Some((r, next)) = self.stitch.next_cached(cursor, max) {
            cursor = next;
            let first = self.stitch.range(r).first;
            // A hole makes a range unusable for this size; owners and fences
            // are asked of the pool.
            if self.pages.cost(first, first + k - 1).unmapped == 0
                && self.takeable(first, first + k - 1, slot)
            {
                self.stitch.take(r, size);
                self.account_live(first << self.shift, size);
                return Ok(first << self.shift);
            }
        }
        let now = self.clock.now_ms();
        let r = loop {
            if let Some(r) = self.stitch.make(k, now) {
                break r;
            }
            // The region is full: the least recently used cached range goes.
            if !self.evict_range() {
                return Err(Error::AddressSpace {
                    requested: size,
                    reserved: self.stitch_region().1,
                });
            }
        };
        let first = self.stitch.range(r).first;
        // In use while it is backed, so that the out-of-memory ladder leaves
        // it alone.
        self.stitch.take(r, size);
        let off = first << self.shift;
        if let Err(e) = self.back(first, first + k - 1, off, size, slot, super::Backing::Pages) {
            self.stitch.put(r, now);
            self.stitch.remove(r);
            return Err(e);
        }
        self.account_live(off, size);
        Ok(off)
    }

    /// Visits every live stitched block: (offset, size).
    pub fn for_each_stitched(&self, mut f: impl FnMut(u64, u64)) {
        for r in self.stitch.ids() {
            let x = self.stitch.range(r);
            if x.in_use {
                f(x.first << self.shift, x.size);
            }
        }
    }

    /// Dissolves the least recently used cached range whose mappings can go
    /// now (never blocks). Returns whether one went.
    fn evict_range(&mut self) -> bool {
        let mut ids: MetaVec<(u64, u32)> = MetaVec::new_in(std::alloc::System);
        for r in self.stitch.ids() {
            let x = self.stitch.range(r);
            if !x.in_use {
                ids.push((x.last_used, r));
            }
        }
        ids.sort_unstable();
        ids.into_iter().any(|(_, r)| self.dissolve_range(r))
    }

    /// The size of the live stitched block at `off`, if any.
    pub fn stitch_size(&self, off: u64) -> Option<u64> {
        if off & (self.page - 1) != 0 {
            return None;
        }
        let r = self.stitch.at(off >> self.shift)?;
        let x = self.stitch.range(r);
        x.in_use.then_some(x.size)
    }

    /// Frees the stitched block at `off`, last used on the stream of
    /// `stamp`; its range stays cached with its mappings. Returns its size.
    pub fn stitch_free(&mut self, off: u64, stamp: Stamp) -> Result<u64> {
        let p = off >> self.shift;
        let r = match self.stitch.at(p) {
            Some(r) if off & (self.page - 1) == 0 => r,
            _ => {
                // Inside a range: an interior pointer; elsewhere nothing
                // was ever handed out there (or its range is long gone).
                let kind = if self.stitch.containing(p).is_some() {
                    BadPointer::Interior
                } else {
                    BadPointer::Foreign
                };
                return Err(Error::BadPointer {
                    addr: self.res.base() + off,
                    kind,
                });
            }
        };
        if !self.stitch.range(r).in_use {
            return Err(Error::BadPointer {
                addr: self.res.base() + off,
                kind: BadPointer::DoubleFree,
            });
        }
        let now = self.clock.now_ms();
        let size = self.stitch.put(r, now);
        self.sub_live(off, size, stamp);
        Ok(size)
    }
}
