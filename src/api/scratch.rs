//! Scratch arenas: bump allocation with `reset()`, `bumpalo::Bump`'s API on
//! one virtual reservation.
//!
//! A [`Scratch`] reserves its maximum once in the arena's buffers region (a
//! setting, large by default: reserving address space costs no memory),
//! commits physical pages ahead of its cursor as it advances, and on
//! [`Scratch::reset`] keeps a chosen amount committed and gives the rest back
//! without synchronizing the device. So, unlike `bumpalo::Bump`, it grows
//! without new chunks and without moving anything: one contiguous range,
//! where the last allocation (a growing `Vec`, say) can grow in place.
//!
//! ```
//! use gpu_arena::{SharedArena, Scratch, Kind, ArenaConfig};
//! use gpu_arena::driver::HostDriver;
//! let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let mut scratch = Scratch::new(&arena)?;
//! let x = scratch.alloc(42u64);
//! let s = scratch.alloc_str("hello");
//! let v = scratch.alloc_slice_fill_with(3, |i| i * 10);
//! assert_eq!((*x, &*s, &v[..]), (42, "hello", &[0, 10, 20][..]));
//! // The arena's stats count the bytes bumped, exactly, at every moment.
//! assert_eq!(arena.stats().scratch.bytes, scratch.allocated_bytes() as u64);
//! scratch.reset();
//! assert_eq!(scratch.allocated_bytes(), 0);
//! # Ok::<(), gpu_arena::Error>(())
//! ```
//!
//! Collections allocate in it through `allocator_api2`, as they do in a
//! `&bumpalo::Bump`:
//!
//! ```
//! use allocator_api2::{boxed::Box, vec::Vec};
//! use gpu_arena::{SharedArena, Scratch, Kind, ArenaConfig};
//! use gpu_arena::driver::HostDriver;
//! let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let scratch = Scratch::new(&arena)?;
//! let mut v = Vec::new_in(&scratch);
//! v.extend(0..1000u32);
//! let first = v.as_ptr();
//! v.extend(1000..100_000u32); // the last allocation grows in place
//! assert_eq!(v.as_ptr(), first);
//! let b = Box::new_in([1u8; 16], &scratch); // dropped like any Box; its bytes come back on reset
//! assert_eq!(b[15], 1);
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use core::alloc::Layout;
use core::cell::Cell;
use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use core::sync::atomic::Ordering::Relaxed;

use allocator_api2::alloc::{AllocError, Allocator};

use crate::api::SharedArena;
use crate::arena::{ScratchCursor, ScratchRange, ScratchShared};
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};

pub use crate::arena::scratch::{DEFAULT_COMMIT_AHEAD, DEFAULT_RETAIN, ScratchConfig};

const NOT_HOST: &str = "this scratch arena holds device memory the CPU cannot touch: use alloc_layout, try_alloc_device or alloc_raw";

/// A bump-allocating scratch arena (see the module docs).
///
/// Values allocated in it are never dropped (as in `bumpalo::Bump`):
/// [`Scratch::reset`] and dropping the arena give the memory back without
/// running destructors. Use `allocator_api2::boxed::Box::new_in(x, &scratch)`
/// for a value whose destructor must run.
pub struct Scratch<'a, D: Driver> {
    /// Next free address. Shared with the arena, which reads it for its
    /// stats; only this scratch arena writes it. Invariant: `base <= cursor
    /// <= base + range.max()`.
    cursor: ScratchCursor,
    /// End of what the fast path may hand out: `range.fast_end()`
    /// (committed memory under the allocation limit).
    limit: Cell<u64>,
    base: DevicePtr,
    host_visible: bool,
    /// The range and its bump state; the arena takes it for the slow path.
    range: Cell<ScratchRange>,
    arena: &'a SharedArena<D>,
    /// The stream the memory was last used on, as the last
    /// [`Scratch::reset_on`] named it: dropped, the scratch arena gives its
    /// pages back once that stream's work on them completed.
    stream: Cell<Stream>,
    /// Whether this scratch arena pins its arena awake (`Arena::pin_host`):
    /// from its first typed value (a host reference) to the next reset.
    host_pinned: Cell<bool>,
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
        let current = scratch.generation();
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
            .field("cursor", &format_args!("{:#x}", self.cursor.load(Relaxed)))
            .field("range", &self.range.get())
            .finish()
    }
}

