//! One reservation split into regions; offsets ↔ pointers; routing to the
//! policies.
//!
//! ```text
//! reservation: [ blocks: slabs + large spans (TLSF, 512 B quantum) | stitch: stitched ranges | buffers: scratch arenas, growable buffers ]
//! ```
//!
//! [`Arena`] is the `&mut self` core: single-threaded, no locks.
//! [`SharedArena`] puts one behind a lock; wrappers in [`crate::api`]
//! implement the allocator traits on it.
//!
//! This module holds the type, its construction and the routing of
//! allocations and frees to the regions; each other job has its own file:
//! the buffers region (`buffers`), growable ranges (`grow`) and scratch
//! ranges (`scratch`) in it, giving idle memory back (`reclaim`), sleep
//! and wake (`sleep`), accounting (`accounting`), reports (`report`), peer
//! access (`peer`), buffers shared between processes (`ipc`), and the
//! arena behind a lock (`shared`).
//!
//! ```
//! use gpu_arena::{Arena, ArenaConfig, Kind};
//! use gpu_arena::driver::HostDriver;
//! let mut arena = Arena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let p = arena.alloc(1 << 20, 256)?; // committed lazily, 1 MiB
//! assert!(arena.stats().committed >= 1 << 20);
//! arena.free(p)?;
//! arena.trim();
//! assert_eq!(arena.stats().committed, 0);
//! # Ok::<(), gpu_arena::Error>(())
//! ```

mod accounting;
mod buffers;
mod copy;
mod grow;
mod ipc;
mod peer;
mod reclaim;
mod report;
pub(crate) mod scratch;
mod shared;
mod sleep;

pub use accounting::Accounting;
pub use grow::GrowRange;
pub use scratch::{ScratchConfig, ScratchRange};
pub use shared::SharedArena;
use sleep::Sleeping;
pub use sleep::{Obtained, SleepMode, SleepReport, StageNeed, obtain};

use crate::commit::pages::Cost;
use crate::commit::{Backing, Commit, CommitConfig, Reservation};
use crate::driver::{Access, DevicePtr, Driver, Location, Stream};
use crate::error::{BadPointer, Error, Result};
use crate::meta::{MetaMap, MetaVec};
use crate::policy::large::{Large, Unfreed};
use crate::policy::slab::{Freed, Slabs};
use crate::policy::{Policy, classes};
use crate::stats::PolicyStats;
use crate::sync::Stamp;
use crate::sync::streams::{NO_SLOT, OVERFLOW};

/// Which memory an arena hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// Memory of the device with this ordinal (on the host backend: host
    /// memory that behaves like a device's).
    Device(u32),
    /// Pinned host memory (VMM host-located) that the CPU and device 0 can
    /// read and write.
    PinnedHost,
}

/// The reservation an arena makes when [`ArenaConfig::reservation`] is 0,
/// in multiples of the device's memory (at most the driver's limit).
pub const AUTO_RESERVATION_FACTOR: u64 = 8;

/// Settings of an arena.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ArenaConfig {
    /// Bytes of virtual address space to reserve (0:
    /// [`AUTO_RESERVATION_FACTOR`] times the device's memory, at most the
    /// driver's limit).
    pub reservation: u64,
    /// Smallest reservation accepted when the configured one is refused:
    /// the arena halves and retries down to this, and says so once.
    pub min_reservation: u64,
    /// Fraction of the reservation given to the blocks region (slabs and
    /// large spans); two thirds of the rest hold stitched ranges (blocks
    /// that no place in the blocks region could hold without a remap), one
    /// third scratch arenas and growable buffers.
    pub blocks_fraction: f64,
    /// Quantum of large spans (a power of two of at most 64 KiB, the
    /// smallest slab, and at most the page; PyTorch rounds to 512 bytes).
    pub quantum: u64,
    /// Keep a slab that emptied while it is the last of its size class for
    /// its stream, so that the class's next object needs no new slab (on by
    /// default). Off, an emptied slab goes back to the blocks region at
    /// once: over the shared traces' layouts the peaks are tighter (15 of 160
    /// layouts above 1.02 peak physical / peak live against 41, the weights
    /// tagged included) and training settles in every layout, where a
    /// workload whose small objects come and go one at a time makes a slab
    /// for most of them (BERT inference: one per 8 allocations, 31 % more
    /// instructions per call). `docs/pytorch.md`, "One trace, sixteen
    /// layouts".
    pub keep_empty_slabs: bool,
    /// Which blocks go to the end of a live stitched block's last page, if
    /// one of their stream holds them (see [`tails`](crate::commit::tails)
    /// and [`TailUse`]).
    pub tails: TailUse,
    /// Commit settings.
    pub commit: CommitConfig,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            reservation: 0,
            min_reservation: 1 << 30,
            blocks_fraction: 0.25,
            quantum: 512,
            keep_empty_slabs: true,
            tails: TailUse::Costly,
            commit: CommitConfig::default(),
        }
    }
}

