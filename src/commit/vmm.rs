//! The commit layer's driver calls, each counted and timed, and the two
//! compound steps everything else is built from: mapping a unit at a range
//! and taking a mapping or a unit away.

use super::Commit;
use super::pages::NIL;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::meta::MetaVec;

/// Attempts at an unmap that must not be left undone (sleep, teardown,
/// the undo of a failed commit): a refusal is tried again at once.
pub(super) const UNMAP_TRIES: u32 = 3;

impl<D: Driver> Commit<D> {
    #[inline]
    pub(super) fn va(&self, page: u64) -> u64 {
        self.res.base() + (page << self.shift)
    }

    pub(super) fn timed<T>(&mut self, f: impl FnOnce(&D) -> Result<T>) -> Result<T> {
        let d = &self.res.driver;
        self.calls.time(|| f(d))
    }

    /// Creates a handle of `pages` pages (shareable when asked).
    pub(super) fn vmm_create(&mut self, pages: u64, shareable: bool) -> Result<D::Handle> {
        let (bytes, location) = ((pages << self.shift) as usize, self.location);
        let h = self.timed(|d| {
            if shareable {
                d.create_shareable(bytes, location)
            } else {
                d.create(bytes, location)
            }
        })?;
        self.calls.create += 1;
        Ok(h)
    }

    /// Releases a handle of `pages` pages (its mappings are gone or go with
    /// it). A release the driver refuses is kept and tried again by every
    /// later reclaim and at teardown ([`Commit::retry_releases`]); until
    /// then its pages count as committed: the memory is still held.
    pub(super) fn vmm_release(&mut self, h: D::Handle, pages: u64) {
        if self.timed(|d| d.release(h)).is_ok() {
            self.calls.release += 1;
            self.budget_give(pages);
        } else {
            self.unreleased.push((h, pages));
            self.unreleased_pages += pages;
        }
    }

    /// Tries again the releases the driver refused. Returns the pages
    /// given back.
    pub(super) fn retry_releases(&mut self) -> u64 {
        if self.unreleased.is_empty() {
            return 0;
        }
        let mut given = 0;
        let mut i = 0;
        while i < self.unreleased.len() {
            let (h, pages) = self.unreleased[i];
            if self.timed(|d| d.release(h)).is_ok() {
                self.calls.release += 1;
                self.budget_give(pages);
                self.unreleased.swap_remove(i);
                self.unreleased_pages -= pages;
                given += pages;
            } else {
                i += 1;
            }
        }
        given
    }

    /// Maps `h` (of `pages` pages) at page `first`.
    ///
    /// # Safety
    /// Pages `first..first+pages` are inside the reservation and unmapped.
    pub(super) unsafe fn vmm_map(&mut self, first: u64, pages: u64, h: D::Handle) -> Result<()> {
        let (va, bytes) = (self.va(first), (pages << self.shift) as usize);
        // SAFETY: the caller guarantees the range is ours and unmapped.
        self.timed(|d| unsafe { d.map(va, bytes, 0, h) })?;
        self.calls.map += 1;
        Ok(())
    }

    /// Sets the access list on pages `first..first+pages` (whole mappings).
    ///
    /// # Safety
    /// The range is exactly tiled by mappings of ours; lowering rights
    /// there is the caller's intent.
    pub(super) unsafe fn vmm_set_access(&mut self, first: u64, pages: u64) -> Result<()> {
        let access = core::mem::replace(&mut self.access, MetaVec::new_in(std::alloc::System));
        // SAFETY: forwarded under the caller's guarantees.
        let r = unsafe { self.vmm_set_access_with(first, pages, &access) };
        self.access = access;
        r
    }

    /// Sets `access` on pages `first..first+pages` (whole mappings).
    ///
    /// # Safety
    /// As [`Commit::vmm_set_access`].
    pub(super) unsafe fn vmm_set_access_with(
        &mut self,
        first: u64,
        pages: u64,
        access: &[crate::driver::Access],
    ) -> Result<()> {
        let (va, bytes) = (self.va(first), (pages << self.shift) as usize);
        // SAFETY: the caller guarantees the range is tiled by our mappings.
        self.timed(|d| unsafe { d.set_access(va, bytes, access) })?;
        self.calls.set_access += 1;
        Ok(())
    }