/// An iterator over the chunks a scratch arena allocated into: one at most
/// (see [`Scratch::iter_allocated_chunks`]).
pub type ChunkIter<'s> = core::option::IntoIter<&'s [MaybeUninit<u8>]>;
/// Raw form of [`ChunkIter`]: (start, length) pairs.
pub type ChunkRawIter = core::option::IntoIter<(*mut u8, usize)>;

#[cold]
#[inline(never)]
#[track_caller]
fn alloc_failed(e: Error) -> ! {
    panic!("gpu-arena scratch allocation failed: {e}")
}

#[cold]
#[inline(never)]
#[track_caller]
fn not_host() -> ! {
    panic!("{NOT_HOST}")
}

/// A layout for `len` values of `T`, or the error a `try_` form returns.
fn array<T>(len: usize) -> Result<Layout> {
    Layout::array::<T>(len).map_err(|_| Error::TooLarge {
        size: (len as u64).saturating_mul(core::mem::size_of::<T>() as u64),
        max: isize::MAX as u64,
    })
}

impl<'a, D: Driver> Scratch<'a, D> {
    /// A scratch arena with the default settings ([`ScratchConfig::default`]):
    /// a large reservation, nothing committed yet. Reserves address space
    /// only (no driver call).
    pub fn new(arena: &'a SharedArena<D>) -> Result<Self> {
        Self::with_config(arena, ScratchConfig::default())
    }

    /// A scratch arena with `capacity` bytes committed up front and kept
    /// across resets (as `bumpalo::Bump::with_capacity`, whose first chunk
    /// survives its resets). May call the driver.
    pub fn with_capacity(arena: &'a SharedArena<D>, capacity: usize) -> Result<Self> {
        Self::with_config(
            arena,
            ScratchConfig {
                capacity: capacity as u64,
                retain: DEFAULT_RETAIN.max(capacity as u64),
                ..ScratchConfig::default()
            },
        )
    }

    /// A scratch arena with these settings. Reserves address space, and
    /// commits `config.capacity` bytes (driver calls) when it is not 0.
    pub fn with_config(arena: &'a SharedArena<D>, config: ScratchConfig) -> Result<Self> {
        if config.max != 0 && config.capacity > config.max {
            return Err(Error::Config(
                "scratch capacity must not exceed its max (0: the default max)",
            ));
        }
        // Made before locking: this may allocate on the global allocator.
        let cursor = ScratchCursor::new(ScratchShared::default());
        let mut a = arena.lock();
        let range = a.reserve_scratch(&config, &cursor)?;
        drop(a);
        Ok(Scratch {
            cursor,
            limit: Cell::new(range.fast_end().addr()),
            base: range.base(),
            host_visible: arena.host_visible(),
            range: Cell::new(range),
            arena,
            stream: Cell::new(Stream::DEFAULT),
            host_pinned: Cell::new(false),
        })
    }

    // ----- figures -----

    /// Bytes allocated since the last reset, alignment padding included
    /// (as `bumpalo::Bump::allocated_bytes`). The arena's
    /// `stats().scratch.bytes` counts the same, at every moment.
    /// Constant time.
    pub fn allocated_bytes(&self) -> usize {
        (self.cursor.load(Relaxed) - self.base.addr()) as usize
    }
    /// Bytes of physical memory committed now.
    pub fn committed_bytes(&self) -> u64 {
        self.range.get().committed()
    }
    /// Bytes of address space reserved: the most this scratch arena holds
    /// between two resets.
    pub fn reserved_bytes(&self) -> u64 {
        self.range.get().max()
    }
    /// Bytes that can be allocated before the next commit or the allocation
    /// limit (as `bumpalo::Bump::chunk_capacity`).
    pub fn chunk_capacity(&self) -> usize {
        self.limit.get().saturating_sub(self.cursor.load(Relaxed)) as usize
    }
    /// Resets so far (the generation of [`ScratchPtr`]s).
    pub fn generation(&self) -> u64 {
        self.range.get().generation()
    }
    /// Whether `addr` lies in this scratch arena's reservation: one range
    /// check (the reservation is contiguous and never moves).
    #[inline]
    pub fn contains(&self, addr: DevicePtr) -> bool {
        self.range.get().contains(addr)
    }
    /// Whether the CPU may touch this scratch arena's memory (the typed
    /// forms such as [`Scratch::alloc`] need it).
    pub fn host_visible(&self) -> bool {
        self.host_visible
    }

