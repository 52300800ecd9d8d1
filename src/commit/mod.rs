//! Physical memory: a pool of handles that moves to where blocks need it.
//!
//! The page table ([`pages`]) records, for every granularity-sized page of
//! the reservation, its live bytes and the mapping backing it. Mappings and
//! handles ("units") live in the pool ([`pool`]); a unit may be mapped at
//! several addresses at once, and at most one of its mappings holds live
//! bytes at a time. So physical memory freed at one address serves a block
//! at another with no copy and, once an alias mapping exists, no driver call
//! at all: memory freed on a stream is reused by that stream at once, at any
//! address (stream order covers it), and by other streams once the fences
//! of its frees completed.
//!
//! Live bytes are added and taken back in `live.rs` (units follow the pages
//! that hold live bytes). How a block gets physical memory (see [`back`]):
//! 1. the arena places it where the page table says its pages are *ready*
//!    (mapped to idle units, or already live): no driver call;
//! 2. pages with no mapping are mapped to idle units found anywhere, oldest
//!    idle first (map + one set_access per range), or to a new handle;
//! 3. where no place is free of conflicts, the arena asks for a *stitched*
//!    range instead ([`stitched`]): a fresh virtual range mapped to idle
//!    units, kept for reuse after the block is freed. A workload that repeats
//!    finds its ranges again and makes no driver call in steady state.
//!
//! Idle units go back to the driver along a decay curve ([`decay`],
//! [`reclaim`]): never on the allocating thread's hot path, at once on
//! [`Commit::trim`], and first on the out-of-memory ladder (give idle memory
//! back, then wait on the oldest fences only, then [`Error::OutOfMemory`](crate::error::Error::OutOfMemory)).
//! Nothing is unmapped before the fences of the frees through that mapping
//! completed. A failed commit leaves nothing half-mapped.
//!
//! The reservation the page table covers is made and given back here too
//! ([`reservation`]): dropping a [`Commit`] releases everything it holds,
//! then frees the reservation.
//!
//! Sleep gives every unit back while the page table keeps the live bytes,
//! and wake recommits them at the same addresses in large handles
//! ([`sleep`]); shared units (inter-process sharing) are never reused once
//! empty (`shared.rs`).

mod access;
pub mod back;
pub mod budget;
mod calls;
mod config;
mod copy;
pub mod decay;
mod live;
pub mod pages;
mod park;
pub mod pool;
pub mod reclaim;
pub mod reservation;
mod shared;
pub mod sleep;
pub mod stage;
pub mod stitch;
pub mod stitched;
pub mod tails;
mod vmm;

pub use budget::Budget;
pub use calls::DriverCalls;
pub use stitched::StitchCounts;

pub use config::{CommitConfig, RangeOrder};
pub use pages::Cost;
pub use reservation::Reservation;

use crate::driver::{Access, Driver, Location};
use crate::error::{OomReport, Result};
use crate::meta::MetaVec;
use crate::sync::{Clock, Stamp, Streams};
use decay::Decay;
use pages::{NIL, PageTable};
use pool::Pool;
use stitch::Stitch;

/// How new handles for a range are cut (see [`back`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// One page each, so that idle memory can later move anywhere on its
    /// own (stitched ranges: their pages are units that move).
    Pages,
    /// A block of the blocks region below its top: one page each, as
    /// [`Backing::Pages`] (a block's lifetime differs from its
    /// neighbours'), but large handles where [`CommitConfig::bulk_streak`]
    /// is 0 (a tag's arenas: memory loaded to stay and put to sleep).
    Block,
    /// A block that extends the arena's top, with this many unmapped pages
    /// after it: one page each, unless the top keeps growing with no free
    /// in between (memory being loaded that stays), then large handles,
    /// stretched past the block (see [`CommitConfig::growth_ahead`]).
    Top(u64),
    /// Large handles (up to `max_run`): a buffer's pages live and go
    /// together (scratch arenas, growable buffers), and sleep and wake cost
    /// per handle.
    Whole,
    /// A cached stitched range whose busy pages are remapped: one page
    /// each, to the idle units mapped at the fewest other places.
    Repair,
}

