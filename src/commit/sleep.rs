//! Sleep and wake of a whole reservation: every handle goes back while the
//! page table keeps the live bytes, then the live pages are committed again
//! at the same addresses, in handles as large as `max_run` (each stitched
//! range in handles of its own).

use super::Commit;
use super::pages::NIL;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::meta::MetaVec;

impl<D: Driver> Commit<D> {
    /// Gives back every physical page while keeping the page table's live
    /// bytes: the addresses stay reserved and the pages read as asleep.
    /// Cached stitched ranges are forgotten; ranges holding blocks keep
    /// their addresses. Callers make sure no work uses the memory (they
    /// waited on the fences of its streams). Returns the bytes given back.
    pub fn sleep(&mut self) -> u64 {
        let bytes = self.drop_everything();
        self.asleep = true;
        bytes
    }

    /// Where the handle woken at live page `p` must end, at most at `end`
    /// (the end of its run of live pages): a handle never spans the edge of
    /// the stitch region, nor two stitched ranges, since a stitched range is
    /// unmapped whole when it goes, and a unit only empties whole.
    fn wake_piece_end(&self, p: u64, end: u64) -> u64 {
        let (s, n) = self.stitch.region();
        if p < s {
            return end.min(s);
        }
        if p >= s + n {
            return end;
        }
        // Every live page of the stitch region lies in a range in use.
        match self.stitch.containing(p) {
            Some(r) => {
                let x = self.stitch.range(r);
                end.min(x.first + x.pages)
            }
            None => p + 1,
        }
    }

    /// Recommits every page with live bytes at the same addresses, in runs
    /// of contiguous pages (up to `max_run` each, one `set_access` per run;
    /// cut at the stitch region's edges and between stitched ranges).
    /// On failure, gives back what it made and stays asleep. Returns the
    /// bytes committed.
    pub fn wake(&mut self) -> Result<u64> {
        if !self.asleep {
            return Ok(0);
        }
        let max = self.config.max_run >> self.shift;
        let mut made: MetaVec<u32> = MetaVec::new_in(std::alloc::System);
        let mut bytes = 0;
        let mut result = Ok(());
        'runs: for (first, pages) in self.pages.live_ranges() {
            let mut p = first;
            while p < first + pages {
                // A mapping an earlier wake could not take back (the driver
                // refused its unmap) backs its pages already.
                let left = self.pages.map(p);
                if left != NIL {
                    let x = self.pool.map(left);
                    p = x.first + x.pages;
                    continue;
                }
                let mut n = max.min(self.wake_piece_end(p, first + pages) - p);
                // Up to the next page such a mapping backs.
                if let Some(q) = (p + 1..p + n).find(|&q| self.pages.map(q) != NIL) {
                    n = q - p;
                }
                if !self.budget_try_take(n) {
                    result = Err(Error::oom(self.oom_report(n << self.shift)));
                    break 'runs;
                }
                let created = self.vmm_create(n, false);
                if created.is_err() {
                    self.budget_give(n);
                }
                let r = created.and_then(|h| {
                    let now = self.clock.now_ms();
                    let u = self.pool.add_unit(h, n, false, now);
                    made.push(u);
                    self.map_unit(u, p)
                });
                if let Err(e) = r {
                    result = Err(e);
                    break 'runs;
                }
                bytes += n << self.shift;
                p += n;
            }
            // SAFETY: first..first+pages is tiled by the mappings just made.
            if let Err(e) = unsafe { self.vmm_set_access(first, pages) } {
                result = Err(e);
                break;
            }
        }
        if let Err(e) = result {
            // Back to sleep: nothing used the new mappings.
            for u in made {
                let maps: MetaVec<u32> = {
                    let mut v = MetaVec::new_in(std::alloc::System);
                    v.extend(self.pool.aliases(u));
                    v
                };
                for m in maps {
                    self.undo_mapping(m);
                }
                if self.pool.unit(u).aliases > 0 {
                    continue;
                }
                let pages = self.pool.unit(u).pages;
                if let Some(h) = self.pool.remove_unit(u) {
                    self.vmm_release(h, pages);
                }
            }
            return Err(e);
        }
        // The live pages own their new units.
        let mut pages: MetaVec<u64> = MetaVec::new_in(std::alloc::System);
        self.pages.for_each_touched(|p, live, _, _| {
            if live > 0 {
                pages.push(p);
            }
        });
        for p in pages {
            let m = self.pages.map(p);
            debug_assert_ne!(m, NIL, "woken page {p} unmapped");
            self.pool.gain_page(m);
        }
        self.asleep = false;
        self.peak_committed = self.peak_committed.max(self.committed());
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use crate::commit::Commit;
    use crate::driver::{Driver, HostDriver};
    use crate::sync::Stamp;

