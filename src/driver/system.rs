//! Run-time backend selection: CUDA or HIP where a device is found, else the
//! host backend, with a clear message saying why.
//!
//! Any of them can also run behind the [`Checked`] layer
//! ([`SystemDriver::checked`]): the rules enforced, every call counted,
//! faults injected on demand, for soak runs and debugging of whole
//! programs (the global arenas take a driver of this type).

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::driver::host::{HostFence, HostHandle};
use crate::driver::{
    Access, AccessMode, Capabilities, Checked, Driver, HostConfig, HostDriver, Location, Stream,
};
#[cfg(any(feature = "cuda", feature = "hip"))]
use crate::error::Reason;
use crate::error::{Error, Result};

/// Which backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Select {
    /// A GPU backend if one is usable, else the host backend.
    #[default]
    Auto,
    /// The host backend.
    Host,
    /// The CUDA backend (error if unusable).
    Cuda,
    /// The HIP backend (error if unusable).
    Hip,
}

/// A handle of whichever backend was selected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SystemHandle {
    /// Host backend handle.
    Host(HostHandle),
    /// CUDA handle.
    #[cfg(feature = "cuda")]
    Cuda(<crate::driver::cuda::CudaDriver as Driver>::Handle),
    /// HIP handle.
    #[cfg(feature = "hip")]
    Hip(<crate::driver::hip::HipDriver as Driver>::Handle),
}

/// A fence of whichever backend was selected.
#[derive(Debug)]
pub enum SystemFence {
    /// Host backend fence.
    Host(HostFence),
    /// CUDA event.
    #[cfg(feature = "cuda")]
    Cuda(<crate::driver::cuda::CudaDriver as Driver>::Fence),
    /// HIP event.
    #[cfg(feature = "hip")]
    Hip(<crate::driver::hip::HipDriver as Driver>::Fence),
}

/// The driver chosen at run time (see [`SystemDriver::open`]).
#[derive(Debug)]
pub enum SystemDriver {
    /// Host backend.
    Host(HostDriver),
    /// CUDA backend.
    #[cfg(feature = "cuda")]
    Cuda(crate::driver::cuda::CudaDriver),
    /// HIP backend.
    #[cfg(feature = "hip")]
    Hip(crate::driver::hip::HipDriver),
    /// One of the others behind the checked layer (see
    /// [`SystemDriver::checked`]); its handles and fences are the inner
    /// driver's.
    Checked(Box<Checked<SystemDriver>>),
}

impl SystemDriver {
    /// `inner` behind the [`Checked`] layer: every call validated against
    /// the rules and counted, faults injectable ([`SystemDriver::as_checked`]).
    /// The checked layer serializes the driver calls it checks behind one
    /// lock.
    pub fn checked(inner: SystemDriver) -> SystemDriver {
        SystemDriver::Checked(Box::new(Checked::new(inner)))
    }

    /// The checked layer, where this driver runs behind one.
    pub fn as_checked(&self) -> Option<&Checked<SystemDriver>> {
        match self {
            SystemDriver::Checked(c) => Some(c),
            _ => None,
        }
    }

    /// The backend under any checked layer.
    pub fn backend(&self) -> &SystemDriver {
        match self {
            SystemDriver::Checked(c) => c.inner().backend(),
            d => d,
        }
    }

    /// The host backend, where it is the one in use (under any checked
    /// layer): tests hold and complete its emulated streams.
    pub fn as_host(&self) -> Option<&HostDriver> {
        match self.backend() {
            SystemDriver::Host(h) => Some(h),
            _ => None,
        }
    }

    /// The CUDA backend, where it is the one in use (under any checked layer).
    #[cfg(feature = "cuda")]
    pub fn as_cuda(&self) -> Option<&crate::driver::cuda::CudaDriver> {
        match self.backend() {
            SystemDriver::Cuda(c) => Some(c),
            _ => None,
        }
    }

    /// Opens the backend `select` asks for, on `device`.
    ///
    /// With [`Select::Auto`], tries CUDA, then HIP (where built), and falls
    /// back to the host backend; `note` receives one line saying which
    /// backend was chosen and why the others were not. An ordinal past the
    /// device count of a working GPU backend is an error, never a fallback.
    /// The host backend emulates devices `0..=device`.
    pub fn open(select: Select, device: u32, mut note: impl FnMut(&str)) -> Result<Self> {
        match select {
            Select::Host => Ok(SystemDriver::Host(host_for(device)?)),
            #[cfg(feature = "cuda")]
            Select::Cuda => Ok(SystemDriver::Cuda(crate::driver::cuda::CudaDriver::new(
                device,
            )?)),
            #[cfg(feature = "hip")]
            Select::Hip => Ok(SystemDriver::Hip(crate::driver::hip::HipDriver::new(
                device,
            )?)),
            #[allow(unreachable_patterns)]
            Select::Cuda | Select::Hip => Err(Error::Unsupported(
                "this build lacks that backend: rebuild with --features cuda or --features hip",
            )),
            Select::Auto => {
                #[cfg(feature = "cuda")]
                match crate::driver::cuda::CudaDriver::new(device) {
                    Ok(d) => return Ok(SystemDriver::Cuda(d)),
                    // The GPUs are there, this ordinal is not: falling back
                    // to host memory would hand out pointers no kernel can use.
                    Err(e) if no_such_device(&e) => return Err(e),
                    Err(e) => note(&format!(
                        "gpu-arena: CUDA backend not used ({e}); trying the next backend"
                    )),
                }
                #[cfg(feature = "hip")]
                match crate::driver::hip::HipDriver::new(device) {
                    Ok(d) => return Ok(SystemDriver::Hip(d)),
                    Err(e) if no_such_device(&e) => return Err(e),
                    Err(e) => note(&format!(
                        "gpu-arena: HIP backend not used ({e}); trying the next backend"
                    )),
                }
                note("gpu-arena: using the host backend (memfd + mmap)");
                Ok(SystemDriver::Host(host_for(device)?))
            }
        }
    }
}

