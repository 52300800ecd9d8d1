//! Pinned host memory that holds an asleep arena's contents (offload), kept
//! between cycles because pinning memory is slow, and obtainable ahead of
//! the first sleep ([`Commit::prepare_stage`]) so that the first offload
//! runs at copy speed too.
//!
//! The stage is one host-located handle in a reservation of its own, mapped
//! with access for the host and the arena's device. Its bytes are committed
//! memory of this arena: they show in [`Commit::stage_bytes`], in the
//! stats, and its driver calls in [`Commit::calls`].

use std::time::Instant;

use super::Commit;
use super::calls::DriverCalls;
use super::vmm::retried;
use crate::driver::{Access, Driver, Location, Stream};
use crate::error::{Error, Result};

/// What obtaining pinned host memory for an offload needs to know (see
/// [`Commit::stage_need`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageNeed {
    /// Bytes (whole pages).
    pub bytes: u64,
    /// The device that copies into and out of it.
    pub device: Location,
}

/// A stage [`obtain`] made, with the driver calls that made it (or the
/// error they met), for [`Commit::adopt_stage`]: only that gives its
/// memory back later (dropped unadopted, the pinned memory stays held).
#[derive(Debug)]
#[must_use = "hand it to adopt_stage: dropped, its pinned memory is never given back"]
pub struct Obtained<H> {
    stage: Result<Stage<H>>,
    calls: DriverCalls,
    seconds: f64,
    /// A handle whose release the driver refused on the way out of a
    /// failure: the arena tries again later, as with its own.
    unreleased: Option<H>,
}

/// Obtains pinned host memory for an offload through `driver`, holding no
/// lock of the arena that will use it: pinning memory is slow (seconds for
/// tens of GiB), and the arena keeps serving allocations meanwhile. Hand
/// the result to [`Commit::adopt_stage`].
pub fn obtain<D: Driver>(driver: &D, need: StageNeed) -> Obtained<D::Handle> {
    let t = Instant::now();
    let mut calls = DriverCalls::default();
    let mut unreleased = None;
    let stage = obtain_with(driver, need, &mut calls, &mut unreleased);
    Obtained {
        stage,
        calls,
        seconds: t.elapsed().as_secs_f64(),
        unreleased,
    }
}

/// One host-located handle of `need.bytes` in a reservation of its own,
/// mapped with access for the host and `need.device`; nothing is left
/// behind on error but a handle whose release the driver refused, put in
/// `unreleased` for a later try.
fn obtain_with<D: Driver>(
    d: &D,
    need: StageNeed,
    calls: &mut DriverCalls,
    unreleased: &mut Option<D::Handle>,
) -> Result<Stage<D::Handle>> {
    let total = need.bytes;
    let va = d.reserve(total as usize, 0)?;
    let h = match calls.time(|| d.create(total as usize, Location::Host)) {
        Ok(h) => h,
        Err(e) => {
            // SAFETY: the reservation was just made and has no mapping.
            let _ = unsafe { d.free_reservation(va, total as usize) };
            return Err(e);
        }
    };
    calls.create += 1;
    let access = [
        Access::read_write(Location::Host),
        Access::read_write(need.device),
    ];
    // SAFETY: va..va+total is our fresh reservation, unmapped; then the
    // mapping just made gets access for the host and this device.
    let mapped = calls.time(|| unsafe { d.map(va, total as usize, 0, h) });
    let r = mapped.and_then(|()| {
        calls.map += 1;
        // SAFETY: as above: exactly the mapping just made.
        calls
            .time(|| unsafe { d.set_access(va, total as usize, &access) })
            .map(|()| calls.set_access += 1)
    });
    if let Err(e) = r {
        // SAFETY: our fresh reservation; the mapping, if made, is unused.
        if retried(|| unsafe { d.unmap(va, total as usize) }).is_ok() {
            calls.unmap += 1;
        }
        if calls.time(|| d.release(h)).is_ok() {
            calls.release += 1;
        } else {
            *unreleased = Some(h);
        }
        // SAFETY: as above; its one mapping is gone (or the driver
        // refuses this, changing nothing).
        let _ = retried(|| unsafe { d.free_reservation(va, total as usize) });
        return Err(e);
    }
    Ok(Stage {
        va,
        size: total,
        handle: h,
        ranges: Vec::new(),
    })
}

/// Pinned host memory of an offload.
#[derive(Debug)]
pub struct Stage<H> {
    va: u64,
    size: u64,
    handle: H,
    /// (offset in the reservation, length, offset in the stage)
    ranges: Vec<(u64, u64, u64)>,
}

