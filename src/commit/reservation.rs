//! The reservation a page table covers: made on the driver (halving where
//! the size asked is refused), held together with that driver, and given
//! back when its owner goes away. [`Commit`](super::Commit) owns one: its
//! own teardown unmaps and releases everything first, then the reservation
//! is freed, so no layer above ever calls `reserve` or `free_reservation`.

use crate::driver::Driver;
use crate::error::Result;

/// A virtual address reservation and the driver it was made on. Freed
/// (`free_reservation`) when dropped: the owner unmaps everything in it
/// before that (see [`Commit`](super::Commit)'s teardown).
pub struct Reservation<D: Driver> {
    pub(super) driver: D,
    base: u64,
    size: u64,
    fell_back: bool,
}

impl<D: Driver> core::fmt::Debug for Reservation<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reservation")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &self.size)
            .field("fell_back", &self.fell_back)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Reservation<D> {
    /// Reserves `want` bytes on `driver`, the base aligned to `align` (a
    /// multiple of the driver's granularity), or to the granularity alone
    /// where the driver refuses that alignment. Where the size is refused,
    /// halves it (in whole pages) and tries again, down to `min` and never
    /// below two pages; the last refusal's error otherwise.
    ///
    /// Calls the driver: one or two `reserve` calls per size tried.
    pub fn reserve(driver: D, want: u64, min: u64, align: u64) -> Result<Self> {
        let page = driver.capabilities().granularity as u64;
        let mut size = want;
        loop {
            let aligned = driver
                .reserve(size as usize, align as usize)
                .or_else(|_| driver.reserve(size as usize, page as usize));
            match aligned {
                Ok(base) => {
                    return Ok(Reservation {
                        driver,
                        base,
                        size,
                        fell_back: size != want,
                    });
                }
                Err(e) => {
                    let next = (size / 2) / page * page;
                    if next < min.max(2 * page) || next == 0 {
                        return Err(e);
                    }
                    size = next;
                }
            }
        }
    }

    /// First address of the range.
    pub fn base(&self) -> u64 {
        self.base
    }
    /// Bytes reserved.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Whether the size asked was refused and a smaller one reserved.
    pub fn fell_back(&self) -> bool {
        self.fell_back
    }
}

impl<D: Driver> Drop for Reservation<D> {
    fn drop(&mut self) {
        // SAFETY: base and size are exactly what `reserve` returned on this
        // driver, and this is the range's only owner. Its user (a `Commit`,
        // whose own teardown runs before its fields are dropped) has
        // unmapped every mapping inside and is gone, so nothing touches the
        // range again; a mapping the driver refused to unmap makes this
        // call fail, changing nothing.
        let _ = unsafe { self.driver.free_reservation(self.base, self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::Reservation;
    use crate::driver::{Checked, HostConfig, HostDriver};

    const PAGE: u64 = 64 << 10;

    fn driver(max_reservation: u64) -> Checked<HostDriver> {
        Checked::new(
            HostDriver::with_config(HostConfig {
                granularity: PAGE as usize,
                max_reservation,
                ..Default::default()
            })
            .expect("host driver"),
        )
    }

    /// A size the driver refuses is halved in whole pages until one is
    /// accepted, and says so; below the minimum the driver's error comes
    /// back; dropping the reservation gives the range back.
    #[test]
    fn a_refused_size_is_halved_down_to_the_minimum() {
        let d = driver(40 * PAGE);
        {
            let r = Reservation::reserve(&d, 32 * PAGE, 0, PAGE).unwrap();
            assert_eq!((r.size(), r.fell_back()), (32 * PAGE, false));
            assert_eq!(r.base() % PAGE, 0);
            let r = Reservation::reserve(&d, 100 * PAGE, 16 * PAGE, PAGE).unwrap();
            assert_eq!(
                (r.size(), r.fell_back()),
                (25 * PAGE, true),
                "100, 50, 25 pages"
            );
            assert!(Reservation::reserve(&d, 100 * PAGE, 30 * PAGE, PAGE).is_err());
        }
        let c = d.counts();
        assert_eq!(c.reserve, c.free_reservation, "{c:?}");
        assert_eq!(d.leaks(), None);
    }
}