/// Which blocks an arena places in the ends of live stitched blocks' last
/// pages ([`ArenaConfig::tails`]; see [`tails`](crate::commit::tails)).
///
/// Measured over the shared traces' 160 layouts
/// (`docs/pytorch/fresh-pages-20261129/`, with a block on fresh pages
/// taking a cached stitched range): with none, 38 keep more than 1.02
/// peak physical / peak live and 51 call the driver more than once per
/// 1,000 allocations in some repetition from the second; with `Costly`, 32
/// and 47. With `Always`, 48 and 45 (GPT-2 generation over 1.02 in 1 of
/// 32 against 17, but serving in 26 against 0). Before that rule, `Costly`
/// cost the serving trace's recorded layout its settled passes
/// (`docs/pytorch/tails-20261129/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum TailUse {
    /// None.
    Off,
    /// Blocks whose cheapest place in the blocks region needs a driver
    /// call (fresh pages, or pages whose handles are in use elsewhere).
    Costly,
    /// Every block a tail holds, before the blocks region is looked at.
    Always,
}

impl TailUse {
    /// Every setting.
    pub const ALL: [TailUse; 3] = [TailUse::Off, TailUse::Costly, TailUse::Always];

    /// The setting named `word` ([`name`](Self::name)), if any.
    pub fn from_name(word: &str) -> Option<TailUse> {
        Self::ALL.into_iter().find(|t| t.name() == word)
    }

    /// The word `GPU_ARENA_CONF`'s `tails` takes for it.
    pub const fn name(self) -> &'static str {
        match self {
            TailUse::Off => "off",
            TailUse::Costly => "costly",
            TailUse::Always => "always",
        }
    }
}

/// The largest alignment an arena serves, in pages.
const MAX_ALIGN_PAGES: u64 = 512;

/// What a page whose handle is in use elsewhere costs a placement, in
/// fresh pages: a remap (or a stitched range) is worth avoiding when a few
/// fresh pages would do.
const REMAP_WEIGHT: u64 = 4;

/// What a scratch arena shares with its arena: its bump cursor (absolute
/// address; it derefs to it), so that the arena's stats count the bytes
/// bumped without the scratch arena taking the lock on its fast path, and
/// whether the arena sleeps, so that the fast path hands nothing out then.
#[derive(Debug, Default)]
pub struct ScratchShared {
    /// The bump cursor (absolute address).
    pub cursor: core::sync::atomic::AtomicU64,
    /// Set while the arena sleeps (its pages are unmapped).
    pub asleep: core::sync::atomic::AtomicBool,
}

impl core::ops::Deref for ScratchShared {
    type Target = core::sync::atomic::AtomicU64;
    fn deref(&self) -> &Self::Target {
        &self.cursor
    }
}

/// A scratch arena's [`ScratchShared`] state.
pub type ScratchCursor = std::sync::Arc<ScratchShared>;

/// One arena over one reservation (see the module docs).
pub struct Arena<D: Driver> {
    commit: Commit<D>,
    kind: Kind,
    host_visible: bool,
    blocks: Large,
    slabs: Slabs,
    buffers: Large,
    /// What every allocation and free reads or counts, in one line.
    hot: Hot,
    /// Offset of the buffers region (after the stitch region).
    buffers_start: u64,
    scratch: PolicyStats,
    grow: PolicyStats,
    config: ArenaConfig,
    /// The reservation fell back to a smaller size than configured.
    fallback: Option<u64>,
    /// Each buffer by offset in the buffers region: its policy and
    /// committed prefix (see [`buffers`](self::buffers)).
    buffer_kinds: MetaMap<u64, buffers::BufferRec>,
    /// Each scratch arena's base and bump cursor (an absolute address the
    /// scratch arena stores on its lock-free fast path): its live bytes are
    /// `cursor - base`, read when stats are taken, so they never lag.
    scratch_cursors: MetaVec<(DevicePtr, ScratchCursor)>,
    /// Tag index reported in errors.
    tag: u32,
    /// Set while asleep: the pages were given back.
    sleeping: Option<Sleeping<D::Handle>>,
    /// Set while [`Arena::place_again`] looks a second time.
    placing_again: bool,
    /// Safe handles of the api layer that may hold host references into
    /// this arena's memory (allocator_api2 blocks, scratch arenas that
    /// handed out typed values, growable buffers whose slices were taken):
    /// a sleep, which unmaps every page, is refused while any is live.
    host_refs: u64,
}

