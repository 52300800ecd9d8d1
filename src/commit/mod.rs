//! Physical memory follows live bytes.
//!
//! The page table records, for every granularity-sized page of the arena's
//! reservation, its live bytes and the run (one physical handle) backing it.
//! Pages are committed on first use in runs; a run whose pages all reach zero
//! live bytes becomes a decommit candidate, tagged with the stamps of the
//! frees that emptied it. A candidate is given back (unmap + release) only
//! once those stamps' fences completed (queried, never waited on), and then
//! only beyond the keep-alive budget, or at once on [`Commit::trim`].
//!
//! Runs never split: drivers cannot unmap part of a mapping. So the commit
//! plan keeps run lifetimes aligned with block lifetimes: the pages a block
//! covers wholly form one run (up to [`CommitConfig::max_run`]), and a page it
//! shares with neighbours is a run of its own. When the block is freed its
//! run empties and goes back whole.
//!
//! Out of memory: trim completed candidates and retry, then wait on the oldest
//! pending fences only and retry, then [`Error::OutOfMemory`]. A failed commit
//! unmaps and releases whatever it had done: nothing is left half-mapped.
//!
//! Shared runs (for inter-process sharing, see [`Commit::pin_shared`] and
//! [`Commit::adopt`]) are runs whose handle was created shareable or imported
//! from another process. They are never reused once empty (another process
//! may still see their memory): they go back as soon as their fences
//! completed, whatever the keep-alive says, and a range that needs fresh
//! memory waits for them to go rather than reuse them.
//!
//! Access lists: [`Commit::change_access`] applies a change (grant or revoke
//! for some accessors) to every committed run, imported ones included, and
//! to every later commit.

pub mod streams;

use std::os::fd::OwnedFd;

use crate::MetaVec;
use crate::driver::{Access, AccessMode, DevicePtr, Driver, Location};
use crate::error::{Error, ErrorKind, OomReport, Result};
use crate::policy::Stamp;
pub use streams::Streams;

const NIL: u32 = u32::MAX;
/// Pages per page-table chunk (allocated on first touch).
const CHUNK_PAGES: u64 = 4096;

/// Settings of the commit layer.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CommitConfig {
    /// Largest physical handle created at once (bytes; a multiple of the granularity).
    pub max_run: u64,
    /// Empty committed bytes always kept for reuse.
    pub keep_alive: u64,
    /// Hysteresis: empty pages are kept while committed memory stays within
    /// `(1 + keep_alive_fraction)` times the peak of live bytes (since the
    /// last `reset_peak`), or within the live bytes plus `keep_alive`,
    /// whichever is more. A workload that
    /// repeats below its peak then recommits nothing, while physical memory
    /// never exceeds its peak live by more than this fraction (plus the
    /// unused parts of shared pages).
    pub keep_alive_fraction: f64,
    /// Most bytes ever committed at once (`u64::MAX`: the device's memory is the limit).
    pub limit: u64,
    /// Before committing fresh memory beyond the keep-alive allowance, wait
    /// on the oldest pending fences of this arena's streams (single events,
    /// never the device) so that empty pages still in use by queued work can
    /// go back first. Trades a CPU wait behind the GPU for physical memory
    /// that follows live bytes under a lagging GPU. Off by default.
    pub wait_for_reuse: bool,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_run: 1 << 30,
            keep_alive: 4 << 20,
            keep_alive_fraction: 1.0 / 64.0,
            limit: u64::MAX,
            wait_for_reuse: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Page {
    /// Live bytes on this page. Invariant: `live > 0` implies `run != NIL`.
    live: u64,
    /// The run backing the page, or NIL (uncommitted).
    run: u32,
}

struct Run<H> {
    first: u64,
    pages: u64,
    handle: Option<H>,
    /// Pages of the run with live bytes. Invariant: 0 iff candidate (when used).
    live_pages: u64,
    /// Queue ticket while a decommit candidate (0 = not a candidate).
    ticket: u64,
    /// Stamps of the frees that emptied pages of this run, one per slot.
    stamps: MetaVec<Stamp>,
    used: bool,
    /// Created shareable or imported: never reused once empty.
    shared: bool,
}

/// Driver calls made by the commit layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DriverCalls {
    /// `create` calls.
    pub create: u64,
    /// `map` calls.
    pub map: u64,
    /// `set_access` calls.
    pub set_access: u64,
    /// `unmap` calls.
    pub unmap: u64,
    /// `release` calls.
    pub release: u64,
    /// Fences recorded.
    pub record: u64,
    /// Single-fence waits (out-of-memory last resort).
    pub wait: u64,
    /// Calls that failed.
    pub failed: u64,
}

impl DriverCalls {
    /// All calls.
    pub const fn total(&self) -> u64 {
        self.create
            + self.map
            + self.set_access
            + self.unmap
            + self.release
            + self.record
            + self.wait
    }
}

/// State of one page, for snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PageState {
    /// Not backed by physical memory.
    Free,
    /// Backed, with live bytes.
    Live,
    /// Backed, empty, waiting to be given back (fence, keep-alive or a
    /// neighbour page of its run still live).
    Pending,
}

