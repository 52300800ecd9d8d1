//! Buffers shared between processes: shareable buffers exported as
//! descriptors, and buffers mapped from another process's descriptors.

use super::Arena;
use crate::driver::{DevicePtr, Driver, Location, Stream};
use crate::error::{BadPointer, Error, Result};
use crate::policy::Policy;
use crate::sync::Stamp;

impl<D: Driver> Arena<D> {
    /// Reserves `len` bytes (rounded up to pages) of the buffers region and
    /// commits them in fresh shareable runs, for [`Arena::export_buffer`].
    /// Accounted as a growable buffer. May call the driver; may wait on the
    /// fences of earlier work on that range (rare).
    pub fn reserve_shared_buffer(&mut self, len: u64) -> Result<DevicePtr> {
        self.awake()?;
        let len = crate::driver::round_up(len, self.page()).ok_or(Error::ExceedsReservation {
            requested: len,
            capacity: self.buffers.capacity(),
        })?;
        let base = self.reserve_buffer(len, Policy::Grow)?;
        if let Err(e) = self
            .commit
            .pin_shared(base.offset_from(self.base_ptr()), len)
        {
            self.free_buffer(base, Policy::Grow, Stream::DEFAULT);
            return Err(e);
        }
        self.set_buffer_committed(
            base.offset_from(self.base_ptr()) - self.buffers_start,
            len,
            true,
        );
        self.account_buffer(Policy::Grow, 0, len);
        Ok(base)
    }

    /// One descriptor per run of the shared (or imported) buffer at `base`
    /// of `len` bytes: (offset in the buffer, length, descriptor).
    pub fn export_buffer(
        &self,
        base: DevicePtr,
        len: u64,
    ) -> Result<Vec<(u64, u64, std::os::fd::OwnedFd)>> {
        if !self.contains(base) {
            return Err(Self::bad(base, BadPointer::Foreign));
        }
        let len = crate::driver::round_up(len, self.page()).unwrap_or(len);
        self.commit
            .export_range(base.offset_from(self.base_ptr()), len)
    }

    /// Releases a buffer made by [`Arena::reserve_shared_buffer`] or
    /// [`Arena::import_buffer`] (`len` as given there): its runs go back once
    /// `stream`'s work on them completed, and are never reused. Other
    /// processes that imported them keep their memory. A pointer that is
    /// no such buffer of this arena (or another `len`) is left alone.
    pub fn free_shared_buffer(&mut self, base: DevicePtr, len: u64, stream: Stream) {
        let len = crate::driver::round_up(len, self.page()).unwrap_or(len);
        let Ok((o, b)) = self.buffer(base) else {
            return;
        };
        if !b.shared || b.committed != len {
            return;
        }
        self.account_buffer(Policy::Grow, len, 0);
        self.release_buffer(base, o, b, stream);
    }

    /// Maps memory exported by another process: reserves `len` bytes of the
    /// buffers region, imports each run's descriptor (offset in the buffer,
    /// length, descriptor; together they tile `0..len`), maps it with this
    /// arena's access list, and returns the base. The descriptors stay the
    /// caller's. On error nothing is left behind.
    ///
    /// # Safety
    /// Each descriptor was made by `export` of this arena's backend, for a
    /// handle of that run's length, at `location`.
    pub unsafe fn import_buffer(
        &mut self,
        len: u64,
        runs: &[(u64, u64, std::os::fd::BorrowedFd<'_>)],
        location: Location,
    ) -> Result<DevicePtr> {
        self.awake()?;
        let page = self.page();
        let mut at = 0;
        for &(off, l, _) in runs {
            if off != at || l == 0 || l % page != 0 {
                return Err(Error::Unsupported(
                    "imported runs must tile the buffer in whole pages of this arena",
                ));
            }
            at += l;
        }
        if at != len {
            return Err(Error::Unsupported(
                "imported runs must tile the buffer in whole pages of this arena",
            ));
        }
        let base = self.reserve_buffer(len, Policy::Grow)?;
        let first = base.offset_from(self.base_ptr());
        for (i, &(off, l, fd)) in runs.iter().enumerate() {
            // SAFETY: the caller guarantees that the descriptor was exported
            // by this backend for a run of `l` bytes at `location`.
            let r = unsafe { self.commit.import_at(first + off, l, fd, location) };
            if let Err(e) = r {
                for &(off, l, _) in &runs[..i] {
                    self.commit.unpin(first + off, l, Stamp::SAFE);
                }
                self.commit.collect(false);
                self.free_buffer(base, Policy::Grow, Stream::DEFAULT);
                return Err(e);
            }
        }
        self.set_buffer_committed(first - self.buffers_start, len, true);
        self.account_buffer(Policy::Grow, 0, len);
        Ok(base)
    }
}