    /// The allocation limit: the most bytes [`Scratch::allocated_bytes`]
    /// may reach between two resets, or `None`.
    pub fn allocation_limit(&self) -> Option<usize> {
        self.range.get().allocation_limit().map(|l| l as usize)
    }

    /// Sets the allocation limit (`None`: no limit but the reservation).
    /// Unlike `bumpalo::Bump`'s, it is exact: an allocation that would take
    /// [`Scratch::allocated_bytes`] past it fails, wherever it would land.
    ///
    /// ```
    /// use gpu_arena::{SharedArena, Scratch, Kind, ArenaConfig, Error};
    /// use gpu_arena::driver::HostDriver;
    /// let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
    /// let scratch = Scratch::new(&arena)?;
    /// scratch.set_allocation_limit(Some(16));
    /// assert!(scratch.try_alloc([0u8; 16]).is_ok());
    /// assert!(matches!(scratch.try_alloc(1u8), Err(Error::ScratchLimit { .. })));
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub fn set_allocation_limit(&self, limit: Option<usize>) {
        let mut r = self.range.get();
        r.set_allocation_limit(limit.map(|l| l as u64));
        self.store(r);
    }

    fn store(&self, r: ScratchRange) {
        self.limit.set(r.fast_end().addr());
        self.range.set(r);
    }

    // ----- the fast and slow paths -----

    /// Bumps the cursor where committed memory under the limit holds the
    /// request; `None` for the slow path (commit, limits, zero size).
    #[inline(always)]
    fn bump_fast(&self, layout: Layout) -> Option<DevicePtr> {
        let size = layout.size() as u64;
        let align = layout.align() as u64;
        let cursor = self.cursor.load(Relaxed);
        // No wrap for a nonzero size: the cursor is a user-space address
        // (below 2^57), and `Layout` keeps `align - 1 + size` below 2^63.
        let start = cursor.wrapping_add(align - 1) & !(align - 1);
        let end = start.wrapping_add(size);
        if size != 0 && end <= self.limit.get() && !self.cursor.asleep.load(Relaxed) {
            self.cursor.store(end, Relaxed);
            Some(DevicePtr::new(start))
        } else {
            None
        }
    }

    /// Allocates `layout` and returns its address; for any memory kind
    /// (device memory too: pass the address to kernels and copies).
    /// Constant time unless pages must be committed (driver calls).
    /// A zero-size layout takes no memory: its address is the alignment
    /// (dangling, as bumpalo's).
    #[inline(always)]
    pub fn try_alloc_device(&self, layout: Layout) -> Result<DevicePtr> {
        match self.bump_fast(layout) {
            Some(p) => Ok(p),
            None => self.alloc_slow(layout),
        }
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout) -> Result<DevicePtr> {
        let size = layout.size() as u64;
        if size == 0 {
            return Ok(DevicePtr::new(layout.align() as u64));
        }
        let (start, end) =
            self.bump_slow(self.cursor.load(Relaxed), size, layout.align() as u64)?;
        self.cursor.store(end.addr(), Relaxed);
        Ok(start)
    }

    /// The arena's slow path for `size` bytes aligned to `align` from
    /// `cursor` (see [`Arena::scratch_alloc`](crate::arena::Arena::scratch_alloc)):
    /// commits where needed, checks the limit and the reservation. Returns
    /// (start, end); the caller moves the cursor. May call the driver.
    fn bump_slow(&self, cursor: u64, size: u64, align: u64) -> Result<(DevicePtr, DevicePtr)> {
        let mut r = self.range.get();
        let placed = self
            .arena
            .lock()
            .scratch_alloc(&mut r, DevicePtr::new(cursor), size, align);
        self.store(r);
        placed
    }

    /// Extends the allocation ending at the cursor to end at `end`
    /// (absolute), committing where needed. False where the limit or the
    /// reservation is in the way, or memory is short.
    fn extend_last(&self, end: u64) -> bool {
        let cursor = self.cursor.load(Relaxed);
        if end > self.limit.get() && self.bump_slow(cursor, end - cursor, 1).is_err() {
            return false;
        }
        self.cursor.store(end, Relaxed);
        true
    }

