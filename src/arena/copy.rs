//! Copies between host memory and a live block, checked against the block.

use super::Arena;
use crate::DevicePtr;
use crate::driver::Driver;
use crate::error::{Error, Result};

impl<D: Driver> Arena<D> {
    /// Copies `src` into the live block at `dst` (a pointer [`Arena::alloc`]
    /// returned); done on return. Refused with [`Error::BadCopy`] when no
    /// live block starts at `dst` or `src` is longer than the block, and
    /// with [`Error::Asleep`] while the arena sleeps.
    ///
    /// Work queued on other streams that uses the block is not waited for:
    /// synchronize those streams first.
    ///
    /// ```
    /// use gpu_arena::{Arena, ArenaConfig, Kind};
    /// use gpu_arena::driver::HostDriver;
    /// let driver = HostDriver::new()?;
    /// let mut arena = Arena::new(&driver, Kind::Device(0), ArenaConfig::default())?;
    /// let p = arena.alloc(8, 8)?;
    /// arena.write(p, &[1, 2, 3, 4, 5, 6, 7, 8])?;
    /// let mut back = [0u8; 8];
    /// arena.read(p, &mut back)?;
    /// assert_eq!(back, [1, 2, 3, 4, 5, 6, 7, 8]);
    /// assert!(arena.write(p, &[0u8; 4096]).is_err()); // longer than the block
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub fn write(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        let off = self.copy_range(dst, src.len())?;
        // SAFETY: off..off + src.len() lies in a live block of this awake
        // arena (committed), which the caller's queued work no longer uses.
        unsafe { self.commit.write_at(off, src) }
    }

    /// Copies the start of the live block at `src` into `dst`; done on
    /// return. Refused as [`Arena::write`] is.
    pub fn read(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        let off = self.copy_range(src, dst.len())?;
        // SAFETY: as in `write`: a committed live block of this arena.
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