    /// Maximal runs of adjacent mapped pages: (first page, pages). Each is
    /// tiled by whole mappings.
    pub(super) fn mapped_runs(&self) -> MetaVec<(u64, u64)> {
        let mut runs: MetaVec<(u64, u64)> = MetaVec::new_in(std::alloc::System);
        self.pages.for_each_touched(|p, _, m, _| {
            if m == NIL {
                return;
            }
            match runs.last_mut() {
                Some((f, n)) if *f + *n == p => *n += 1,
                _ => runs.push((p, 1)),
            }
        });
        runs
    }

    /// Unmaps pages `first..first+pages` (whole mappings, maybe several).
    ///
    /// # Safety
    /// No live byte is there and every fence of the frees through those
    /// mappings completed: neither the host nor queued work touches them.
    pub(super) unsafe fn vmm_unmap(&mut self, first: u64, pages: u64) -> Result<()> {
        let (va, bytes) = (self.va(first), (pages << self.shift) as usize);
        // SAFETY: the caller guarantees nothing uses the range.
        self.timed(|d| unsafe { d.unmap(va, bytes) })?;
        self.calls.unmap += 1;
        Ok(())
    }

    /// Maps unit `u` at page `first` and records the mapping (not setting
    /// access yet: callers set it once over the whole range they map).
    pub(super) fn map_unit(&mut self, u: u32, first: u64) -> Result<u32> {
        let (pages, h, alias) = {
            let x = self.pool.unit(u);
            (x.pages, self.pool.handle(u), x.aliases > 0)
        };
        let Some(h) = h else {
            return Err(Error::Unsupported("a released unit cannot be mapped (bug)"));
        };
        // SAFETY: callers pass pages of the reservation whose page-table
        // entries say unmapped.
        unsafe { self.vmm_map(first, pages, h)? };
        if alias {
            self.calls.alias += 1;
        }
        let stitched = self.stitch.contains_page(first);
        let m = self.pool.add_map(u, first, stitched);
        for p in first..first + pages {
            self.pages.set_map(p, m);
        }
        // A unit in use elsewhere makes the new mapping's pages blocked
        // (outside stitched ranges, whose readiness is asked of the pool).
        if self.pool.owner(u) != NIL && !stitched {
            for p in first..first + pages {
                self.pages.set_blocked(p, true);
            }
        }
        Ok(m)
    }

    /// Unmaps mapping `m` (no live page; its frees' fences completed) and
    /// forgets it. Returns its unit.
    pub(super) fn unmap_mapping(&mut self, m: u32) -> Result<u32> {
        let (first, pages) = {
            let x = self.pool.map(m);
            debug_assert_eq!(self.pool.live_pages(m), 0, "unmapping live mapping {m}");
            (x.first, x.pages)
        };
        // SAFETY: no live byte is on the mapping and the caller checked its
        // stamps: nothing addresses the range.
        unsafe { self.vmm_unmap(first, pages)? };
        Ok(self.forget_mapping(m))
    }

    /// Forgets mapping `m`, whose pages the driver already unmapped.
    /// Returns its unit.
    pub(super) fn forget_mapping(&mut self, m: u32) -> u32 {
        let (first, pages) = {
            let x = self.pool.map(m);
            (x.first, x.pages)
        };
        for p in first..first + pages {
            self.pages.set_map(p, NIL);
        }
        self.pool.remove_map(m)
    }

    /// Takes away mapping `m`, made by a call that then failed (no live
    /// byte; nothing used it; its access may never have been set). Where
    /// the driver keeps refusing the unmap, sets the mapping's access
    /// instead: the page table must never hold a mapping that a block could
    /// be placed on and not reach. Returns whether the mapping is gone.
    pub(super) fn undo_mapping(&mut self, m: u32) -> bool {
        for _ in 0..UNMAP_TRIES {
            if self.unmap_mapping(m).is_ok() {
                return true;
            }
        }
        let (first, pages) = {
            let x = self.pool.map(m);
            (x.first, x.pages)
        };
        for _ in 0..UNMAP_TRIES {
            // SAFETY: the range is exactly mapping `m`, ours; granting the
            // arena's access list takes nothing from anyone.
            if unsafe { self.vmm_set_access(first, pages) }.is_ok() {
                break;
            }
        }
        false
    }