/// State of one page, for snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PageState {
    /// Not backed by physical memory.
    Free,
    /// Backed, with live bytes.
    Live,
    /// Backed, empty: its unit is idle (kept for reuse until it decays) or
    /// in use through another mapping.
    Pending,
}

/// The page table and physical pool of one reservation.
///
/// Laid out in the order written (`repr(C)`): what most calls read or
/// write (the page table's chunk vector, the page size, the live bytes,
/// the free counters, the scratch vectors of a walk) comes first, in its
/// first 128 bytes, ahead of the pool and the cached ranges.
#[repr(C)]
pub struct Commit<D: Driver> {
    pages: PageTable,
    page: u64,
    shift: u32,
    /// Frees since the last look at the decay deadline.
    ticks: u32,
    /// Live bytes as the page table counts them.
    live: u64,
    peak_live: u64,
    /// Every unit was given back by `sleep`; pages keep their live bytes.
    /// Invariant: when false, `live > 0` implies the page has a mapping.
    asleep: bool,
    /// Clock (ms) before which no idle unit's allowance runs out.
    next_reclaim: u64,
    /// Allocations in a row at the arena's top with no free in between.
    streak: u64,
    /// Units whose change of owner left blocked bits to mark (first alias,
    /// owner), put aside by a walk over a block's pages (see `live`); empty
    /// between calls, kept for its capacity.
    marks: MetaVec<(u32, u32)>,
    /// The member mappings of a group being formed (see `stitched`); kept
    /// for its capacity.
    members: MetaVec<u32>,
    clock: Clock,
    decay: Decay,
    pool: Pool<D::Handle>,
    stitch: Stitch,
    /// Fence-tracked streams.
    pub streams: Streams<D::Fence>,
    config: CommitConfig,
    stitch_counts: StitchCounts,
    calls: DriverCalls,
    /// The reservation and its driver; freed after this type's own
    /// teardown (see `Drop`) unmapped and released everything in it.
    res: Reservation<D>,
    location: Location,
    access: MetaVec<Access>,
    peak_committed: u64,
    /// Shared units that went idle: given back as soon as their fences
    /// completed.
    shared_pending: MetaVec<u32>,
    /// Pages in shared units (a part of the committed pages).
    shared_pages: u64,
    /// Blocks in the ends of stitched blocks' last pages ([`tails`]).
    tails: tails::Tails,
    /// The heads of a walk over cached ranges in the order they were made
    /// ([`stitch::Walk`]), kept between walks.
    walk_heads: MetaVec<stitch::Head>,
    /// Handles (and their pages) whose release the driver refused: tried
    /// again by every reclaim and at teardown, counted as committed.
    unreleased: MetaVec<(D::Handle, u64)>,
    /// Pages of `unreleased`.
    unreleased_pages: u64,
    /// The limit shared with other arenas, if any (see [`Budget`]).
    budget: Option<std::sync::Arc<Budget>>,
    /// Pinned host memory kept for the next offload.
    spare_stage: Option<stage::Stage<D::Handle>>,
    /// Bytes of stages holding an asleep arena's contents.
    held_stage_bytes: u64,
}

