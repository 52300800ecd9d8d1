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
pub mod timing;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::arena::{Accounting, Kind, SharedArena, SleepMode, SleepReport};
use crate::commit::Budget;
use crate::driver::{DevicePtr, Driver, Stream, SystemDriver};
use crate::error::{BadPointer, ConfigText, Error, Result, TagUsage};
use crate::policy::classes;
use crate::stats::Stats;
pub use config::GlobalConfig;

/// Devices with a global arena at most.
pub const MAX_DEVICES: usize = 16;
/// Tags per device at most (tag 0 is `default`).
pub const MAX_TAGS: usize = 16;

/// The driver the global arenas use.
pub type GlobalDriver = Arc<SystemDriver>;

/// Tag names of this process in the order they were first used: a tag's
/// index is its position here, the same on every device, so a thread's
/// current tag means the same tag whichever device it allocates on. Index 0
/// is `default`.
static TAG_NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The process-wide index of tag `name`, registering it on first use (no
/// arena is created here: each device creates a tag's arenas when it first
/// needs them).
pub fn tag_index(name: &str) -> Result<u32> {
    let mut names = TAG_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if names.is_empty() {
        names.push("default".to_string());
    }
    if let Some(i) = names.iter().position(|n| n == name) {
        return Ok(i as u32);
    }
    if names.len() >= MAX_TAGS {
        return Err(Error::Config("too many tags (gpu_arena::global::MAX_TAGS)"));
    }
    if name.is_empty() || name.len() > 64 || name.contains(',') {
        return Err(Error::Config("a tag name is 1..=64 bytes without commas"));
    }
    names.push(name.to_string());
    Ok((names.len() - 1) as u32)
}

/// The name of the tag with process-wide index `tag`, if it was registered.
fn tag_name(tag: u32) -> Option<String> {
    let names = TAG_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    match names.get(tag as usize) {
        Some(n) => Some(n.clone()),
        None if tag == 0 => Some("default".to_string()),
        None => None,
    }
}

/// The arenas of one tag: its own reservation(s), so its pages are never
/// shared with another tag and it can sleep alone.
pub struct TagArenas {
    name: String,
    shards: Box<[SharedArena<GlobalDriver>]>,
    /// Each shard's reservation (base, size), apart from the shards so that
    /// routing a free reads no cache line a shard's owner writes.
    ranges: Box<[(DevicePtr, u64)]>,
    asleep: AtomicBool,
}

impl TagArenas {
    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The tag's shards.
    pub fn shards(&self) -> &[SharedArena<GlobalDriver>] {
        &self.shards
    }
    /// Whether the tag is asleep.
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Acquire)
    }
}

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
}

/// What happened between two calls of [`GlobalArena::epoch`] (a phase of a
/// program: one repetition of a workload, one training step, a batch).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Epoch {
    /// Peak live bytes in the epoch (all tags).
    pub peak_live: u64,
    /// Peak committed bytes in the epoch (all tags).
    pub peak_committed: u64,
    /// `peak_committed / peak_live`.
    pub peak_ratio: f64,
    /// Driver calls made in the epoch.
    pub driver_calls: crate::commit::DriverCalls,
    /// VMM calls (create, map, set_access, unmap, release) in the epoch.
    pub vmm_calls: u64,
    /// Allocations served in the epoch.
    pub allocs: u64,
    /// Frees served in the epoch.
    pub frees: u64,
    /// Time inside the C ABI's calls in the epoch, every device together
    /// (measured only with `report:1`; zeros otherwise).
    pub times: timing::Times,
    /// What stitched-range allocations decided in the epoch.
    pub stitch: crate::commit::StitchCounts,
}

