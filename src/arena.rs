//! One reservation split into regions; offsets ↔ pointers; routing to the
//! policies.
//!
//! ```text
//! reservation: [ blocks: slabs + large spans (TLSF, 512 B quantum) | stitch: stitched ranges | buffers: scratch arenas, growable buffers ]
//! ```
//!
//! [`Arena`] is the `&mut self` core: single-threaded, no locks. Wrappers in
//! [`crate::api`] add sharing and implement the allocator traits.
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

use crate::commit::stage::Stage;
use crate::commit::{Backing, Commit, CommitConfig};
use crate::driver::{Access, DevicePtr, Driver, Location, Stream};
use crate::error::{BadPointer, Error, OomReport, PolicyUsage, Result};
use crate::policy::large::Large;
use crate::policy::slab::{Freed, Slabs};
use crate::policy::{Policy, classes};
use crate::stats::{BlockReport, PageReport, PolicyStats, RegionReport, Snapshot, Stats};
use crate::sync::Stamp;

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

/// Settings of an arena.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ArenaConfig {
    /// Bytes of virtual address space to reserve (0: eight times the
    /// device's memory, at most the driver's limit).
    pub reservation: u64,
    /// Smallest reservation accepted when the configured one is refused:
    /// the arena halves and retries down to this, and says so once.
    pub min_reservation: u64,
    /// Fraction of the reservation given to the blocks region (slabs and
    /// large spans); two thirds of the rest hold stitched ranges (blocks
    /// that no place in the blocks region could hold without a remap), one
    /// third scratch arenas and growable buffers.
    pub blocks_fraction: f64,
    /// Quantum of large spans (a power of two; PyTorch rounds to 512 bytes).
    pub quantum: u64,
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
            commit: CommitConfig::default(),
        }
    }
}

/// The largest alignment an arena serves, in pages.
const MAX_ALIGN_PAGES: u64 = 512;

/// What a page whose handle is in use elsewhere costs a placement, in
/// fresh pages: a remap (or a stitched range) is worth avoiding when a few
/// fresh pages would do.
const REMAP_WEIGHT: u64 = 4;

/// A scratch arena's bump cursor (absolute address), shared with its arena
/// so that the arena's stats count the bytes bumped without the scratch
/// arena taking the lock on its fast path.
pub type ScratchCursor = std::sync::Arc<core::sync::atomic::AtomicU64>;

/// One arena over one reservation (see the module docs).
pub struct Arena<D: Driver> {
    commit: Commit<D>,
    kind: Kind,
    host_visible: bool,
    blocks: Large,
    slabs: Slabs,
    buffers: Large,
    blocks_size: u64,
    /// Offset of the buffers region (after the stitch region).
    buffers_start: u64,
    live: u64,
    peak_live: u64,
    scratch: PolicyStats,
    grow: PolicyStats,
    allocs: u64,
    frees: u64,
    config: ArenaConfig,
    /// The reservation fell back to a smaller size than configured.
    fallback: Option<u64>,
    /// Policy of each buffer by offset in the buffers region.
    buffer_kinds: crate::MetaMap<u64, Policy>,
    /// Each scratch arena's base and bump cursor (an absolute address the
    /// scratch arena stores on its lock-free fast path): its live bytes are
    /// `cursor - base`, read when stats are taken, so they never lag.
    scratch_cursors: crate::MetaVec<(DevicePtr, ScratchCursor)>,
    /// Tag index reported in errors.
    tag: u32,
    /// Set while asleep: the pages were given back.
    sleeping: Option<Sleeping<D::Handle>>,
}

/// How [`Arena::sleep`] treats the contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SleepMode {
    /// Contents are dropped; woken pages read as zero on the host backend
    /// and unspecified on GPUs.
    Discard,
    /// Contents are copied to pinned host memory first and restored on wake.
    Offload,
}

/// What a sleep or wake did.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SleepReport {
    /// Physical bytes given back (sleep) or recommitted (wake).
    pub bytes: u64,
    /// Bytes copied to or from pinned host memory.
    pub copied: u64,
    /// Seconds spent copying (including the wait on the copy's fence).
    pub copy_seconds: f64,
    /// Seconds spent obtaining pinned host memory for an offload (0 when
    /// the memory kept from the last wake was reused).
    pub stage_seconds: f64,
    /// Seconds spent in driver map/unmap work.
    pub vmm_seconds: f64,
}

/// How an asleep arena sleeps.
struct Sleeping<H> {
    mode: SleepMode,
    stage: Option<Stage<H>>,
}