impl<D: Driver> core::fmt::Debug for Commit<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Commit")
            .field("base", &format_args!("{:#x}", self.res.base()))
            .field("size", &self.res.size())
            .field("committed", &self.committed())
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Commit<D> {
    /// A page table over `res` (see [`Reservation::reserve`]), committing
    /// memory at `location` with `access`; `stitch_region` (offset, bytes;
    /// page-aligned) is the part of the reservation where stitched ranges
    /// go (see [`stitched`]). Owns the reservation from now on: dropping
    /// the page table gives back everything committed, then the
    /// reservation.
    pub fn new(
        res: Reservation<D>,
        location: Location,
        access: &[Access],
        config: CommitConfig,
        stitch_region: (u64, u64),
    ) -> Self {
        let page = res.driver.capabilities().granularity as u64;
        // Live bytes per page are counted in 32 bits.
        debug_assert!(
            page.is_power_of_two() && page <= 1 << 30,
            "granularity {page}"
        );
        let shift = page.trailing_zeros();
        let mut acc = MetaVec::new_in(std::alloc::System);
        acc.extend_from_slice(access);
        let max_run = (config.max_run.max(page) / page) * page;
        Commit {
            res,
            page,
            shift,
            location,
            access: acc,
            pages: PageTable::new(),
            pool: Pool::new(),
            stitch: Stitch::new(stitch_region.0 >> shift, stitch_region.1 >> shift),
            streams: Streams::new(),
            config: CommitConfig { max_run, ..config },
            decay: Decay {
                ms: config.decay_ms,
            },
            clock: Clock::system(),
            calls: DriverCalls::default(),
            stitch_counts: StitchCounts::default(),
            live: 0,
            peak_live: 0,
            peak_committed: 0,
            asleep: false,
            shared_pending: MetaVec::new_in(std::alloc::System),
            shared_pages: 0,
            marks: MetaVec::new_in(std::alloc::System),
            members: MetaVec::new_in(std::alloc::System),
            tails: tails::Tails::new(),
            walk_heads: MetaVec::new_in(std::alloc::System),
            unreleased: MetaVec::new_in(std::alloc::System),
            unreleased_pages: 0,
            budget: None,
            ticks: 0,
            next_reclaim: u64::MAX,
            streak: 0,
            spare_stage: None,
            held_stage_bytes: 0,
        }
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.res.driver
    }
    /// Page size (the driver's granularity).
    pub fn page(&self) -> u64 {
        self.page
    }
    /// Reservation base.
    pub fn base(&self) -> u64 {
        self.res.base()
    }
    /// Reservation size.
    pub fn size(&self) -> u64 {
        self.res.size()
    }
    /// Bytes committed now (each handle once, however many mappings it has).
    pub fn committed(&self) -> u64 {
        (self.pool.committed_pages() + self.unreleased_pages) << self.shift
    }
    /// Highest `committed` seen.
    pub fn peak_committed(&self) -> u64 {
        self.peak_committed
    }
    /// Live bytes as the page table counts them.
    pub fn live(&self) -> u64 {
        self.live
    }
    /// Committed bytes in idle units (no live bytes, kept for reuse).
    pub fn idle_bytes(&self) -> u64 {
        self.pool.idle_pages() << self.shift
    }
    /// Committed bytes with no live byte: idle units and shared units waiting
    /// for their fences.
    pub fn candidate_bytes(&self) -> u64 {
        let shared: u64 = self
            .shared_pending
            .iter()
            .map(|&u| self.pool.unit(u).pages)
            .sum();
        self.idle_bytes() + (shared << self.shift)
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
    /// The clock the decay reads.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
    /// Replaces the clock (tests step a [`Clock::manual`] by hand).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
        self.next_reclaim = 0;
    }
    /// Number of handles held.
    pub fn unit_count(&self) -> u64 {
        self.pool.unit_count() + self.unreleased.len() as u64
    }
    /// Number of mappings (a handle mapped at two addresses counts twice).
    pub fn mapping_count(&self) -> u64 {
        self.pool.map_count()
    }
    /// Stitched ranges kept (in use or cached).
    pub fn stitched_ranges(&self) -> usize {
        self.stitch.range_count()
    }
    /// Bytes of the stitch region handed out at least once.
    pub fn stitch_top(&self) -> u64 {
        self.stitch.top() << self.shift
    }
    /// Queries pending fences (never blocks).
    pub fn poll(&mut self) {
        self.streams.poll(&self.res.driver);
    }

    /// Waits until the work queued on every stream this arena has seen
    /// completed (fences of those streams only). See [`Streams::quiesce`].
    pub fn quiesce(&mut self) -> Result<()> {
        self.streams.quiesce(&self.res.driver)
    }

    /// Waits on the oldest pending fence of each stream (the
    /// out-of-memory ladder's last resort; never the device). Returns
    /// whether there was one to wait on.
    pub fn wait_oldest(&mut self) -> Result<bool> {
        self.streams.wait_oldest(&self.res.driver)
    }

    /// The stamp a free on `stream` gets now (see
    /// [`Streams::stamp_for`](crate::sync::Streams::stamp_for)).
    pub fn stamp_on(&mut self, stream: crate::driver::Stream) -> Stamp {
        self.streams.stamp_for(&self.res.driver, stream)
    }

    /// Records a fence covering `stamp` if none was recorded yet.
    pub fn ensure_fence(&mut self, stamp: Stamp) -> Result<()> {
        self.streams.ensure_fence(&self.res.driver, stamp)
    }

    /// Whether the free path gives idle memory back itself.
    pub fn set_reclaim_on_free(&mut self, on: bool) {
        self.config.reclaim_on_free = on;
    }

    /// Changes the limit (takes effect for later commits).
    pub fn set_limit(&mut self, limit: u64) {
        self.config.limit = limit;
    }

    /// Shares `budget`'s limit with the other arenas that use it: this
    /// arena's committed bytes are taken from it from now on (what is
    /// committed already is taken at once). Later commits must fit under
    /// both this arena's limit and the budget's.
    pub fn set_budget(&mut self, budget: std::sync::Arc<Budget>) {
        if let Some(old) = self.budget.take() {
            old.give(self.committed());
        }
        budget.take(self.committed());
        self.budget = Some(budget);
    }

    /// The budget shared with other arenas, if any.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_deref()
    }

    /// Takes `pages` from the shared budget, if any; false when they do
    /// not fit under its limit.
    pub(super) fn budget_try_take(&self, pages: u64) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|b| b.try_take(pages << self.shift))
    }

    /// Gives `pages` back to the shared budget, if any.
    pub(super) fn budget_give(&self, pages: u64) {
        if let Some(b) = &self.budget {
            b.give(pages << self.shift);
        }
    }

    /// The limit in force: this arena's, or the shared budget's where lower.
    pub fn effective_limit(&self) -> u64 {
        self.budget
            .as_ref()
            .map_or(self.config.limit, |b| b.limit().min(self.config.limit))
    }

    /// Resets the peaks (committed and live) to the current values.
    pub fn reset_peak(&mut self) {
        self.peak_committed = self.committed();
        self.peak_live = self.live;
    }

    /// The first and the last page of `len` bytes (at least one) at `off`.
    #[inline]
    pub fn span(&self, off: u64, len: u64) -> (u64, u64) {
        (off >> self.shift, (off + len - 1) >> self.shift)
    }

    /// Whether the first and the last page of `len` bytes at `off` are used
    /// only in part (shared with neighbours): such a page is backed by a
    /// unit of its own (see [`back`]).
    #[inline]
    fn partial_edges(&self, off: u64, len: u64) -> (bool, bool) {
        let end = off + len;
        let single_small = (off >> self.shift) == ((end - 1) >> self.shift) && len < self.page;
        (
            off & (self.page - 1) != 0 || single_small,
            end & (self.page - 1) != 0,
        )
    }

    /// Whether a block on pages `a..=b` (with `edges` from
    /// [`Commit::partial_edges`]) taking an idle mapping of pages
    /// `first..first + pages` that backs one of them would leave pages
    /// committed for nothing (see [`back`]): the mapping reaches past the
    /// range (a unit only moves whole, so the pages outside stay committed
    /// while the block lives), or it joins a partly used boundary page to
    /// others (they stay committed while a neighbour lives on that page
    /// after the block is freed).
    #[inline]
    fn strands(first: u64, pages: u64, a: u64, b: u64, edges: (bool, bool)) -> bool {
        // A mapping of one page backing a page of the range strands none
        // (the common case, asked first).
        let next = first + pages;
        pages > 1
            && (first < a || next > b + 1 || (edges.0 && first == a) || (edges.1 && next == b + 1))
    }

    /// What placing `len` bytes at `off` would take (pages with no mapping,
    /// pages whose unit is in use elsewhere). Pages already live cost
    /// nothing.
    ///
    /// # Time complexity
    /// O(pages / 64).
    #[inline]
    pub fn cost(&self, off: u64, len: u64) -> Cost {
        let (a, b) = self.span(off, len.max(1));
        let mut c = self.pages.cost(a, b);
        // The boundary pages may be live and unmapped only while asleep;
        // live pages are mapped, so `unmapped` counts only empty ones.
        if self.asleep {
            c.unmapped = b - a + 1;
        }
        c
    }

    /// Whether every page of `off..off+len` is committed.
    pub fn is_committed(&self, off: u64, len: u64) -> bool {
        len == 0 || self.cost(off, len).unmapped == 0
    }

    /// The figures an out-of-memory error carries.
    pub fn oom_report(&self, requested: u64) -> OomReport {
        let reclaimable = self.reclaimable();
        OomReport {
            requested,
            live: self.live,
            committed: self.committed(),
            limit: self.effective_limit(),
            reclaimable,
            pending: self.candidate_bytes().saturating_sub(reclaimable),
            pending_fences: self.streams.pending_fences() as u64,
            ..Default::default()
        }
    }

    /// Idle bytes whose fences completed (as last polled): given back at
    /// once by `trim`.
    pub fn reclaimable(&self) -> u64 {
        let done = |s: Stamp| self.streams.done(s);
        let mut pages = 0;
        for u in self.pool.idle_units() {
            if self.pool.unit_all_done(u, done) {
                pages += self.pool.unit(u).pages;
            }
        }
        for &u in &self.shared_pending {
            if self.pool.unit(u).stamps.all_done(done) {
                pages += self.pool.unit(u).pages;
            }
        }
        pages << self.shift
    }

    /// Visits every page that is committed or has live bytes: (page index,
    /// state, live bytes).
    pub fn for_each_page(&self, mut f: impl FnMut(u64, PageState, u64)) {
        self.pages.for_each_touched(|p, live, map, _| {
            if map == NIL {
                return;
            }
            let state = if live > 0 {
                PageState::Live
            } else {
                PageState::Pending
            };
            f(p, state, live as u64);
        });
    }

    /// Mappings: (first page, pages, live pages, idle?).
    pub fn for_each_run(&self, mut f: impl FnMut(u64, u64, u64, bool)) {
        for m in self.pool.map_ids() {
            let x = self.pool.map(m);
            let idle = self.pool.owner(x.unit) == NIL;
            f(x.first, x.pages, self.pool.live_pages(m), idle);
        }
    }

    /// Number of handles held.
    pub fn run_count(&self) -> usize {
        self.pool.unit_count() as usize
    }

    /// Whether the pages are asleep (given back, live bytes kept).
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Contiguous ranges of pages with live bytes: (first page, pages).
    pub fn live_ranges(&self) -> Vec<(u64, u64)> {
        self.pages.live_ranges()
    }

    /// Full structural check (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check_invariants(&self) {
        self.pool.check();
        self.stitch.check();
        self.tails.check(&self.stitch, self.shift);
        let mut live = 0u64;
        let mut live_pages = std::collections::HashMap::<u32, u64>::new();
        self.pages.for_each_touched(|p, l, m, blocked| {
            live += l as u64;
            if m == NIL {
                assert!(
                    self.asleep || l == 0,
                    "page {p} has {l} live bytes and no mapping"
                );
                assert!(!blocked, "unmapped page {p} marked blocked");
                return;
            }
            let x = self.pool.map(m);
            assert!(
                p >= x.first && p < x.first + x.pages,
                "page {p} outside its mapping {m}"
            );
            if l > 0 {
                *live_pages.entry(m).or_default() += 1;
            }
            let owner = self.pool.owner(x.unit);
            let should = l == 0 && owner != NIL && owner != m && !x.stitched;
            assert_eq!(
                blocked, should,
                "page {p}: blocked bit (owner {owner}, mapping {m})"
            );
        });
        for m in self.pool.map_ids() {
            let x = self.pool.map(m);
            assert_eq!(
                self.pool.live_pages(m),
                live_pages.get(&m).copied().unwrap_or(0),
                "mapping {m} live pages"
            );
            for p in x.first..x.first + x.pages {
                assert_eq!(self.pages.map(p), m, "page {p} of mapping {m}");
            }
        }
        assert_eq!(live, self.live, "live bytes");
        let shared: u64 = self
            .pool
            .unit_ids()
            .filter(|&u| self.pool.unit(u).shared)
            .map(|u| self.pool.unit(u).pages)
            .sum();
        assert_eq!(shared, self.shared_pages, "shared pages");
        // An empty shared unit is never reused: it must be waiting to go.
        for u in self.pool.unit_ids() {
            if self.pool.unit(u).shared && self.pool.owner(u) == NIL {
                assert!(
                    self.shared_pending.contains(&u),
                    "empty shared unit {u} not waiting to go back"
                );
            }
        }
        assert!(
            self.asleep || self.committed() >= self.live,
            "committed >= live"
        );
        assert!(self.peak_committed >= self.committed(), "peak committed");
    }
}

