//! [`SharedArena`]: an [`Arena`] behind a lock, usable from many threads.
//! Its `allocator_api2::Allocator` impl (for the kinds the CPU may touch)
//! lives with the other allocator traits in the api layer.

use std::sync::{Mutex, MutexGuard};

use super::{Arena, ArenaConfig, Kind};
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::Result;
use crate::lock::lock;
use crate::stats::{Snapshot, Stats};

/// An arena shared behind a mutex. Aligned to 128 bytes so that arenas kept
/// side by side (the shards of a global arena) share no cache line.
#[repr(align(128))]
pub struct SharedArena<D: Driver> {
    inner: Mutex<Arena<D>>,
    host_visible: bool,
    base: DevicePtr,
    size: u64,
}

impl<D: Driver> core::fmt::Debug for SharedArena<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedArena")
            .field("base", &format_args!("{:#x}", self.base))
            .field("size", &self.size)
            .field("host_visible", &self.host_visible)
            .finish()
    }
}

impl<D: Driver> SharedArena<D> {
    /// A new arena of `kind` over `driver` (see [`Arena::new`]).
    pub fn new(driver: D, kind: Kind, config: ArenaConfig) -> Result<Self> {
        Ok(Self::from_arena(Arena::new(driver, kind, config)?))
    }

    /// Shares an existing arena.
    pub fn from_arena(arena: Arena<D>) -> Self {
        let (base, size) = arena.reservation();
        SharedArena {
            host_visible: arena.host_visible(),
            base,
            size,
            inner: Mutex::new(arena),
        }
    }

    /// Locks the arena.
    pub fn lock(&self) -> MutexGuard<'_, Arena<D>> {
        lock(&self.inner)
    }

    /// Unwraps the arena.
    pub fn into_inner(self) -> Arena<D> {
        self.inner.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the CPU may touch this arena's memory.
    pub fn host_visible(&self) -> bool {
        self.host_visible
    }

    /// Whether `ptr` lies in this arena's reservation (no lock taken).
    pub fn contains(&self, ptr: DevicePtr) -> bool {
        ptr.addr().wrapping_sub(self.base.addr()) < self.size
    }

    /// See [`Arena::alloc_on`].
    #[inline]
    pub fn alloc(&self, size: u64, align: u64, stream: Stream) -> Result<DevicePtr> {
        self.lock().alloc_on(size, align, stream)
    }

    /// See [`Arena::free_on`].
    pub fn free(&self, ptr: DevicePtr, stream: Stream) -> Result<()> {
        self.lock().free_on(ptr, stream)
    }

    /// See [`Arena::trim`].
    pub fn trim(&self) -> u64 {
        self.lock().trim()
    }

    /// See [`Arena::trim_idle`].
    pub fn trim_idle(&self) -> u64 {
        self.lock().trim_idle()
    }

    /// See [`Arena::stats`].
    pub fn stats(&self) -> Stats {
        let mut a = self.lock();
        // A peak a read reported stays (scratch bytes seen now included).
        a.note_peak();
        a.stats()
    }

    /// See [`Arena::snapshot`].
    pub fn snapshot(&self) -> Snapshot {
        let mut a = self.lock();
        a.note_peak();
        a.snapshot()
    }

    /// Gives the peer `device` at least `mode` on every committed page and
    /// every later commit (see [`Arena::grant`]). Safe: it never lowers
    /// rights. Cost: one driver call per committed run, none per later
    /// allocation.
    ///
    /// ```
    /// use gpu_arena::{SharedArena, Kind, ArenaConfig};
    /// use gpu_arena::driver::{AccessMode, HostConfig, HostDriver, Stream};
    /// let d = HostDriver::with_config(HostConfig { device_count: 2, ..Default::default() })?;
    /// let arena = SharedArena::new(d, Kind::Device(0), ArenaConfig::default())?;
    /// let p = arena.alloc(4 << 20, 256, Stream::DEFAULT)?;
    /// arena.grant(1, AccessMode::ReadWrite)?;
    /// assert_eq!(arena.access_of(p, 1)?, AccessMode::ReadWrite);
    /// // SAFETY: nothing of device 1 uses the arena any more.
    /// unsafe { arena.revoke(1)? };
    /// assert_eq!(arena.access_of(p, 1)?, AccessMode::None);
    /// # arena.free(p, Stream::DEFAULT)?;
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub fn grant(&self, device: u32, mode: crate::driver::AccessMode) -> Result<()> {
        self.lock()
            .grant(crate::driver::Location::Device(device), mode)
    }

    /// Takes every right of the peer `device` away (see [`Arena::revoke`]).
    ///
    /// # Safety
    /// No work of `device` touches this arena's memory any more.
    pub unsafe fn revoke(&self, device: u32) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantee.
        unsafe { self.lock().revoke(crate::driver::Location::Device(device)) }
    }

    /// The rights `device` has on the committed page holding `ptr`, as the
    /// driver reports them (see [`Arena::access_of`]).
    pub fn access_of(&self, ptr: DevicePtr, device: u32) -> Result<crate::driver::AccessMode> {
        self.lock()
            .access_of(ptr, crate::driver::Location::Device(device))
    }

    /// The access list in force (a copy).
    pub fn access(&self) -> Vec<crate::driver::Access> {
        self.lock().access().to_vec()
    }
}
