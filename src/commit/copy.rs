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

#[cfg(test)]
mod tests {
    use crate::commit::{Backing, Commit};
    use crate::driver::{Checked, HostDriver};

    /// Bytes written through `write_at` are read back by `read_at`, across
    /// a page boundary; a range with no committed page is refused (by the
    /// checked driver here, as by a GPU driver).
    #[test]
    fn bytes_written_are_read_back_across_pages() {
        let d = Checked::new(HostDriver::new().unwrap());
        let mut c = Commit::for_tests(&d, 8, (8, 0));
        let page = c.page();
        c.add_live(0, 2 * page, 1, Backing::Pages).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
        let off = page - 4096;
        // SAFETY: pages 0 and 1 are committed and no queued work uses them.
        unsafe { c.write_at(off, &data).unwrap() };
        let mut back = vec![0u8; data.len()];
        // SAFETY: as above.
        unsafe { c.read_at(off, &mut back).unwrap() };
        assert_eq!(back, data);
        // SAFETY: the checked driver refuses the range before any copy:
        // nothing is committed there.
        assert!(unsafe { c.read_at(4 * page, &mut back) }.is_err());
    }
}