#[cfg(test)]
impl<'d, X: Driver> Commit<&'d X> {
    /// A page table over `pages` pages of a fresh reservation on `d`,
    /// device-located, default settings, with the stitch region at
    /// `stitch` (first page, pages): the unit tests' setup.
    pub(crate) fn for_tests(d: &'d X, pages: u64, stitch: (u64, u64)) -> Self {
        Self::for_tests_with(d, pages, stitch, CommitConfig::default())
    }

    /// [`Commit::for_tests`] with settings of the test's own.
    pub(crate) fn for_tests_with(
        d: &'d X,
        pages: u64,
        stitch: (u64, u64),
        config: CommitConfig,
    ) -> Self {
        let page = d.capabilities().granularity as u64;
        let res = Reservation::reserve(d, pages * page, 0, page).expect("reservation");
        let acc = [Access::read_write(Location::Device(0))];
        Commit::new(
            res,
            Location::Device(0),
            &acc,
            config,
            (stitch.0 * page, stitch.1 * page),
        )
    }
}

/// What the unit tests of this layer share: a checked host driver with
/// small pages, a page table on it with a clock the test moves, and the
/// end of a test (streams destroyed, nothing left with the driver).
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;

    use super::{Commit, PageState};
    use crate::driver::{Checked, Driver, Fault, FaultKind, HostConfig, HostDriver, Op, Stream};
    use crate::sync::Clock;

    /// Live bytes per page, as the page table reports them.
    pub(crate) fn live_pages(c: &Commit<&Checked<HostDriver>>) -> BTreeMap<u64, u64> {
        let mut out = BTreeMap::new();
        c.for_each_page(|p, state, live| {
            if state == PageState::Live {
                out.insert(p, live);
            }
        });
        out
    }

    /// Everything a refused call must leave as it was: live bytes per page
    /// and in all, and the mappings holding them (the out-of-memory ladder
    /// may give idle memory back before it refuses).
    pub(crate) fn state(
        c: &Commit<&Checked<HostDriver>>,
    ) -> impl PartialEq + core::fmt::Debug + use<> {
        let mut runs = Vec::new();
        c.for_each_run(|first, pages, live, _| {
            if live > 0 {
                runs.push((first, pages, live));
            }
        });
        runs.sort_unstable();
        (live_pages(c), runs, c.live())
    }

    /// The pages of [`driver`]: small, so that a program commits hundreds.
    pub(crate) const PAGE: u64 = 64 << 10;

    /// A checked host driver with [`PAGE`]-byte pages, 256 MiB of emulated
    /// memory and `devices` devices.
    pub(crate) fn driver_with(devices: u32) -> Checked<HostDriver> {
        Checked::new(
            HostDriver::with_config(HostConfig {
                granularity: PAGE as usize,
                capacity: 256 << 20,
                device_count: devices,
                ..Default::default()
            })
            .expect("host driver"),
        )
    }

    /// [`driver_with`] one device.
    pub(crate) fn driver() -> Checked<HostDriver> {
        driver_with(1)
    }

    /// Makes the next `n` calls of `op` on `d` fail with `kind`.
    pub(crate) fn refuse(d: &Checked<HostDriver>, op: Op, kind: FaultKind, n: u64) {
        for nth in 1..=n {
            d.inject(Fault { op, nth, kind });
        }
    }

    /// [`Commit::for_tests`] on `d`, its clock manual (nothing decays
    /// unless the test moves it).
    pub(crate) fn commit(
        d: &Checked<HostDriver>,
        pages: u64,
        stitch: (u64, u64),
    ) -> Commit<&Checked<HostDriver>> {
        let mut c = Commit::for_tests(d, pages, stitch);
        c.set_clock(Clock::manual());
        c
    }

    /// Destroys `streams` (their work done) and checks that the driver
    /// holds nothing: call once the page tables on `d` are dropped.
    pub(crate) fn finish(d: &Checked<HostDriver>, streams: &[Stream]) {
        for &s in streams {
            // SAFETY: the streams are idle and not used again.
            unsafe { d.destroy_stream(s).expect("destroy a stream") };
        }
        assert_eq!(d.leaks(), None);
    }
}