/// The host backend for device `device`: it emulates devices `0..=device`,
/// so an arena of any ordinal can be made on it (and grant the ordinals
/// below it as peers).
fn host_for(device: u32) -> Result<HostDriver> {
    HostDriver::with_config(HostConfig {
        device_count: device.saturating_add(1),
        ..HostConfig::default()
    })
}

/// Whether `e` says the backend works but has no device of that ordinal.
#[cfg(any(feature = "cuda", feature = "hip"))]
fn no_such_device(e: &Error) -> bool {
    matches!(e, Error::Driver(de) if de.reason == Some(Reason::NoSuchDevice))
}

macro_rules! dispatch {
    ($self:ident, $d:ident => $e:expr) => {
        match $self {
            SystemDriver::Host($d) => $e,
            #[cfg(feature = "cuda")]
            SystemDriver::Cuda($d) => $e,
            #[cfg(feature = "hip")]
            SystemDriver::Hip($d) => $e,
            SystemDriver::Checked($d) => $e,
        }
    };
}

fn mismatch() -> Error {
    Error::Unsupported("a handle or fence of another backend was passed to this driver")
}

// SAFETY: every method forwards to the selected backend, which upholds the
// contract; handles and fences of another backend are refused.
unsafe impl Driver for SystemDriver {
    type Handle = SystemHandle;
    type Fence = SystemFence;