    /// Unmaps every mapping of idle unit `u` and releases it. Callers
    /// checked the stamps of the unit and its mappings. Returns the pages
    /// given back, or 0 if an unmap failed (the unit then stays, with the
    /// mappings that could not be removed).
    ///
    /// A stitched range that loses a mapping keeps a hole there: it still
    /// serves blocks that do not reach the hole (the page table prices the
    /// hole as unmapped), and goes when it decays.
    pub(super) fn release_unit(&mut self, u: u32) -> u64 {
        while let Some(m) = self.pool.aliases(u).next() {
            if self.unmap_mapping(m).is_err() {
                return 0;
            }
        }
        let pages = self.pool.unit(u).pages;
        if self.pool.unit(u).shared {
            self.shared_pages -= pages;
        }
        if let Some(h) = self.pool.remove_unit(u) {
            self.vmm_release(h, pages);
        }
        pages
    }
}

/// Attempts at a driver call that gives something back (a refusal is tried
/// again at once: what is not given back leaks).
const GIVE_BACK_TRIES: u32 = 3;

/// `f`, tried again up to [`GIVE_BACK_TRIES`] times while it fails.
pub(super) fn retried<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let mut r = f();
    for _ in 1..GIVE_BACK_TRIES {
        if r.is_ok() {
            break;
        }
        r = f();
    }
    r
}

#[cfg(test)]
mod tests {
    use crate::commit::testing::{PAGE, driver};
    use crate::commit::{Backing, Commit};
    use crate::driver::{Checked, Fault, FaultKind, HostDriver, Op};
    use crate::sync::Stamp;

    fn commit(d: &Checked<HostDriver>) -> Commit<&Checked<HostDriver>> {
        crate::commit::testing::commit(d, 32, (32, 0))
    }

    fn fail(d: &Checked<HostDriver>, op: Op, times: u64) {
        for nth in 1..=times {
            d.inject(Fault {
                op,
                nth,
                kind: FaultKind::DriverError,
            });
        }
    }

    /// The commit layer's counters are the driver's own: every successful
    /// create, map, access, unmap and release counted once, every refused
    /// one as failed, aliases among the maps.
    fn counted_as_the_driver_saw(c: &Commit<&Checked<HostDriver>>, d: &Checked<HostDriver>) {
        let (ours, seen) = (c.calls(), d.counts());
        assert_eq!(
            (
                ours.create,
                ours.map,
                ours.set_access,
                ours.unmap,
                ours.release
            ),
            (
                seen.create,
                seen.map,
                seen.set_access,
                seen.unmap,
                seen.release
            ),
            "{ours:?} against {seen:?}"
        );
        assert_eq!((ours.record, ours.wait), (seen.record, seen.wait));
        assert_eq!(ours.failed, seen.injected, "refused calls");
        assert!(ours.alias <= ours.map);
    }

    /// A release the driver refuses keeps its pages counted as committed
    /// (the memory is still held) and is tried again by the next reclaim;
    /// nothing leaks.
    #[test]
    fn a_refused_release_stays_committed_until_a_later_reclaim_gives_it_back() {
        let d = driver();
        {
            let mut c = commit(&d);
            c.add_live(0, 2 * PAGE, 1, Backing::Whole).unwrap();
            c.sub_live(0, 2 * PAGE, Stamp::SAFE);
            fail(&d, Op::Release, 1);
            c.trim();
            d.clear_faults();
            assert_eq!(
                (c.unit_count(), c.mapping_count()),
                (1, 0),
                "unmapped, its handle still held"
            );
            assert_eq!(c.committed(), 2 * PAGE);
            assert_eq!(d.physical_bytes(), 2 * PAGE);
            c.check_invariants();
            c.trim();
            assert_eq!(
                (c.committed(), c.unit_count()),
                (0, 0),
                "released on the next reclaim"
            );
            assert_eq!(d.physical_bytes(), 0);
            counted_as_the_driver_saw(&c, &d);
        }
        assert_eq!(d.leaks(), None);
    }