    // ----- layout-only forms (every memory kind) -----

    /// Allocates `layout` (as `bumpalo::Bump::try_alloc_layout`). On memory
    /// the CPU cannot touch the pointer is a device address, for kernels
    /// and copies only. Constant time unless pages must be committed.
    #[inline(always)]
    pub fn try_alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>> {
        let p = self.try_alloc_device(layout)?;
        // SAFETY: arena addresses and alignments (zero-size layouts) are
        // never 0.
        Ok(unsafe { NonNull::new_unchecked(p.as_mut_ptr::<u8>()) })
    }

    /// Allocates `layout`; panics where it cannot (as
    /// `bumpalo::Bump::alloc_layout`). See [`Scratch::try_alloc_layout`].
    #[inline(always)]
    #[track_caller]
    pub fn alloc_layout(&self, layout: Layout) -> NonNull<u8> {
        match self.bump_fast(layout) {
            // SAFETY: arena addresses are never 0.
            Some(p) => unsafe { NonNull::new_unchecked(p.as_mut_ptr::<u8>()) },
            None => self.alloc_layout_slow(layout),
        }
    }

    #[cold]
    #[inline(never)]
    #[track_caller]
    fn alloc_layout_slow(&self, layout: Layout) -> NonNull<u8> {
        match self.alloc_slow(layout) {
            // SAFETY: arena addresses and alignments are never 0.
            Ok(p) => unsafe { NonNull::new_unchecked(p.as_mut_ptr::<u8>()) },
            Err(e) => alloc_failed(e),
        }
    }

    /// Allocates `size` bytes aligned to `align` (any memory kind), checked
    /// against resets: [`ScratchPtr::get`] refuses it after one.
    pub fn alloc_raw(&self, size: u64, align: u64) -> Result<ScratchPtr> {
        let layout = Layout::from_size_align(size as usize, align as usize).map_err(|_| {
            if align.is_power_of_two() {
                Error::TooLarge {
                    size,
                    max: isize::MAX as u64,
                }
            } else {
                Error::BadAlignment {
                    align,
                    max: 1 << 62,
                }
            }
        })?;
        let ptr = self.try_alloc_device(layout)?;
        Ok(ScratchPtr {
            ptr,
            generation: self.generation(),
        })
    }

    // ----- typed forms (memory the CPU may touch) -----

    /// Host memory for `layout`, or an error on device memory.
    #[inline(always)]
    fn try_host(&self, layout: Layout) -> Result<NonNull<u8>> {
        if !self.host_visible {
            return Err(Error::Unsupported(NOT_HOST));
        }
        if !self.host_pinned.get() {
            self.pin_host()?;
        }
        self.try_alloc_layout(layout)
    }

    /// Host memory for `layout`; panics where it cannot.
    #[inline(always)]
    #[track_caller]
    fn host(&self, layout: Layout) -> NonNull<u8> {
        if !self.host_visible {
            not_host()
        }
        if !self.host_pinned.get() {
            if let Err(e) = self.pin_host() {
                alloc_failed(e)
            }
        }
        self.alloc_layout(layout)
    }

    /// Pins the arena awake before the first host reference (see
    /// `host_pinned`); refused while it sleeps.
    #[cold]
    #[inline(never)]
    fn pin_host(&self) -> Result<()> {
        self.arena.lock().pin_host()?;
        self.host_pinned.set(true);
        Ok(())
    }

    /// Allocates a `T` holding `val` and returns it; panics where memory
    /// cannot be had or the CPU cannot touch it (as `bumpalo::Bump::alloc`).
    /// Constant time unless pages must be committed.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)] // each call hands out fresh memory, as bumpalo does
    pub fn alloc<T>(&self, val: T) -> &mut T {
        self.alloc_with(|| val)
    }