    fn capabilities(&self) -> &Capabilities {
        dispatch!(self, d => d.capabilities())
    }
    fn granularity(&self, location: Location) -> Result<usize> {
        dispatch!(self, d => d.granularity(location))
    }
    fn reserve(&self, size: usize, align: usize) -> Result<u64> {
        dispatch!(self, d => d.reserve(size, align))
    }
    unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        dispatch!(self, d => unsafe { d.free_reservation(va, size) })
    }
    fn create(&self, size: usize, location: Location) -> Result<SystemHandle> {
        match self {
            SystemDriver::Host(d) => d.create(size, location).map(SystemHandle::Host),
            #[cfg(feature = "cuda")]
            SystemDriver::Cuda(d) => d.create(size, location).map(SystemHandle::Cuda),
            #[cfg(feature = "hip")]
            SystemDriver::Hip(d) => d.create(size, location).map(SystemHandle::Hip),
            SystemDriver::Checked(d) => d.create(size, location),
        }
    }
    fn release(&self, handle: SystemHandle) -> Result<()> {
        match (self, handle) {
            (SystemDriver::Host(d), SystemHandle::Host(h)) => d.release(h),
            #[cfg(feature = "cuda")]
            (SystemDriver::Cuda(d), SystemHandle::Cuda(h)) => d.release(h),
            #[cfg(feature = "hip")]
            (SystemDriver::Hip(d), SystemHandle::Hip(h)) => d.release(h),
            (SystemDriver::Checked(d), h) => d.release(h),
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }
    unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: SystemHandle) -> Result<()> {
        match (self, handle) {
            // SAFETY: forwarded under the caller's guarantees.
            (SystemDriver::Host(d), SystemHandle::Host(h)) => unsafe { d.map(va, size, offset, h) },
            #[cfg(feature = "cuda")]
            // SAFETY: forwarded under the caller's guarantees.
            (SystemDriver::Cuda(d), SystemHandle::Cuda(h)) => unsafe { d.map(va, size, offset, h) },
            #[cfg(feature = "hip")]
            // SAFETY: forwarded under the caller's guarantees.
            (SystemDriver::Hip(d), SystemHandle::Hip(h)) => unsafe { d.map(va, size, offset, h) },
            // SAFETY: forwarded under the caller's guarantees.
            (SystemDriver::Checked(d), h) => unsafe { d.map(va, size, offset, h) },
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }
    unsafe fn unmap(&self, va: u64, size: usize) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        dispatch!(self, d => unsafe { d.unmap(va, size) })
    }
    unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        dispatch!(self, d => unsafe { d.set_access(va, size, access) })
    }
    fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode> {
        dispatch!(self, d => d.get_access(va, accessor))
    }
    fn record(&self, stream: Stream) -> Result<SystemFence> {
        match self {
            SystemDriver::Host(d) => d.record(stream).map(SystemFence::Host),
            #[cfg(feature = "cuda")]
            SystemDriver::Cuda(d) => d.record(stream).map(SystemFence::Cuda),
            #[cfg(feature = "hip")]
            SystemDriver::Hip(d) => d.record(stream).map(SystemFence::Hip),
            SystemDriver::Checked(d) => d.record(stream),
        }
    }
    fn is_complete(&self, fence: &SystemFence) -> Result<bool> {
        match (self, fence) {
            (SystemDriver::Host(d), SystemFence::Host(f)) => d.is_complete(f),
            #[cfg(feature = "cuda")]
            (SystemDriver::Cuda(d), SystemFence::Cuda(f)) => d.is_complete(f),
            #[cfg(feature = "hip")]
            (SystemDriver::Hip(d), SystemFence::Hip(f)) => d.is_complete(f),
            (SystemDriver::Checked(d), f) => d.is_complete(f),
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }
    fn wait(&self, fence: &SystemFence) -> Result<()> {
        match (self, fence) {
            (SystemDriver::Host(d), SystemFence::Host(f)) => d.wait(f),
            #[cfg(feature = "cuda")]
            (SystemDriver::Cuda(d), SystemFence::Cuda(f)) => d.wait(f),
            #[cfg(feature = "hip")]
            (SystemDriver::Hip(d), SystemFence::Hip(f)) => d.wait(f),
            (SystemDriver::Checked(d), f) => d.wait(f),
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }
    fn drop_fence(&self, fence: SystemFence) {
        match (self, fence) {
            (SystemDriver::Host(d), SystemFence::Host(f)) => d.drop_fence(f),
            #[cfg(feature = "cuda")]
            (SystemDriver::Cuda(d), SystemFence::Cuda(f)) => d.drop_fence(f),
            #[cfg(feature = "hip")]
            (SystemDriver::Hip(d), SystemFence::Hip(f)) => d.drop_fence(f),
            (SystemDriver::Checked(d), f) => d.drop_fence(f),
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
    fn create_stream(&self) -> Result<Stream> {
        dispatch!(self, d => d.create_stream())
    }
    unsafe fn destroy_stream(&self, stream: Stream) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        dispatch!(self, d => unsafe { d.destroy_stream(stream) })
    }
    unsafe fn copy(&self, dst: u64, src: u64, len: usize, stream: Stream) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        dispatch!(self, d => unsafe { d.copy(dst, src, len, stream) })
    }
    unsafe fn fill(&self, dst: u64, byte: u8, len: usize, stream: Stream) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        dispatch!(self, d => unsafe { d.fill(dst, byte, len, stream) })
    }
    fn create_shareable(&self, size: usize, location: Location) -> Result<SystemHandle> {
        match self {
            SystemDriver::Host(d) => d.create_shareable(size, location).map(SystemHandle::Host),
            #[cfg(feature = "cuda")]
            SystemDriver::Cuda(d) => d.create_shareable(size, location).map(SystemHandle::Cuda),
            #[cfg(feature = "hip")]
            SystemDriver::Hip(d) => d.create_shareable(size, location).map(SystemHandle::Hip),
            SystemDriver::Checked(d) => d.create_shareable(size, location),
        }
    }
    fn export(&self, handle: SystemHandle) -> Result<OwnedFd> {
        match (self, handle) {
            (SystemDriver::Host(d), SystemHandle::Host(h)) => d.export(h),
            #[cfg(feature = "cuda")]
            (SystemDriver::Cuda(d), SystemHandle::Cuda(h)) => d.export(h),
            #[cfg(feature = "hip")]
            (SystemDriver::Hip(d), SystemHandle::Hip(h)) => d.export(h),
            (SystemDriver::Checked(d), h) => d.export(h),
            #[allow(unreachable_patterns)]
            _ => Err(mismatch()),
        }
    }
    unsafe fn import(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        location: Location,
    ) -> Result<SystemHandle> {
        match self {
            SystemDriver::Host(d) => {
                // SAFETY: forwarded under the caller's guarantees.
                let h = unsafe { d.import(fd, size, location) }?;
                Ok(SystemHandle::Host(h))
            }
            #[cfg(feature = "cuda")]
            SystemDriver::Cuda(d) => {
                // SAFETY: forwarded under the caller's guarantees.
                let h = unsafe { d.import(fd, size, location) }?;
                Ok(SystemHandle::Cuda(h))
            }
            #[cfg(feature = "hip")]
            SystemDriver::Hip(d) => {
                // SAFETY: forwarded under the caller's guarantees.
                let h = unsafe { d.import(fd, size, location) }?;
                Ok(SystemHandle::Hip(h))
            }
            // SAFETY: forwarded under the caller's guarantees.
            SystemDriver::Checked(d) => unsafe { d.import(fd, size, location) },
        }
    }
}