/// The fields of an [`Arena`] that every allocation and free reads or
/// counts, kept in one cache line: between two of PyTorch's calls its own
/// work evicts the allocator's data from the first-level cache, and spread
/// over the arena's fields (which Rust lays out as it likes) these cost a
/// miss each on every call (`docs/pytorch.md`, "Fewer instructions, fewer
/// lines").
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Hot {
    /// Size of the blocks region (from the reservation's start).
    blocks_size: u64,
    /// Bytes handed out (blocks and slab objects; scratch arenas apart).
    live: u64,
    peak_live: u64,
    allocs: u64,
    frees: u64,
    /// `config.commit.stitch_min`: blocks of at least this many bytes may
    /// go to a stitched range.
    stitch_min: u64,
    /// `config.tails`.
    tails: TailUse,
    /// The largest alignment served (see `Arena::max_align`).
    max_align: u64,
    /// Set while asleep (`Arena::sleeping` holds what waking needs).
    asleep: bool,
    /// Whether a scratch arena is tracked (its bumps are live bytes that
    /// an allocation's peak must see), read here rather than in the list.
    scratch: bool,
}

impl<D: Driver> core::fmt::Debug for Arena<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena")
            .field("kind", &self.kind)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Arena<D> {
    /// An arena of `kind` memory over `driver`.
    ///
    /// May call the driver (one reservation). Errors if the kind is not
    /// available on this driver or no reservation of at least
    /// `config.min_reservation` bytes can be made.
    pub fn new(driver: D, kind: Kind, config: ArenaConfig) -> Result<Self> {
        let caps = *driver.capabilities();
        let page = caps.granularity as u64;
        if !page.is_power_of_two() || page > 1 << 30 {
            return Err(Error::Unsupported(
                "the driver's granularity must be a power of two of at most 1 GiB",
            ));
        }
        // A slab's span is taken from the blocks region rounded to the
        // quantum, and given back as the slab's own bytes: the smallest
        // slab bounds the quantum.
        if !config.quantum.is_power_of_two()
            || config.quantum > page
            || config.quantum > classes::slab_bytes(0)
        {
            return Err(Error::Config(
                "quantum must be a power of two no larger than the page nor than 64 KiB (a slab)",
            ));
        }
        if !(0.05..=0.95).contains(&config.blocks_fraction) {
            return Err(Error::Config(
                "blocks_fraction must be between 0.05 and 0.95",
            ));
        }
        let (location, access, host_visible) = match kind {
            Kind::Device(d) => {
                if d >= caps.device_count {
                    return Err(Error::Config("no such device ordinal on this driver"));
                }
                (
                    Location::Device(d),
                    [
                        Access::read_write(Location::Device(d)),
                        Access::read_write(Location::Device(d)),
                    ],
                    caps.cpu_reads_device_memory,
                )
            }
            Kind::PinnedHost => {
                if !caps.host_memory {
                    return Err(Error::Unsupported(
                        "this driver cannot create pinned host memory",
                    ));
                }
                (
                    Location::Host,
                    [
                        Access::read_write(Location::Device(0)),
                        Access::read_write(Location::Host),
                    ],
                    true,
                )
            }
        };
        let access: &[Access] = if access[0] == access[1] {
            &access[..1]
        } else {
            &access[..]
        };
        let want = if config.reservation == 0 {
            caps.device_memory
                .saturating_mul(AUTO_RESERVATION_FACTOR)
                .clamp(4 * page, caps.max_reservation)
        } else {
            config.reservation
        };
        let want = want / (2 * page) * (2 * page);
        if want < 2 * page {
            return Err(Error::Config("reservation must be at least two pages"));
        }
        // Offsets are aligned within the reservation, so the base must be
        // aligned as much as the largest alignment served; a driver that
        // refuses such an alignment gets a page-aligned reservation (and
        // the arena serves less: see `max_align`).
        let res =
            Reservation::reserve(driver, want, config.min_reservation, page * MAX_ALIGN_PAGES)?;
        let (size, fell_back) = (res.size(), res.fell_back());
        if fell_back {
            eprintln!(
                "gpu-arena: a reservation of {want} bytes was refused; using {size} bytes (configure `reservation` to choose)"
            );
        }
        let blocks_size = ((size as f64 * config.blocks_fraction) as u64) / page * page;
        // Stitched ranges take the most address space: a workload with many
        // block sizes keeps about 20 times its peak of live bytes in cached
        // ranges (BERT inference's trace: 14.6 GB for 733 MiB).
        let stitch_size = (size - blocks_size) / 3 * 2 / page * page;
        let buffers_start = blocks_size + stitch_size;
        let commit = Commit::new(
            res,
            location,
            access,
            config.commit,
            (blocks_size, stitch_size),
        );
        let max_align = Self::max_align(page, commit.base());
        Ok(Arena {
            commit,
            kind,
            host_visible,
            blocks: Large::new(blocks_size, config.quantum),
            slabs: Slabs::keeping_empty(config.keep_empty_slabs),
            buffers: Large::new(size - buffers_start, page),
            hot: Hot {
                blocks_size,
                live: 0,
                peak_live: 0,
                allocs: 0,
                frees: 0,
                stitch_min: config.commit.stitch_min,
                tails: config.tails,
                max_align,
                asleep: false,
                scratch: false,
            },
            buffers_start,
            scratch: PolicyStats::default(),
            grow: PolicyStats::default(),
            config,
            fallback: fell_back.then_some(size),
            buffer_kinds: MetaMap::with_hasher_in(Default::default(), std::alloc::System),
            scratch_cursors: MetaVec::new_in(std::alloc::System),
            tag: 0,
            sleeping: None,
            placing_again: false,
            host_refs: 0,
        })
    }

    /// The memory kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// Whether the CPU may read and write this arena's memory.
    pub fn host_visible(&self) -> bool {
        self.host_visible
    }
    /// The driver.
    pub fn driver(&self) -> &D {
        self.commit.driver()
    }
    /// The page (granularity) size.
    pub fn page(&self) -> u64 {
        self.commit.page()
    }
    /// Reservation base and size.
    pub fn reservation(&self) -> (DevicePtr, u64) {
        (self.base_ptr(), self.commit.size())
    }

    /// The reservation's base.
    #[inline]
    fn base_ptr(&self) -> DevicePtr {
        DevicePtr::new(self.commit.base())
    }
    /// The pointer at offset `off` of the reservation.
    #[inline]
    fn ptr_at(&self, off: u64) -> DevicePtr {
        self.base_ptr().byte_add(off)
    }
    /// `ptr`'s offset in the reservation, wrapping for a pointer below the
    /// base (so that one comparison with the size rejects both sides).
    #[inline]
    fn off_of(&self, ptr: DevicePtr) -> u64 {
        ptr.addr().wrapping_sub(self.commit.base())
    }
    /// The reservation size obtained when the configured one was refused.
    pub fn reservation_fallback(&self) -> Option<u64> {
        self.fallback
    }
    /// Settings in force.
    pub fn config(&self) -> &ArenaConfig {
        &self.config
    }
    /// Changes the commit limit.
    pub fn set_limit(&mut self, limit: u64) {
        self.commit.set_limit(limit);
        self.config.commit.limit = limit;
    }

    /// Shares a limit with other arenas (see [`Budget`](crate::commit::Budget)):
    /// commits must then fit under this arena's limit and the budget's.
    pub fn set_budget(&mut self, budget: std::sync::Arc<crate::commit::Budget>) {
        self.commit.set_budget(budget);
    }

    /// Whether `ptr` lies in this arena's reservation.
    #[inline]
    pub fn contains(&self, ptr: DevicePtr) -> bool {
        self.off_of(ptr) < self.commit.size()
    }

    /// The largest alignment served: [`MAX_ALIGN_PAGES`] pages, or less if
    /// the reservation's base is less aligned (offsets are aligned within
    /// the reservation, so a pointer is only as aligned as the base).
    fn max_align(page: u64, base: u64) -> u64 {
        (page * MAX_ALIGN_PAGES).min(1 << base.trailing_zeros().min(63))
    }

    fn check_layout(&self, size: u64, align: u64) -> Result<()> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let max = self.hot.max_align;
        if !align.is_power_of_two() || align > max {
            return Err(Error::BadAlignment { align, max });
        }
        if size > self.hot.blocks_size {
            return Err(Error::TooLarge {
                size,
                max: self.hot.blocks_size,
            });
        }
        Ok(())
    }

    /// Allocates `size` bytes aligned to `align` for the default stream.
    /// See [`Arena::alloc_on`].
    #[inline]
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<DevicePtr> {
        self.alloc_on(size, align, Stream::DEFAULT)
    }

    /// Allocates `size` bytes aligned to `align` (a power of two) for use on
    /// `stream`. Memory freed on `stream` is reused at once; memory freed on
    /// other streams only after their fences completed.
    ///
    /// Constant time when a slab or a free span can serve it; may call the
    /// driver (commit) otherwise.
    pub fn alloc_on(&mut self, size: u64, align: u64, stream: Stream) -> Result<DevicePtr> {
        self.check_layout(size, align)?;
        self.awake()?;
        let slot = self.commit.streams.slot(stream);
        let (off, bytes, _) = match classes::class_for(size, align) {
            Some(class) => match self.slabs.alloc(slot, class) {
                Some(off) => (off, classes::SIZES[class] as u64, Policy::Slab),
                None => self
                    .alloc_slab_slow(slot, class)
                    .map_err(|e| self.enrich(e))?,
            },
            None => self
                .alloc_large(size, align, slot)
                .map_err(|e| self.enrich(e))?,
        };
        self.hot.allocs += 1;
        self.hot.live += bytes;
        self.hot.peak_live = self.hot.peak_live.max(self.hot.live);
        if self.hot.scratch {
            // Scratch bytes live now are live beside this block.
            self.note_peak();
        }
        Ok(self.ptr_at(off))
    }

    #[cold]
    #[inline(never)]
    fn alloc_slab_slow(&mut self, slot: u16, class: usize) -> Result<(u64, u64, Policy)> {
        // Objects freed on other streams may have become reusable.
        self.drain_deferred_slabs(false);
        if let Some(off) = self.slabs.alloc(slot, class) {
            return Ok((off, classes::SIZES[class] as u64, Policy::Slab));
        }
        let bytes = classes::slab_bytes(class);
        let span = self.place_span(bytes, bytes, slot)?;
        self.slabs.add_slab(span, class, slot);
        let off = self.slabs.alloc(slot, class).ok_or(Error::Unsupported(
            "a new slab could not serve its class (bug)",
        ))?;
        Ok((off, classes::SIZES[class] as u64, Policy::Slab))
    }

    fn alloc_large(&mut self, size: u64, align: u64, slot: u16) -> Result<(u64, u64, Policy)> {
        let (off, bytes) = self.place_block(size, align, slot, true)?;
        Ok((off, bytes, Policy::Large))
    }

    /// Finds a span in the blocks region and commits its pages (slab spans).
    fn place_span(&mut self, size: u64, align: u64, slot: u16) -> Result<u64> {
        self.place_block(size, align, slot, false)
            .map(|(off, _)| off)
    }

    /// Places a block where its pages cost the fewest driver calls: ready
    /// pages (mapped to idle handles, or shared with live neighbours) first,
    /// then fresh pages; a block that only fits where handles are in use
    /// elsewhere goes to a stitched range instead, and so does one that
    /// would map fresh pages where a cached stitched range needs none
    /// (when `stitchable` and at least `stitch_min` bytes). Returns
    /// (offset, bytes).
    ///
    /// Out of memory, it looks once more after a fence completed (see
    /// [`Arena::place_again`]).
    fn place_block(
        &mut self,
        size: u64,
        align: u64,
        slot: u16,
        stitchable: bool,
    ) -> Result<(u64, u64)> {
        let stitch = stitchable && size >= self.hot.stitch_min && align <= self.page();
        if stitchable && self.hot.tails == TailUse::Always {
            if let Some(placed) = self.place_in_tail(size, align, slot) {
                return Ok(placed);
            }
        }
        let tails = stitchable && self.hot.tails == TailUse::Costly;
        let pick = match self.pick(size, align, slot) {
            Ok(pick) => pick,
            // The blocks region has no room left: a tail or a stitched
            // range (their own region) may still hold the block.
            Err(full @ Error::AddressSpace { .. }) => {
                if tails {
                    if let Some(placed) = self.place_in_tail(size, align, slot) {
                        return Ok(placed);
                    }
                }
                if !stitch {
                    return Err(full);
                }
                return self.place_stitched(size, slot, false)?.ok_or(full);
            }
            Err(e) => return Err(e),
        };
        // What the pick's pricing found (read only for a block that may go
        // to a stitched range).
        let cost = pick.priced;
        // A block that would need a driver call here takes the end of a
        // live stitched block's last page instead, if one holds it: memory
        // committed already, which nothing else can use. Asked only where
        // the block would otherwise make a driver call (a cached stitched
        // range that serves needs none), so that a settled workload never
        // walks the ranges for it.
        if stitch && cost.blocked > 0 {
            // With tails, the cached ranges are asked first; when none
            // serves (and no tail holds the block, which changes nothing),
            // the new range is made without walking them again.
            if tails {
                if let Some(placed) = self.reuse_stitched(size, slot) {
                    return Ok(placed);
                }
                if let Some(placed) = self.place_in_tail(size, align, slot) {
                    return Ok(placed);
                }
            }
            return match self.place_stitched(size, slot, tails)? {
                Some(placed) => Ok(placed),
                // The stitch region is full: place it on fresh pages instead.
                None => self.place_block(size, align, slot, false),
            };
        }
        // A block that would map fresh pages here takes a cached stitched
        // range that needs no driver call, if one serves. Two cases made
        // this the rule. A block creeping up the top: a growing cache
        // copied into a slightly larger block, a page or two past the last
        // each time, its old copies freed behind it (a KV cache grown by
        // `torch.cat`); left to creep, it maps fresh pages every step and,
        // in the next repetition, creeps over pages never mapped. And a
        // block that took a cached range last repetition but finds the
        // blocks region's top cheaper this time (the serving trace's KV
        // blocks, once tails moved what lies below): placed on fresh pages
        // it maps them, and the repetition after that maps the next ones.
        // A cached range is found by size wherever it lies, so the next
        // repetition takes it again. (Until `docs/pytorch.md`'s "A block
        // on fresh pages takes a cached range", a block mostly on fresh
        // pages stayed here as memory being laid out.)
        if stitch && cost.unmapped > 0 {
            if let Some(placed) = self.reuse_stitched(size, slot) {
                return Ok(placed);
            }
        }
        if tails && !cost.is_free() {
            if let Some(placed) = self.place_in_tail(size, align, slot) {
                return Ok(placed);
            }
        }
        let backing = if pick.top {
            let room = self.hot.blocks_size.saturating_sub(pick.offset + pick.size);
            Backing::Top(room >> self.page().trailing_zeros())
        } else {
            Backing::Block
        };
        let a = self.blocks.take(pick).ok_or(Error::AddressSpace {
            requested: size,
            reserved: self.hot.blocks_size,
        })?;
        let waits = self.commit.streams.waits;
        if let Err(e) = self.commit.add_live(a.offset, a.size, slot, backing) {
            // Back with the stamp the span had: a free of this stream whose
            // fence is pending may lie in it.
            let streams = &self.commit.streams;
            self.blocks.untake(a.offset, |s| streams.done(s));
            return self.place_again(e, waits, size, align, slot, stitchable);
        }
        Ok((a.offset, a.size))
    }

    /// After `e`, committing a placed block's pages, with `waits` fence
    /// waits before it: out of memory, [`Arena::place_block`] looks once
    /// more after a fence completed, one the commit layer's out-of-memory
    /// ladder waited on, or else the oldest pending one of each stream,
    /// waited on here (never the device). The first look may have passed
    /// over spans freed on another stream whose fence was pending, on
    /// pages committed already, which the ladder below cannot see (it
    /// makes idle handles reusable).
    #[cold]
    #[inline(never)]
    fn place_again(
        &mut self,
        e: Error,
        waits: u64,
        size: u64,
        align: u64,
        slot: u16,
        stitchable: bool,
    ) -> Result<(u64, u64)> {
        if matches!(e, Error::OutOfMemory(_))
            && !self.placing_again
            && (self.commit.streams.waits != waits || self.commit.wait_oldest().unwrap_or(false))
        {
            self.placing_again = true;
            let r = self.place_block(size, align, slot, stitchable);
            self.placing_again = false;
            return r;
        }
        Err(self.live_in_report(e))
    }

    /// The bytes a block of `size` bytes holds in a stitched range: its
    /// size rounded to the blocks region's quantum, as a sized free of it
    /// is checked ([`Arena::free_sized`]).
    fn stitched_bytes(&self, size: u64) -> u64 {
        self.blocks.round(size).unwrap_or(size)
    }

    /// Places a block of `size` bytes in the end of a live stitched block's
    /// last page (see [`tails`](crate::commit::tails)): (offset, bytes), if
    /// a tail of its stream holds it. Tails are aligned to the quantum.
    fn place_in_tail(&mut self, size: u64, align: u64, slot: u16) -> Option<(u64, u64)> {
        if align > self.blocks.quantum() {
            return None;
        }
        let bytes = self.stitched_bytes(size);
        let off = self.commit.stitch_tail(bytes, slot)?;
        Some((off, bytes))
    }

    /// Places a block of `size` bytes in a cached stitched range that
    /// serves it with no driver call: (offset, bytes), if one does.
    fn reuse_stitched(&mut self, size: u64, slot: u16) -> Option<(u64, u64)> {
        let bytes = self.stitched_bytes(size);
        let off = self.commit.stitch_reuse(bytes, slot)?;
        Some((off, bytes))
    }

    /// Places a block of `size` bytes in a stitched range: (offset, bytes),
    /// or `None` when the stitch region has no room left. `walked`: a
    /// [`Arena::reuse_stitched`] of the block just found no cached range.
    fn place_stitched(&mut self, size: u64, slot: u16, walked: bool) -> Result<Option<(u64, u64)>> {
        let bytes = self.stitched_bytes(size);
        let made = if walked {
            self.commit.stitch_alloc_unreused(bytes, slot)
        } else {
            self.commit.stitch_alloc(bytes, slot)
        };
        match made {
            Ok(off) => Ok(Some((off, bytes))),
            Err(Error::AddressSpace { .. }) => Ok(None),
            Err(e) => Err(self.live_in_report(e)),
        }
    }

    /// Out-of-memory figures with the live bytes the stats show (the page
    /// table counts slab spans and buffer pages whole).
    fn live_in_report(&self, e: Error) -> Error {
        match e {
            Error::OutOfMemory(mut r) => {
                r.live = self.live_now();
                Error::OutOfMemory(r)
            }
            e => e,
        }
    }

    /// The cheapest place for a block in the blocks region (see
    /// [`Large::choose`]): a remap is priced as [`REMAP_WEIGHT`] fresh
    /// pages.
    fn pick(
        &mut self,
        size: u64,
        align: u64,
        slot: u16,
    ) -> Result<crate::policy::large::Pick<Cost>> {
        for attempt in 0..2 {
            let skipped = core::cell::Cell::new(Stamp::SAFE);
            let commit = &self.commit;
            let accept = |s: Stamp| {
                let ok = s.is_safe() || s.slot() == slot || commit.streams.done(s);
                if !ok {
                    skipped.set(s);
                }
                ok
            };
            let rank = |off: u64, len: u64| {
                let c = commit.cost(off, len);
                Some((c.unmapped + REMAP_WEIGHT * c.blocked, c))
            };
            let pick = self.blocks.choose(size, align, accept, rank);
            if !skipped.get().is_safe() {
                // Make the skipped stream's memory reusable later.
                let _ = self.commit.ensure_fence(skipped.get());
            }
            if let Some(p) = pick {
                return Ok(p);
            }
            if attempt == 0 {
                // Region full: fences may have completed since.
                self.commit.poll();
            }
        }
        Err(Error::AddressSpace {
            requested: size,
            reserved: self.hot.blocks_size,
        })
    }

    /// Frees a block on the default stream. See [`Arena::free_on`].
    #[inline]
    pub fn free(&mut self, ptr: DevicePtr) -> Result<()> {
        self.free_on(ptr, Stream::DEFAULT)
    }

    /// Frees the block at `ptr`, last used on `stream`.
    ///
    /// Foreign, interior and already-freed pointers are refused with
    /// [`Error::BadPointer`] and nothing changes. Constant time; may give
    /// pages back (driver calls) once their fences completed. Allowed while
    /// the arena is asleep (see [`Arena::sleep`]).
    pub fn free_on(&mut self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        self.free_checked(ptr, None, stream)
    }

    /// Like [`Arena::free_on`], and also checks that `size` is the size the
    /// block was allocated with (C ABI and PyTorch pass it; an alignment
    /// that raised a small block's class is allowed for).
    pub fn free_sized(&mut self, ptr: DevicePtr, size: u64, stream: Stream) -> Result<()> {
        self.free_checked(ptr, Some(size), stream)
    }

    fn bad(ptr: DevicePtr, kind: BadPointer) -> Error {
        Error::BadPointer { addr: ptr, kind }
    }

    fn free_checked(&mut self, ptr: DevicePtr, size: Option<u64>, stream: Stream) -> Result<()> {
        let off = self.off_of(ptr);
        if off >= self.hot.blocks_size {
            if off < self.commit.size() && self.commit.in_stitch_region(off) {
                return self.free_stitched(ptr, off, size, stream);
            }
            return Err(Self::bad(ptr, self.outside_blocks(off)));
        }
        // Allowed while asleep: the block's pages are then neither
        // recommitted nor restored by the wake.
        let (slot, stamp) = match self.commit.streams.slot(stream) {
            NO_SLOT => self.overflow_free(ptr, stream),
            slot => (slot, self.commit.streams.stamp(slot)),
        };
        // One lookup: the slab policy says Foreign when no slab holds `off`.
        match self.slabs.free(off, slot, stamp, size) {
            Err(BadPointer::Foreign) => {}
            Err(k) => return Err(Self::bad(ptr, k)),
            Ok(freed) => {
                let bytes = match freed {
                    Freed::Object { size } => size,
                    Freed::SlabEmpty {
                        size,
                        slab,
                        slab_bytes,
                        stamp,
                    } => {
                        let streams = &self.commit.streams;
                        self.blocks.free(slab, stamp, |s| streams.done(s));
                        self.commit.sub_live(slab, slab_bytes, stamp);
                        size
                    }
                };
                self.hot.frees += 1;
                self.hot.live -= bytes;
                return Ok(());
            }
        }
        // The size it was allocated with (rounded as it was then), if given.
        let asked = size.map(|s| if s == 0 { None } else { self.blocks.round(s) });
        let streams = &self.commit.streams;
        let freed = self.blocks.free_if(
            off,
            |have| asked.is_none_or(|a| a == Some(have)),
            stamp,
            |s| streams.done(s),
        );
        let have = match freed {
            Ok(have) => have,
            Err(Unfreed::Refused) => return Err(Self::bad(ptr, BadPointer::LayoutMismatch)),
            Err(Unfreed::NotAllocated) => {
                let kind = if self.blocks.containing(off).is_some() {
                    BadPointer::Interior
                } else {
                    BadPointer::DoubleFree
                };
                return Err(Self::bad(ptr, kind));
            }
        };
        self.commit.sub_live(off, have, stamp);
        self.hot.frees += 1;
        self.hot.live -= have;
        Ok(())
    }

    /// The slot and stamp of a free of `ptr` on a stream without a slot of
    /// its own (see [`Streams::slot`](crate::sync::Streams::slot)): a fence
    /// recorded now, and a slot no allocation has, so that the block waits
    /// for that fence before any stream takes it. A pointer that is no
    /// block records none; a free refused later for its size has recorded
    /// one, which is polled and dropped as any other.
    #[cold]
    #[inline(never)]
    fn overflow_free(&mut self, ptr: DevicePtr, stream: Stream) -> (u16, Stamp) {
        let stamp = if self.block_size(ptr).is_some() {
            self.commit.stamp_on(stream)
        } else {
            Stamp::SAFE
        };
        (OVERFLOW, stamp)
    }

    /// Frees a block of a stitched range (see [`Arena::free_checked`]).
    fn free_stitched(
        &mut self,
        ptr: DevicePtr,
        off: u64,
        size: Option<u64>,
        stream: Stream,
    ) -> Result<()> {
        if let Some(size) = size {
            let have = self.commit.stitch_size(off);
            if have.is_some() && (size == 0 || self.blocks.round(size) != have) {
                return Err(Self::bad(ptr, BadPointer::LayoutMismatch));
            }
        }
        let stamp = self.commit.stamp_on(stream);
        let bytes = self.commit.stitch_free(off, stamp)?;
        self.hot.frees += 1;
        self.hot.live -= bytes;
        Ok(())
    }

    /// What a pointer at `off`, beyond the blocks and stitch regions, is:
    /// scratch memory (freed all at once by a reset), or foreign.
    #[cold]
    fn outside_blocks(&self, off: u64) -> BadPointer {
        let Some(o) = off.checked_sub(self.buffers_start) else {
            return BadPointer::Foreign;
        };
        if o >= self.buffers.capacity() {
            return BadPointer::Foreign;
        }
        let start = match self.buffers.size_of(o) {
            Some(_) => Some(o),
            None => self.buffers.containing(o).map(|(start, _)| start),
        };
        match start
            .and_then(|s| self.buffer_kinds.get(&s))
            .map(|b| b.policy)
        {
            Some(Policy::Scratch) => BadPointer::Scratch,
            _ => BadPointer::Foreign,
        }
    }

    /// The size of the live block starting at `ptr`, if any.
    pub fn block_size(&self, ptr: DevicePtr) -> Option<u64> {
        let off = self.off_of(ptr);
        if off >= self.hot.blocks_size {
            return (off < self.commit.size() && self.commit.in_stitch_region(off))
                .then(|| self.commit.stitch_size(off))
                .flatten();
        }
        if self.slabs.owns(off) {
            self.slabs.size_of(off)
        } else {
            self.blocks.size_of(off)
        }
    }

    /// The tag index this arena reports in errors.
    pub fn set_tag(&mut self, tag: u32) {
        self.tag = tag;
    }
}

impl<D: Driver> Drop for Arena<D> {
    fn drop(&mut self) {
        if let Some(Sleeping {
            stage: Some(stage), ..
        }) = self.sleeping.take()
        {
            self.commit.forget_stage(stage);
        }
        // Dropping `commit` next gives back the spare stage, every unit,
        // then the reservation.
    }
}
