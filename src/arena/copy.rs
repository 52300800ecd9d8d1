//! Copies between host memory and a live block, checked against the block.

use super::Arena;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ptr::DevicePtr;

impl<D: Driver> Arena<D> {
    /// Copies `src` into the live block at `dst` (a pointer [`Arena::alloc`]
    /// returned); done on return. Refused with [`Error::BadCopy`] when no
    /// live block starts at `dst` or `src` is longer than the block, and
    /// with [`Error::Asleep`] while the arena sleeps.
    ///
    /// # Safety
    /// Nothing else reads or writes the copied bytes meanwhile: no queued
    /// device work (it is not waited for; synchronize its streams first)
    /// and, on host-visible memory, no host reference into the block (a
    /// collection allocated through [`allocator_api2::alloc::Allocator`]
    /// owns its buffer).
    ///
    /// ```
    /// use gpu_arena::{Arena, ArenaConfig, Kind};
    /// use gpu_arena::driver::HostDriver;
    /// let driver = HostDriver::new()?;
    /// let mut arena = Arena::new(&driver, Kind::Device(0), ArenaConfig::default())?;
    /// let p = arena.alloc(8, 8)?;
    /// let mut back = [0u8; 8];
    /// // SAFETY: the block was just allocated; nothing else uses it.
    /// unsafe {
    ///     arena.write(p, &[1, 2, 3, 4, 5, 6, 7, 8])?;
    ///     arena.read(p, &mut back)?;
    ///     assert!(arena.write(p, &[0u8; 4096]).is_err()); // longer than the block
    /// }
    /// assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub unsafe fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let off = self.copy_range(dst, src.len())?;
        // SAFETY: off..off + src.len() lies in a live block of this awake
        // arena (committed); the caller guarantees nothing else uses it.
        unsafe { self.commit.write_at(off, src) }
    }

    /// Copies the start of the live block at `src` into `dst`; done on
    /// return. Refused as [`Arena::write`] is.
    ///
    /// # Safety
    /// Nothing writes the copied bytes meanwhile (see [`Arena::write`]).
    pub unsafe fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let off = self.copy_range(src, dst.len())?;
        // SAFETY: as in `write`: a committed live block of this arena that
        // nothing writes meanwhile (the caller's guarantee).
        unsafe { self.commit.read_at(off, dst) }
    }

    /// The offset of the live block at `ptr` if `len` bytes fit in it.
    fn copy_range(&self, ptr: DevicePtr, len: usize) -> Result<u64> {
        self.awake()?;
        let block = self.block_size(ptr).unwrap_or(0);
        if block == 0 || len as u64 > block {
            return Err(Error::BadCopy {
                addr: ptr,
                len: len as u64,
                block,
            });
        }
        Ok(self.off_of(ptr))
    }
}
