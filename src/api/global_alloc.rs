//! `GlobalAlloc` on a host-kind arena: a whole program can run on gpu-arena.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: gpu_arena::api::global_alloc::ArenaGlobalAlloc = gpu_arena::api::global_alloc::ArenaGlobalAlloc::new();
//! ```
//!
//! The arena (host backend, its metadata on the system allocator) is created
//! on the first allocation. Failures return null, as `GlobalAlloc` demands; a
//! re-entrant call (the allocator calling itself) returns null instead of
//! deadlocking.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use std::sync::{Mutex, OnceLock};

use crate::arena::{Arena, ArenaConfig, Kind};
use crate::driver::{DevicePtr, HostDriver};
use crate::lock::lock;
use crate::stats::Stats;

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// A `GlobalAlloc` over one host-backend [`Arena`].
pub struct ArenaGlobalAlloc {
    arena: OnceLock<Option<Mutex<Arena<HostDriver>>>>,
}

impl Default for ArenaGlobalAlloc {
    fn default() -> Self {
        Self::new()
    }
}

impl ArenaGlobalAlloc {
    /// An allocator whose arena is created on first use.
    pub const fn new() -> Self {
        ArenaGlobalAlloc {
            arena: OnceLock::new(),
        }
    }

    fn arena(&self) -> Option<&Mutex<Arena<HostDriver>>> {
        self.arena
            .get_or_init(|| {
                let driver = HostDriver::new().ok()?;
                Arena::new(driver, Kind::Device(0), ArenaConfig::default())
                    .ok()
                    .map(Mutex::new)
            })
            .as_ref()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Arena<HostDriver>) -> R) -> Option<R> {
        // Re-entrancy guard: the arena must never call the global allocator.
        let entered = BUSY.try_with(|b| !b.replace(true)).unwrap_or(false);
        if !entered {
            return None;
        }
        let r = self.arena().map(|m| f(&mut lock(m)));
        let _ = BUSY.try_with(|b| b.set(false));
        r
    }

    /// The arena's counters (None before the first allocation).
    pub fn stats(&self) -> Option<Stats> {
        self.with(|a| a.stats())
    }

    /// Whether `ptr` came from this allocator's arena.
    pub fn contains(&self, ptr: *const u8) -> bool {
        self.with(|a| a.contains(DevicePtr::from_ptr(ptr)))
            .unwrap_or(false)
    }
}

// SAFETY: (1) memory returned is host memory of the arena, valid and aligned
// for the layout, and stays so until dealloc (the arena decommits only pages
// without live bytes); (2) no method panics or unwinds: errors become null;
// (3) the arena's metadata uses the system allocator, so no call re-enters
// this allocator (and a guard returns null if one did).
unsafe impl GlobalAlloc for ArenaGlobalAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|a| a.alloc(layout.size().max(1) as u64, layout.align() as u64))
            .and_then(|r| r.ok())
            .map_or(core::ptr::null_mut(), |p| p.as_mut_ptr::<u8>())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // A refused free (a pointer not from this arena) changes nothing;
        // unwinding is not allowed here, so it is dropped silently.
        let _ = self.with(|a| a.free(DevicePtr::from_ptr(ptr)));
    }
}