/// Exact accounting for engines sizing their caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    /// Bytes in live blocks.
    pub live: u64,
    /// Physical bytes committed.
    pub committed: u64,
    /// Committed bytes that `trim()` would give back now (completed empty runs).
    pub reclaimable: u64,
    /// Committed empty bytes still waiting on fences.
    pub pending: u64,
    /// The commit limit (`u64::MAX`: none).
    pub limit: u64,
    /// The largest block that can be allocated now without committing new
    /// physical memory (a free span lying on committed pages).
    pub largest_free_committed: u64,
    /// Whether the arena is asleep (committed is then 0).
    pub asleep: bool,
    /// Pinned host bytes held for offloads (see [`Stats::staged`]).
    pub staged: u64,
}

impl<D: Driver> core::fmt::Debug for Arena<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena")
            .field("kind", &self.kind)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Reserves `want` bytes, halving on refusal down to `min`. Returns the base,
/// the size obtained, and whether it fell back.
fn reserve_with_fallback<D: Driver>(
    driver: &D,
    want: u64,
    min: u64,
    page: u64,
) -> Result<(DevicePtr, u64, bool)> {
    let mut size = want;
    loop {
        // Offsets are aligned within the reservation, so the base must be
        // aligned as much as the largest alignment served; a driver that
        // refuses such an alignment gets a page-aligned reservation (and
        // the arena serves less: see `max_align`).
        let aligned = driver
            .reserve(size as usize, (page * MAX_ALIGN_PAGES) as usize)
            .or_else(|_| driver.reserve(size as usize, page as usize));
        match aligned {
            Ok(base) => return Ok((base, size, size != want)),
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
        if !config.quantum.is_power_of_two() || config.quantum > page {
            return Err(Error::Config(
                "quantum must be a power of two no larger than the page",
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
                .saturating_mul(8)
                .clamp(4 * page, caps.max_reservation)
        } else {
            config.reservation
        };
        let want = want / (2 * page) * (2 * page);
        if want < 2 * page {
            return Err(Error::Config("reservation must be at least two pages"));
        }
        let (base, size, fell_back) =
            reserve_with_fallback(&driver, want, config.min_reservation, page)?;
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
            driver,
            base,
            size,
            location,
            access,
            config.commit,
            (blocks_size, stitch_size),
        );
        Ok(Arena {
            commit,
            kind,
            host_visible,
            blocks: Large::new(blocks_size, config.quantum),
            slabs: Slabs::new(),
            buffers: Large::new(size - buffers_start, page),
            blocks_size,
            buffers_start,
            live: 0,
            peak_live: 0,
            scratch: PolicyStats::default(),
            grow: PolicyStats::default(),
            allocs: 0,
            frees: 0,
            config,
            fallback: fell_back.then_some(size),
            buffer_kinds: crate::MetaMap::with_hasher_in(Default::default(), std::alloc::System),
            scratch_cursors: crate::MetaVec::new_in(std::alloc::System),
            tag: 0,
            sleeping: None,
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
        (self.commit.base(), self.commit.size())
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
        ptr.wrapping_sub(self.commit.base()) < self.commit.size()
    }

    /// The largest alignment served: [`MAX_ALIGN_PAGES`] pages, or less if
    /// the reservation's base is less aligned (offsets are aligned within
    /// the reservation, so a pointer is only as aligned as the base).
    fn max_align(&self) -> u64 {
        let base = self.commit.base();
        (self.page() * MAX_ALIGN_PAGES).min(1 << base.trailing_zeros().min(63))
    }

    fn check_layout(&self, size: u64, align: u64) -> Result<()> {
        if size == 0 {
            return Err(Error::ZeroSize);
        }
        let max = self.max_align();
        if !align.is_power_of_two() || align > max {
            return Err(Error::BadAlignment { align, max });
        }
        if size > self.blocks_size {
            return Err(Error::TooLarge {
                size,
                max: self.blocks_size,
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
        self.allocs += 1;
        self.live += bytes;
        self.peak_live = self.peak_live.max(self.live);
        Ok(self.commit.base() + off)
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
    /// elsewhere goes to a stitched range instead (when `stitchable` and at
    /// least `stitch_min` bytes). Returns (offset, bytes).
    fn place_block(
        &mut self,
        size: u64,
        align: u64,
        slot: u16,
        stitchable: bool,
    ) -> Result<(u64, u64)> {
        let stitch = stitchable && size >= self.config.commit.stitch_min && align <= self.page();
        let pick = self.pick(size, align, slot)?;
        if stitch && self.commit.cost(pick.offset, pick.size).blocked > 0 {
            let bytes = self.blocks.round(size).unwrap_or(size);
            match self.commit.stitch_alloc(bytes, slot) {
                Ok(off) => return Ok((off, bytes)),
                Err(Error::AddressSpace { .. }) => {}
                Err(e) => return Err(self.live_in_report(e)),
            }
            // The stitch region is full: place it on fresh pages instead.
            return self.place_block(size, align, slot, false);
        }
        let backing = if pick.top {
            let room = self.blocks_size.saturating_sub(pick.offset + pick.size);
            Backing::Top(room >> self.page().trailing_zeros())
        } else {
            Backing::Pages
        };
        let a = self.blocks.take(pick).ok_or(Error::AddressSpace {
            requested: size,
            reserved: self.blocks_size,
        })?;
        if let Err(e) = self.commit.add_live(a.offset, a.size, slot, backing) {
            let streams = &self.commit.streams;
            self.blocks.free(a.offset, Stamp::SAFE, |s| streams.done(s));
            return Err(self.live_in_report(e));
        }
        Ok((a.offset, a.size))
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
    fn pick(&mut self, size: u64, align: u64, slot: u16) -> Result<crate::policy::large::Pick> {
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
                Some(c.unmapped + REMAP_WEIGHT * c.blocked)
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
            reserved: self.blocks_size,
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
    /// pages back (driver calls) once their fences completed.
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
        let off = ptr.wrapping_sub(self.commit.base());
        if off >= self.blocks_size {
            if off < self.commit.size() && self.commit.in_stitch_region(off) {
                return self.free_stitched(ptr, off, size, stream);
            }
            return Err(Self::bad(ptr, self.outside_blocks(off)));
        }
        self.awake()?;
        let slot = self.commit.streams.slot(stream);
        let stamp = self.commit.streams.stamp(slot);
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
                self.frees += 1;
                self.live -= bytes;
                return Ok(());
            }
        }
        let Some(have) = self.blocks.size_of(off) else {
            let kind = if self.blocks.containing(off).is_some() {
                BadPointer::Interior
            } else {
                BadPointer::DoubleFree
            };
            return Err(Self::bad(ptr, kind));
        };
        if let Some(size) = size {
            if size == 0 || self.blocks.round(size) != Some(have) {
                return Err(Self::bad(ptr, BadPointer::LayoutMismatch));
            }
        }
        let streams = &self.commit.streams;
        self.blocks.free(off, stamp, |s| streams.done(s));
        self.commit.sub_live(off, have, stamp);
        self.frees += 1;
        self.live -= have;
        Ok(())
    }

    /// Frees a block of a stitched range (see [`Arena::free_checked`]).
    fn free_stitched(
        &mut self,
        ptr: DevicePtr,
        off: u64,
        size: Option<u64>,
        stream: Stream,
    ) -> Result<()> {
        self.awake()?;
        if let Some(size) = size {
            let have = self.commit.stitch_size(off);
            if have.is_some() && (size == 0 || self.blocks.round(size) != have) {
                return Err(Self::bad(ptr, BadPointer::LayoutMismatch));
            }
        }
        let slot = self.commit.streams.slot(stream);
        let stamp = self.commit.streams.stamp(slot);
        let bytes = self.commit.stitch_free(off, stamp)?;
        self.frees += 1;
        self.live -= bytes;
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
        match start.and_then(|s| self.buffer_kinds.get(&s)) {
            Some(Policy::Scratch) => BadPointer::Scratch,
            _ => BadPointer::Foreign,
        }
    }

    /// The size of the live block starting at `ptr`, if any.
    pub fn block_size(&self, ptr: DevicePtr) -> Option<u64> {
        let off = ptr.wrapping_sub(self.commit.base());
        if off >= self.blocks_size {
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

    /// Gives back every empty page whose fences completed (and empty slabs).
    /// Never blocks. Returns the bytes given back.
    ///
    /// An asleep arena has nothing committed to give back; its page table
    /// stays as it was when it went to sleep (wake restores exactly those
    /// pages), so its slabs are left alone too.
    pub fn trim(&mut self) -> u64 {
        if self.is_asleep() {
            return self.commit.trim();
        }
        self.drain_deferred_slabs(true);
        self.commit.drop_spare_stage();
        self.commit.trim()
    }

    /// Records the fences that slab objects freed on another stream wait
    /// for (once per open epoch): without one, such an object never becomes
    /// reusable and its slab is never given back.
    fn fence_deferred(&mut self) {
        let commit = &mut self.commit;
        self.slabs.for_each_deferred_stamp(|st| {
            let _ = commit.ensure_fence(st);
        });
    }

    /// Moves small blocks freed on other streams whose fences completed back
    /// to their slabs (recording the fences they still lack), and gives the
    /// slabs that emptied — all empty slabs when `all_empty` — back.
    fn drain_deferred_slabs(&mut self, all_empty: bool) {
        self.fence_deferred();
        self.commit.poll();
        let mut empty = crate::MetaVec::new_in(std::alloc::System);
        let streams = &self.commit.streams;
        self.slabs
            .drain(|s| streams.done(s), |o, b, st| empty.push((o, b, st)));
        if all_empty {
            self.slabs.release_empty(|o, b, st| empty.push((o, b, st)));
        }
        self.release_slab_spans(empty);
    }

    /// Gives emptied slab spans back to the blocks region and the page table.
    fn release_slab_spans(&mut self, spans: crate::MetaVec<(u64, u64, Stamp)>) {
        for (o, b, st) in spans {
            let streams = &self.commit.streams;
            self.blocks.free(o, st, |s| streams.done(s));
            self.commit.sub_live(o, b, st);
        }
    }

    /// Gives back idle memory beyond what the decay curve allows now (and
    /// stitched ranges unused for `decay_ms`). Never blocks.
    pub fn collect(&mut self) -> u64 {
        self.commit.collect(false)
    }

    /// Whether the free path gives idle memory back itself (see
    /// [`CommitConfig::reclaim_on_free`]).
    pub fn set_reclaim_on_free(&mut self, on: bool) {
        self.commit.set_reclaim_on_free(on);
        self.config.commit.reclaim_on_free = on;
    }

    /// [`Arena::collect`] when the time to look has come (a clock read
    /// otherwise): what a background reclaimer calls periodically.
    pub fn reclaim_due(&mut self) -> u64 {
        self.commit.maybe_reclaim()
    }

    /// Grants or revokes access for every committed page and future commits.
    ///
    /// # Safety
    /// Revoking rights from an accessor that still uses the memory makes its
    /// accesses fault.
    pub unsafe fn set_access(&mut self, access: &[Access]) -> Result<()> {
        self.commit.set_access(access)
    }

    // ----- buffers region: scratch arenas and growable buffers -----

    /// Bytes of the buffers region (scratch arenas and growable buffers)
    /// and, of those, bytes not reserved by any buffer now.
    pub fn buffers_space(&self) -> (u64, u64) {
        let b = &self.buffers;
        (b.capacity(), b.capacity() - b.top() + b.free_bytes())
    }

    /// Counts the scratch arena at `base` (from [`Arena::reserve_buffer`])
    /// by its bump cursor: its live bytes are `cursor - base` at every
    /// moment. [`Arena::free_buffer`] forgets it.
    pub fn track_scratch(&mut self, base: DevicePtr, cursor: ScratchCursor) {
        self.scratch_cursors.push((base, cursor));
    }

    /// Bytes bumped in every tracked scratch arena now. O(scratch arenas).
    fn scratch_bumped(&self) -> u64 {
        self.scratch_cursors
            .iter()
            .map(|(base, c)| c.load(core::sync::atomic::Ordering::Relaxed) - base)
            .sum()
    }

    /// Live bytes, scratch arenas' bumps included.
    fn live_now(&self) -> u64 {
        self.live + self.scratch_bumped()
    }

    /// Takes the live bytes now (scratch bumps included) into the peak.
    /// Scratch arenas call it before a reset or drop takes their bytes back;
    /// between such calls a scratch arena's bytes enter the peak when
    /// another policy's allocation, a commit or a stats read sees them.
    pub fn note_peak(&mut self) {
        self.peak_live = self.peak_live.max(self.live_now());
    }

    /// Reserves `max` bytes (rounded to pages) of the buffers region for a
    /// scratch arena or growable buffer. Nothing is committed.
    pub fn reserve_buffer(&mut self, max: u64, policy: Policy) -> Result<DevicePtr> {
        if max == 0 {
            return Err(Error::ZeroSize);
        }
        let page = self.page();
        let capacity = self.buffers.capacity();
        // Larger than the whole region is a different error from a full one.
        let max = crate::driver::round_up(max, page)
            .filter(|&m| m <= capacity)
            .ok_or(Error::ExceedsReservation {
                requested: max,
                capacity,
            })?;
        let a = self
            .buffers
            .alloc(max, page, |_| true)
            .ok_or(Error::AddressSpace {
                requested: max,
                reserved: self.buffers.capacity(),
            })?;
        match policy {
            Policy::Scratch => self.scratch.blocks += 1,
            _ => self.grow.blocks += 1,
        }
        self.buffer_kinds.insert(a.offset, policy);
        Ok(self.commit.base() + self.buffers_start + a.offset)
    }

    /// Commits `from..to` (page-aligned offsets) of the buffer at `base`.
    pub fn commit_buffer(&mut self, base: DevicePtr, from: u64, to: u64) -> Result<()> {
        self.awake()?;
        let off = base - self.commit.base() + from;
        self.commit
            .pin(off, to - from)
            .map_err(|e| self.live_in_report(e))
    }

    /// Gives back `from..to` of the buffer at `base` (once `stream`'s work on it completed).
    pub fn decommit_buffer(
        &mut self,
        base: DevicePtr,
        from: u64,
        to: u64,
        stream: Stream,
    ) -> Result<()> {
        self.awake()?;
        self.release_buffer_range(base, from, to, stream);
        Ok(())
    }

    fn release_buffer_range(&mut self, base: DevicePtr, from: u64, to: u64, stream: Stream) {
        let off = base - self.commit.base() + from;
        let slot = self.commit.streams.slot(stream);
        let stamp = self.commit.streams.stamp(slot);
        self.commit.unpin(off, to - from, stamp);
    }

    /// Releases the buffer at `base` whose committed prefix is `committed` bytes.
    pub fn free_buffer(&mut self, base: DevicePtr, committed: u64, policy: Policy, stream: Stream) {
        if committed > 0 {
            // Allowed while asleep: the buffer's pages just will not be restored.
            self.release_buffer_range(base, 0, committed, stream);
        }
        let off = base - self.commit.base() - self.buffers_start;
        self.buffers.free(off, Stamp::SAFE, |_| true);
        self.buffer_kinds.remove(&off);
        match policy {
            Policy::Scratch => {
                self.note_peak();
                // The scratch arena still holds its cursor: dropping this
                // clone never frees (no allocation under the arena's lock).
                self.scratch_cursors.retain(|(b, _)| *b != base);
                self.scratch.blocks -= 1
            }
            _ => self.grow.blocks -= 1,
        }
    }

    /// Accounts live bytes of a buffer policy (scratch bump, grow length).
    pub fn account_buffer(&mut self, policy: Policy, before: u64, after: u64) {
        let s = match policy {
            Policy::Scratch => &mut self.scratch,
            _ => &mut self.grow,
        };
        s.bytes = s.bytes + after - before;
        self.live = self.live + after - before;
        self.note_peak();
    }

    // ----- sleep and wake -----

    fn awake(&self) -> Result<()> {
        match self.sleeping {
            None => Ok(()),
            Some(_) => Err(Error::Asleep { tag: self.tag }),
        }
    }

    /// The tag index this arena reports in errors.
    pub fn set_tag(&mut self, tag: u32) {
        self.tag = tag;
    }

    /// Whether the arena is asleep.
    pub fn is_asleep(&self) -> bool {
        self.sleeping.is_some()
    }

    /// Gives every physical page back while every address stays reserved and
    /// every pointer held stays valid for after [`Arena::wake`].
    ///
    /// First waits on fences of this arena's streams only (work queued on
    /// the pages must finish), then, with [`SleepMode::Offload`], copies the
    /// pages holding live bytes to pinned host memory on `stream` and waits
    /// on that copy's fence; then unmaps and releases everything. Allocating
    /// or freeing in an asleep arena is refused with [`Error::Asleep`].
    pub fn sleep(&mut self, mode: SleepMode, stream: Stream) -> Result<SleepReport> {
        self.awake()?;
        if self.commit.has_live_shared() {
            return Err(Error::Unsupported(
                "this arena holds shared or imported buffers: drop them before sleeping",
            ));
        }
        self.commit.streams.slot(stream);
        self.commit.quiesce()?;
        let mut report = SleepReport::default();
        let stage = match mode {
            SleepMode::Discard => None,
            SleepMode::Offload => {
                let t = std::time::Instant::now();
                let (stage, stage_seconds) = self.commit.offload(stream)?;
                report.stage_seconds = stage_seconds;
                report.copy_seconds = t.elapsed().as_secs_f64() - stage_seconds;
                report.copied = stage.as_ref().map_or(0, |s| s.copied());
                stage
            }
        };
        let t = std::time::Instant::now();
        report.bytes = self.commit.sleep();
        report.vmm_seconds = t.elapsed().as_secs_f64();
        self.sleeping = Some(Sleeping { mode, stage });
        Ok(report)
    }

    /// Obtains now the pinned host memory the next offload of this arena
    /// needs (as large as the pages holding live bytes), so that the first
    /// [`SleepMode::Offload`] runs at copy speed too: pinning host memory is
    /// the slow part of a first offload. The memory is kept across cycles
    /// (see [`Stats::staged`]) until [`Arena::trim`]. Returns the seconds it
    /// took (0 when enough was held).
    pub fn prepare_offload(&mut self) -> Result<f64> {
        self.awake()?;
        let bytes = self.commit.offload_bytes();
        self.commit.prepare_stage(bytes)
    }

    /// Recommits every page that holds live bytes at its old address (large
    /// handles, as in commit) and restores offloaded contents on `stream`
    /// (waiting on that copy's fence). On failure nothing stays mapped and
    /// the arena stays asleep.
    pub fn wake(&mut self, stream: Stream) -> Result<SleepReport> {
        let Some(sleeping) = self.sleeping.take() else {
            return Ok(SleepReport::default());
        };
        let mut report = SleepReport::default();
        let t = std::time::Instant::now();
        match self.commit.wake() {
            Ok(bytes) => report.bytes = bytes,
            Err(e) => {
                self.sleeping = Some(sleeping);
                return Err(e);
            }
        }
        report.vmm_seconds = t.elapsed().as_secs_f64();
        if let Some(stage) = sleeping.stage {
            let t = std::time::Instant::now();
            match self.commit.restore(stage, stream) {
                Ok(copied) => report.copied = copied,
                Err((e, stage)) => {
                    // Back to sleep, contents kept in the stage for a retry.
                    self.commit.sleep();
                    self.sleeping = Some(Sleeping {
                        mode: sleeping.mode,
                        stage: Some(stage),
                    });
                    return Err(e);
                }
            }
            report.copy_seconds = t.elapsed().as_secs_f64();
        }
        Ok(report)
    }

    // ----- accounting -----

    /// Live, committed, reclaimable, pending, limit and the largest block
    /// that fits in already-committed memory. O(free spans + pages).
    pub fn accounting(&self) -> Accounting {
        let page = self.page();
        let mut largest = 0;
        self.blocks.for_each_free(|off, size, _| {
            // Longest sub-range of the span whose pages are all committed.
            let (mut run_start, mut p) = (off, off);
            let end = off + size;
            while p < end {
                let next = ((p / page) + 1) * page;
                let chunk_end = next.min(end);
                if self.commit.cost(p, chunk_end - p).is_free() {
                    largest = largest.max(chunk_end - run_start);
                } else {
                    run_start = chunk_end;
                }
                p = chunk_end;
            }
        });
        let reclaimable = self.commit.reclaimable();
        Accounting {
            live: self.live_now(),
            committed: self.commit.committed(),
            reclaimable,
            pending: self.commit.candidate_bytes() - reclaimable,
            limit: self.commit.effective_limit(),
            largest_free_committed: largest,
            asleep: self.is_asleep(),
            staged: self.commit.stage_bytes(),
        }
    }

    /// Fills the policy figures of an out-of-memory error.
    fn enrich(&self, e: Error) -> Error {
        match e {
            Error::OutOfMemory(mut r) => {
                let s = self.stats();
                r.live = s.live;
                r.policies = [s.slab, s.large, s.scratch, s.grow].map(|p| PolicyUsage {
                    blocks: p.blocks,
                    live: p.bytes,
                });
                Error::OutOfMemory(r)
            }
            e => e,
        }
    }

    /// The out-of-memory figures this arena would report now.
    pub fn oom_report(&self, requested: u64) -> OomReport {
        match self.enrich(Error::OutOfMemory(self.commit.oom_report(requested))) {
            Error::OutOfMemory(r) => r,
            _ => OomReport::default(),
        }
    }

    // ----- reports -----

    /// Counters (cheap: constant time plus one load per scratch arena).
    /// Scratch arenas' live bytes are read from their cursors, so they are
    /// exact at every moment, with no lag behind the lock-free fast path.
    pub fn stats(&self) -> Stats {
        let slab_bytes = self.slabs.slab_bytes();
        let (stitched_bytes, stitched_blocks) = self.commit.stitched_live();
        let bumped = self.scratch_bumped();
        let live = self.live + bumped;
        Stats {
            reserved: self.commit.size(),
            committed: self.commit.committed(),
            live,
            peak_committed: self.commit.peak_committed(),
            peak_live: self.peak_live.max(live),
            pending_decommit: self.commit.candidate_bytes(),
            reclaimable: self.commit.reclaimable(),
            pending_fences: self.commit.streams.pending_fences() as u64,
            handles: self.commit.unit_count(),
            mappings: self.commit.mapping_count(),
            stitched_ranges: self.commit.stitched_ranges() as u64,
            staged: self.commit.stage_bytes(),
            slab: PolicyStats {
                blocks: self.slabs.live_count(),
                bytes: self.slabs.live_bytes(),
            },
            large: PolicyStats {
                blocks: self.blocks.live_count() as u64 - self.slab_count() + stitched_blocks,
                bytes: self.blocks.live_bytes() - slab_bytes + stitched_bytes,
            },
            scratch: PolicyStats {
                blocks: self.scratch.blocks,
                bytes: self.scratch.bytes + bumped,
            },
            grow: self.grow,
            driver_calls: self.commit.calls(),
            allocs: self.allocs,
            frees: self.frees,
        }
    }

    fn slab_count(&self) -> u64 {
        let mut n = 0;
        self.slabs.for_each_slab(|_, _, _, _| n += 1);
        n
    }

    /// Replaces the clock the decay of idle memory reads (tests and trace
    /// replays step a [`Clock::manual`](crate::sync::Clock::manual) by hand).
    pub fn set_clock(&mut self, clock: crate::sync::Clock) {
        self.commit.set_clock(clock);
    }

    /// Visits every mapping of a physical handle: (first page, pages, pages
    /// with live bytes, whether its handle is idle). A handle mapped at two
    /// addresses shows twice.
    pub fn for_each_mapping(&self, f: impl FnMut(u64, u64, u64, bool)) {
        self.commit.for_each_run(f);
    }

    /// Resets the peaks to the current values.
    pub fn reset_peaks(&mut self) {
        self.peak_live = self.live_now();
        self.commit.reset_peak();
    }

    /// A full snapshot: regions, committed pages, live blocks (allocates).
    pub fn snapshot(&self) -> Snapshot {
        let mut pages = Vec::new();
        self.commit.for_each_page(|index, state, live| {
            pages.push(PageReport {
                index,
                state: state.into(),
                live,
            })
        });
        let mut blocks = Vec::new();
        let mut slab_spans = std::collections::HashSet::new();
        self.slabs.for_each_slab(|o, _, _, _| {
            slab_spans.insert(o);
        });
        self.slabs.for_each_object(|offset, size| {
            blocks.push(BlockReport {
                offset,
                size,
                policy: Policy::Slab,
            })
        });
        self.blocks.for_each_span(|offset, size, allocated| {
            if allocated && !slab_spans.contains(&offset) {
                blocks.push(BlockReport {
                    offset,
                    size,
                    policy: Policy::Large,
                })
            }
        });
        self.commit.for_each_stitched(|offset, size| {
            blocks.push(BlockReport {
                offset,
                size,
                policy: Policy::Large,
            })
        });
        self.buffers.for_each_span(|offset, size, allocated| {
            if allocated {
                blocks.push(BlockReport {
                    offset: self.buffers_start + offset,
                    size,
                    policy: self
                        .buffer_kinds
                        .get(&offset)
                        .copied()
                        .unwrap_or(Policy::Scratch),
                })
            }
        });
        blocks.sort_by_key(|b| b.offset);
        Snapshot {
            backend: self.driver().capabilities().backend.name().to_string(),
            base: self.commit.base(),
            page: self.page(),
            stats: self.stats(),
            regions: vec![
                RegionReport {
                    name: "blocks".into(),
                    offset: 0,
                    size: self.blocks_size,
                    used: self.blocks.top(),
                },
                RegionReport {
                    name: "stitch".into(),
                    offset: self.blocks_size,
                    size: self.buffers_start - self.blocks_size,
                    used: self.commit.stitch_top(),
                },
                RegionReport {
                    name: "buffers".into(),
                    offset: self.buffers_start,
                    size: self.commit.size() - self.buffers_start,
                    used: self.buffers.top(),
                },
            ],
            pages,
            blocks,
        }
    }

    /// Full structural check of every layer (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check_invariants(&self) {
        self.blocks.check_invariants();
        self.buffers.check_invariants();
        self.slabs.check_invariants();
        self.commit.check_invariants();
        let s = self.stats();
        assert!(s.committed >= s.live.min(s.committed), "committed >= live");
        assert_eq!(
            s.slab.bytes + s.large.bytes + s.scratch.bytes + s.grow.bytes,
            s.live,
            "policies add up to live"
        );
    }

    // ----- peer access and sharing between processes -----

    /// The access list applied to every committed page and to every later
    /// commit (the arena's own device first, then what was granted).
    pub fn access(&self) -> &[Access] {
        self.commit.access()
    }

    fn check_accessor(&self, location: Location) -> Result<()> {
        let caps = self.driver().capabilities();
        match location {
            Location::Device(d) if d >= caps.device_count => {
                Err(Error::Config("no such device ordinal on this driver"))
            }
            Location::Host if matches!(self.kind, Kind::Device(_)) => Err(Error::Unsupported(
                "device memory cannot be mapped for the CPU: use a PinnedHost arena for CPU access",
            )),
            _ => Ok(()),
        }
    }

    /// The rights the access list gives `location` now.
    pub fn granted(&self, location: Location) -> crate::driver::AccessMode {
        self.commit
            .access()
            .iter()
            .find(|a| a.location == location)
            .map_or(crate::driver::AccessMode::None, |a| a.mode)
    }

    /// Gives `location` (a peer device) at least `mode` on every committed
    /// page and on every page committed later. Never lowers rights (that is
    /// [`Arena::revoke`]), so no user can fault because of it: safe to call
    /// at any time.
    ///
    /// Cost: one driver `set_access` per committed run, now. Later
    /// allocations pay nothing more: the list is applied by the one
    /// `set_access` each commit already makes.
    pub fn grant(&mut self, location: Location, mode: crate::driver::AccessMode) -> Result<()> {
        use crate::driver::AccessMode;
        self.check_accessor(location)?;
        let rank = |m: AccessMode| match m {
            AccessMode::None => 0,
            AccessMode::Read => 1,
            AccessMode::ReadWrite => 2,
        };
        if rank(mode) <= rank(self.granted(location)) {
            return Ok(());
        }
        self.commit.change_access(&[Access { location, mode }])
    }

    /// Takes every right of `location` away, on every committed page and
    /// for later commits.
    ///
    /// Cost: one driver `set_access` per committed run.
    ///
    /// # Safety
    /// No work of `location` (kernels of that device, or the CPU for
    /// `Location::Host`) touches this arena's memory any more: accesses after
    /// the revoke fault.
    pub unsafe fn revoke(&mut self, location: Location) -> Result<()> {
        self.check_accessor(location)?;
        self.commit.change_access(&[Access {
            location,
            mode: crate::driver::AccessMode::None,
        }])
    }

    /// The rights `accessor` has on the committed page holding `ptr`, as the
    /// driver reports them (`cuMemGetAccess` on CUDA). A driver error where
    /// nothing is committed at `ptr`.
    pub fn access_of(
        &self,
        ptr: DevicePtr,
        accessor: Location,
    ) -> Result<crate::driver::AccessMode> {
        if !self.contains(ptr) {
            return Err(Self::bad(ptr, BadPointer::Foreign));
        }
        self.driver().get_access(ptr, accessor)
    }

    /// Reserves `len` bytes (rounded up to pages) of the buffers region and
    /// commits them in fresh shareable runs, for [`Arena::export_buffer`].
    /// Accounted as a growable buffer. May call the driver; may wait on the
    /// fences of earlier work on that range (rare).
    pub fn reserve_shared_buffer(&mut self, len: u64) -> Result<DevicePtr> {
        self.awake()?;
        let len = crate::driver::round_up(len, self.page()).ok_or(Error::ExceedsReservation {
            requested: len,
            capacity: self.buffers.capacity(),
        })?;
        let base = self.reserve_buffer(len, Policy::Grow)?;
        if let Err(e) = self.commit.pin_shared(base - self.commit.base(), len) {
            self.free_buffer(base, 0, Policy::Grow, Stream::DEFAULT);
            return Err(e);
        }
        self.account_buffer(Policy::Grow, 0, len);
        Ok(base)
    }

    /// One descriptor per run of the shared (or imported) buffer at `base`
    /// of `len` bytes: (offset in the buffer, length, descriptor).
    pub fn export_buffer(
        &self,
        base: DevicePtr,
        len: u64,
    ) -> Result<Vec<(u64, u64, std::os::fd::OwnedFd)>> {
        if !self.contains(base) {
            return Err(Self::bad(base, BadPointer::Foreign));
        }
        let len = crate::driver::round_up(len, self.page()).unwrap_or(len);
        self.commit.export_range(base - self.commit.base(), len)
    }

    /// Releases a buffer made by [`Arena::reserve_shared_buffer`] or
    /// [`Arena::import_buffer`] (`len` as given there): its runs go back once
    /// `stream`'s work on them completed, and are never reused. Other
    /// processes that imported them keep their memory.
    pub fn free_shared_buffer(&mut self, base: DevicePtr, len: u64, stream: Stream) {
        let len = crate::driver::round_up(len, self.page()).unwrap_or(len);
        self.account_buffer(Policy::Grow, len, 0);
        self.free_buffer(base, len, Policy::Grow, stream);
    }

    /// Maps memory exported by another process: reserves `len` bytes of the
    /// buffers region, imports each run's descriptor (offset in the buffer,
    /// length, descriptor; together they tile `0..len`), maps it with this
    /// arena's access list, and returns the base. The descriptors stay the
    /// caller's. On error nothing is left behind.
    ///
    /// # Safety
    /// Each descriptor was made by `export` of this arena's backend, for a
    /// handle of that run's length, at `location`.
    pub unsafe fn import_buffer(
        &mut self,
        len: u64,
        runs: &[(u64, u64, std::os::fd::BorrowedFd<'_>)],
        location: Location,
    ) -> Result<DevicePtr> {
        self.awake()?;
        let page = self.page();
        let mut at = 0;
        for &(off, l, _) in runs {
            if off != at || l == 0 || l % page != 0 {
                return Err(Error::Unsupported(
                    "imported runs must tile the buffer in whole pages of this arena",
                ));
            }
            at += l;
        }
        if at != len {
            return Err(Error::Unsupported(
                "imported runs must tile the buffer in whole pages of this arena",
            ));
        }
        let base = self.reserve_buffer(len, Policy::Grow)?;
        let first = base - self.commit.base();
        for (i, &(off, l, fd)) in runs.iter().enumerate() {
            // SAFETY: the caller guarantees the descriptor and its size.
            let r = unsafe { self.commit.driver().import(fd, l as usize, location) }
                .and_then(|h| self.commit.adopt(first + off, l, h));
            if let Err(e) = r {
                for &(off, l, _) in &runs[..i] {
                    self.commit.unpin(first + off, l, Stamp::SAFE);
                }
                self.commit.collect(false);
                self.free_buffer(base, 0, Policy::Grow, Stream::DEFAULT);
                return Err(e);
            }
        }
        self.account_buffer(Policy::Grow, 0, len);
        Ok(base)
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
        self.commit.drop_spare_stage();
        self.commit.release_all();
        let (base, size) = self.reservation();
        // SAFETY: every run was unmapped above and the arena is going away,
        // so nothing touches the reservation again.
        let _ = unsafe { self.commit.driver().free_reservation(base, size as usize) };
    }
}
