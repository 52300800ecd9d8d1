//! Scratch arenas: bump allocation with `reset()`, the `bumpalo::Bump` idea
//! on arena memory. A scratch arena reserves its capacity once in the arena's
//! buffers region, commits pages as the bump pointer advances, and on
//! `reset()` keeps up to its retention limit committed and gives the rest back.
//!
//! ```
//! use gpu_arena::{SharedArena, Scratch, Kind, ArenaConfig};
//! use gpu_arena::driver::HostDriver;
//! let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let mut scratch = Scratch::new(&arena, 64 << 20, 4 << 20)?;
//! let x = scratch.alloc(42u64);
//! let s = scratch.alloc_slice_copy(&[1u8, 2, 3]);
//! assert_eq!((*x, &s[..]), (42, &[1, 2, 3][..]));
//! scratch.reset();
//! assert_eq!(scratch.allocated_bytes(), 0);
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

use crate::api::SharedArena;
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};
use crate::policy::Policy;
use crate::policy::scratch::{Bump, BumpResult};

/// A bump-allocating scratch arena (see the module docs).
pub struct Scratch<'a, D: Driver> {
    arena: &'a SharedArena<D>,
    base: DevicePtr,
    /// Next free address (the fast path's copy of `bump.cursor`, absolute).
    cursor: Cell<u64>,
    /// End of the committed prefix (absolute). Invariant: `cursor <= limit`.
    limit: Cell<u64>,
    host_visible: bool,
    /// Capacity, committed bytes and generation; its cursor is synced from
    /// `cursor` on the slow path.
    bump: Cell<Bump>,
    /// Bytes accounted as live in the arena's stats (updated on slow paths).
    accounted: Cell<u64>,
    retain: u64,
    page: u64,
}

/// A pointer handed out by [`Scratch::alloc_raw`], checked against resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchPtr {
    ptr: DevicePtr,
    generation: u64,
}

impl ScratchPtr {
    /// The address, if the scratch arena was not reset since it was handed out.
    pub fn get<D: Driver>(&self, scratch: &Scratch<'_, D>) -> Result<DevicePtr> {
        let current = scratch.bump.get().generation;
        if current != self.generation {
            return Err(Error::StaleScratch {
                used: self.generation,
                current,
            });
        }
        Ok(self.ptr)
    }
}

impl<D: Driver> core::fmt::Debug for Scratch<'_, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Scratch")
            .field("base", &format_args!("{:#x}", self.base))
            .field("bump", &self.bump.get())
            .finish()
    }
}

impl<'a, D: Driver> Scratch<'a, D> {
    /// A scratch arena of up to `capacity` bytes that keeps `retain` bytes
    /// committed across resets. Reserves address space only.
    pub fn new(arena: &'a SharedArena<D>, capacity: u64, retain: u64) -> Result<Self> {
        let mut a = arena.lock();
        let page = a.page();
        let base = a.reserve_buffer(capacity, Policy::Scratch)?;
        let capacity = crate::driver::round_up(capacity, page).unwrap_or(capacity);
        Ok(Scratch {
            arena,
            base,
            cursor: Cell::new(base),
            limit: Cell::new(base),
            host_visible: arena.host_visible(),
            bump: Cell::new(Bump::new(capacity)),
            accounted: Cell::new(0),
            retain,
            page,
        })
    }

    /// Reserved bytes.
    pub fn capacity(&self) -> u64 {
        self.bump.get().capacity
    }
    /// Committed bytes.
    pub fn committed_bytes(&self) -> u64 {
        self.bump.get().committed
    }
    /// Bytes handed out since the last reset (alignment padding included).
    pub fn allocated_bytes(&self) -> u64 {
        self.cursor.get() - self.base
    }

    /// The bump state with the fast path's cursor.
    fn synced(&self) -> Bump {
        let mut b = self.bump.get();
        b.cursor = self.cursor.get() - self.base;
        b.used = b.cursor;
        b
    }

    fn store(&self, b: Bump) {
        self.cursor.set(self.base + b.cursor);
        self.limit.set(self.base + b.committed);
        self.bump.set(b);
    }
    /// Resets so far (the generation of [`ScratchPtr`]s).
    pub fn generation(&self) -> u64 {
        self.bump.get().generation
    }

    /// Allocates `layout`; constant time unless pages must be committed.
    #[inline(always)]
    pub fn try_alloc_layout(&self, layout: Layout) -> Result<DevicePtr> {
        let align = layout.align() as u64;
        let start = (self.cursor.get() + align - 1) & !(align - 1);
        // Addresses stay below 2^48 and sizes below 2^63: no overflow.
        let end = start + layout.size().max(1) as u64;
        // Alignments above a page go to the slow path, which refuses them.
        if end <= self.limit.get() && align <= self.page {
            self.cursor.set(end);
            return Ok(start);
        }
        self.alloc_layout_slow(layout)
    }

