//! The driver layer: the only code that talks to a GPU runtime.
//!
//! # The contract
//!
//! [`Driver`] is the seed's VMM vocabulary and nothing more: `granularity`,
//! `reserve` / `free_reservation`, `create` / `release` (physical handles,
//! device- or host-located), `map` / `unmap`, `set_access`, and fences:
//! `record` on a stream, `is_complete` (never blocks), `wait` (one fence only).
//! **No call synchronizes the whole device**; there is deliberately no
//! `synchronize` in this trait.
//!
//! Preconditions shared by every method, which callers guarantee and which
//! the [`checked`] layer verifies before the call reaches a backend:
//!
//! - sizes are nonzero multiples of [`Capabilities::granularity`];
//! - addresses passed to `map`, `unmap`, `set_access` and `free_reservation`
//!   are multiples of the granularity and lie inside one reservation that this
//!   driver returned;
//! - `map` takes a whole handle at offset 0 into an unmapped range;
//! - `unmap` and `set_access` never cut a mapping in two (no partial unmap);
//!   `unmap` may cover holes (as on CUDA), `set_access` may not;
//! - `free_reservation` names a whole reservation with no mappings left.
//!
//! Addresses are raw `u64`s here (what `CUdeviceptr` / `hipDeviceptr_t`
//! hold): the layers above hand out [`DevicePtr`]s and pass
//! [`DevicePtr::addr`] down; [`DevicePtr::new`] goes the other way.
//!
//! Backends return the same [`ErrorKind`](crate::error::ErrorKind) for the same
//! violation (measured on an H100, see `docs/conformance.md`), so the layers
//! above never see a backend difference.
//!
//! Drivers never allocate through the global allocator on their hot paths:
//! gpu-arena may itself be the global allocator.
//!
//! # Sharing between processes
//!
//! Three provided methods (`create_shareable`, `export`, `import`) let a
//! handle travel to another process as a POSIX file descriptor (see
//! [`share`] for passing descriptors over a Unix socket). Their default
//! bodies return [`crate::error::Error::Unsupported`], so a
//! backend without sharing needs no code. The lifetime rule
//! every backend follows: **release = unmap + close**. Physical memory
//! behind an exported handle goes back when the last process holding it
//! (through a handle, a mapping or a descriptor) lets go; an exporter's
//! `release` never pulls memory from under an importer.

use core::fmt::Debug;
use core::hash::Hash;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::error::{Backend, Error, Result};

pub mod checked;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "hip")]
pub mod hip;
pub mod host;
pub mod rules;
pub mod share;
pub mod system;

pub use checked::{CallCounts, Checked, Fault, FaultKind, Op};
pub use host::{HostConfig, HostDriver, HostFence, HostHandle};
pub use system::{Select, SystemDriver, SystemFence, SystemHandle};

pub use crate::ptr::DevicePtr;

/// Where physical memory lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Location {
    /// Memory of the device with this ordinal.
    Device(u32),
    /// Pinned host memory (VMM host-located), readable and writable by the CPU.
    Host,
}

/// Access rights of one accessor over a mapped range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AccessMode {
    /// No access (revoked).
    None,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// One entry of an access list: who may touch a range, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Access {
    /// The accessor: a device, or the CPU (`Location::Host`).
    pub location: Location,
    /// The rights it gets.
    pub mode: AccessMode,
}

impl Access {
    /// Read-write access for `location`.
    pub const fn read_write(location: Location) -> Self {
        Access {
            location,
            mode: AccessMode::ReadWrite,
        }
    }
    /// Read-only access for `location`.
    pub const fn read(location: Location) -> Self {
        Access {
            location,
            mode: AccessMode::Read,
        }
    }
}

/// A stream handle, as the runtime knows it (`CUstream`/`hipStream_t` value,
/// or a host-emulated stream id). `Stream::DEFAULT` is the legacy null stream.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Stream(pub u64);

impl Stream {
    /// The default (null) stream.
    pub const DEFAULT: Stream = Stream(0);
}

/// What a driver instance can do; constant for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Which backend this is.
    pub backend: Backend,
    /// Minimum mapping granularity for device memory (bytes, a power of two).
    pub granularity: usize,
    /// Recommended granularity for device memory (≥ `granularity`).
    pub recommended_granularity: usize,
    /// Number of devices.
    pub device_count: u32,
    /// Physical memory of device 0 in bytes (the host backend's emulated capacity).
    pub device_memory: u64,
    /// Largest single reservation known to succeed (64 TiB on an H100).
    pub max_reservation: u64,
    /// The CPU may read and write device-located memory (true on the host backend).
    pub cpu_reads_device_memory: bool,
    /// Host-located (pinned) handles can be created.
    pub host_memory: bool,
    /// A range can be mapped with access for several devices.
    pub peer_access: bool,
    /// Handles can be exported as POSIX file descriptors.
    pub shareable_handles: bool,
}

