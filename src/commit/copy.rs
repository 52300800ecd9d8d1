//! Copies between host memory and committed pages of the reservation, for
//! the arena's typed device containers (the driver's synchronous copy on
//! the default stream).

use super::Commit;
use crate::driver::Driver;
use crate::driver::Stream;
use crate::error::Result;

impl<D: Driver> Commit<D> {
    /// Copies `src` to the bytes at `off..off + src.len()`; done on return.
    ///
    /// # Safety
    /// The range lies in committed pages that no queued work uses.
    pub unsafe fn write_at(&self, off: u64, src: &[u8]) -> Result<()> {
        // SAFETY: the caller guarantees the destination; the source is a
        // host slice of the same length, which cannot overlap it.
        unsafe {
            self.res.driver.copy(
                self.res.base() + off,
                src.as_ptr() as u64,
                src.len(),
                Stream::DEFAULT,
            )
        }
    }

    /// Copies the bytes at `off..off + dst.len()` into `dst`; done on return.
    ///
    /// # Safety
    /// The range lies in committed pages that no queued work writes.
    pub unsafe fn read_at(&self, off: u64, dst: &mut [u8]) -> Result<()> {
        // SAFETY: the caller guarantees the source; the destination is a
        // host slice of the same length, which cannot overlap it.
        unsafe {
            self.res.driver.copy(
                dst.as_mut_ptr() as u64,
                self.res.base() + off,
                dst.len(),
                Stream::DEFAULT,
            )
        }
    }
}
