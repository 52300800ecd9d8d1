//! Process-wide arenas, one per device, lazily initialized and `Sync`.
//!
//! Each device's [`GlobalArena`] is split into `shards` independent arenas
//! (each with its own reservation and lock); a thread allocates from the shard
//! it was given on first use (round-robin), and a free goes to the shard whose
//! reservation holds the pointer, from any thread. Small blocks come from a
//! per-thread cache (magazines per size class, bounded, refilled in batches
//! under one lock acquisition and given back when the thread exits or
//! switches stream), so the allocation fast path takes no lock.
//!
//! Frees always go to the shard under its lock: that is where foreign,
//! interior and double frees are recognised and refused, which the C ABI and
//! the PyTorch entry points promise.
//!
//! ```
//! use gpu_arena::global::{GlobalArena, GlobalConfig};
//! use gpu_arena::driver::{system::Select, Stream};
//! let conf = GlobalConfig { backend: Select::Host, ..GlobalConfig::default() };
//! let arena: &'static GlobalArena = GlobalArena::leak(0, conf)?;
//! let p = arena.alloc(4096, 512, Stream::DEFAULT)?;
//! arena.free(p, Some(4096), Stream::DEFAULT)?;
//! # Ok::<(), gpu_arena::Error>(())
//! ```

mod cache;
pub mod config;
pub mod graph;
mod hot;
mod report;
mod sleep;
mod stager;
mod tags;
pub mod timing;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::arena::SharedArena;
use crate::commit::Budget;
use crate::driver::{DevicePtr, Stream, SystemDriver};
use crate::error::{BadPointer, Error, Result, TagUsage};
use crate::lock::lock;
use crate::policy::classes;
pub use config::GlobalConfig;
pub use report::Epoch;
use report::EpochStart;
use tags::tag_name;
pub use tags::{
    TagArenas, TagScope, current_tag, process_tag, set_current_tag, set_process_tag,
    set_thread_tag, tag_index, thread_tag,
};

/// Devices with a global arena at most.
pub const MAX_DEVICES: usize = 16;
/// Tags per device at most (tag 0 is `default`).
pub const MAX_TAGS: usize = 16;

/// The driver the global arenas use.
pub type GlobalDriver = Arc<SystemDriver>;

/// One device's process-wide arena (see the module docs).
pub struct GlobalArena {
    device: u32,
    driver: GlobalDriver,
    /// Indexed by the process-wide tag index ([`tag_index`]); a slot is
    /// filled when this device first uses that tag.
    tags: [OnceLock<TagArenas>; MAX_TAGS],
    /// Held while a tag's arenas are being created (so they are made once).
    creating: Mutex<()>,
    config: GlobalConfig,
    /// Counters at the start of the current epoch (see [`GlobalArena::epoch`]).
    /// Where the current epoch started: every counter an [`Epoch`] reports.
    epoch_start: Mutex<EpochStart>,
    /// A clock set by [`GlobalArena::set_clock`], for tags made later too.
    clock: Mutex<Option<crate::sync::Clock>>,
    /// The device-wide limit (`config.arena.commit.limit`), shared by every
    /// shard of every tag.
    budget: Arc<Budget>,
    /// The background reclaimer (see [`GlobalConfig::background`]), once
    /// started, and the flag that stops it.
    reclaimer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reclaimer_stop: AtomicBool,
    /// Set once the reclaimer was started (or found not wanted, or failed
    /// to start): every call of [`arena`] asks, and must not take a lock.
    reclaimer_tried: AtomicBool,
    /// Set (under `creating`) when the reclaimer was wanted and could not
    /// start: the free path gives memory back instead, in tags made later
    /// too.
    reclaimer_failed: AtomicBool,
    /// The thread obtaining pinned host memory for offloads and what it
    /// was asked (see [`GlobalArena::prepare_offload_in_background`]); an
    /// offloading sleep and [`GlobalArena::destroy`] wait for it.
    stager: Mutex<stager::Stager>,
}