    /// A unit mapped twice whose second unmap is refused stays, with the
    /// mapping that could not go: nothing is released under a mapping, the
    /// invariants hold, and a later trim gives everything back.
    #[test]
    fn a_refused_unmap_keeps_the_unit_with_its_mapping() {
        let d = driver();
        {
            let mut c = commit(&d);
            // One idle unit at page 0, aliased at page 8 and idle again.
            c.add_live(0, PAGE, 1, Backing::Pages).unwrap();
            c.sub_live(0, PAGE, Stamp::SAFE);
            c.add_live(8 * PAGE, PAGE, 1, Backing::Pages).unwrap();
            c.sub_live(8 * PAGE, PAGE, Stamp::SAFE);
            assert_eq!((c.unit_count(), c.mapping_count()), (1, 2));
            d.inject(Fault {
                op: Op::Unmap,
                nth: 2,
                kind: FaultKind::DriverError,
            });
            assert_eq!(c.trim(), 0, "nothing given back");
            d.clear_faults();
            assert_eq!((c.unit_count(), c.mapping_count()), (1, 1));
            assert_eq!(c.committed(), PAGE);
            c.check_invariants();
            // The mapping left still serves a block, with no driver call.
            let maps = d.counts().map;
            let stays = if c.is_committed(0, PAGE) { 0 } else { 8 * PAGE };
            c.add_live(stays, PAGE, 1, Backing::Pages).unwrap();
            assert_eq!(d.counts().map, maps);
            c.sub_live(stays, PAGE, Stamp::SAFE);
            c.trim();
            assert_eq!((c.committed(), c.mapping_count()), (0, 0));
            counted_as_the_driver_saw(&c, &d);
        }
        assert_eq!(d.leaks(), None);
    }

    /// A new unit whose access the driver refuses is undone (unmapped,
    /// released): the block is refused and nothing changes. Where the unmap
    /// of that undo is refused every time as well, the mapping stays, given
    /// the access instead, so that a block placed on it can reach it: the
    /// next block there takes it with no new handle, and reads and writes
    /// its memory.
    #[test]
    fn a_refused_access_is_undone_or_left_reachable() {
        let d = driver();
        {
            let mut c = commit(&d);
            fail(&d, Op::SetAccess, 1);
            assert!(c.add_live(0, PAGE, 1, Backing::Pages).is_err());
            d.clear_faults();
            assert_eq!((c.live(), c.committed(), c.mapping_count()), (0, 0, 0));
            c.check_invariants();
            // Now the undo's unmaps are refused too (every try).
            fail(&d, Op::SetAccess, 1);
            fail(&d, Op::Unmap, super::UNMAP_TRIES as u64);
            assert!(c.add_live(0, PAGE, 1, Backing::Pages).is_err());
            d.clear_faults();
            assert_eq!(c.live(), 0);
            assert_eq!(c.mapping_count(), 1, "left behind, reachable");
            assert!(c.is_committed(0, PAGE));
            c.check_invariants();
            let creates = d.counts().create;
            c.add_live(0, PAGE, 1, Backing::Pages).unwrap();
            assert_eq!(d.counts().create, creates, "the mapping left serves");
            // SAFETY: page 0 is mapped with read-write access (the access
            // set instead of the unmap), host-visible.
            unsafe {
                let p = c.base() as *mut u8;
                p.write_bytes(0x5a, PAGE as usize);
                assert_eq!(p.add(PAGE as usize - 1).read(), 0x5a);
            }
            c.sub_live(0, PAGE, Stamp::SAFE);
            c.trim();
            assert_eq!((c.committed(), c.mapping_count()), (0, 0));
            counted_as_the_driver_saw(&c, &d);
        }
        assert_eq!(d.leaks(), None);
    }
}
