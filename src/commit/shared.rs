//! Shared units: handles created shareable (to export to other processes)
//! or imported from another process. They are never reused once empty
//! (another process may still see their memory) and never aliased: they go
//! back as soon as the fences of their frees completed, whatever the decay
//! says, and a range that needs fresh memory never takes them.

use std::os::fd::{BorrowedFd, OwnedFd};

use super::Commit;
use super::pages::NIL;
use super::pool::Fenced;
use crate::driver::{Driver, Location};
use crate::error::{Error, Result};
use crate::meta::MetaVec;

impl<D: Driver> Commit<D> {
    /// Bytes committed in shared units.
    pub fn shared_bytes(&self) -> u64 {
        self.shared_pages << self.shift
    }

    /// Whether a shared unit still holds live bytes (a shared or imported
    /// buffer is alive). Such an arena cannot sleep: its memory is seen by
    /// another process, and recommitting it on wake would cut the sharing.
    pub fn has_live_shared(&self) -> bool {
        self.shared_pages > 0
            && self
                .pool
                .unit_ids()
                .any(|u| self.pool.unit(u).shared && self.pool.owner(u) != NIL)
    }

    /// Whether pages `a..=b` can be cleared for fresh shared units: no live
    /// byte on them, nor on any page of a mapping reaching into them (such
    /// a mapping goes whole: the driver unmaps whole handles only).
    fn clearable_for_shared(&self, a: u64, b: u64) -> bool {
        let live = |from: u64, to: u64| (from..=to).any(|p| self.pages.live(p) > 0);
        if live(a, b) {
            return false;
        }
        let mut p = a;
        while let Some((_, m)) = self.pages.next_mapped(p, b) {
            let x = self.pool.map(m);
            let last = x.first + x.pages - 1;
            if (x.first < a && live(x.first, a - 1)) || (last > b && live(b + 1, last)) {
                return false;
            }
            p = last + 1;
        }
        true
    }

    /// Removes every mapping reaching into pages `a..=b` (none may hold
    /// live memory, inside the range or past it), waiting on their fences
    /// if need be, so that fresh shared units can go there holding nothing
    /// of earlier owners. Refused, it changes nothing.
    fn clear_for_shared(&mut self, a: u64, b: u64) -> Result<()> {
        if !self.clearable_for_shared(a, b) {
            return Err(Error::Unsupported(
                "the range for a shared buffer holds live memory, or a mapping reaching \
                 into it does: free that memory or share another range",
            ));
        }
        let mut p = a;
        while let Some((_, m)) = self.pages.next_mapped(p, b) {
            let next = self.pool.map(m).first + self.pool.map(m).pages;
            let unit = self.pool.map(m).unit;
            self.settle_fenced(Fenced::Unit(unit))?;
            let u = self.unmap_mapping(m)?;
            self.drop_if_orphan_shared(u);
            p = next;
        }
        Ok(())
    }

    /// Gives back shared unit `u`, made for a range that then failed: at
    /// once, or, where the driver refuses an unmap, among the shared units
    /// waiting to go back (never reused), which the reclaimer tries again.
    fn give_back_shared(&mut self, u: u32) {
        if self.release_unit(u) == 0 {
            self.shared_pending.push(u);
        }
    }