impl core::fmt::Debug for GlobalArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GlobalArena")
            .field("device", &self.device)
            .field("tags", &self.tags().count())
            .finish()
    }
}

static CONFIG: OnceLock<GlobalConfig> = OnceLock::new();
static ARENAS: [OnceLock<Result<GlobalArena>>; MAX_DEVICES] =
    [const { OnceLock::new() }; MAX_DEVICES];

thread_local! {
    static SHARD: core::cell::Cell<u32> = const { core::cell::Cell::new(u32::MAX) };
}

static THREADS: AtomicU32 = AtomicU32::new(0);

/// Sets the configuration of the global arenas. Must come before their
/// first use; afterwards only an identical configuration is accepted.
pub fn configure(config: GlobalConfig) -> Result<()> {
    let got = CONFIG.get_or_init(|| config);
    if *got == config {
        Ok(())
    } else {
        Err(Error::Config(
            "the global arenas are already configured (configure before the first allocation)",
        ))
    }
}

/// The configuration in force (`GPU_ARENA_CONF` or defaults if none was set).
pub fn config() -> Result<GlobalConfig> {
    if let Some(c) = CONFIG.get() {
        return Ok(*c);
    }
    let c = GlobalConfig::from_env()?;
    Ok(*CONFIG.get_or_init(|| c))
}

/// The global arena of `device`, created on first use.
///
/// Every C ABI call starts here: an arena made and running takes one load
/// from the line of flags every call reads (two, and a look at the arena
/// table, for devices from the fifth on) and no call; the rest
/// (first use, a failed creation, the reclaimer not started yet) is out of
/// line.
#[inline]
pub fn arena(device: u32) -> Result<&'static GlobalArena> {
    // The first devices' arenas lie in the line every call reads.
    if let Some(slot) = hot::HOT.arenas.get(device as usize) {
        let g = slot.load(Ordering::Acquire);
        if !g.is_null() {
            // SAFETY: `arena_slow` stores only the address of an arena in
            // `ARENAS`, a static whose values never move or drop; the
            // Acquire load pairs with its Release store, so the arena's
            // making is seen.
            return Ok(unsafe { &*g });
        }
        return arena_slow(device);
    }
    // One flag word of the line every call reads, rather than the arena's
    // own `reclaimer_tried` on a line of its own.
    // (A device past MAX_DEVICES finds no slot below and goes the slow way.)
    let ready = hot::HOT.ready.load(Ordering::Acquire);
    if (ready >> (device % 32)) & 1 != 0 {
        if let Some(Ok(g)) = ARENAS.get(device as usize).and_then(|s| s.get()) {
            return Ok(g);
        }
    }
    arena_slow(device)
}

#[cold]
#[inline(never)]
fn arena_slow(device: u32) -> Result<&'static GlobalArena> {
    let slot = ARENAS.get(device as usize).ok_or(Error::Config(
        "device ordinal beyond gpu_arena::global::MAX_DEVICES",
    ))?;
    let r = slot.get_or_init(|| {
        let c = config()?;
        let g = GlobalArena::new(device, c)?;
        if c.report {
            // Whichever device comes first: a process may use only GPU 3.
            timing::enable();
            report::REPORT.call_once(report::register_report);
        }
        Ok(g)
    });
    let g = r.as_ref().map_err(|e| e.clone())?;
    g.start_reclaimer();
    if g.reclaimer_tried.load(Ordering::Acquire) {
        match hot::HOT.arenas.get(device as usize) {
            Some(slot) => slot.store(core::ptr::from_ref(g).cast_mut(), Ordering::Release),
            None => {
                hot::HOT.ready.fetch_or(1u32 << device, Ordering::AcqRel);
            }
        }
    }
    Ok(g)
}

/// The global arenas created so far.
pub fn arenas() -> impl Iterator<Item = &'static GlobalArena> {
    ARENAS
        .iter()
        .filter_map(|s| s.get().and_then(|r| r.as_ref().ok()))
}