impl<H> Stage<H> {
    /// Bytes copied into it.
    pub fn copied(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }
}

impl<D: Driver> Commit<D> {
    /// Pinned host bytes held for offloads (none while none was made).
    pub fn stage_bytes(&self) -> u64 {
        self.spare_stage.as_ref().map_or(0, |s| s.size) + self.held_stage_bytes
    }

    /// The device the stage must be readable and writable by.
    fn stage_device(&self) -> Location {
        match self.location {
            Location::Device(d) => Location::Device(d),
            Location::Host => Location::Device(0),
        }
    }

    /// Makes sure pinned host memory of at least `bytes` is held for the
    /// next offload, obtaining it now (the slow part of a first offload).
    /// Returns the seconds spent (0 when enough was held).
    pub fn prepare_stage(&mut self, bytes: u64) -> Result<f64> {
        let Some(need) = self.need_beyond_held(bytes) else {
            return Ok(0.0);
        };
        let t = Instant::now();
        // The smaller stage goes first: the two are never held at once.
        if let Some(old) = self.spare_stage.take() {
            self.drop_stage(old);
        }
        self.adopt_stage(obtain(&self.res.driver, need))?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Bytes an offload of the pages holding live bytes needs now.
    pub fn offload_bytes(&self) -> u64 {
        self.pages
            .live_ranges()
            .iter()
            .map(|r| r.1 << self.shift)
            .sum()
    }

    /// A stage of `bytes` for this arena, unless the stage held is at
    /// least that large (or `bytes` is 0).
    fn need_beyond_held(&self, bytes: u64) -> Option<StageNeed> {
        let held = self.spare_stage.as_ref().map_or(0, |s| s.size);
        (bytes > held).then(|| StageNeed {
            bytes: crate::driver::round_up(bytes, self.page).unwrap_or(bytes),
            device: self.stage_device(),
        })
    }

    /// The pinned host memory the next offload needs beyond what is held
    /// (`None` when the kept stage is large enough or nothing is live):
    /// what [`obtain`] must be asked for, away from this arena's lock.
    pub fn stage_need(&self) -> Option<StageNeed> {
        self.need_beyond_held(self.offload_bytes())
    }

    /// Takes a stage that [`obtain`] made away from this arena's lock: its
    /// driver calls are counted here, and it is kept for the next offload
    /// unless the stage held already is at least as large (then the
    /// smaller one goes back at once). Returns the seconds obtaining it
    /// took, or the error it met.
    pub fn adopt_stage(&mut self, obtained: Obtained<D::Handle>) -> Result<f64> {
        self.calls.add(&obtained.calls);
        if let Some(h) = obtained.unreleased {
            // Tried again by later reclaims (pinned host memory: 0 pages of
            // the device budget).
            self.unreleased.push((h, 0));
        }
        self.keep_larger_stage(obtained.stage?);
        Ok(obtained.seconds)
    }

    /// Keeps the larger of `stage` and the stage held for the next offload
    /// (the held one on a tie) and gives the other back.
    fn keep_larger_stage(&mut self, stage: Stage<D::Handle>) {
        match self.spare_stage.take() {
            Some(old) if old.size >= stage.size => {
                self.spare_stage = Some(old);
                self.drop_stage(stage);
            }
            old => {
                if let Some(old) = old {
                    self.drop_stage(old);
                }
                self.spare_stage = Some(stage);
            }
        }
    }

    /// Gives a stage's pinned memory back (its copies completed or failed).
    pub fn drop_stage(&mut self, stage: Stage<D::Handle>) {
        let (va, size) = (stage.va, stage.size as usize);
        // Each give-back step is tried again where refused once: what is
        // not given back leaks (a refused release is kept and retried by
        // later reclaims, see `vmm_release`).
        let unmapped = retried(|| {
            self.timed(|d| {
                // SAFETY: the stage is ours; its copies completed (or failed)
                // and nothing else refers to it.
                unsafe { d.unmap(va, size) }
            })
        });
        if unmapped.is_ok() {
            self.calls.unmap += 1;
        }
        // Pinned host memory is outside the device budget: 0 pages.
        self.vmm_release(stage.handle, 0);
        // SAFETY: the reservation is the stage's own and has no mapping left.
        let _ = retried(|| unsafe { self.res.driver.free_reservation(va, size) });
    }

    /// Gives the pinned memory kept for the next offload back. Returns bytes.
    pub fn drop_spare_stage(&mut self) -> u64 {
        match self.spare_stage.take() {
            Some(s) => {
                let n = s.size;
                self.drop_stage(s);
                n
            }
            None => 0,
        }
    }

    /// Copies the pages holding live bytes to pinned host memory on
    /// `stream` and waits on that copy's fence (the pages must be quiesced).
    /// Returns the stage (`None` when nothing is live) and the seconds spent
    /// obtaining pinned memory (0 when the kept stage was large enough).
    pub fn offload(&mut self, stream: Stream) -> Result<(Option<Stage<D::Handle>>, f64)> {
        let ranges = self.pages.live_ranges();
        let total: u64 = ranges.iter().map(|r| r.1 << self.shift).sum();
        if total == 0 {
            return Ok((None, 0.0));
        }
        let stage_seconds = self.prepare_stage(total)?;
        let Some(mut stage) = self.spare_stage.take() else {
            return Err(Error::Unsupported("no stage after preparing one (bug)"));
        };
        stage.ranges.clear();
        let mut at = 0;
        for (first, pages) in ranges {
            let (off, len) = (first << self.shift, pages << self.shift);
            // SAFETY: the source pages are committed and quiesced; the stage
            // range is mapped with host and device access; no overlap.
            let r = unsafe {
                self.res
                    .driver
                    .copy(stage.va + at, self.res.base() + off, len as usize, stream)
            };
            if let Err(e) = r {
                // Copies queued before this one may still write the stage.
                let settled = at == 0 || self.settle(stream);
                self.keep_stage_unless_busy(stage, settled);
                return Err(e);
            }
            stage.ranges.push((off, len, at));
            at += len;
        }
        if let Err(e) = self.wait_stream(stream) {
            let settled = self.settle(stream);
            self.keep_stage_unless_busy(stage, settled);
            return Err(e);
        }
        self.held_stage_bytes += stage.size;
        Ok((Some(stage), stage_seconds))
    }

    /// Copies an offload's contents back to the (recommitted) pages on
    /// `stream` and waits on that copy's fence; the stage is then kept for
    /// the next offload. Only pages that still hold live bytes are copied:
    /// what was freed while asleep was not recommitted. On error the stage
    /// comes back to the caller (contents kept for a retry). Returns bytes
    /// copied.
    pub fn restore(
        &mut self,
        stage: Stage<D::Handle>,
        stream: Stream,
    ) -> core::result::Result<u64, (Error, Stage<D::Handle>)> {
        let mut copied = 0;
        for (off, len, at) in restored_pieces(&stage.ranges, &self.pages.live_ranges(), self.shift)
        {
            // SAFETY: the pages hold live bytes, so the wake just recommitted
            // them with access; the stage is mapped and holds their
            // contents at `at`; no overlap.
            let r = unsafe {
                self.res
                    .driver
                    .copy(self.res.base() + off, stage.va + at, len as usize, stream)
            };
            if let Err(e) = r {
                // The caller unmaps the pages again (back to sleep): the
                // copies queued so far must end first.
                // (Where even that fails, the stream is broken and the
                // caller's unmap is the lesser evil: the pages go back to
                // sleep with the stage's contents kept.)
                if copied > 0 {
                    let _ = self.settle(stream);
                }
                return Err((e, stage));
            }
            copied += len;
        }
        if let Err(e) = self.wait_stream(stream) {
            let _ = self.settle(stream);
            return Err((e, stage));
        }
        self.held_stage_bytes -= stage.size;
        // Kept for the next sleep: pinned memory is slow to obtain.
        self.keep_larger_stage(stage);
        Ok(copied)
    }

    /// Gives back a stage that holds an asleep arena's contents (teardown).
    pub fn forget_stage(&mut self, stage: Stage<D::Handle>) {
        self.held_stage_bytes -= stage.size;
        self.drop_stage(stage);
    }

    /// After a failed copy or wait: waits (a few tries) until the copies
    /// already queued on `stream` completed, so that neither the stage nor
    /// the pages they touch are unmapped under them. False when every try
    /// failed: the caller must then not unmap what those copies touch.
    fn settle(&mut self, stream: Stream) -> bool {
        (0..3).any(|_| self.wait_stream(stream).is_ok())
    }

    /// After a failed offload: the stage is kept for the next one once the
    /// copies queued into it ended (`settled`), else leaked rather than
    /// unmapped under them.
    fn keep_stage_unless_busy(&mut self, stage: Stage<D::Handle>, settled: bool) {
        if settled {
            self.spare_stage = Some(stage);
        } else {
            std::mem::forget(stage);
        }
    }

    /// Records a fence on `stream` and waits on it (that stream's work only).
    fn wait_stream(&mut self, stream: Stream) -> Result<()> {
        let f = self.res.driver.record(stream)?;
        self.streams.recorded += 1;
        let r = self.res.driver.wait(&f);
        self.streams.waits += 1;
        self.res.driver.drop_fence(f);
        r
    }
}

/// The pieces of an offload's `staged` ranges (offset in the reservation,
/// length, offset in the stage; in address order) that lie on `live` runs
/// of pages (first, count; in order, each inside one staged range, since
/// nothing is allocated while asleep): what a restore copies back.
fn restored_pieces(
    staged: &[(u64, u64, u64)],
    live: &[(u64, u64)],
    shift: u32,
) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::with_capacity(live.len());
    let mut runs = live.iter().map(|&(f, n)| (f << shift, (f + n) << shift));
    let mut run = runs.next();
    for &(off, len, at) in staged {
        while let Some((lo, hi)) = run {
            if lo >= off + len {
                break;
            }
            let (a, b) = (lo.max(off), hi.min(off + len));
            if a < b {
                out.push((a, b - a, at + (a - off)));
            }
            if hi > off + len {
                break;
            }
            run = runs.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::restored_pieces;
    use crate::commit::testing::{PAGE, commit, driver, finish};
    use crate::commit::{Backing, Commit};
    use crate::driver::Driver;
    use crate::sync::Stamp;

    /// Pinned memory obtained ahead serves the offload with no driver
    /// create; restored, the contents are back and the stage is kept for
    /// the next cycle; a larger need replaces it (the smaller goes first);
    /// a smaller one is served by it. Nothing leaks.
    #[test]
    fn a_stage_obtained_ahead_serves_every_offload_until_a_larger_one_is_needed() {
        let d = driver();
        let s = d.create_stream().unwrap();
        {
            let mut c = commit(&d, 32, (32, 0));
            c.add_live(0, 2 * PAGE, 1, Backing::Pages).unwrap();
            c.add_live(5 * PAGE, 100, 1, Backing::Pages).unwrap();
            let fill = |c: &Commit<_>, byte: u8| {
                for off in [0, 5 * PAGE] {
                    // SAFETY: pages 0, 1 and 5 are mapped, read-write and
                    // host-visible; the test owns their bytes.
                    unsafe { ((c.base() + off) as *mut u8).write_bytes(byte, PAGE as usize) };
                }
            };
            fill(&c, 0x3c);
            assert_eq!(
                c.offload_bytes(),
                3 * PAGE,
                "whole pages holding live bytes"
            );
            let need = c.stage_need().expect("nothing held yet");
            assert_eq!(need.bytes, 3 * PAGE);
            assert!(c.prepare_stage(3 * PAGE).unwrap() >= 0.0);
            assert_eq!(c.stage_bytes(), 3 * PAGE);
            assert!(c.stage_need().is_none());
            for _ in 0..2 {
                let creates = d.counts().create;
                let (stage, seconds) = c.offload(s).unwrap();
                let stage = stage.expect("live pages");
                assert_eq!((stage.copied(), seconds), (3 * PAGE, 0.0));
                assert_eq!(d.counts().create, creates, "the stage held serves");
                assert_eq!(c.stage_bytes(), 3 * PAGE, "held by the offload now");
                fill(&c, 0);
                assert_eq!(c.restore(stage, s).ok(), Some(3 * PAGE));
                // SAFETY: as in `fill`, read only.
                let back = unsafe { ((c.base() + 5 * PAGE + PAGE - 1) as *const u8).read() };
                assert_eq!(back, 0x3c, "contents restored");
                assert_eq!(c.stage_bytes(), 3 * PAGE, "kept for the next cycle");
            }
            assert_eq!(
                c.prepare_stage(PAGE).unwrap(),
                0.0,
                "served by the stage held"
            );
            c.prepare_stage(8 * PAGE).unwrap();
            assert_eq!(c.stage_bytes(), 8 * PAGE, "the smaller one went");
            assert_eq!(d.physical_bytes(), c.committed() + 8 * PAGE);
            assert_eq!(c.drop_spare_stage(), 8 * PAGE);
            assert_eq!(c.stage_bytes(), 0);
            c.sub_live(0, 2 * PAGE, Stamp::SAFE);
            c.sub_live(5 * PAGE, 100, Stamp::SAFE);
        }
        finish(&d, &[s]);
        let c = d.counts();
        assert_eq!(
            (c.create, c.reserve),
            (c.release, c.free_reservation),
            "{c:?}"
        );
    }

    /// A restore copies the staged ranges' pieces that still hold live
    /// bytes, each from its own place in the stage.
    #[test]
    fn a_restore_copies_only_the_pieces_still_live() {
        let staged = [(0, 4 * PAGE, 0), (10 * PAGE, 2 * PAGE, 4 * PAGE)];
        let shift = PAGE.trailing_zeros();
        assert_eq!(
            restored_pieces(&staged, &[(0, 4), (10, 2)], shift),
            staged.to_vec(),
            "nothing freed: everything"
        );
        assert_eq!(
            restored_pieces(&staged, &[(1, 1), (3, 1), (11, 1)], shift),
            vec![
                (PAGE, PAGE, PAGE),
                (3 * PAGE, PAGE, 3 * PAGE),
                (11 * PAGE, PAGE, 5 * PAGE)
            ]
        );
        assert!(restored_pieces(&staged, &[], shift).is_empty());
    }

    /// Pages whose live bytes were taken off while asleep are neither
    /// recommitted nor restored by the wake (a restore into them would
    /// write unmapped memory); the pages still live come back with their
    /// contents, in the blocks region and in a stitched range alike.
    #[test]
    fn what_is_freed_while_asleep_is_neither_recommitted_nor_restored() {
        let d = driver();
        let s = d.create_stream().unwrap();
        {
            let mut c = commit(&d, 32, (16, 16));
            c.add_live(0, 3 * PAGE, 1, Backing::Pages).unwrap();
            c.add_live(5 * PAGE, PAGE, 1, Backing::Pages).unwrap();
            let a = c.stitch_alloc(2 * PAGE, 1).unwrap();
            let b = c.stitch_alloc(2 * PAGE, 1).unwrap();
            for (off, byte) in [(0, 1u8), (PAGE, 2), (2 * PAGE, 3), (5 * PAGE, 4)]
                .into_iter()
                .chain([(a, 5), (a + PAGE, 6), (b, 7), (b + PAGE, 8)])
            {
                // SAFETY: every page named is live, mapped, read-write and
                // host-visible; the test owns its bytes.
                unsafe { ((c.base() + off) as *mut u8).write_bytes(byte, PAGE as usize) };
            }
            let (stage, _) = c.offload(s).unwrap();
            let stage = stage.expect("live pages");
            assert_eq!(stage.copied(), 8 * PAGE);
            c.sleep();
            c.sub_live(PAGE, PAGE, Stamp::SAFE);
            c.sub_live(5 * PAGE, PAGE, Stamp::SAFE);
            c.stitch_free(a, Stamp::SAFE).unwrap();
            c.check_invariants();
            assert_eq!(c.committed(), 0);
            assert_eq!(
                c.stitched_ranges(),
                1,
                "a range freed asleep has no mapping to keep: it goes"
            );
            c.wake().unwrap();
            c.check_invariants();
            assert_eq!(c.committed(), 4 * PAGE, "pages 0 and 2 and range b");
            assert!(!c.is_committed(PAGE, PAGE) && !c.is_committed(5 * PAGE, PAGE));
            assert_eq!(c.restore(stage, s).ok(), Some(4 * PAGE));
            for (off, byte) in [(0, 1u8), (2 * PAGE, 3), (b, 7), (b + PAGE, 8)] {
                // SAFETY: live and recommitted, read only.
                let got = unsafe { ((c.base() + off + PAGE - 1) as *const u8).read() };
                assert_eq!(got, byte, "page at {off:#x} restored");
            }
            // The range freed asleep went: a block of its size gets pages.
            let again = c.stitch_alloc(2 * PAGE, 1).unwrap();
            assert!(c.is_committed(again, 2 * PAGE), "a block gets mapped pages");
            c.check_invariants();
            c.stitch_free(again, Stamp::SAFE).unwrap();
            c.sub_live(0, PAGE, Stamp::SAFE);
            c.sub_live(2 * PAGE, PAGE, Stamp::SAFE);
            c.stitch_free(b, Stamp::SAFE).unwrap();
            c.trim();
            assert_eq!(c.committed(), 0);
            c.drop_spare_stage();
        }
        finish(&d, &[s]);
    }
}