    #[cold]
    #[inline(never)]
    fn alloc_layout_slow(&self, layout: Layout) -> Result<DevicePtr> {
        let size = layout.size().max(1) as u64;
        let align = layout.align() as u64;
        if !layout.align().is_power_of_two() || align > self.page {
            return Err(Error::BadAlignment {
                align,
                max: self.page,
            });
        }
        let mut b = self.synced();
        match b.alloc(size, align) {
            BumpResult::Placed(off) => {
                self.store(b);
                Ok(self.base + off)
            }
            BumpResult::Full => Err(Error::TooLarge {
                size,
                max: b.capacity,
            }),
            BumpResult::Commit(end) => {
                // Grow geometrically (at least double), in whole pages.
                let want = end.max(b.committed.saturating_mul(2)).min(b.capacity);
                let to = crate::driver::round_up(want, self.page)
                    .unwrap_or(b.capacity)
                    .min(b.capacity);
                let mut a = self.arena.lock();
                a.commit_buffer(self.base, b.committed, to)?;
                b.committed = to;
                let BumpResult::Placed(off) = b.alloc(size, align) else {
                    return Err(Error::Unsupported("scratch commit did not make room (bug)"));
                };
                a.account_buffer(Policy::Scratch, self.accounted.get(), b.cursor);
                self.accounted.set(b.cursor);
                self.store(b);
                Ok(self.base + off)
            }
        }
    }

    /// Allocates raw memory (any kind, device memory too), checked against resets.
    pub fn alloc_raw(&self, size: u64, align: u64) -> Result<ScratchPtr> {
        let layout = Layout::from_size_align(size as usize, align as usize).map_err(|_| {
            Error::BadAlignment {
                align,
                max: self.page,
            }
        })?;
        let ptr = self.try_alloc_layout(layout)?;
        Ok(ScratchPtr {
            ptr,
            generation: self.bump.get().generation,
        })
    }

    fn host(&self) -> &Self {
        assert!(
            self.host_visible,
            "this scratch arena holds device memory the CPU cannot touch: use alloc_raw"
        );
        self
    }

    /// Allocates a `T` holding `val` (host-visible kinds only; panics on
    /// out-of-memory like `bumpalo::Bump::alloc`).
    #[allow(clippy::mut_from_ref)] // each call hands out fresh memory, as bumpalo does
    pub fn alloc<T>(&self, val: T) -> &mut T {
        let p = self.host().alloc_layout(Layout::new::<T>()).cast::<T>();
        // SAFETY: p is fresh, aligned, host-accessible memory for a T that
        // nothing else references until reset (which takes &mut self).
        unsafe {
            p.as_ptr().write(val);
            &mut *p.as_ptr()
        }
    }

    /// Copies `src` into the scratch arena (host-visible kinds only).
    #[allow(clippy::mut_from_ref)] // each call hands out fresh memory, as bumpalo does
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        let p = self.host().alloc_layout(Layout::for_value(src)).cast::<T>();
        // SAFETY: p is fresh, aligned memory for src.len() Ts; the ranges
        // cannot overlap (src is not in memory handed out after it).
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len());
            core::slice::from_raw_parts_mut(p.as_ptr(), src.len())
        }
    }

    /// Allocates `layout` and returns a host pointer (host-visible kinds
    /// only); panics on out-of-memory, like `bumpalo::Bump::alloc_layout`.
    #[inline(always)]
    pub fn alloc_layout(&self, layout: Layout) -> NonNull<u8> {
        if self.host_visible {
            if let Ok(p) = self.try_alloc_layout(layout) {
                // SAFETY: arena addresses are never 0.
                return unsafe { NonNull::new_unchecked(p as *mut u8) };
            }
        }
        self.alloc_layout_failed(layout)
    }

    #[cold]
    #[inline(never)]
    fn alloc_layout_failed(&self, layout: Layout) -> NonNull<u8> {
        match self.host().try_alloc_layout(layout) {
            Ok(p) => NonNull::new(p as *mut u8).unwrap_or(NonNull::dangling()),
            Err(e) => panic!("gpu-arena scratch allocation failed: {e}"),
        }
    }

    /// Forgets every allocation. Keeps `retain` bytes committed and gives the
    /// rest back (once the default stream's work on it completed).
    pub fn reset(&mut self) {
        self.reset_on(Stream::DEFAULT)
    }

    /// [`Scratch::reset`], with the memory last used on `stream`.
    pub fn reset_on(&mut self, stream: Stream) {
        let mut b = self.bump.get();
        let keep = crate::driver::round_up(self.retain, self.page)
            .unwrap_or(b.committed)
            .min(b.committed);
        let mut a = self.arena.lock();
        // While the arena is asleep the pages stay as they are (restored on wake).
        if keep < b.committed
            && a.decommit_buffer(self.base, keep, b.committed, stream)
                .is_ok()
        {
            b.committed = keep;
        }
        a.account_buffer(Policy::Scratch, self.accounted.get(), 0);
        self.accounted.set(0);
        b.reset();
        self.store(b);
    }
}

impl<D: Driver> Drop for Scratch<'_, D> {
    fn drop(&mut self) {
        let b = self.bump.get();
        let mut a = self.arena.lock();
        a.account_buffer(Policy::Scratch, self.accounted.get(), 0);
        a.free_buffer(self.base, b.committed, Policy::Scratch, Stream::DEFAULT);
    }
}

// SAFETY: blocks are valid, aligned, host-accessible (checked) memory that
// stays committed until `reset`, which needs `&mut Scratch` and so cannot
// happen while an `&Scratch` allocator is in use.
unsafe impl<D: Driver> Allocator for &Scratch<'_, D> {
    fn allocate(&self, layout: Layout) -> core::result::Result<NonNull<[u8]>, AllocError> {
        if !self.host_visible {
            return Err(AllocError);
        }
        let p = self.try_alloc_layout(layout).map_err(|_| AllocError)?;
        let p = NonNull::new(p as *mut u8).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, _ptr: NonNull<u8>, _layout: Layout) {
        // Bump allocation: memory comes back on reset.
    }
}