/// The VMM primitives and fences of one runtime.
///
/// # Safety
///
/// Implementors guarantee that:
/// 1. `reserve` returns a range no other reservation, mapping or allocation of
///    the process overlaps, aligned to the requested alignment;
/// 2. after `map` + `set_access` with read-write rights, every byte of the
///    range is accessible to those accessors until `unmap`; and memory is never
///    pulled from a mapped range except by `unmap` of that range;
/// 3. a handle mapped at two addresses shows the same bytes at both;
/// 4. a failed call changes nothing;
/// 5. no method blocks on work other than the one fence passed to `wait`;
/// 6. a descriptor from `export` reaches the memory of that one handle and
///    nothing else, and `release` of an exported or imported handle never
///    frees memory that a descriptor, handle or mapping elsewhere still holds.
pub unsafe trait Driver: Send + Sync {
    /// A physical memory handle. Its representation belongs to the backend
    /// (a `u64` on CUDA, a pointer on HIP, a memfd range on the host).
    type Handle: Copy + Eq + Hash + Debug + Send + Sync;
    /// A point in a stream's work (an event on GPUs).
    type Fence: Debug + Send + Sync;

    /// Constant facts about this instance.
    fn capabilities(&self) -> &Capabilities;

    /// Granularity for physical memory at `location`: sizes and offsets of
    /// `create`/`map` must be multiples of it.
    fn granularity(&self, location: Location) -> Result<usize>;

    /// Reserves `size` bytes of virtual address space aligned to `align`
    /// (0 = granularity). No physical memory is committed.
    fn reserve(&self, size: usize, align: usize) -> Result<u64>;

    /// Gives a whole reservation back.
    ///
    /// # Safety
    /// Callers: `va`/`size` are exactly what `reserve` returned, no mapping is
    /// left inside and nothing will touch the range again.
    unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()>;

    /// Creates a physical handle of `size` bytes at `location`.
    fn create(&self, size: usize, location: Location) -> Result<Self::Handle>;

    /// Releases a handle. Allowed while it is mapped: the memory goes back
    /// once its last mapping is unmapped.
    fn release(&self, handle: Self::Handle) -> Result<()>;

    /// Maps the whole `handle` (from `offset`, which must be 0) at `va`.
    ///
    /// # Safety
    /// Callers: the range lies in one of this driver's reservations and is
    /// unmapped.
    unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: Self::Handle) -> Result<()>;

    /// Unmaps every mapping inside `va..va + size`, a range of one
    /// reservation that cuts no mapping in two. Holes are allowed, and a range
    /// with nothing mapped is a no-op (as on CUDA).
    ///
    /// # Safety
    /// Callers: nothing (no host reference, no queued device work) will touch
    /// the range again before it is mapped anew.
    unsafe fn unmap(&self, va: u64, size: usize) -> Result<()>;

    /// Sets the access rights of whole mappings covering `va..va + size`.
    ///
    /// # Safety
    /// Callers: revoking rights is only done when no accessor losing them
    /// still uses the range.
    unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()>;

    /// The rights `accessor` has on the mapping at `va`.
    fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode>;

    /// Records a fence at the current end of `stream`'s work.
    fn record(&self, stream: Stream) -> Result<Self::Fence>;

    /// Whether the work before `fence` has completed. Never blocks.
    fn is_complete(&self, fence: &Self::Fence) -> Result<bool>;

    /// Blocks until the work before this one fence has completed (a last
    /// resort on out-of-memory; never the whole device).
    fn wait(&self, fence: &Self::Fence) -> Result<()>;

    /// Destroys a fence (returns its event to the backend's pool).
    fn drop_fence(&self, fence: Self::Fence);

    /// Creates a stream of device 0's context (tests, benchmarks, engines).
    fn create_stream(&self) -> Result<Stream>;

    /// Destroys a stream made by `create_stream`.
    ///
    /// # Safety
    /// Callers: the stream is not used afterwards.
    unsafe fn destroy_stream(&self, stream: Stream) -> Result<()>;

    /// Copies `len` bytes between two addresses of the unified address space
    /// (host pointers or mapped device ranges), in `stream` order. With
    /// `Stream::DEFAULT` the copy has completed when the call returns.
    ///
    /// # Safety
    /// Callers: both ranges are valid for `len` bytes and do not overlap.
    unsafe fn copy(&self, dst: u64, src: u64, len: usize, stream: Stream) -> Result<()>;

    /// Writes `len` copies of `byte` at `dst` in `stream` order.
    ///
    /// # Safety
    /// Callers: the range is mapped and writable by the stream's device.
    unsafe fn fill(&self, dst: u64, byte: u8, len: usize, stream: Stream) -> Result<()>;

    /// Creates a physical handle of `size` bytes at `location` that
    /// [`Driver::export`] can turn into a file descriptor. Otherwise like
    /// `create` (same rules, same `release`).
    ///
    /// Only the handle's own memory can ever be reached through its
    /// descriptor (the host backend gives it a memfd of its own; CUDA creates
    /// it with the POSIX-fd handle type).
    ///
    /// The default refuses with [`Error::Unsupported`].
    fn create_shareable(&self, size: usize, location: Location) -> Result<Self::Handle> {
        let _ = (size, location);
        Err(Error::Unsupported(
            "this backend cannot create shareable handles (no POSIX file descriptor export)",
        ))
    }

    /// Exports a live handle made by [`Driver::create_shareable`] (or
    /// [`Driver::import`]) as a POSIX file descriptor (close-on-exec). The
    /// descriptor keeps the memory alive on its own: it stays valid after
    /// the handle's release, and whoever receives it can import it.
    ///
    /// The default refuses with [`Error::Unsupported`].
    fn export(&self, handle: Self::Handle) -> Result<OwnedFd> {
        let _ = handle;
        Err(Error::Unsupported(
            "this backend cannot export handles as file descriptors",
        ))
    }

    /// Imports a descriptor made by [`Driver::export`] of the same backend
    /// (in this or another process) as a new handle of `size` bytes, whose
    /// memory lives at `location` (bookkeeping; the memory stays where the
    /// exporter created it). The caller keeps `fd` and may close it at once:
    /// the handle holds its own reference. Map, set access and release the
    /// handle as any other; its release never frees memory that another
    /// process still holds.
    ///
    /// The default refuses with [`Error::Unsupported`].
    ///
    /// # Safety
    /// Callers: `fd` was produced by `export` of this backend and `size` is
    /// the exported handle's size. Implementors: refuse what they can check
    /// (the host backend checks the size and that the file cannot shrink).
    unsafe fn import(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        location: Location,
    ) -> Result<Self::Handle> {
        let _ = (fd, size, location);
        Err(Error::Unsupported(
            "this backend cannot import handles from file descriptors",
        ))
    }
}