    /// [`Scratch::alloc`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc<T>(&self, val: T) -> Result<&mut T> {
        self.try_alloc_with(|| val)
    }

    /// Allocates a `T` and initializes it with `f()`, which may then be
    /// written in place (as `bumpalo::Bump::alloc_with`).
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_with<T, F: FnOnce() -> T>(&self, f: F) -> &mut T {
        let p = self.host(Layout::new::<T>()).cast::<T>();
        // SAFETY: p is fresh, aligned, host-accessible memory for a T that
        // nothing else refers to until a reset (which takes &mut self).
        unsafe { write_with(p, f) }
    }

    /// [`Scratch::alloc_with`], failing with an error instead of panicking
    /// (`f` is not called then).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_with<T, F: FnOnce() -> T>(&self, f: F) -> Result<&mut T> {
        let p = self.try_host(Layout::new::<T>())?.cast::<T>();
        // SAFETY: as in `alloc_with`.
        Ok(unsafe { write_with(p, f) })
    }

    /// Copies `src` into the scratch arena.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_copy<T: Copy>(&self, src: &[T]) -> &mut [T] {
        let p = self.host(Layout::for_value(src)).cast::<T>();
        // SAFETY: p is fresh, aligned memory for src.len() Ts that nothing
        // else refers to; src is not in it.
        unsafe { copy_into(p, src) }
    }

    /// [`Scratch::alloc_slice_copy`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_copy<T: Copy>(&self, src: &[T]) -> Result<&mut [T]> {
        let p = self.try_host(Layout::for_value(src))?.cast::<T>();
        // SAFETY: as in `alloc_slice_copy`.
        Ok(unsafe { copy_into(p, src) })
    }

    /// Clones `src` into the scratch arena.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_clone<T: Clone>(&self, src: &[T]) -> &mut [T] {
        self.alloc_slice_fill_with(src.len(), |i| src[i].clone())
    }

    /// [`Scratch::alloc_slice_clone`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_clone<T: Clone>(&self, src: &[T]) -> Result<&mut [T]> {
        self.try_alloc_slice_fill_with(src.len(), |i| src[i].clone())
    }

    /// Copies `src` into the scratch arena.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_str(&self, src: &str) -> &mut str {
        let bytes = self.alloc_slice_copy(src.as_bytes());
        // SAFETY: a copy of a str's bytes is UTF-8.
        unsafe { core::str::from_utf8_unchecked_mut(bytes) }
    }

    /// [`Scratch::alloc_str`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_str(&self, src: &str) -> Result<&mut str> {
        let bytes = self.try_alloc_slice_copy(src.as_bytes())?;
        // SAFETY: a copy of a str's bytes is UTF-8.
        Ok(unsafe { core::str::from_utf8_unchecked_mut(bytes) })
    }

    /// Allocates `len` values, the `i`th initialized with `f(i)`.
    ///
    /// ```
    /// # use gpu_arena::{SharedArena, Scratch, Kind, ArenaConfig};
    /// # use gpu_arena::driver::HostDriver;
    /// # let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
    /// let scratch = Scratch::new(&arena)?;
    /// assert_eq!(scratch.alloc_slice_fill_with(4, |i| i * i), &[0, 1, 4, 9]);
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_with<T, F: FnMut(usize) -> T>(&self, len: usize, f: F) -> &mut [T] {
        let layout = array::<T>(len).unwrap_or_else(|e| alloc_failed(e));
        let p = self.host(layout).cast::<T>();
        // SAFETY: p is fresh, aligned memory for len Ts that nothing else
        // refers to.
        unsafe { fill(p, len, f) }
    }

    /// [`Scratch::alloc_slice_fill_with`], failing with an error instead of
    /// panicking (`f` is not called then).
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_with<T, F: FnMut(usize) -> T>(
        &self,
        len: usize,
        f: F,
    ) -> Result<&mut [T]> {
        let p = self.try_host(array::<T>(len)?)?.cast::<T>();
        // SAFETY: as in `alloc_slice_fill_with`.
        Ok(unsafe { fill(p, len, f) })
    }

    /// Allocates `len` copies of `value`.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_copy<T: Copy>(&self, len: usize, value: T) -> &mut [T] {
        self.alloc_slice_fill_with(len, |_| value)
    }

    /// [`Scratch::alloc_slice_fill_copy`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_copy<T: Copy>(&self, len: usize, value: T) -> Result<&mut [T]> {
        self.try_alloc_slice_fill_with(len, |_| value)
    }

    /// Allocates `len` clones of `value`.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_clone<T: Clone>(&self, len: usize, value: &T) -> &mut [T] {
        self.alloc_slice_fill_with(len, |_| value.clone())
    }

    /// [`Scratch::alloc_slice_fill_clone`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_clone<T: Clone>(&self, len: usize, value: &T) -> Result<&mut [T]> {
        self.try_alloc_slice_fill_with(len, |_| value.clone())
    }

    /// Allocates `len` default values.
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_default<T: Default>(&self, len: usize) -> &mut [T] {
        self.alloc_slice_fill_with(len, |_| T::default())
    }

    /// [`Scratch::alloc_slice_fill_default`], failing with an error instead of panicking.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_default<T: Default>(&self, len: usize) -> Result<&mut [T]> {
        self.try_alloc_slice_fill_with(len, |_| T::default())
    }

    /// Allocates the values of an iterator that knows its length; panics
    /// if it yields fewer than it said (as bumpalo's).
    #[inline(always)]
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub fn alloc_slice_fill_iter<T, I>(&self, iter: I) -> &mut [T]
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut iter = iter.into_iter();
        self.alloc_slice_fill_with(iter.len(), |_| {
            iter.next().expect("Iterator supplied too few elements")
        })
    }

    /// [`Scratch::alloc_slice_fill_iter`], failing with an error instead of
    /// panicking when memory cannot be had.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub fn try_alloc_slice_fill_iter<T, I>(&self, iter: I) -> Result<&mut [T]>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut iter = iter.into_iter();
        self.try_alloc_slice_fill_with(iter.len(), |_| {
            iter.next().expect("Iterator supplied too few elements")
        })
    }

    // ----- chunks and reset -----

    /// The memory allocated since the last reset, as bumpalo's
    /// `iter_allocated_chunks`: here one chunk at most (the reservation is
    /// contiguous), oldest allocation first (the cursor moves up; bumpalo's
    /// moves down). Padding between allocations is uninitialized. Panics on
    /// memory the CPU cannot touch (see [`Scratch::iter_allocated_chunks_raw`]).
    ///
    /// ```
    /// # use gpu_arena::{SharedArena, Scratch, Kind, ArenaConfig};
    /// # use gpu_arena::driver::HostDriver;
    /// # let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
    /// let mut scratch = Scratch::new(&arena)?;
    /// scratch.alloc(b'a');
    /// scratch.alloc(b'b');
    /// let chunks: Vec<_> = scratch.iter_allocated_chunks().collect();
    /// assert_eq!(chunks.len(), 1);
    /// // SAFETY: only bytes were allocated, so there is no padding.
    /// assert_eq!(unsafe { [chunks[0][0].assume_init(), chunks[0][1].assume_init()] }, *b"ab");
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub fn iter_allocated_chunks(&mut self) -> ChunkIter<'_> {
        if !self.host_visible {
            not_host()
        }
        if !self.host_pinned.get() {
            if let Err(e) = self.pin_host() {
                alloc_failed(e)
            }
        }
        let len = self.allocated_bytes();
        let chunk = (len > 0).then(|| {
            // SAFETY: base..cursor is committed, host-visible memory of this
            // scratch arena; `&mut self` means no reference handed out by an
            // allocation is alive; bytes are read as `MaybeUninit`.
            unsafe { core::slice::from_raw_parts(self.base.as_ptr::<MaybeUninit<u8>>(), len) }
        });
        chunk.into_iter()
    }

    /// The chunk of [`Scratch::iter_allocated_chunks`] as (start, length),
    /// for any memory kind.
    ///
    /// # Safety
    /// No allocation is made while the iterator is alive; reading the
    /// memory is the caller's responsibility (as bumpalo's
    /// `iter_allocated_chunks_raw`).
    pub unsafe fn iter_allocated_chunks_raw(&self) -> ChunkRawIter {
        let len = self.allocated_bytes();
        (len > 0)
            .then_some((self.base.as_mut_ptr::<u8>(), len))
            .into_iter()
    }

    /// Forgets every allocation. Keeps [`ScratchConfig::retain`] bytes
    /// committed and gives the rest back once the default stream's work on
    /// it completed (no device synchronization). May call the driver.
    pub fn reset(&mut self) {
        self.reset_on(Stream::DEFAULT)
    }

    /// [`Scratch::reset`], with the memory last used on `stream`; the
    /// memory is taken to be used on `stream` from then on (see
    /// [`Scratch::free_on`]).
    pub fn reset_on(&mut self, stream: Stream) {
        self.stream.set(stream);
        let mut r = self.range.get();
        let mut a = self.arena.lock();
        a.reset_scratch(&mut r, &self.cursor, stream);
        // `&mut self`: no host reference handed out before is alive.
        if self.host_pinned.replace(false) {
            a.unpin_host();
        }
        drop(a);
        self.store(r);
    }
}