    /// [`Commit::pin`] for memory to share with other processes: the pages
    /// of `off..off+len` (page-aligned) are committed in fresh shareable
    /// units lying wholly inside the range (up to `max_run` each), so that
    /// [`Commit::export_range`] hands out exactly this memory. Mappings left
    /// in the range by earlier owners go first (after a wait on their
    /// fences if need be); live memory there is refused.
    pub fn pin_shared(&mut self, off: u64, len: u64) -> Result<()> {
        if off & (self.page - 1) != 0 || len & (self.page - 1) != 0 || len == 0 {
            return Err(Error::Unsupported(
                "shared ranges must start and end on page boundaries",
            ));
        }
        let (a, b) = self.span(off, len);
        self.clear_for_shared(a, b)?;
        if self.config.limit != u64::MAX
            && self.committed() - self.idle_bytes() + len > self.config.limit
        {
            return Err(Error::oom(self.oom_report(len)));
        }
        let max = self.config.max_run >> self.shift;
        let mut made: MetaVec<u32> = MetaVec::new_in(std::alloc::System);
        let mut p = a;
        let r = loop {
            if p > b {
                // SAFETY: a..=b is tiled by the mappings just made.
                break unsafe { self.vmm_set_access(a, b - a + 1) };
            }
            let n = max.min(b + 1 - p);
            if !self.budget_try_take(n) {
                break Err(Error::oom(self.oom_report(n << self.shift)));
            }
            let created = self.vmm_create(n, true);
            if created.is_err() {
                self.budget_give(n);
            }
            let r = created.and_then(|h| {
                let now = self.clock.now_ms();
                let u = self.pool.add_unit(h, n, true, now);
                self.shared_pages += n;
                made.push(u);
                self.map_unit(u, p)
            });
            if let Err(e) = r {
                break Err(e);
            }
            p += n;
        };
        // Counted at its height, even where the units go back at once.
        self.peak_committed = self.peak_committed.max(self.committed());
        if let Err(e) = r {
            for u in made {
                self.give_back_shared(u);
            }
            return Err(e);
        }
        self.account_live(off, len);
        Ok(())
    }

    /// One descriptor per unit of `off..off+len` (a range pinned by
    /// [`Commit::pin_shared`] or [`Commit::adopt`]): (offset from `off`,
    /// length, descriptor), in address order. Refuses a range whose pages
    /// are not all in shared units lying inside it: only the intended memory
    /// is ever exported.
    pub fn export_range(&self, off: u64, len: u64) -> Result<Vec<(u64, u64, OwnedFd)>> {
        if len == 0 || off & (self.page - 1) != 0 || len & (self.page - 1) != 0 {
            return Err(Error::Unsupported(
                "exported ranges must be nonempty and start and end on page boundaries",
            ));
        }
        let (a, b) = self.span(off, len);
        let not_shared = || {
            Error::Unsupported(
                "the range is not wholly in shared runs: create the buffer shareable to export it",
            )
        };
        let mut out = Vec::new();
        let mut p = a;
        while p <= b {
            let m = self.pages.map(p);
            if m == NIL {
                return Err(not_shared());
            }
            let x = self.pool.map(m);
            let unit = self.pool.unit(x.unit);
            if !unit.shared || x.first != p || x.first + x.pages - 1 > b {
                return Err(not_shared());
            }
            let Some(h) = self.pool.handle(x.unit) else {
                return Err(not_shared());
            };
            let fd = self.res.driver.export(h)?;
            out.push(((p - a) << self.shift, x.pages << self.shift, fd));
            p += x.pages;
        }
        Ok(out)
    }

    /// Takes `handle` (imported from another process, `len` bytes, now owned
    /// here) into the pool as a shared unit at `off` (page-aligned), mapped
    /// with this arena's access list and pinned like [`Commit::pin`].
    /// Mappings in the way go first; live memory there is refused. On error
    /// the handle has been released.
    pub fn adopt(&mut self, off: u64, len: u64, handle: D::Handle) -> Result<()> {
        let page = self.page;
        let bad = off & (page - 1) != 0 || len == 0 || len & (page - 1) != 0;
        let r = if bad || off + len > self.res.size() {
            Err(Error::Unsupported(
                "an imported run must be nonempty, whole pages, inside the reservation",
            ))
        } else if self.config.limit != u64::MAX
            && self.committed() - self.idle_bytes() + len > self.config.limit
        {
            Err(Error::oom(self.oom_report(len)))
        } else {
            let (a, b) = self.span(off, len);
            self.clear_for_shared(a, b)
        };
        // The handle counts as made from here (a create, its bytes in the
        // shared budget), so that giving it back, here or later, gives back
        // what was taken: a refused import leaves the budget as it was.
        self.calls.create += 1;
        if let Some(b) = &self.budget {
            b.take(len);
        }
        if let Err(e) = r {
            self.vmm_release(handle, len >> self.shift);
            return Err(e);
        }
        let pages = len >> self.shift;
        let now = self.clock.now_ms();
        let u = self.pool.add_unit(handle, pages, true, now);
        self.shared_pages += pages;
        let first = off >> self.shift;
        let r = self.map_unit(u, first).and_then(|_| {
            // SAFETY: the range is exactly the mapping just made.
            unsafe { self.vmm_set_access(first, pages) }
        });
        self.peak_committed = self.peak_committed.max(self.committed());
        if let Err(e) = r {
            self.give_back_shared(u);
            return Err(e);
        }
        self.account_live(off, len);
        Ok(())
    }