    /// A wake that fails, and whose undo the driver refuses (a mapping
    /// stays on a live page), leaves the next wake able to finish once the
    /// driver works again: the mapping left behind backs its page (found
    /// by review: every later wake failed on it, the arena asleep for good).
    #[test]
    fn a_wake_after_a_failed_one_whose_undo_was_refused_succeeds() {
        use crate::commit::Backing;
        use crate::commit::testing::{PAGE, commit, driver, finish, refuse};
        use crate::driver::{Fault, FaultKind, Op};
        let d = driver();
        {
            let mut c = commit(&d, 32, (32, 0));
            c.add_live(0, PAGE, 1, Backing::Pages).unwrap();
            c.add_live(4 * PAGE, PAGE, 1, Backing::Pages).unwrap();
            c.sleep();
            d.inject(Fault {
                op: Op::Create,
                nth: 2,
                kind: FaultKind::OutOfMemory,
            });
            refuse(&d, Op::Unmap, FaultKind::DriverError, 3);
            assert!(c.wake().is_err());
            d.clear_faults();
            assert!(c.is_asleep());
            c.wake().unwrap();
            assert!(!c.is_asleep());
            c.check_invariants();
            assert!(c.is_committed(0, PAGE) && c.is_committed(4 * PAGE, PAGE));
            c.sub_live(0, PAGE, Stamp::SAFE);
            c.sub_live(4 * PAGE, PAGE, Stamp::SAFE);
            c.trim();
            assert_eq!(c.committed(), 0);
        }
        finish(&d, &[]);
    }

    /// Two stitched blocks side by side in the stitch region, woken: each
    /// range gets handles of its own, so that dissolving one range once its
    /// block is freed unmaps nothing of the other, which is still live.
    #[test]
    fn a_wake_never_joins_two_stitched_ranges_in_one_handle() {
        let d = HostDriver::new().unwrap();
        let page = d.capabilities().granularity as u64;
        let mut c = Commit::for_tests(&d, 64, (16, 32));
        let a = c.stitch_alloc(2 * page, 0).unwrap();
        let b = c.stitch_alloc(2 * page, 0).unwrap();
        assert_eq!(b, a + 2 * page, "adjacent ranges");
        c.sleep();
        c.wake().unwrap();
        c.check_invariants();
        c.stitch_free(a, Stamp::SAFE).unwrap();
        c.trim();
        c.check_invariants();
        assert!(
            c.is_committed(b, 2 * page),
            "the live block keeps its pages"
        );
        assert_eq!(c.committed(), 2 * page);
        c.stitch_free(b, Stamp::SAFE).unwrap();
        c.trim();
        assert_eq!(c.committed(), 0);
    }

    /// The same at the edge of the stitch region: a live page just before it
    /// (blocks region) and a stitched block at its first page.
    #[test]
    fn a_wake_never_joins_a_stitched_range_to_the_blocks_region() {
        let d = HostDriver::new().unwrap();
        let page = d.capabilities().granularity as u64;
        let mut c = Commit::for_tests(&d, 64, (16, 32));
        c.add_live(15 * page, page, 0, crate::commit::Backing::Pages)
            .unwrap();
        let a = c.stitch_alloc(2 * page, 0).unwrap();
        assert_eq!(a, 16 * page);
        c.sleep();
        c.wake().unwrap();
        c.stitch_free(a, Stamp::SAFE).unwrap();
        c.trim();
        c.check_invariants();
        assert!(c.is_committed(15 * page, page), "the block keeps its page");
        assert_eq!(c.committed(), page);
        c.sub_live(15 * page, page, Stamp::SAFE);
        c.trim();
        assert_eq!(c.committed(), 0);
    }
}