/// The counters at the start of the current epoch.
#[derive(Default)]
struct EpochStart {
    calls: crate::commit::DriverCalls,
    stitch: crate::commit::StitchCounts,
    allocs: u64,
    frees: u64,
    times: timing::Times,
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

/// Thread tag value meaning "this thread has not chosen a tag".
const UNSET: u32 = u32::MAX;

thread_local! {
    static SHARD: core::cell::Cell<u32> = const { core::cell::Cell::new(u32::MAX) };
    static CURRENT_TAG: core::cell::Cell<u32> = const { core::cell::Cell::new(UNSET) };
}

/// The tag of threads that have not chosen one (0 = `default`).
static PROCESS_TAG: AtomicU32 = AtomicU32::new(0);

/// The calling thread's current tag (index; 0 = `default`): the tag the
/// thread chose ([`set_current_tag`], [`GlobalArena::tag_scope`]), or the
/// process-wide tag ([`set_process_tag`]) if it chose none.
///
/// Threads that a framework starts on its own (PyTorch's autograd engine
/// runs backward passes on device threads of its own) never choose a tag:
/// they allocate in the process-wide tag.
#[inline]
pub fn current_tag() -> u32 {
    let t = CURRENT_TAG.with(|c| c.get());
    if t != UNSET {
        t
    } else {
        PROCESS_TAG.load(Ordering::Relaxed)
    }
}

/// Sets the calling thread's current tag; returns the previous current
/// tag (the thread's own, or the process-wide one if it had none).
pub fn set_current_tag(tag: u32) -> u32 {
    let previous = current_tag();
    CURRENT_TAG.with(|c| c.set(tag));
    previous
}

/// The tag the calling thread chose, if any (see [`current_tag`]).
pub fn thread_tag() -> Option<u32> {
    let t = CURRENT_TAG.with(|c| c.get());
    (t != UNSET).then_some(t)
}

/// Sets (or, with `None`, clears) the tag the calling thread chose;
/// returns the previous choice. A thread without a choice allocates in the
/// process-wide tag.
pub fn set_thread_tag(tag: Option<u32>) -> Option<u32> {
    let previous = CURRENT_TAG.with(|c| c.replace(tag.unwrap_or(UNSET)));
    (previous != UNSET).then_some(previous)
}

/// The tag of every thread that has not chosen one (0 = `default`).
pub fn process_tag() -> u32 {
    PROCESS_TAG.load(Ordering::Relaxed)
}

/// Sets the tag of every thread that has not chosen one; returns the
/// previous one. Threads that chose a tag keep theirs.
pub fn set_process_tag(tag: u32) -> u32 {
    PROCESS_TAG.swap(tag, Ordering::Relaxed)
}

/// Restores the calling thread's previous tag choice when dropped (see
/// [`GlobalArena::tag_scope`]).
#[derive(Debug)]
pub struct TagScope {
    previous: Option<u32>,
}

impl Drop for TagScope {
    fn drop(&mut self) {
        set_thread_tag(self.previous);
    }
}
static THREADS: AtomicU32 = AtomicU32::new(0);
/// Set once the exit report is registered (by the first arena of any device).
static REPORT: std::sync::Once = std::sync::Once::new();

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
pub fn arena(device: u32) -> Result<&'static GlobalArena> {
    let slot = ARENAS.get(device as usize).ok_or(Error::Config(
        "device ordinal beyond gpu_arena::global::MAX_DEVICES",
    ))?;
    let r = slot.get_or_init(|| {
        let c = config()?;
        let g = GlobalArena::new(device, c)?;
        if c.report {
            // Whichever device comes first: a process may use only GPU 3.
            timing::enable();
            REPORT.call_once(register_report);
        }
        Ok(g)
    });
    let g = r.as_ref().map_err(|e| *e)?;
    g.start_reclaimer();
    Ok(g)
}

/// The global arenas created so far.
pub fn arenas() -> impl Iterator<Item = &'static GlobalArena> {
    ARENAS
        .iter()
        .filter_map(|s| s.get().and_then(|r| r.as_ref().ok()))
}

extern "C" fn print_report() {
    for a in arenas() {
        let s = a.stats();
        eprintln!(
            "gpu-arena: device {}: peak live {:.1} MiB, peak committed {:.1} MiB, peak committed / peak live {:.4}, driver calls {} (VMM {}), handles {}, mappings {}",
            a.device(),
            s.peak_live as f64 / 1048576.0,
            s.peak_committed as f64 / 1048576.0,
            s.peak_ratio(),
            s.driver_calls.total(),
            s.driver_calls.vmm(),
            s.handles,
            s.mappings,
        );
    }
    let t = timing::total();
    if t.calls() > 0 {
        eprintln!(
            "gpu-arena: allocator time: {} allocs, {} frees, {:.3} us per call ({:.3} per alloc, {:.3} per free), {:.1} ms in all",
            t.allocs,
            t.frees,
            t.nanos_per_call() / 1e3,
            t.alloc_nanos as f64 / t.allocs.max(1) as f64 / 1e3,
            t.free_nanos as f64 / t.frees.max(1) as f64 / 1e3,
            (t.alloc_nanos + t.free_nanos) as f64 / 1e6,
        );
    }
}

