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
//! arena.free(p, Some((4096, 512)), Stream::DEFAULT)?;
//! # Ok::<(), gpu_arena::Error>(())
//! ```

mod cache;
pub mod config;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::api::SharedArena;
use crate::arena::Kind;
use crate::driver::{DevicePtr, Driver, Stream, SystemDriver};
use crate::error::{BadPointer, Error, Result};
use crate::policy::classes;
use crate::stats::Stats;
pub use config::GlobalConfig;

/// Devices with a global arena at most.
pub const MAX_DEVICES: usize = 16;

/// The driver the global arenas use.
pub type GlobalDriver = Arc<SystemDriver>;

/// One device's process-wide arena (see the module docs).
pub struct GlobalArena {
    device: u32,
    shards: Box<[SharedArena<GlobalDriver>]>,
    config: GlobalConfig,
    next_shard: AtomicU32,
}

impl core::fmt::Debug for GlobalArena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GlobalArena")
            .field("device", &self.device)
            .field("shards", &self.shards.len())
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
pub fn arena(device: u32) -> Result<&'static GlobalArena> {
    let slot = ARENAS.get(device as usize).ok_or(Error::Config(
        "device ordinal beyond gpu_arena::global::MAX_DEVICES",
    ))?;
    let r = slot.get_or_init(|| {
        let c = config()?;
        let g = GlobalArena::new(device, c)?;
        if c.report && device == 0 {
            register_report();
        }
        Ok(g)
    });
    r.as_ref().map_err(|e| *e)
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
            "gpu-arena: device {}: peak live {:.1} MiB, peak committed {:.1} MiB, peak committed / peak live {:.4}, driver calls {}",
            a.device(),
            s.peak_live as f64 / 1048576.0,
            s.peak_committed as f64 / 1048576.0,
            s.peak_ratio(),
            s.driver_calls.total()
        );
    }
}

fn register_report() {
    // SAFETY: print_report is an extern "C" fn with no arguments that only
    // reads the statics; atexit has no other precondition.
    unsafe { libc::atexit(print_report) };
}

impl GlobalArena {
    /// A new global-style arena for `device` (not registered as the
    /// process-wide one; see [`arena`]).
    pub fn new(device: u32, config: GlobalConfig) -> Result<Self> {
        let driver = Arc::new(SystemDriver::open(config.backend, device, |note| {
            eprintln!("{note}")
        })?);
        let mut shards = Vec::with_capacity(config.shards as usize);
        for _ in 0..config.shards.max(1) {
            shards.push(SharedArena::new(
                driver.clone(),
                Kind::Device(device),
                config.arena,
            )?);
        }
        Ok(GlobalArena {
            device,
            shards: shards.into_boxed_slice(),
            config,
            next_shard: AtomicU32::new(0),
        })
    }

    /// A new arena that lives for the rest of the process (the thread caches
    /// need `'static` arenas).
    pub fn leak(device: u32, config: GlobalConfig) -> Result<&'static Self> {
        Ok(Box::leak(Box::new(Self::new(device, config)?)))
    }

    /// The device ordinal.
    pub fn device(&self) -> u32 {
        self.device
    }
    /// Settings in force.
    pub fn config(&self) -> &GlobalConfig {
        &self.config
    }
    /// The shards.
    pub fn shards(&self) -> &[SharedArena<GlobalDriver>] {
        &self.shards
    }

    fn my_shard(&self) -> &SharedArena<GlobalDriver> {
        let mut s = SHARD.with(|c| c.get());
        if s == u32::MAX {
            s = THREADS.fetch_add(1, Ordering::Relaxed);
            SHARD.with(|c| c.set(s));
        }
        let _ = &self.next_shard;
        &self.shards[s as usize % self.shards.len()]
    }

    fn shard_of(&self, ptr: DevicePtr) -> Option<&SharedArena<GlobalDriver>> {
        self.shards.iter().find(|s| s.contains(ptr))
    }

    /// Allocates `size` bytes aligned to `align` for `stream`.
    ///
    /// Small blocks come from the calling thread's cache without a lock.
    #[inline]
    pub fn alloc(&'static self, size: u64, align: u64, stream: Stream) -> Result<DevicePtr> {
        if self.config.thread_cache > 0 && size > 0 {
            if let Some(class) = classes::class_for(size, align) {
                if let Some(p) = cache::pop(self, class, stream) {
                    return Ok(p);
                }
                return cache::refill(self, class, stream);
            }
        }
        self.my_shard().alloc(size, align, stream)
    }

    /// Allocates `size` bytes without the thread cache (for arenas that are
    /// not `'static`).
    pub fn alloc_uncached(&self, size: u64, align: u64, stream: Stream) -> Result<DevicePtr> {
        self.my_shard().alloc(size, align, stream)
    }

    /// Frees `ptr` (from any thread). `layout`, when given, must be the
    /// (size, align) it was allocated with. Bad pointers are refused and
    /// nothing changes.
    pub fn free(&self, ptr: DevicePtr, layout: Option<(u64, u64)>, stream: Stream) -> Result<()> {
        let shard = self.shard_of(ptr).ok_or(Error::BadPointer {
            addr: ptr,
            kind: BadPointer::Foreign,
        })?;
        let mut a = shard.lock();
        match layout {
            Some((size, align)) => a.free_sized(ptr, size, align, stream),
            None => a.free_on(ptr, stream),
        }
    }

    /// Gives back every empty page whose fences completed (and this thread's cache).
    pub fn trim(&'static self) -> u64 {
        cache::flush_current(self);
        self.shards.iter().map(|s| s.trim()).sum()
    }

    /// Counters summed over the shards (cached blocks count as live).
    pub fn stats(&self) -> Stats {
        let mut t = Stats::default();
        for s in self.shards.iter() {
            let x = s.stats();
            t.reserved += x.reserved;
            t.committed += x.committed;
            t.live += x.live;
            t.peak_committed += x.peak_committed;
            t.peak_live += x.peak_live;
            t.pending_decommit += x.pending_decommit;
            t.reclaimable += x.reclaimable;
            t.pending_fences += x.pending_fences;
            t.handles += x.handles;
            for (a, b) in [
                (&mut t.slab, x.slab),
                (&mut t.large, x.large),
                (&mut t.scratch, x.scratch),
                (&mut t.grow, x.grow),
            ] {
                a.blocks += b.blocks;
                a.bytes += b.bytes;
            }
            t.driver_calls.create += x.driver_calls.create;
            t.driver_calls.map += x.driver_calls.map;
            t.driver_calls.set_access += x.driver_calls.set_access;
            t.driver_calls.unmap += x.driver_calls.unmap;
            t.driver_calls.release += x.driver_calls.release;
            t.driver_calls.record += x.driver_calls.record;
            t.driver_calls.wait += x.driver_calls.wait;
            t.driver_calls.failed += x.driver_calls.failed;
            t.allocs += x.allocs;
            t.frees += x.frees;
        }
        t
    }

    /// Stats as a JSON object (allocates).
    pub fn stats_json(&self) -> String {
        let s = self.stats();
        serde_json::json!({
            "device": self.device,
            "shards": self.shards.len(),
            "backend": self.shards[0].lock().driver().capabilities().backend.name(),
            "peak_ratio": s.peak_ratio(),
            "stats": s,
        })
        .to_string()
    }
}