/// Addresses of the arenas made by [`GlobalArena::leak`] and
/// [`GlobalArena::leak_with`] and not yet destroyed: only those may be
/// given to [`GlobalArena::destroy`].
static LEAKED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

impl GlobalArena {
    /// A new global-style arena for `device` (not registered as the
    /// process-wide one; see [`arena`]), on the backend `config.backend`
    /// selects.
    pub fn new(device: u32, config: GlobalConfig) -> Result<Self> {
        let driver = SystemDriver::open(config.backend, device, |note| eprintln!("{note}"))?;
        Self::with_driver(device, config, Arc::new(driver))
    }

    /// A new global-style arena for `device` over a driver the caller
    /// opened (for example a backend behind the checked layer,
    /// [`SystemDriver::checked`], whose counts the caller can still read
    /// after [`GlobalArena::destroy`]); `config.backend` is not looked at.
    pub fn with_driver(device: u32, config: GlobalConfig, driver: GlobalDriver) -> Result<Self> {
        let g = GlobalArena {
            device,
            driver,
            tags: [const { OnceLock::new() }; MAX_TAGS],
            creating: Mutex::new(()),
            config,
            epoch_start: Mutex::new(Default::default()),
            clock: Mutex::new(None),
            budget: Arc::new(Budget::new(config.arena.commit.limit)),
            reclaimer: Mutex::new(None),
            reclaimer_stop: AtomicBool::new(false),
            reclaimer_tried: AtomicBool::new(false),
            reclaimer_failed: AtomicBool::new(false),
            stager: Mutex::new(stager::Stager::default()),
        };
        g.tag("default")?;
        Ok(g)
    }