/// Writes `f()` at `p` and returns it.
///
/// # Safety
/// `p` is valid, aligned memory for a `T` that nothing else refers to.
#[inline(always)]
unsafe fn write_with<'s, T, F: FnOnce() -> T>(p: NonNull<T>, f: F) -> &'s mut T {
    // SAFETY: the caller's guarantee; writing the result of `f` straight
    // through the pointer lets the compiler build it in place.
    unsafe {
        ptr::write(p.as_ptr(), f());
        &mut *p.as_ptr()
    }
}

/// Copies `src` to `p` and returns the copy.
///
/// # Safety
/// `p` is valid, aligned memory for `src.len()` values that nothing else
/// refers to and that does not overlap `src`.
#[inline(always)]
unsafe fn copy_into<'s, T: Copy>(p: NonNull<T>, src: &[T]) -> &'s mut [T] {
    // SAFETY: the caller's guarantee.
    unsafe {
        ptr::copy_nonoverlapping(src.as_ptr(), p.as_ptr(), src.len());
        core::slice::from_raw_parts_mut(p.as_ptr(), src.len())
    }
}

/// Writes `f(i)` at `p + i` for `i < len` and returns the slice.
///
/// # Safety
/// `p` is valid, aligned memory for `len` values that nothing else refers to.
#[inline(always)]
unsafe fn fill<'s, T, F: FnMut(usize) -> T>(p: NonNull<T>, len: usize, mut f: F) -> &'s mut [T] {
    for i in 0..len {
        // SAFETY: i < len, within the caller's memory.
        unsafe { ptr::write(p.as_ptr().add(i), f(i)) };
    }
    // SAFETY: all len values were written just above.
    unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), len) }
}