impl<D: Driver> Drop for Commit<D> {
    /// Gives back the pinned memory kept for offloads and every unit,
    /// whatever its state; the reservation, a field, is freed after this
    /// (no mapping is left in it then).
    fn drop(&mut self) {
        self.drop_spare_stage();
        self.release_all();
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{PAGE, commit, driver};
    use super::{Backing, Commit};
    use crate::driver::HostDriver;
    use crate::sync::Stamp;

    /// Which idle multi-page mappings a block may take: one reaching past
    /// the block's pages, or joining a partly used first or last page to
    /// others, would keep pages committed for nothing.
    #[test]
    fn a_mapping_strands_pages_when_it_reaches_past_or_joins_a_partial_edge() {
        let whole = (false, false);
        // A one-page mapping never strands.
        assert!(!Commit::<&HostDriver>::strands(3, 1, 3, 3, (true, true)));
        // Four pages 10..=13 for a block on 10..=13.
        assert!(!Commit::<&HostDriver>::strands(10, 4, 10, 13, whole));
        assert!(
            Commit::<&HostDriver>::strands(10, 4, 11, 13, whole),
            "starts before"
        );
        assert!(
            Commit::<&HostDriver>::strands(10, 4, 10, 12, whole),
            "ends after"
        );
        assert!(
            Commit::<&HostDriver>::strands(10, 4, 10, 13, (true, false)),
            "partial first"
        );
        assert!(
            Commit::<&HostDriver>::strands(10, 4, 10, 13, (false, true)),
            "partial last"
        );
        // Inside a longer block, its edges do not matter.
        assert!(!Commit::<&HostDriver>::strands(11, 2, 10, 13, (true, true)));
    }

    /// A block's first and last pages, and whether it shares them.
    #[test]
    fn spans_and_partial_edges() {
        let d = driver();
        let mut c = commit(&d, 16, (16, 0));
        assert_eq!(c.span(0, PAGE), (0, 0));
        assert_eq!(c.span(PAGE - 1, 2), (0, 1));
        assert_eq!(c.partial_edges(0, PAGE), (false, false));
        assert_eq!(
            c.partial_edges(0, 512),
            (true, true),
            "a small block shares its page"
        );
        assert_eq!(c.partial_edges(512, PAGE), (true, true));
        assert_eq!(c.partial_edges(PAGE, 2 * PAGE + 512), (false, true));
        // Cost and commitment follow the pages, not the bytes.
        assert_eq!(c.cost(0, 3 * PAGE).unmapped, 3);
        c.add_live(512, PAGE, 1, Backing::Pages).unwrap();
        assert!(c.is_committed(0, 2 * PAGE));
        assert!(c.cost(0, 2 * PAGE).is_free());
        assert_eq!(c.cost(0, 3 * PAGE).unmapped, 1);
        let r = c.oom_report(4 * PAGE);
        assert_eq!(
            (r.requested, r.live, r.committed),
            (4 * PAGE, PAGE, 2 * PAGE)
        );
        c.sub_live(512, PAGE, Stamp::SAFE);
        assert_eq!(c.reclaimable(), 2 * PAGE, "idle, fences done");
        c.trim();
        assert_eq!(c.committed(), 0);
    }
}