    /// A new arena that lives until [`GlobalArena::destroy`] or the end of
    /// the process (the thread caches need `'static` arenas).
    pub fn leak(device: u32, config: GlobalConfig) -> Result<&'static Self> {
        Ok(Self::register(Self::new(device, config)?))
    }

    /// [`GlobalArena::with_driver`], leaked as [`GlobalArena::leak`] does.
    pub fn leak_with(
        device: u32,
        config: GlobalConfig,
        driver: GlobalDriver,
    ) -> Result<&'static Self> {
        Ok(Self::register(Self::with_driver(device, config, driver)?))
    }

    fn register(arena: Self) -> &'static Self {
        let a: &'static Self = Box::leak(Box::new(arena));
        lock(&LEAKED).push(a as *const Self as usize);
        a.start_reclaimer();
        a
    }

    /// Starts the background reclaimer once, where the configuration asks
    /// for it (`background`, and a decay to follow): a thread that wakes
    /// every `decay_ms / 8` (10 ms to 60 s) and gives back, on every tag and
    /// shard, the idle memory whose decay allowance ran out (see
    /// [`GlobalArena::reclaim_step`]), so that an arena nobody allocates
    /// from or frees to still hands its idle memory back, and allocating
    /// threads make no such driver call. Each shard's lock is held only for
    /// its own step.
    #[inline]
    fn start_reclaimer(&'static self) {
        if !self.reclaimer_tried.load(Ordering::Acquire) {
            self.start_reclaimer_once();
        }
    }

    #[cold]
    fn start_reclaimer_once(&'static self) {
        let mut slot = lock(&self.reclaimer);
        if self.reclaimer_tried.swap(true, Ordering::AcqRel) {
            return;
        }
        let decay_ms = self.config.arena.commit.decay_ms;
        if !self.config.background || decay_ms == 0 {
            return;
        }
        let period = std::time::Duration::from_millis((decay_ms / 8).clamp(10, 60_000));
        *slot = std::thread::Builder::new()
            .name(format!("gpu-arena-reclaim-{}", self.device))
            .spawn(move || {
                loop {
                    std::thread::park_timeout(period);
                    if self.reclaimer_stop.load(Ordering::Acquire) {
                        return;
                    }
                    self.reclaim_step();
                }
            })
            .ok();
        if slot.is_none() {
            eprintln!(
                "gpu-arena: the background reclaimer could not start; idle memory goes back on frees"
            );
            self.reclaim_on_free_instead();
        }
    }

    /// With no reclaimer thread, the free path gives memory back (as the
    /// configuration's `reclaim_on_free` says) in every tag: those made
    /// already and, through the flag read by [`GlobalArena::create_tag`],
    /// those made later. Under `creating`, so that no tag being made misses
    /// both.
    #[cold]
    fn reclaim_on_free_instead(&self) {
        let _creating = lock(&self.creating);
        self.reclaimer_failed.store(true, Ordering::Release);
        let on = self.config.arena.commit.reclaim_on_free;
        for shard in self.tags().flat_map(|t| t.shards.iter()) {
            shard.lock().set_reclaim_on_free(on);
        }
    }

    /// Acts as if the reclaimer thread had failed to start (tests: a
    /// thread cannot be made to fail on demand).
    #[doc(hidden)]
    pub fn simulate_reclaimer_failure(&self) {
        self.reclaim_on_free_instead();
    }

    /// Stops the background reclaimer, if it runs, and waits for it.
    fn stop_reclaimer(&self) {
        let handle = lock(&self.reclaimer).take();
        if let Some(h) = handle {
            self.reclaimer_stop.store(true, Ordering::Release);
            h.thread().unpark();
            let _ = h.join();
        }
    }

    /// Tears down an arena made by [`GlobalArena::leak`] or
    /// [`GlobalArena::leak_with`]: gives the calling thread's cached blocks
    /// back, then drops every shard, which gives every handle and
    /// reservation back to the driver (memory still live is given back
    /// too). Refuses, changing nothing, an arena that was not made that way
    /// or was destroyed already (the process-wide arenas of [`arena`] live
    /// as long as the process).
    ///
    /// # Safety
    /// Callers guarantee that no other thread uses the arena any more and
    /// that every thread that allocated from it has exited (their caches
    /// go back to the arena when they exit) or was the calling one; no
    /// reference to it, and no block of it, is used after this call; no
    /// queued device work touches its memory.
    pub unsafe fn destroy(arena: &'static GlobalArena) -> Result<()> {
        let addr = arena as *const Self as usize;
        {
            let mut leaked = lock(&LEAKED);
            let Some(i) = leaked.iter().position(|&a| a == addr) else {
                return Err(Error::Config(
                    "only an arena made by GlobalArena::leak or leak_with can be destroyed, once",
                ));
            };
            leaked.swap_remove(i);
        }
        arena.stop_reclaimer();
        arena.join_stager();
        cache::flush_current(arena);
        // SAFETY: `addr` came from `Box::leak` in `register` and was
        // removed from the registry above, so it is turned back into a box
        // once; the caller guarantees that nothing uses the arena any more.
        drop(unsafe { Box::from_raw(addr as *mut GlobalArena) });
        Ok(())
    }

    /// One step of the background reclaimer, deterministic given the clock:
    /// on every tag and shard, gives back the idle memory the decay curve no
    /// longer allows (if the time to look has come). Returns the bytes given
    /// back. Tests call it directly with a [`Clock::manual`](crate::sync::Clock::manual).
    pub fn reclaim_step(&self) -> u64 {
        let mut bytes = 0;
        for t in self.tags() {
            if t.is_asleep() {
                continue;
            }
            for shard in t.shards.iter() {
                bytes += shard.lock().reclaim_due();
            }
        }
        bytes
    }

    /// Replaces the clock every shard's decay reads (tests step a
    /// [`Clock::manual`](crate::sync::Clock::manual) by hand), for tags made
    /// later too.
    pub fn set_clock(&self, clock: crate::sync::Clock) {
        for shard in self.tags().flat_map(|t| t.shards.iter()) {
            shard.lock().set_clock(clock.clone());
        }
        *lock(&self.clock) = Some(clock);
    }

    /// The device ordinal.
    pub fn device(&self) -> u32 {
        self.device
    }
    /// Settings in force.
    pub fn config(&self) -> &GlobalConfig {
        &self.config
    }
    /// The driver.
    pub fn driver(&self) -> &GlobalDriver {
        &self.driver
    }

    /// The shards of tag `tag` (all tags: the same shard count).
    pub fn shards(&self, tag: u32) -> &[SharedArena<GlobalDriver>] {
        self.tag_arenas(tag).map_or(&[], |t| &t.shards)
    }

    /// The calling thread's shard of tag `tag` (on every allocation: inline,
    /// with the tag's creation out of line).
    #[inline]
    fn my_shard(&self, tag: u32) -> Result<&SharedArena<GlobalDriver>> {
        let t = match self.tag_arenas(tag) {
            Some(t) => t,
            None => self.tag_arenas_made(tag)?,
        };
        if t.is_asleep() {
            return Err(Error::Asleep { tag });
        }
        let mut s = SHARD.with(|c| c.get());
        if s == u32::MAX {
            s = THREADS.fetch_add(1, Ordering::Relaxed);
            SHARD.with(|c| c.set(s));
        }
        // One shard (the default) needs no division.
        let n = t.shards.len();
        Ok(&t.shards[if n == 1 { 0 } else { s as usize % n }])
    }

    /// Makes the arenas of tag `tag` on this device: a tag made current
    /// while this device had no arenas for it (another device's, or before
    /// this device's first use).
    #[cold]
    #[inline(never)]
    fn tag_arenas_made(&self, tag: u32) -> Result<&TagArenas> {
        let name = tag_name(tag).ok_or(Error::Config("no such tag"))?;
        self.create_tag(tag, &name)?;
        self.tag_arenas(tag).ok_or(Error::Config("no such tag"))
    }

    #[inline]
    fn shard_of(&self, ptr: DevicePtr) -> Option<&SharedArena<GlobalDriver>> {
        self.tags().find_map(|t| {
            let i = t
                .ranges
                .iter()
                .position(|&(b, n)| ptr.addr().wrapping_sub(b.addr()) < n)?;
            Some(&t.shards[i])
        })
    }

    /// Allocates `size` bytes aligned to `align` for `stream`, in the calling
    /// thread's current tag.
    ///
    /// Small blocks come from the calling thread's cache without a lock.
    /// A zero size or an alignment that is not a power of two is refused
    /// ([`Error::ZeroSize`], [`Error::BadAlignment`]) and changes nothing.
    ///
    /// Out of memory in its shard, it gives back the idle memory of every
    /// shard and tag (trim) and tries once more before reporting
    /// [`Error::OutOfMemory`] with device-wide figures.
    #[inline]
    pub fn alloc(&'static self, size: u64, align: u64, stream: Stream) -> Result<DevicePtr> {
        let tag = current_tag();
        // Bad input skips the cache: the shard's layout check refuses it
        // before any size class is looked up.
        if self.config.thread_cache > 0 && size > 0 && align.is_power_of_two() {
            if let Some(class) = classes::class_for(size, align) {
                if let Some(p) = cache::pop(self, tag, class, stream) {
                    return Ok(p);
                }
                return self
                    .retry_after_trim(|| cache::refill(self, tag, class, stream))
                    .map_err(|e| self.enrich(e, tag));
            }
        }
        let shard = self.my_shard(tag)?;
        self.retry_after_trim(|| shard.alloc(size, align, stream))
            .map_err(|e| self.enrich(e, tag))
    }

    /// Allocates in the current tag without the thread cache.
    pub fn alloc_uncached(&self, size: u64, align: u64, stream: Stream) -> Result<DevicePtr> {
        let tag = current_tag();
        let shard = self.my_shard(tag)?;
        self.retry_after_trim(|| shard.alloc(size, align, stream))
            .map_err(|e| self.enrich(e, tag))
    }

    /// Runs `f`; out of memory, gives back the idle memory of every shard
    /// and tag (a shard's own ladder only reaches its own) and runs it once
    /// more if that gave anything back.
    ///
    /// The success path builds a new `Ok` rather than passing `f`'s result
    /// on, which copies the whole `Result` (296 bytes, five cache lines each
    /// way, before `Error` boxed its large payloads).
    #[inline]
    fn retry_after_trim<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Ok(v) => Ok(v),
            Err(Error::OutOfMemory(_)) if self.trim_shards(false) > 0 => f(),
            Err(e) => Err(e),
        }
    }

    /// Trims every shard of every tag (no thread cache), giving back the
    /// pinned host memory kept for offloads too where `stages` (an
    /// out-of-memory retry keeps it: it is no device memory). Returns the
    /// bytes given back.
    fn trim_shards(&self, stages: bool) -> u64 {
        self.tags()
            .flat_map(|t| t.shards.iter())
            .map(|s| if stages { s.trim() } else { s.trim_idle() })
            .sum()
    }

    /// Adds the per-tag figures to an out-of-memory error.
    fn enrich(&self, e: Error, tag: u32) -> Error {
        let Error::OutOfMemory(mut r) = e else {
            return e;
        };
        // Device-wide figures: the limit is the device's.
        let all = self.stats();
        r.live = all.live;
        r.committed = all.committed;
        r.reclaimable = all.reclaimable;
        r.pending = all.pending_decommit.saturating_sub(all.reclaimable);
        r.pending_fences = all.pending_fences;
        r.limit = r.limit.min(self.budget.limit());
        let mut usage: Vec<(u32, TagUsage)> = self
            .tags_indexed()
            .map(|(i, t)| {
                let s = Self::sum(t.shards.iter().map(|a| a.stats()));
                (i, TagUsage::new(&t.name, s.live, s.committed))
            })
            .collect();
        usage.sort_by_key(|(i, u)| (*i != tag, u64::MAX - u.committed));
        r.tag_count = usage.len().min(r.tags.len()) as u8;
        for (slot, (_, u)) in r.tags.iter_mut().zip(usage) {
            *slot = u;
        }
        Error::OutOfMemory(r)
    }

    /// Frees `ptr` (from any thread). `size`, when given, must be the size
    /// it was allocated with. Bad pointers are refused and nothing changes.
    #[inline(always)]
    pub fn free(&self, ptr: DevicePtr, size: Option<u64>, stream: Stream) -> Result<()> {
        let shard = self.shard_of(ptr).ok_or(Error::BadPointer {
            addr: ptr,
            kind: BadPointer::Foreign,
        })?;
        let mut a = shard.lock();
        match size {
            Some(size) => a.free_sized(ptr, size, stream),
            None => a.free_on(ptr, stream),
        }
    }

    /// Gives back every empty page whose fences completed, this thread's
    /// cache, and the pinned host memory kept for offloads.
    pub fn trim(&'static self) -> u64 {
        cache::flush_current(self);
        self.trim_shards(true)
    }

    /// The device-wide limit, and the bytes committed by every shard of
    /// every tag against it (now and at most).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Changes the device-wide limit (later commits; bytes committed stay).
    pub fn set_limit(&self, limit: u64) {
        self.budget.set_limit(limit);
    }

    /// Sets a commit limit of tag `name` alone (split evenly over its
    /// shards), on top of the device-wide one.
    pub fn set_tag_limit(&self, name: &str, limit: u64) -> Result<()> {
        let t = self.tag(name)?;
        let ta = self.tag_arenas(t).ok_or(Error::Config("no such tag"))?;
        let n = ta.shards.len() as u64;
        for s in ta.shards.iter() {
            s.lock()
                .set_limit(if limit == u64::MAX { limit } else { limit / n });
        }
        Ok(())
    }
}