    /// Imports `fd` (exported by another process for a handle of `len`
    /// bytes whose memory lives at `location`) and takes the handle in at
    /// `off` as [`Commit::adopt`] does. The descriptor stays the caller's.
    /// On error nothing is left behind: a handle imported is released.
    ///
    /// Calls the driver (import, map, set_access).
    ///
    /// # Safety
    /// `fd` was made by `export` of this commit's backend, for a handle of
    /// `len` bytes, at `location`.
    pub unsafe fn import_at(
        &mut self,
        off: u64,
        len: u64,
        fd: BorrowedFd<'_>,
        location: Location,
    ) -> Result<()> {
        // SAFETY: the caller guarantees the descriptor, its size and location.
        let handle = unsafe { self.res.driver.import(fd, len as usize, location) }?;
        self.adopt(off, len, handle)
    }
}

#[cfg(test)]
mod tests {
    use crate::commit::Backing;
    use crate::commit::testing::{PAGE, commit, driver, finish};
    use crate::driver::Driver;
    use crate::sync::Stamp;

    /// Memory pinned for sharing lies in shareable units inside the range,
    /// exported exactly; freed, it is never reused (another process may
    /// still see it) and goes back once the free's fence completed, not
    /// before; bad ranges are refused and change nothing.
    #[test]
    fn shared_units_are_never_reused_and_go_back_once_their_fences_complete() {
        let d = driver();
        let s = d.create_stream().unwrap();
        {
            let mut c = commit(&d, 32, (32, 0));
            let slot = c.streams.slot(s);
            assert!(c.pin_shared(512, PAGE).is_err(), "not on a page boundary");
            c.add_live(8 * PAGE, 512, slot, Backing::Pages).unwrap();
            assert!(c.pin_shared(8 * PAGE, PAGE).is_err(), "live memory there");
            assert_eq!((c.shared_bytes(), c.live()), (0, 512));
            c.pin_shared(0, 2 * PAGE).unwrap();
            assert_eq!(c.shared_bytes(), 2 * PAGE);
            assert!(c.has_live_shared());
            let parts = c.export_range(0, 2 * PAGE).unwrap();
            let (mut at, mut bytes) = (0, 0);
            for (off, len, _fd) in &parts {
                assert_eq!(*off, at, "in address order, no gap");
                at += len;
                bytes += len;
            }
            assert_eq!(bytes, 2 * PAGE);
            assert!(c.export_range(8 * PAGE, PAGE).is_err(), "not shared memory");
            // Freed while the stream runs: kept, never reused.
            d.inner().hold(s);
            c.sub_live(0, 2 * PAGE, c.streams.stamp(slot));
            assert!(!c.has_live_shared());
            assert_eq!(c.shared_bytes(), 2 * PAGE, "kept until its fence");
            assert_eq!(c.idle_bytes(), 0, "never idle for reuse");
            let creates = d.counts().create;
            c.add_live(12 * PAGE, 2 * PAGE, slot, Backing::Pages)
                .unwrap();
            assert_eq!(
                d.counts().create,
                creates + 2,
                "fresh memory, not the shared units"
            );
            assert_eq!(c.trim(), 0, "the fence is pending");
            c.check_invariants();
            d.inner().complete(s);
            c.trim();
            assert_eq!(c.shared_bytes(), 0);
            assert_eq!(c.committed(), 3 * PAGE, "the two blocks' pages");
            c.sub_live(8 * PAGE, 512, Stamp::SAFE);
            c.sub_live(12 * PAGE, 2 * PAGE, Stamp::SAFE);
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[s]);
    }