impl<D: Driver> Scratch<'_, D> {
    /// Gives the scratch arena back, its memory last used on `stream`: its
    /// pages go once that stream's work on them completed (no device
    /// synchronization), never before. Dropping it does the same with the
    /// stream of the last [`Scratch::reset_on`] (the default stream if
    /// none).
    pub fn free_on(self, stream: Stream) {
        self.stream.set(stream);
    }
}

impl<D: Driver> Drop for Scratch<'_, D> {
    fn drop(&mut self) {
        let mut a = self.arena.lock();
        a.free_scratch(self.range.get(), self.stream.get());
        if self.host_pinned.get() {
            a.unpin_host();
        }
    }
}

// SAFETY: (1) blocks are valid for their layout, aligned, and host-accessible:
// allocation is refused on memory the CPU cannot touch; they stay committed
// and mapped until `reset`, which needs `&mut Scratch` and so cannot happen
// while an `&Scratch` allocator is in use (the first one pins the arena
// awake until then: no sleep unmaps them). (2) `grow` and `shrink` keep a block in
// place only where it is the last one (it ends at the cursor), so it never
// overlaps another; elsewhere they allocate anew and copy. (3) `deallocate`
// takes back only the last block's bytes, which its owner gave up.
unsafe impl<D: Driver> Allocator for &Scratch<'_, D> {
    #[inline]
    fn allocate(&self, layout: Layout) -> core::result::Result<NonNull<[u8]>, AllocError> {
        let p = self.try_host(layout).map_err(|_| AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // The last block gives its bytes back at once (as bumpalo's); the
        // others wait for the reset.
        let p = ptr.as_ptr() as u64;
        if layout.size() != 0 && p + layout.size() as u64 == self.cursor.load(Relaxed) {
            self.cursor.store(p, Relaxed);
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> core::result::Result<NonNull<[u8]>, AllocError> {
        let p = ptr.as_ptr() as u64;
        // The last block grows in place, committing where needed: a `Vec`
        // at the end of a scratch arena never moves.
        if old.size() != 0
            && p + old.size() as u64 == self.cursor.load(Relaxed)
            && p % new.align() as u64 == 0
            && self.extend_last(p + new.size() as u64)
        {
            return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
        }
        let q = self.allocate(new)?;
        // SAFETY: the caller gives `old.size()` readable bytes at ptr; q is
        // fresh, so they do not overlap.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), q.cast::<u8>().as_ptr(), old.size()) };
        Ok(q)
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> core::result::Result<NonNull<[u8]>, AllocError> {
        // SAFETY: forwarded under the caller's guarantees.
        let q = unsafe { self.grow(ptr, old, new)? };
        // SAFETY: q holds new.size() >= old.size() bytes; the tail is ours.
        unsafe {
            q.cast::<u8>()
                .as_ptr()
                .add(old.size())
                .write_bytes(0, new.size() - old.size())
        };
        Ok(q)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> core::result::Result<NonNull<[u8]>, AllocError> {
        let p = ptr.as_ptr() as u64;
        if p % new.align() as u64 == 0 {
            // In place; the last block gives its tail back.
            if old.size() != 0 && p + old.size() as u64 == self.cursor.load(Relaxed) {
                self.cursor.store(p + new.size() as u64, Relaxed);
            }
            return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
        }
        let q = self.allocate(new)?;
        // SAFETY: new.size() <= old.size() readable bytes at ptr; q is fresh.
        unsafe { ptr::copy_nonoverlapping(ptr.as_ptr(), q.cast::<u8>().as_ptr(), new.size()) };
        Ok(q)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::testing::{host_arena, readable};
    use crate::arena::SleepMode;

    /// "Allocating in an asleep arena is refused with `Error::Asleep`"
    /// (`Arena::sleep`): the scratch arena's lock-free fast path never asks,
    /// and hands out retained pages that the sleep unmapped (`alloc(7u64)`,
    /// safe, then writes there and faults).
    #[test]
    fn scratch_fast_path_refuses_while_the_arena_sleeps() {
        let arena = host_arena();
        let scratch = Scratch::with_capacity(&arena, 1 << 20).unwrap();
        arena
            .lock()
            .sleep(SleepMode::Discard, Stream::DEFAULT)
            .unwrap();
        let r = scratch.try_alloc_layout(Layout::new::<u64>());
        if let Ok(p) = r {
            assert!(
                readable(p.as_ptr(), 8),
                "handed out {p:?} while asleep, in unmapped memory"
            );
        }
        assert!(matches!(r, Err(Error::Asleep { .. })), "{r:?}");
        arena.lock().wake(Stream::DEFAULT).unwrap();
    }

    /// A peak is a high-water mark: once a stats read reported it, it never
    /// goes down (until `reset_peaks`). Dropping a scratch `Vec` (the last
    /// block: its bytes go back at once) took it back down.
    #[test]
    fn scratch_peak_live_never_goes_down() {
        let arena = host_arena();
        let scratch = Scratch::with_capacity(&arena, 1 << 20).unwrap();
        {
            let mut v = allocator_api2::vec::Vec::<u8, _>::with_capacity_in(64 << 10, &scratch);
            v.push(1);
            assert_eq!(arena.stats().peak_live, 64 << 10);
        }
        let s = arena.stats();
        assert_eq!(s.live, 0);
        assert!(s.peak_live >= 64 << 10, "peak went down: {}", s.peak_live);
    }

    /// `Arena::note_peak`: "a scratch arena's bytes enter the peak when
    /// another policy's allocation ... sees them". A block allocated while
    /// 1 MiB of scratch is live makes 5 MiB live at once; the peak said 4.
    #[test]
    fn scratch_bytes_enter_the_peak_at_another_policys_allocation() {
        let arena = host_arena();
        let scratch = Scratch::with_capacity(&arena, 1 << 20).unwrap();
        scratch.alloc_layout(Layout::from_size_align(1 << 20, 8).unwrap());
        let p = arena.alloc(4 << 20, 256, Stream::DEFAULT).unwrap();
        arena.free(p, Stream::DEFAULT).unwrap();
        drop(scratch);
        let peak = arena.stats().peak_live;
        assert!(peak >= 5 << 20, "peak {peak} < 5 MiB live at once");
    }
}