pub use crate::align::round_up;

macro_rules! forward_driver {
    ($($ptr:ty),*) => { $(
        // SAFETY: every method forwards to the pointee, which upholds the contract.
        unsafe impl<D: Driver + ?Sized> Driver for $ptr {
            type Handle = D::Handle;
            type Fence = D::Fence;
            fn capabilities(&self) -> &Capabilities { (**self).capabilities() }
            fn granularity(&self, location: Location) -> Result<usize> { (**self).granularity(location) }
            fn reserve(&self, size: usize, align: usize) -> Result<u64> { (**self).reserve(size, align) }
            unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).free_reservation(va, size) }
            }
            fn create(&self, size: usize, location: Location) -> Result<Self::Handle> { (**self).create(size, location) }
            fn release(&self, handle: Self::Handle) -> Result<()> { (**self).release(handle) }
            unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: Self::Handle) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).map(va, size, offset, handle) }
            }
            unsafe fn unmap(&self, va: u64, size: usize) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).unmap(va, size) }
            }
            unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).set_access(va, size, access) }
            }
            fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode> { (**self).get_access(va, accessor) }
            fn record(&self, stream: Stream) -> Result<Self::Fence> { (**self).record(stream) }
            fn is_complete(&self, fence: &Self::Fence) -> Result<bool> { (**self).is_complete(fence) }
            fn wait(&self, fence: &Self::Fence) -> Result<()> { (**self).wait(fence) }
            fn drop_fence(&self, fence: Self::Fence) { (**self).drop_fence(fence) }
            fn create_stream(&self) -> Result<Stream> { (**self).create_stream() }
            unsafe fn destroy_stream(&self, stream: Stream) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).destroy_stream(stream) }
            }
            unsafe fn copy(&self, dst: u64, src: u64, len: usize, stream: Stream) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).copy(dst, src, len, stream) }
            }
            unsafe fn fill(&self, dst: u64, byte: u8, len: usize, stream: Stream) -> Result<()> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).fill(dst, byte, len, stream) }
            }
            fn create_shareable(&self, size: usize, location: Location) -> Result<Self::Handle> { (**self).create_shareable(size, location) }
            fn export(&self, handle: Self::Handle) -> Result<OwnedFd> { (**self).export(handle) }
            unsafe fn import(&self, fd: BorrowedFd<'_>, size: usize, location: Location) -> Result<Self::Handle> {
                // SAFETY: forwarded under the caller's guarantees.
                unsafe { (**self).import(fd, size, location) }
            }
        }
    )* };
}
forward_driver!(&D, std::sync::Arc<D>);