    /// A shared range that a live mapping reaches into (a buffer of one
    /// 4-page unit shrunk to its first two pages, the range on the other
    /// two) is refused and leaves that buffer mapped: clearing the range
    /// unmapped the whole mapping, under the live pages (found by review).
    /// The arena never asks for such a range (a buffer's units lie inside
    /// its own addresses); the page table refuses it on its own.
    #[test]
    fn clearing_a_shared_range_never_unmaps_a_live_neighbour() {
        use crate::error::Error;
        let d = driver();
        {
            let mut c = commit(&d, 32, (32, 0));
            c.add_live(0, 4 * PAGE, 0, Backing::Whole).unwrap();
            c.sub_live(2 * PAGE, 2 * PAGE, Stamp::SAFE);
            assert_eq!((c.unit_count(), c.mapping_count()), (1, 1));
            let e = c
                .pin_shared(2 * PAGE, 2 * PAGE)
                .expect_err("a mapping there holds live memory outside the range");
            assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
            assert!(c.is_committed(0, 4 * PAGE), "the live buffer stays mapped");
            assert_eq!(c.shared_bytes(), 0);
            c.check_invariants();
            c.sub_live(0, 2 * PAGE, Stamp::SAFE);
            // Once nothing there is live, the range is cleared and shared.
            c.pin_shared(2 * PAGE, 2 * PAGE).unwrap();
            assert_eq!(c.shared_bytes(), 2 * PAGE);
            c.check_invariants();
            c.sub_live(2 * PAGE, 2 * PAGE, Stamp::SAFE);
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        assert_eq!(d.leaks(), None);
    }

    /// A shared range whose access call fails, and whose unmaps are then
    /// refused too, leaves its fresh units waiting to go back, not held
    /// for ever: the next trim gives them back (found by review).
    #[test]
    fn a_failed_shared_pin_gives_its_units_back_later_when_the_unmap_is_refused() {
        use crate::commit::testing::refuse;
        use crate::driver::{FaultKind, Op};
        let d = driver();
        {
            let mut c = commit(&d, 32, (32, 0));
            refuse(&d, Op::SetAccess, FaultKind::DriverError, 1);
            refuse(&d, Op::Unmap, FaultKind::DriverError, 1);
            assert!(c.pin_shared(0, 2 * PAGE).is_err());
            assert_eq!(c.live(), 0);
            c.check_invariants();
            c.trim();
            assert_eq!((c.committed(), c.shared_bytes()), (0, 0), "given back");
            c.check_invariants();
        }
        assert_eq!(d.leaks(), None);
    }

    /// An import refused before it was taken in (bad range, over the limit)
    /// releases the handle and leaves the budget shared with other arenas
    /// as it was: giving back what was never taken wrapped it, and every
    /// arena sharing it then ran out of memory (found by review).
    #[test]
    fn a_refused_import_leaves_the_shared_budget_as_it_was() {
        use crate::commit::Budget;
        use crate::driver::Location;
        use crate::error::Error;
        let d = driver();
        {
            let mut c = commit(&d, 32, (32, 0));
            let budget = std::sync::Arc::new(Budget::new(u64::MAX));
            c.set_budget(budget.clone());
            c.set_limit(4 * PAGE);
            c.add_live(0, 3 * PAGE, 1, Backing::Pages).unwrap();
            assert_eq!(budget.used(), 3 * PAGE);
            let h = d
                .create_shareable(2 * PAGE as usize, Location::Device(0))
                .unwrap();
            assert!(c.adopt(512, 2 * PAGE, h).is_err(), "not on a page boundary");
            assert_eq!(budget.used(), 3 * PAGE);
            let h = d
                .create_shareable(2 * PAGE as usize, Location::Device(0))
                .unwrap();
            let e = c.adopt(8 * PAGE, 2 * PAGE, h).expect_err("over the limit");
            assert!(matches!(e, Error::OutOfMemory(_)), "{e:?}");
            assert_eq!(budget.used(), 3 * PAGE);
            // Within the limit it is taken in, and counted once.
            c.sub_live(0, 3 * PAGE, Stamp::SAFE);
            c.trim();
            assert_eq!(budget.used(), 0);
            let h = d
                .create_shareable(2 * PAGE as usize, Location::Device(0))
                .unwrap();
            c.adopt(8 * PAGE, 2 * PAGE, h).unwrap();
            assert_eq!(budget.used(), 2 * PAGE);
            c.check_invariants();
        }
        assert_eq!(d.leaks(), None);
    }
}