fn register_report() {
    // SAFETY: print_report is an extern "C" fn with no arguments that only
    // reads the statics; atexit has no other precondition.
    unsafe { libc::atexit(print_report) };
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
        LEAKED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(a as *const Self as usize);
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
    fn start_reclaimer(&'static self) {
        let decay_ms = self.config.arena.commit.decay_ms;
        if !self.config.background || decay_ms == 0 {
            return;
        }
        let mut slot = self.reclaimer.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
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
            // No thread: the free path gives memory back instead.
            eprintln!(
                "gpu-arena: the background reclaimer could not start; idle memory goes back on frees"
            );
            for shard in self.tags().flat_map(|t| t.shards.iter()) {
                shard.lock().set_reclaim_on_free(true);
            }
        }
    }

    /// Stops the background reclaimer, if it runs, and waits for it.
    fn stop_reclaimer(&self) {
        let handle = self
            .reclaimer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
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
            let mut leaked = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = leaked.iter().position(|&a| a == addr) else {
                return Err(Error::Config(
                    "only an arena made by GlobalArena::leak or leak_with can be destroyed, once",
                ));
            };
            leaked.swap_remove(i);
        }
        arena.stop_reclaimer();
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
        *self.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some(clock);
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

    /// The index of tag `name` (process-wide, see [`tag_index`]), creating
    /// its arenas on this device on first use.
    pub fn tag(&self, name: &str) -> Result<u32> {
        let i = tag_index(name)?;
        self.create_tag(i, name)?;
        Ok(i)
    }

    /// Creates the arenas of tag index `i` named `name` on this device,
    /// unless they exist.
    fn create_tag(&self, i: u32, name: &str) -> Result<()> {
        let slot = &self.tags[i as usize];
        if slot.get().is_some() {
            return Ok(());
        }
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if slot.get().is_some() {
            return Ok(());
        }
        let mut shards = Vec::with_capacity(self.config.shards.max(1) as usize);
        // The limit holds for the device: every shard of every tag takes
        // its commits from the one budget (a tag may get a limit of its own
        // on top, `set_tag_limit`).
        let mut arena_config = self.config.arena;
        arena_config.commit.limit = u64::MAX;
        // With a background reclaimer, freeing threads never give memory
        // back themselves.
        arena_config.commit.reclaim_on_free &= !self.config.background;
        for _ in 0..self.config.shards.max(1) {
            let a = SharedArena::new(self.driver.clone(), Kind::Device(self.device), arena_config)?;
            {
                let mut a = a.lock();
                a.set_tag(i);
                a.set_budget(self.budget.clone());
                if let Some(clock) = self
                    .clock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    a.set_clock(clock.clone());
                }
            }
            shards.push(a);
        }
        let ranges = shards.iter().map(|a| a.lock().reservation()).collect();
        let _ = slot.set(TagArenas {
            name: name.to_string(),
            shards: shards.into_boxed_slice(),
            ranges,
            asleep: AtomicBool::new(false),
        });
        Ok(())
    }

    /// The arenas of tag index `tag`.
    pub fn tag_arenas(&self, tag: u32) -> Option<&TagArenas> {
        self.tags.get(tag as usize).and_then(|t| t.get())
    }

    /// Every tag created on this device so far.
    pub fn tags(&self) -> impl Iterator<Item = &TagArenas> {
        self.tags.iter().filter_map(|t| t.get())
    }

    /// Every tag created on this device so far, with its index.
    pub fn tags_indexed(&self) -> impl Iterator<Item = (u32, &TagArenas)> {
        self.tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.get().map(|t| (i as u32, t)))
    }

    /// Makes `name` the calling thread's current tag until the guard drops.
    pub fn tag_scope(&self, name: &str) -> Result<TagScope> {
        let t = self.tag(name)?;
        Ok(TagScope {
            previous: set_thread_tag(Some(t)),
        })
    }

    /// The index of tag `name` if the process has it (never registers it).
    pub fn find_tag(&self, name: &str) -> Option<u32> {
        let names = TAG_NAMES.lock().unwrap_or_else(|e| e.into_inner());
        match names.iter().position(|n| n == name) {
            Some(i) => Some(i as u32),
            None if name == "default" => Some(0),
            None => None,
        }
    }

    /// The index of tag `name`, which the process must have
    /// ([`Error::UnknownTag`] otherwise), with its arenas on this device.
    fn existing_tag(&self, name: &str) -> Result<u32> {
        let i = self.find_tag(name).ok_or(Error::UnknownTag {
            name: ConfigText::new(name),
        })?;
        self.create_tag(i, name)?;
        Ok(i)
    }

    /// The shards of tag `tag` (all tags: the same shard count).
    pub fn shards(&self, tag: u32) -> &[SharedArena<GlobalDriver>] {
        self.tag_arenas(tag).map_or(&[], |t| &t.shards)
    }

    fn my_shard(&self, tag: u32) -> Result<&SharedArena<GlobalDriver>> {
        let t = match self.tag_arenas(tag) {
            Some(t) => t,
            // A tag made current while this device had no arenas for it
            // (another device's, or before this device's first use).
            None => {
                let name = tag_name(tag).ok_or(Error::Config("no such tag"))?;
                self.create_tag(tag, &name)?;
                self.tag_arenas(tag).ok_or(Error::Config("no such tag"))?
            }
        };
        if t.is_asleep() {
            return Err(Error::Asleep { tag });
        }
        let mut s = SHARD.with(|c| c.get());
        if s == u32::MAX {
            s = THREADS.fetch_add(1, Ordering::Relaxed);
            SHARD.with(|c| c.set(s));
        }
        Ok(&t.shards[s as usize % t.shards.len()])
    }

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
    fn retry_after_trim<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(Error::OutOfMemory(_)) if self.trim_shards() > 0 => f(),
            r => r,
        }
    }

    /// Trims every shard of every tag (no thread cache). Returns the bytes
    /// given back.
    fn trim_shards(&self) -> u64 {
        self.tags()
            .flat_map(|t| t.shards.iter())
            .map(|s| s.trim())
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

    /// Gives back every empty page whose fences completed (and this thread's cache).
    pub fn trim(&'static self) -> u64 {
        cache::flush_current(self);
        self.trim_shards()
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

    /// Puts the tags named in `tags` to sleep (see [`crate::Arena::sleep`]):
    /// their physical memory goes back, their addresses stay. Tags already
    /// asleep are skipped. A name that is no tag of this device is refused
    /// with [`Error::UnknownTag`] before any tag sleeps. On another error,
    /// the tags slept so far stay asleep and the failing one is awake again
    /// (its shards that had slept are woken: a tag is never half asleep,
    /// refusing allocations but serving frees).
    pub fn sleep(
        &'static self,
        tags: &[&str],
        mode: SleepMode,
        stream: Stream,
    ) -> Result<SleepReport> {
        cache::flush_current(self);
        let mut total = SleepReport::default();
        // Every name is checked before any tag sleeps.
        for name in tags {
            self.existing_tag(name)?;
        }
        for name in tags {
            let t = self.existing_tag(name)?;
            let ta = self.tag_arenas(t).ok_or(Error::Config("no such tag"))?;
            if ta.asleep.swap(true, Ordering::AcqRel) {
                continue;
            }
            for (i, shard) in ta.shards.iter().enumerate() {
                let r = shard.lock().sleep(mode, stream);
                match r {
                    Ok(r) => add(&mut total, r),
                    Err(e) => {
                        let woken = ta.shards[..i]
                            .iter()
                            .all(|s| self.retry_after_trim(|| s.lock().wake(stream)).is_ok());
                        if woken {
                            ta.asleep.store(false, Ordering::Release);
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(total)
    }

    /// Obtains now the pinned host memory that offloading the tags named in
    /// `tags` will need (see [`crate::Arena::prepare_offload`]). Returns the
    /// seconds it took.
    pub fn prepare_offload(&self, tags: &[&str]) -> Result<f64> {
        let mut secs = 0.0;
        for name in tags {
            let t = self.existing_tag(name)?;
            let ta = self.tag_arenas(t).ok_or(Error::Config("no such tag"))?;
            for shard in ta.shards.iter() {
                secs += shard.lock().prepare_offload()?;
            }
        }
        Ok(secs)
    }

    /// Wakes the tags named in `tags` at the same addresses. Unknown names
    /// are refused as by [`GlobalArena::sleep`]. On error the failing tag
    /// stays asleep.
    pub fn wake(&self, tags: &[&str], stream: Stream) -> Result<SleepReport> {
        let mut total = SleepReport::default();
        for name in tags {
            self.existing_tag(name)?;
        }
        for name in tags {
            let t = self.existing_tag(name)?;
            let ta = self.tag_arenas(t).ok_or(Error::Config("no such tag"))?;
            if !ta.is_asleep() {
                continue;
            }
            for shard in ta.shards.iter() {
                let r = self.retry_after_trim(|| shard.lock().wake(stream))?;
                add(&mut total, r);
            }
            ta.asleep.store(false, Ordering::Release);
        }
        Ok(total)
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

    /// Accounting of the whole device (`tag = None`) or of one tag.
    pub fn accounting(&self, tag: Option<u32>) -> Accounting {
        let mut t = Accounting::default();
        let mut limit = 0u64;
        for (i, ta) in self.tags_indexed() {
            if tag.is_some_and(|x| x != i) {
                continue;
            }
            for s in ta.shards.iter() {
                let a = s.lock().accounting();
                t.live += a.live;
                t.committed += a.committed;
                t.reclaimable += a.reclaimable;
                t.pending += a.pending;
                limit = limit.saturating_add(a.limit);
                t.largest_free_committed = t.largest_free_committed.max(a.largest_free_committed);
                t.asleep |= a.asleep;
                t.staged += a.staged;
            }
        }
        t.limit = limit.min(self.budget.limit());
        t
    }

    /// Accounting per tag, as JSON (allocates).
    pub fn accounting_json(&self) -> String {
        let tags: Vec<_> = self
            .tags_indexed()
            .map(
                |(i, t)| serde_json::json!({"tag": t.name, "accounting": self.accounting(Some(i))}),
            )
            .collect();
        serde_json::json!({"device": self.device, "total": self.accounting(None), "tags": tags})
            .to_string()
    }

    fn sum(it: impl Iterator<Item = Stats>) -> Stats {
        let mut t = Stats::default();
        for x in it {
            t.reserved += x.reserved;
            t.committed += x.committed;
            t.live += x.live;
            t.peak_committed += x.peak_committed;
            t.peak_live += x.peak_live;
            t.pending_decommit += x.pending_decommit;
            t.reclaimable += x.reclaimable;
            t.pending_fences += x.pending_fences;
            t.handles += x.handles;
            t.mappings += x.mappings;
            t.staged += x.staged;
            t.stitched_ranges += x.stitched_ranges;
            for (a, b) in [
                (&mut t.slab, x.slab),
                (&mut t.large, x.large),
                (&mut t.scratch, x.scratch),
                (&mut t.grow, x.grow),
            ] {
                a.blocks += b.blocks;
                a.bytes += b.bytes;
            }
            t.driver_calls.add(&x.driver_calls);
            t.stitch.add(&x.stitch);
            t.allocs += x.allocs;
            t.frees += x.frees;
        }
        t
    }

    /// Counters summed over every tag and shard (cached blocks count as
    /// live; peaks are sums of per-arena peaks).
    pub fn stats(&self) -> Stats {
        Self::sum(self.tags().flat_map(|t| t.shards.iter()).map(|a| a.stats()))
    }

    /// Ends the current epoch and starts the next: returns the peaks, driver
    /// calls, allocations and time since the last call (or since the arena
    /// was made), then resets every shard's peaks to their current values.
    pub fn epoch(&self) -> Epoch {
        let mut start = self.epoch_start.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.stats();
        let times = timing::total();
        let calls = s.driver_calls.since(&start.calls);
        let e = Epoch {
            peak_live: s.peak_live,
            peak_committed: s.peak_committed,
            peak_ratio: s.peak_ratio(),
            driver_calls: calls,
            vmm_calls: calls.vmm(),
            allocs: s.allocs - start.allocs,
            frees: s.frees - start.frees,
            times: times.since(&start.times),
            stitch: s.stitch.since(&start.stitch),
        };
        for shard in self.tags().flat_map(|t| t.shards.iter()) {
            shard.lock().reset_peaks();
        }
        timing::reset_peak_handed();
        *start = EpochStart {
            calls: s.driver_calls,
            stitch: s.stitch,
            allocs: s.allocs,
            frees: s.frees,
            times,
        };
        e
    }

    /// Counters of one tag.
    pub fn tag_stats(&self, tag: u32) -> Stats {
        Self::sum(self.shards(tag).iter().map(|a| a.stats()))
    }

    /// Stats as a JSON object, with a per-tag breakdown (allocates).
    pub fn stats_json(&self) -> String {
        let s = self.stats();
        let tags: Vec<_> = self
            .tags_indexed()
            .map(|(i, t)| serde_json::json!({"tag": t.name, "asleep": t.is_asleep(), "stats": self.tag_stats(i)}))
            .collect();
        serde_json::json!({
            "device": self.device,
            "backend": self.driver.capabilities().backend.name(),
            "peak_ratio": s.peak_ratio(),
            "stats": s,
            "tags": tags,
        })
        .to_string()
    }
}

fn add(t: &mut SleepReport, r: SleepReport) {
    t.bytes += r.bytes;
    t.copied += r.copied;
    t.copy_seconds += r.copy_seconds;
    t.stage_seconds += r.stage_seconds;
    t.vmm_seconds += r.vmm_seconds;
}