/// The page table and runs of one reservation.
pub struct Commit<D: Driver> {
    driver: D,
    base: DevicePtr,
    size: u64,
    page: u64,
    shift: u32,
    location: Location,
    access: MetaVec<Access>,
    dir: MetaVec<Option<allocator_api2::boxed::Box<[Page], std::alloc::System>>>,
    runs: MetaVec<Run<D::Handle>>,
    recycled: MetaVec<u32>,
    queue: MetaVec<(u32, u64)>,
    queue_head: usize,
    next_ticket: u64,
    /// Fence-tracked streams.
    pub streams: Streams<D::Fence>,
    config: CommitConfig,
    committed: u64,
    peak_committed: u64,
    live: u64,
    peak_live: u64,
    candidate_bytes: u64,
    calls: DriverCalls,
    frees_since_collect: u32,
    /// Every run was given back by `sleep`; pages keep their live bytes.
    /// Invariant: when false, `live > 0` implies the page has a run.
    asleep: bool,
    /// Bytes in shared runs (a part of `committed`).
    shared_committed: u64,
    /// Shared runs that became candidates: (run, ticket), given back as soon
    /// as their fences complete.
    shared_pending: MetaVec<(u32, u64)>,
}

impl<D: Driver> core::fmt::Debug for Commit<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Commit")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &self.size)
            .field("committed", &self.committed)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Commit<D> {
    /// A page table over the reservation `base..base+size` (granularity-aligned),
    /// committing memory at `location` with `access` for every page.
    pub fn new(
        driver: D,
        base: DevicePtr,
        size: u64,
        location: Location,
        access: &[Access],
        config: CommitConfig,
    ) -> Self {
        let page = driver.capabilities().granularity as u64;
        let mut acc = MetaVec::new_in(std::alloc::System);
        acc.extend_from_slice(access);
        let max_run = (config.max_run.max(page) / page) * page;
        Commit {
            driver,
            base,
            size,
            page,
            shift: page.trailing_zeros(),
            location,
            access: acc,
            dir: MetaVec::new_in(std::alloc::System),
            runs: MetaVec::new_in(std::alloc::System),
            recycled: MetaVec::new_in(std::alloc::System),
            queue: MetaVec::new_in(std::alloc::System),
            queue_head: 0,
            next_ticket: 1,
            streams: Streams::new(),
            config: CommitConfig { max_run, ..config },
            committed: 0,
            peak_committed: 0,
            live: 0,
            peak_live: 0,
            candidate_bytes: 0,
            calls: DriverCalls::default(),
            frees_since_collect: 0,
            asleep: false,
            shared_committed: 0,
            shared_pending: MetaVec::new_in(std::alloc::System),
        }
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }
    /// Page size (the driver's granularity).
    pub fn page(&self) -> u64 {
        self.page
    }
    /// Reservation base.
    pub fn base(&self) -> DevicePtr {
        self.base
    }
    /// Reservation size.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Bytes committed now.
    pub fn committed(&self) -> u64 {
        self.committed
    }
    /// Highest `committed` seen.
    pub fn peak_committed(&self) -> u64 {
        self.peak_committed
    }
    /// Live bytes as the page table counts them.
    pub fn live(&self) -> u64 {
        self.live
    }
    /// Committed bytes in decommit candidates (empty runs).
    pub fn candidate_bytes(&self) -> u64 {
        self.candidate_bytes
    }
    /// Driver calls so far.
    pub fn calls(&self) -> DriverCalls {
        DriverCalls {
            record: self.streams.recorded,
            wait: self.streams.waits,
            ..self.calls
        }
    }
    /// Settings in force.
    pub fn config(&self) -> &CommitConfig {
        &self.config
    }
    /// Queries pending fences (never blocks).
    pub fn poll(&mut self) {
        self.streams.poll(&self.driver);
    }

    /// Waits until the work queued on every stream this arena has seen
    /// completed (fences of those streams only). See [`Streams::quiesce`].
    pub fn quiesce(&mut self) -> Result<()> {
        self.streams.quiesce(&self.driver)
    }

    /// Records a fence covering `stamp` if none was recorded yet.
    pub fn ensure_fence(&mut self, stamp: Stamp) -> Result<()> {
        self.streams.ensure_fence(&self.driver, stamp)
    }

    /// Changes the limit (takes effect for later commits).
    pub fn set_limit(&mut self, limit: u64) {
        self.config.limit = limit;
    }
    /// Resets the peaks (committed, and the live peak the keep-alive follows)
    /// to the current values.
    pub fn reset_peak(&mut self) {
        self.peak_committed = self.committed;
        self.peak_live = self.live;
    }

    fn page_mut(&mut self, p: u64) -> &mut Page {
        let (c, i) = ((p / CHUNK_PAGES) as usize, (p % CHUNK_PAGES) as usize);
        if self.dir.len() <= c {
            self.dir.resize_with(c + 1, || None);
        }
        let chunk = self.dir[c].get_or_insert_with(|| {
            let mut v = allocator_api2::vec::Vec::with_capacity_in(
                CHUNK_PAGES as usize,
                std::alloc::System,
            );
            v.resize(CHUNK_PAGES as usize, Page { live: 0, run: NIL });
            v.into_boxed_slice()
        });
        &mut chunk[i]
    }

    fn page_at(&self, p: u64) -> Page {
        let (c, i) = ((p / CHUNK_PAGES) as usize, (p % CHUNK_PAGES) as usize);
        match self.dir.get(c) {
            Some(Some(chunk)) => chunk[i],
            _ => Page { live: 0, run: NIL },
        }
    }

    /// Whether every page of `off..off+len` is committed.
    pub fn is_committed(&self, off: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        (a..=b).all(|p| self.page_at(p).run != NIL)
    }

    /// Adds `len` live bytes at offset `off` (relative to the reservation
    /// base), committing the pages that need it. On error nothing changed.
    pub fn add_live(&mut self, off: u64, len: u64) -> Result<()> {
        self.add_live_as(off, len, false)
    }

    /// [`Commit::add_live`]; with `shared`, the pages are committed in fresh
    /// shareable runs that lie wholly inside the range (see [`Commit::pin_shared`]).
    fn add_live_as(&mut self, off: u64, len: u64, shared: bool) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        debug_assert!(
            off + len <= self.size,
            "range {off:#x}+{len:#x} outside the reservation"
        );
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        // Fast check: all pages committed already?
        // An out-of-memory retry inside commit_range may trim empty runs of
        // this very range: commit until every page is backed.
        if shared {
            self.make_room_for_shared(a, b)?;
        } else {
            self.split_candidates(off, len)?;
        }
        let missing = (a..=b).filter(|&p| self.page_at(p).run == NIL).count() as u64;
        if missing > 0 {
            // Make room first, so the peak of committed memory does not
            // overshoot the keep-alive allowance while old pages wait.
            let allowed = self.allowed_at(self.live + len);
            let target = allowed.saturating_sub(missing << self.shift);
            self.release_until(target, Some((a, b)));
            // Optionally wait for empty pages behind pending fences (oldest
            // first, one fence per stream at a time) instead of growing.
            while self.config.wait_for_reuse
                && self.committed > target
                && self.candidate_bytes > 0
                && matches!(self.streams.wait_oldest(&self.driver), Ok(true))
            {
                self.release_until(target, Some((a, b)));
            }
        }
        while (a..=b).any(|p| self.page_at(p).run == NIL) {
            if let Err(mut e) = self.commit_range(off, len, shared) {
                self.release_unclaimed(a, b);
                if let Error::OutOfMemory(r) = &mut e {
                    // Report the state the caller sees: without the runs
                    // this call made and gave back.
                    *r = self.oom_report(r.requested);
                }
                return Err(e);
            }
        }
        self.account_live(off, len);
        Ok(())
    }

    /// Adds `len` live bytes at `off` to pages that all have runs.
    fn account_live(&mut self, off: u64, len: u64) {
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        for p in a..=b {
            let lo = off.max(p << self.shift);
            let hi = (off + len).min((p + 1) << self.shift);
            let pg = self.page_mut(p);
            let was = pg.live;
            pg.live += hi - lo;
            let run = pg.run;
            if was == 0 {
                self.run_gains_page(run);
            }
        }
        self.live += len;
        self.peak_live = self.peak_live.max(self.live);
    }

    /// Empty runs that the new block `off..off+len` would only partly own are
    /// given back before reuse (when their fences completed): a run cannot be
    /// split later, so reusing part of it, or putting the block's shared
    /// boundary page into a multi-page run, would strand pages.
    ///
    /// Empty shared runs are never reused: they are given back, after a wait
    /// on their fences if need be (rare: only where a shared buffer's range
    /// is reused while its last work is still running).
    fn split_candidates(&mut self, off: u64, len: u64) -> Result<()> {
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        let head_shared = off & (self.page - 1) != 0 || len < self.page;
        let tail_shared = (off + len) & (self.page - 1) != 0;
        let mut p = a;
        while p <= b {
            let run = self.page_at(p).run;
            if run == NIL {
                p += 1;
                continue;
            }
            let (first, pages, ticket, shared) = {
                let r = &self.runs[run as usize];
                (r.first, r.pages, r.ticket, r.shared)
            };
            p = first + pages;
            let last = first + pages - 1;
            let inside = first >= a && last <= b;
            let shares_boundary =
                pages > 1 && ((head_shared && first == a) || (tail_shared && last == b));
            if ticket == 0 || (inside && !shares_boundary && !shared) {
                continue;
            }
            if !self.stamps_done(run) {
                if !shared {
                    continue;
                }
                self.wait_stamps(run)?;
            }
            self.decommit(run);
        }
        Ok(())
    }

    /// Waits until every free that emptied `run` has completed (single
    /// fences of the streams involved, never the device).
    fn wait_stamps(&mut self, run: u32) -> Result<()> {
        loop {
            if self.stamps_done(run) {
                return Ok(());
            }
            // No fence to wait on: recording one failed (counted in
            // `calls.failed`); never give back memory work may still use.
            if !self.streams.wait_oldest(&self.driver)? {
                return Err(Error::Unsupported(
                    "the work that last used an empty shared run cannot be waited on \
                     (recording its fence failed); retry later",
                ));
            }
        }
    }

    /// Before shared runs are committed in pages `a..=b`: every empty run
    /// there goes back (waiting on its fences if need be), so that the new
    /// runs are fresh and hold nothing of earlier owners; a page with live
    /// bytes there is refused.
    fn make_room_for_shared(&mut self, a: u64, b: u64) -> Result<()> {
        let mut p = a;
        while p <= b {
            let run = self.page_at(p).run;
            if run == NIL {
                p += 1;
                continue;
            }
            let r = &self.runs[run as usize];
            p = r.first + r.pages;
            if r.ticket == 0 {
                return Err(Error::Unsupported(
                    "the range for a shared buffer already holds live memory",
                ));
            }
            if !self.stamps_done(run) {
                self.wait_stamps(run)?;
            }
            self.decommit(run);
        }
        Ok(())
    }

    /// Whether every free that emptied `run` has completed; records the
    /// fences that are missing and polls once (never blocks).
    fn stamps_done(&mut self, run: u32) -> bool {
        let streams = &self.streams;
        self.runs[run as usize].stamps.retain(|s| !streams.done(*s));
        if self.runs[run as usize].stamps.is_empty() {
            return true;
        }
        for i in 0..self.runs[run as usize].stamps.len() {
            let s = self.runs[run as usize].stamps[i];
            if self.streams.ensure_fence(&self.driver, s).is_err() {
                self.calls.failed += 1;
            }
        }
        self.streams.poll(&self.driver);
        let streams = &self.streams;
        self.runs[run as usize].stamps.retain(|s| !streams.done(*s));
        self.runs[run as usize].stamps.is_empty()
    }

    fn run_gains_page(&mut self, run: u32) {
        let r = &mut self.runs[run as usize];
        r.live_pages += 1;
        if r.ticket != 0 {
            r.ticket = 0;
            self.candidate_bytes -= r.pages << self.shift;
        }
    }

    /// Removes `len` live bytes at `off`, freed with `stamp`. Runs that empty
    /// become decommit candidates; completed ones beyond the keep-alive go back.
    pub fn sub_live(&mut self, off: u64, len: u64, stamp: Stamp) {
        if len == 0 {
            return;
        }
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        let mut emptied = false;
        for p in a..=b {
            let lo = off.max(p << self.shift);
            let hi = (off + len).min((p + 1) << self.shift);
            let pg = self.page_mut(p);
            debug_assert!(
                pg.live >= hi - lo,
                "page {p} live {} < {}",
                pg.live,
                hi - lo
            );
            pg.live -= hi - lo;
            // Asleep pages have no run: only their live bytes change.
            if pg.live == 0 && pg.run != NIL {
                let run = pg.run;
                emptied |= self.run_loses_page(run, stamp);
            }
        }
        self.live -= len;
        self.frees_since_collect += 1;
        if emptied || (self.frees_since_collect >= 256 && self.candidate_bytes > 0) {
            self.collect(false);
        }
    }

    /// Returns whether the run became a candidate.
    fn run_loses_page(&mut self, run: u32, stamp: Stamp) -> bool {
        let r = &mut self.runs[run as usize];
        r.live_pages -= 1;
        if !stamp.is_safe() {
            match r.stamps.iter_mut().find(|s| s.slot() == stamp.slot()) {
                Some(s) => *s = Stamp::new(stamp.slot(), s.epoch().max(stamp.epoch())),
                None => r.stamps.push(stamp),
            }
        }
        if r.live_pages == 0 {
            r.ticket = self.next_ticket;
            self.next_ticket += 1;
            self.candidate_bytes += r.pages << self.shift;
            self.queue.push((run, r.ticket));
            if r.shared {
                self.shared_pending.push((run, r.ticket));
            }
            true
        } else {
            false
        }
    }

    /// Committed bytes the keep-alive allows (see [`CommitConfig::keep_alive_fraction`]).
    fn allowed(&self) -> u64 {
        self.allowed_at(self.live)
    }

    fn allowed_at(&self, live: u64) -> u64 {
        let frac = self.config.keep_alive_fraction;
        let by_peak = (self.peak_live.max(live) as f64 * (1.0 + frac)) as u64;
        let by_live = live + self.config.keep_alive;
        by_peak.max(by_live)
    }

    /// Gives back completed candidates beyond the keep-alive budget (all
    /// completed ones when `force`). Never blocks. Returns bytes given back.
    pub fn collect(&mut self, force: bool) -> u64 {
        let shared = self.release_shared();
        let allowed = if force { 0 } else { self.allowed() };
        shared + self.release_until(allowed, None)
    }

    /// Gives back the empty shared runs whose fences completed, whatever the
    /// keep-alive (they are never reused). Never blocks. Returns bytes.
    fn release_shared(&mut self) -> u64 {
        let mut freed = 0;
        let mut i = 0;
        while i < self.shared_pending.len() {
            let (run, ticket) = self.shared_pending[i];
            let r = &self.runs[run as usize];
            if !(r.used && r.shared && r.ticket == ticket) {
                self.shared_pending.swap_remove(i);
                continue;
            }
            if self.stamps_done(run) {
                freed += self.decommit(run);
                self.shared_pending.swap_remove(i);
                continue;
            }
            i += 1;
        }
        freed
    }

    /// Gives back completed candidates, oldest first, until at most `target`
    /// bytes are committed, sparing runs in pages `spare` (a range about to
    /// be reused). Never blocks. Returns bytes given back.
    fn release_until(&mut self, target: u64, spare: Option<(u64, u64)>) -> u64 {
        self.frees_since_collect = 0;
        if self.queue_head >= self.queue.len() || self.committed <= target {
            return 0;
        }
        // Make sure every candidate's stamps have fences, then poll.
        for k in self.queue_head..self.queue.len() {
            let (run, ticket) = self.queue[k];
            if self.runs[run as usize].ticket != ticket {
                continue;
            }
            for i in 0..self.runs[run as usize].stamps.len() {
                let s = self.runs[run as usize].stamps[i];
                if !self.streams.done(s) && self.streams.ensure_fence(&self.driver, s).is_err() {
                    self.calls.failed += 1;
                }
            }
        }
        self.streams.poll(&self.driver);
        let mut freed = 0;
        let mut k = self.queue_head;
        while k < self.queue.len() && self.candidate_bytes > 0 && self.committed > target {
            let (run, ticket) = self.queue[k];
            k += 1;
            let r = &mut self.runs[run as usize];
            if r.ticket != ticket {
                continue;
            }
            if let Some((a, b)) = spare {
                if r.first <= b && r.first + r.pages > a {
                    continue;
                }
            }
            let streams = &self.streams;
            r.stamps.retain(|s| !streams.done(*s));
            if !r.stamps.is_empty() {
                continue;
            }
            freed += self.decommit(run);
        }
        // Drop stale and decommitted entries from the front of the queue.
        while self.queue_head < self.queue.len() {
            let (run, ticket) = self.queue[self.queue_head];
            if self.runs[run as usize].used && self.runs[run as usize].ticket == ticket {
                break;
            }
            self.queue_head += 1;
        }
        if self.queue_head > 1024 && self.queue_head * 2 > self.queue.len() {
            self.queue.drain(..self.queue_head);
            self.queue_head = 0;
        }
        freed
    }

    /// Gives back every completed candidate at once. Returns bytes given back.
    pub fn trim(&mut self) -> u64 {
        self.collect(true)
    }

    fn decommit(&mut self, run: u32) -> u64 {
        let (first, pages, handle) = {
            let r = &self.runs[run as usize];
            (r.first, r.pages, r.handle)
        };
        let bytes = pages << self.shift;
        let va = self.base + (first << self.shift);
        // SAFETY: the run's pages have no live bytes and every fence of the
        // frees that emptied them completed, so neither the host nor queued
        // device work touches the range; it is exactly one whole mapping.
        match unsafe { self.driver.unmap(va, bytes as usize) } {
            Ok(()) => self.calls.unmap += 1,
            Err(_) => {
                self.calls.failed += 1;
                return 0;
            }
        }
        if let Some(h) = handle {
            match self.driver.release(h) {
                Ok(()) => self.calls.release += 1,
                Err(_) => self.calls.failed += 1,
            }
        }
        for p in first..first + pages {
            self.page_mut(p).run = NIL;
        }
        let r = &mut self.runs[run as usize];
        if r.shared {
            self.shared_committed -= bytes;
        }
        r.used = false;
        r.shared = false;
        r.ticket = 0;
        r.handle = None;
        r.stamps.clear();
        self.recycled.push(run);
        self.committed -= bytes;
        self.candidate_bytes -= bytes;
        bytes
    }

    /// Commits the uncommitted pages of `off..off+len` in runs, with the OOM
    /// ladder. On error, everything this call committed is given back.
    fn commit_range(&mut self, off: u64, len: u64, shared: bool) -> Result<()> {
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        let head_partial = off & (self.page - 1) != 0 || (b == a && len < self.page);
        let tail_partial = (off + len) & (self.page - 1) != 0;
        let max_pages = self.config.max_run >> self.shift;
        let mut p = a;
        while p <= b {
            if self.page_at(p).run != NIL {
                p += 1;
                continue;
            }
            // A shared boundary page is a run of its own.
            let mut q = p + 1;
            let alone = (p == a && head_partial) || (p == b && tail_partial);
            if !alone {
                while q <= b
                    && q - p < max_pages
                    && self.page_at(q).run == NIL
                    && !(q == b && tail_partial)
                {
                    q += 1;
                }
            }
            self.commit_run_with_retry(p, q - p, len, shared)?;
            p = q;
        }
        Ok(())
    }

    /// Gives back runs in pages `a..=b` that a failed commit made and nobody
    /// claimed (no live page, not a candidate): nothing is left behind.
    fn release_unclaimed(&mut self, a: u64, b: u64) {
        for p in a..=b {
            let run = self.page_at(p).run;
            if run == NIL {
                continue;
            }
            let r = &self.runs[run as usize];
            if r.live_pages == 0 && r.ticket == 0 {
                self.runs[run as usize].ticket = u64::MAX;
                self.candidate_bytes += self.runs[run as usize].pages << self.shift;
                self.decommit(run);
            }
        }
    }

    fn commit_run_with_retry(
        &mut self,
        first: u64,
        pages: u64,
        requested: u64,
        shared: bool,
    ) -> Result<u32> {
        let (mut trimmed, mut waited) = (false, false);
        loop {
            match self.commit_run(first, pages, shared) {
                Ok(run) => return Ok(run),
                Err(e) if is_oom(&e) => {
                    if !trimmed {
                        trimmed = true;
                        if self.trim() > 0 {
                            continue;
                        }
                    }
                    if !waited {
                        waited = true;
                        if self.streams.wait_oldest(&self.driver)? {
                            self.trim();
                            continue;
                        }
                    }
                    return Err(Error::OutOfMemory(self.oom_report(requested)));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The figures an out-of-memory error carries.
    pub fn oom_report(&self, requested: u64) -> OomReport {
        OomReport {
            requested,
            live: self.live,
            committed: self.committed,
            limit: self.config.limit,
            reclaimable: self.reclaimable(),
            pending: self.candidate_bytes - self.reclaimable(),
            pending_fences: self.streams.pending_fences() as u64,
            ..Default::default()
        }
    }

    /// Candidate bytes whose fences completed (as last polled): given back at
    /// once by `trim`.
    pub fn reclaimable(&self) -> u64 {
        let mut bytes = 0;
        for &(run, ticket) in &self.queue[self.queue_head..] {
            let r = &self.runs[run as usize];
            if r.used && r.ticket == ticket && r.stamps.iter().all(|s| self.streams.done(*s)) {
                bytes += r.pages << self.shift;
            }
        }
        bytes
    }

    fn commit_run(&mut self, first: u64, pages: u64, shared: bool) -> Result<u32> {
        let bytes = pages << self.shift;
        if self.committed + bytes > self.config.limit {
            return Err(Error::OutOfMemory(self.oom_report(bytes)));
        }
        let h = if shared {
            self.driver.create_shareable(bytes as usize, self.location)
        } else {
            self.driver.create(bytes as usize, self.location)
        }
        .inspect_err(|_| self.calls.failed += 1)?;
        self.calls.create += 1;
        self.install_run(first, pages, h, shared)
    }

    /// Maps `h` (a handle of `pages` pages this call now owns) at page
    /// `first`, sets the access list and records the run. On error the
    /// handle is released and nothing changed.
    fn install_run(&mut self, first: u64, pages: u64, h: D::Handle, shared: bool) -> Result<u32> {
        let bytes = pages << self.shift;
        let va = self.base + (first << self.shift);
        // SAFETY: the pages are inside our reservation and not mapped (their
        // page-table entries say uncommitted).
        if let Err(e) = unsafe { self.driver.map(va, bytes as usize, 0, h) } {
            self.calls.failed += 1;
            if self.driver.release(h).is_ok() {
                self.calls.release += 1;
            }
            return Err(e);
        }
        self.calls.map += 1;
        // SAFETY: the range is exactly the mapping just made.
        if let Err(e) = unsafe { self.driver.set_access(va, bytes as usize, &self.access) } {
            self.calls.failed += 1;
            // SAFETY: the mapping was just made and nothing uses it.
            if unsafe { self.driver.unmap(va, bytes as usize) }.is_ok() {
                self.calls.unmap += 1;
            }
            if self.driver.release(h).is_ok() {
                self.calls.release += 1;
            }
            return Err(e);
        }
        self.calls.set_access += 1;
        let run = Run {
            first,
            pages,
            handle: Some(h),
            live_pages: 0,
            ticket: 0,
            stamps: MetaVec::new_in(std::alloc::System),
            used: true,
            shared,
        };
        let id = if let Some(id) = self.recycled.pop() {
            self.runs[id as usize] = run;
            id
        } else {
            self.runs.push(run);
            (self.runs.len() - 1) as u32
        };
        for p in first..first + pages {
            self.page_mut(p).run = id;
        }
        self.committed += bytes;
        if shared {
            self.shared_committed += bytes;
        }
        self.peak_committed = self.peak_committed.max(self.committed);
        Ok(id)
    }

    /// Applies `access` to every committed run (one `set_access` each).
    fn apply_to_runs(&mut self, access: &[Access]) -> Result<()> {
        for id in 0..self.runs.len() {
            let r = &self.runs[id];
            if !r.used {
                continue;
            }
            let va = self.base + (r.first << self.shift);
            // SAFETY: the run is one whole mapping of ours; revoking rights is
            // the caller's documented intent (Arena::set_access, Arena::revoke).
            unsafe {
                self.driver
                    .set_access(va, (r.pages << self.shift) as usize, access)
            }
            .inspect_err(|_| self.calls.failed += 1)?;
            self.calls.set_access += 1;
        }
        Ok(())
    }

    /// Changes the access list and applies it to every committed run.
    pub fn set_access(&mut self, access: &[Access]) -> Result<()> {
        self.apply_to_runs(access)?;
        self.access.clear();
        self.access.extend_from_slice(access);
        Ok(())
    }

    /// The access list applied to new pages.
    pub fn access(&self) -> &[Access] {
        &self.access
    }

    /// Applies `change` (entries for some accessors; [`AccessMode::None`]
    /// revokes) to every committed run and merges it into the list applied
    /// to later commits: an accessor set to `None` is dropped from the list,
    /// others replace their entry or are added. Accessors not named keep
    /// their rights. On a driver error the runs done so far keep the change
    /// and the list is unchanged; calling again with the same change is safe.
    ///
    /// Cost: one `set_access` per committed run (a driver call each).
    pub fn change_access(&mut self, change: &[Access]) -> Result<()> {
        if change.is_empty() {
            return Ok(());
        }
        self.apply_to_runs(change)?;
        for c in change {
            self.access.retain(|a| a.location != c.location);
            if c.mode != AccessMode::None {
                self.access.push(*c);
            }
        }
        Ok(())
    }

    /// Bytes committed in shared runs (created shareable or imported).
    pub fn shared_bytes(&self) -> u64 {
        self.shared_committed
    }

    /// Whether a shared run still has live pages (a shared or imported
    /// buffer is alive). Such an arena cannot sleep: its memory is seen by
    /// another process, and recommitting it on wake would cut the sharing.
    pub fn has_live_shared(&self) -> bool {
        self.shared_committed > 0
            && self
                .runs
                .iter()
                .any(|r| r.used && r.shared && r.live_pages > 0)
    }

    /// [`Commit::pin`] for memory to share with other processes: the pages
    /// of `off..off+len` (page-aligned) are committed in fresh shareable runs
    /// lying wholly inside the range (up to `max_run` each), so that
    /// [`Commit::export_range`] hands out exactly this memory. Empty runs
    /// left in the range by earlier owners are given back first (after a
    /// wait on their fences if need be); live memory there is refused.
    pub fn pin_shared(&mut self, off: u64, len: u64) -> Result<()> {
        if off & (self.page - 1) != 0 || len & (self.page - 1) != 0 {
            return Err(Error::Unsupported(
                "shared ranges must start and end on page boundaries",
            ));
        }
        self.add_live_as(off, len, true)
    }

    /// One descriptor per run of `off..off+len` (a range pinned by
    /// [`Commit::pin_shared`] or [`Commit::adopt`]): (offset from `off`,
    /// length, descriptor), in address order. Refuses a range whose pages are
    /// not all in shared runs lying inside it: only the intended memory is
    /// ever exported.
    pub fn export_range(&self, off: u64, len: u64) -> Result<Vec<(u64, u64, OwnedFd)>> {
        if len == 0 || off & (self.page - 1) != 0 || len & (self.page - 1) != 0 {
            return Err(Error::Unsupported(
                "exported ranges must be nonempty and start and end on page boundaries",
            ));
        }
        let (a, b) = (off >> self.shift, (off + len - 1) >> self.shift);
        let mut out = Vec::new();
        let mut p = a;
        while p <= b {
            let run = self.page_at(p).run;
            let not_shared = Error::Unsupported(
                "the range is not wholly in shared runs: create the buffer shareable to export it",
            );
            if run == NIL {
                return Err(not_shared);
            }
            let r = &self.runs[run as usize];
            if !r.shared || r.first != p || r.first + r.pages - 1 > b {
                return Err(not_shared);
            }
            let Some(h) = r.handle else {
                return Err(not_shared);
            };
            let fd = self.driver.export(h)?;
            out.push(((p - a) << self.shift, r.pages << self.shift, fd));
            p += r.pages;
        }
        Ok(out)
    }

    /// Takes `handle` (imported from another process, `len` bytes, now owned
    /// here) into the page table as a shared run at `off` (page-aligned),
    /// mapped with this arena's access list and pinned like
    /// [`Commit::pin`]. Empty runs in the way are given back first; live
    /// memory there is refused. On error the handle has been released.
    pub fn adopt(&mut self, off: u64, len: u64, handle: D::Handle) -> Result<()> {
        let page = self.page;
        let bad = off & (page - 1) != 0 || len == 0 || len & (page - 1) != 0;
        let r = if bad || off + len > self.size {
            Err(Error::Unsupported(
                "an imported run must be nonempty, whole pages, inside the reservation",
            ))
        } else if self.committed + len > self.config.limit {
            Err(Error::OutOfMemory(self.oom_report(len)))
        } else {
            self.make_room_for_shared(off >> self.shift, (off + len - 1) >> self.shift)
        };
        if let Err(e) = r {
            if self.driver.release(handle).is_ok() {
                self.calls.release += 1;
            }
            return Err(e);
        }
        self.calls.create += 1;
        self.install_run(off >> self.shift, len >> self.shift, handle, true)?;
        self.account_live(off, len);
        Ok(())
    }

    /// Keeps the pages of `off..off+len` committed for an owner that does
    /// its own accounting (scratch arenas, growable buffers).
    pub fn pin(&mut self, off: u64, len: u64) -> Result<()> {
        self.add_live(off, len)
    }

    /// Undoes [`Commit::pin`] of a range that was pinned.
    pub fn unpin(&mut self, off: u64, len: u64, stamp: Stamp) {
        self.sub_live(off, len, stamp);
    }

    /// Visits every page that is committed or has live bytes: (page index, state, live bytes).
    pub fn for_each_page(&self, mut f: impl FnMut(u64, PageState, u64)) {
        for (c, chunk) in self.dir.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (i, pg) in chunk.iter().enumerate() {
                if pg.run == NIL {
                    continue;
                }
                let state = if pg.live > 0 {
                    PageState::Live
                } else {
                    PageState::Pending
                };
                f(c as u64 * CHUNK_PAGES + i as u64, state, pg.live);
            }
        }
    }

    /// Runs: (first page, pages, live pages, candidate?).
    pub fn for_each_run(&self, mut f: impl FnMut(u64, u64, u64, bool)) {
        for r in self.runs.iter().filter(|r| r.used) {
            f(r.first, r.pages, r.live_pages, r.ticket != 0);
        }
    }

    /// Number of runs (physical handles) held.
    pub fn run_count(&self) -> usize {
        self.runs.iter().filter(|r| r.used).count()
    }

    /// Full structural check (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check_invariants(&self) {
        let mut committed = 0;
        let mut cand = 0;
        let mut live = 0;
        for (id, r) in self.runs.iter().enumerate().filter(|(_, r)| r.used) {
            committed += r.pages << self.shift;
            let mut lp = 0;
            for p in r.first..r.first + r.pages {
                let pg = self.page_at(p);
                assert_eq!(pg.run, id as u32, "page {p} must point at its run");
                if pg.live > 0 {
                    lp += 1;
                }
            }
            assert_eq!(lp, r.live_pages, "run {id} live pages");
            assert_eq!(
                r.live_pages == 0,
                r.ticket != 0,
                "run {id}: candidate iff empty"
            );
            if r.ticket != 0 {
                cand += r.pages << self.shift;
            }
        }
        for (c, chunk) in self.dir.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (i, pg) in chunk.iter().enumerate() {
                live += pg.live;
                if !self.asleep {
                    assert!(
                        pg.live == 0 || pg.run != NIL,
                        "page {} live without a run",
                        c * CHUNK_PAGES as usize + i
                    );
                }
            }
        }
        let shared: u64 = self
            .runs
            .iter()
            .filter(|r| r.used && r.shared)
            .map(|r| r.pages << self.shift)
            .sum();
        assert_eq!(shared, self.shared_committed, "shared bytes");
        assert_eq!(committed, self.committed);
        assert_eq!(cand, self.candidate_bytes);
        assert_eq!(live, self.live);
        assert!(self.asleep || self.committed >= self.live);
    }

    /// Gives every run back and drops the fences (arena teardown). Only call
    /// when nothing uses the memory any more.
    pub fn release_all(&mut self) {
        self.streams.clear(&self.driver);
        self.decommit_everything();
    }

    /// Decommits a run whatever its state (sleep, teardown, rollback).
    fn force_decommit(&mut self, id: u32) -> u64 {
        if self.runs[id as usize].ticket == 0 {
            self.runs[id as usize].ticket = u64::MAX;
            self.candidate_bytes += self.runs[id as usize].pages << self.shift;
        }
        self.decommit(id)
    }

    fn decommit_everything(&mut self) -> u64 {
        let mut bytes = 0;
        for id in 0..self.runs.len() as u32 {
            if self.runs[id as usize].used {
                bytes += self.force_decommit(id);
            }
        }
        self.queue.clear();
        self.queue_head = 0;
        self.shared_pending.clear();
        bytes
    }

    /// Whether the pages are asleep (given back, live bytes kept).
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Contiguous ranges of pages with live bytes: (first page, pages).
    pub fn live_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (c, chunk) in self.dir.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            for (i, pg) in chunk.iter().enumerate() {
                if pg.live == 0 {
                    continue;
                }
                let p = c as u64 * CHUNK_PAGES + i as u64;
                match out.last_mut() {
                    Some((f, n)) if *f + *n == p => *n += 1,
                    _ => out.push((p, 1)),
                }
            }
        }
        out
    }

    /// Gives back every physical page while keeping the page table's live
    /// bytes: the addresses stay reserved and the pages read as asleep.
    /// Callers make sure no work uses the memory (they waited on the fences
    /// of its streams). Returns the bytes given back.
    pub fn sleep(&mut self) -> u64 {
        let bytes = self.decommit_everything();
        self.asleep = true;
        bytes
    }

    /// Recommits every page with live bytes at the same addresses, in runs
    /// of contiguous pages (up to `max_run`). On failure, gives back what it
    /// made and stays asleep. Returns the bytes committed.
    pub fn wake(&mut self) -> Result<u64> {
        if !self.asleep {
            return Ok(0);
        }
        let max_pages = self.config.max_run >> self.shift;
        let mut made: Vec<u32> = Vec::new();
        let mut bytes = 0;
        for (first, pages) in self.live_ranges() {
            let mut p = first;
            while p < first + pages {
                let n = max_pages.min(first + pages - p);
                match self.commit_run(p, n, false) {
                    Ok(run) => {
                        self.runs[run as usize].live_pages = n;
                        made.push(run);
                        bytes += n << self.shift;
                    }
                    Err(e) => {
                        for run in made {
                            self.runs[run as usize].live_pages = 0;
                            self.force_decommit(run);
                        }
                        self.queue.clear();
                        self.queue_head = 0;
                        return Err(e);
                    }
                }
                p += n;
            }
        }
        self.asleep = false;
        Ok(bytes)
    }
}

fn is_oom(e: &Error) -> bool {
    matches!(e, Error::OutOfMemory(_)) || e.driver_kind() == Some(ErrorKind::OutOfMemory)
}
