//! The CUDA backend: the [`Driver`] contract over the CUDA driver API's
//! virtual memory management calls (`cuMem*`), with events as fences.
//!
//! Three layers, as in cudarc:
//! - [`sys`]: raw declarations, re-exported from `cudarc::driver::sys`
//!   (loaded at run time, so the crate builds without the CUDA SDK), and
//!   [`entry`]: the entry points called, as cudarc declares them but with
//!   the result a plain `int` (a code cudarc's enum lacks is then no
//!   undefined behaviour);
//! - [`result`]: one thin function per driver call, `CUresult` turned into
//!   `Result<_, DriverError>`;
//! - this module: [`CudaDriver`], which owns the device's retained primary
//!   context, the event pool, the set of live memory handles and (feature
//!   `test-support`) the test kernels, and releases them in `Drop`.
//!
//! # Behaviour worth knowing (measured on an H100, driver 580 / CUDA 13.0,
//! see `research/vmm-probe-h100.md`)
//!
//! - **Presence first.** [`CudaDriver::new`] probes for `libcuda` and every
//!   entry point it needs before any other call, so a machine without CUDA
//!   gets an error (kind [`ErrorKind::NoDevice`]), never a panic.
//! - **Contexts.** Callers come from many threads, some with no current
//!   context (PyTorch's autograd threads). Every entry that talks to the
//!   driver first makes the device's primary context current on the calling
//!   thread where none is (`cuCtxGetCurrent`, then `cuCtxSetCurrent`); where
//!   another context is current it is pushed over for the call and popped
//!   after, so the caller's context is left as it was.
//! - **Handles.** The driver crashes the process (SIGSEGV) on `cuMemMap` or
//!   `cuMemRelease` of a stale or bogus handle. The backend keeps the set of
//!   live handles it created and refuses any other with
//!   [`ErrorKind::InvalidValue`] ([`Reason::UnknownHandle`]), as the host
//!   backend does; `map` holds that set's lock across `cuMemMap` so a
//!   concurrent `release` cannot free the handle in between.
//! - **Access lists.** `cuMemSetAccess` is not atomic: a HOST descriptor on
//!   device memory fails with NOT_SUPPORTED after the descriptors before it
//!   were applied. The backend passes host descriptors first, other devices
//!   next and this driver's device last, so such a refusal changes nothing.
//! - **Fences** are `CU_EVENT_DISABLE_TIMING` events from a pool; `wait` is
//!   `cuEventSynchronize` on that one event. Nothing in this backend calls
//!   `cuCtxSynchronize`, `cuStreamSynchronize` or any device-wide wait.
//! - **Default stream.** `copy` and `fill` on [`Stream::DEFAULT`] are issued
//!   on the legacy null stream, followed by a pooled event recorded there
//!   and waited on: the contract's "completed on return" holds for every
//!   kind of memory (plain `cuMemcpy`/`cuMemsetD8` may return before a
//!   device-to-device copy or a device memset has run).
//! - `get_access(va, Location::Host)` on device memory reports device 0's
//!   rights (a driver quirk); ask only about host-located memory.
//! - **Sharing.** Device handles are created with the POSIX-fd handle type
//!   where the probe at `new` showed that works
//!   ([`Capabilities::shareable_handles`]), so every device handle can be
//!   exported; `create_shareable` is `create` there and refuses otherwise.
//!   Imported handles join the live set like created ones. An exporter's
//!   `cuMemRelease` leaves the memory to importers: the driver frees it when
//!   the last handle, mapping and descriptor are gone.
//! - **Peers.** Memory of this device is made accessible to another device
//!   by `set_access` with that device's descriptor (no
//!   `cuCtxEnablePeerAccess`); kernels of the peer's own context (a second
//!   `CudaDriver` on that ordinal) then read and write it.

use core::ffi::{c_int, c_uint};
use core::sync::atomic::{AtomicU64, Ordering};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use crate::driver::{Access, AccessMode, Capabilities, Driver, Location, Stream};
use crate::error::{Backend, Call, DriverError, Error, ErrorKind, Reason, Result};
use crate::lock::lock;
use crate::meta::{MetaMap, MetaVec};

pub mod entry;
#[cfg(feature = "test-support")]
pub mod kernels;
pub mod result;

/// Raw CUDA driver API declarations (cudarc's bindings, dynamically loaded).
pub use cudarc::driver::sys;

#[cfg(feature = "test-support")]
pub use kernels::Kernels;

/// Most entries one `set_access` call takes (they live in a stack array: the
/// driver never allocates on this path).
pub const MAX_ACCESS: usize = 16;

/// Largest single reservation known to succeed (64 TiB on an H100; 128 TiB
/// fails with out-of-memory).
pub const MAX_RESERVATION: u64 = 64 << 40;

/// Events made at construction, so early fences need no `cuEventCreate`.
const EVENT_PREALLOC: usize = 8;

/// Distinguishes drivers, so a fence of one is never pooled by another.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A raw driver object pointer (context, event, module, function).
///
/// CUDA driver objects are process-wide and the driver API is thread-safe,
/// so their handles may move and be shared between threads.
#[derive(Debug, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Raw<T>(pub(crate) *mut T);

impl<T> Clone for Raw<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Raw<T> {}

// SAFETY: the pointer is an opaque driver handle, never dereferenced by Rust;
// the CUDA driver API may be called with it from any thread.
unsafe impl<T> Send for Raw<T> {}
// SAFETY: as above; shared references only copy the handle.
unsafe impl<T> Sync for Raw<T> {}

/// A device's primary context, retained. Only constructed after the presence
/// probe passed, so holding one proves the driver library is loaded.
pub(crate) type Context = Raw<sys::CUctx_st>;

/// Restores the caller's context, where [`Context::make_current`] pushed ours
/// over another one.
#[must_use = "the context stays current only while the guard lives"]
pub(crate) struct Current {
    pushed: bool,
    /// The thread's stream-capture mode before the guard made it relaxed.
    mode: Option<sys::CUstreamCaptureMode>,
}

impl Context {
    /// Makes this context current on the calling thread for the guard's life:
    /// set where the thread has none (and left set: cheap for the next call),
    /// pushed over a foreign one (popped by the guard).
    ///
    /// Also makes the thread's stream-capture mode relaxed for the guard's
    /// life, as PyTorch does around its own `cudaMalloc`: the allocator may
    /// be called while a CUDA graph is being captured (in the default,
    /// global mode, where any thread's VMM or event call would otherwise
    /// invalidate the capture). None of its calls is stream work, so none
    /// becomes part of the graph.
    pub(crate) fn make_current(self) -> Result<Current, DriverError> {
        // SAFETY: a Context exists only after the probe passed.
        let cur = unsafe { result::ctx_get_current() }?;
        let pushed = if cur == self.0 {
            false
        } else if cur.is_null() {
            // SAFETY: 1. the probe passed; 2. the context is retained by its
            // owner for as long as a Context copy is used.
            unsafe { result::ctx_set_current(self.0) }?;
            false
        } else {
            // SAFETY: as above; the guard pops it again on this thread.
            unsafe { result::ctx_push_current(self.0) }?;
            true
        };
        // SAFETY: the probe passed; the mode is thread-local state restored
        // by the guard.
        let mode = unsafe {
            result::exchange_capture_mode(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        }
        .ok();
        Ok(Current { pushed, mode })
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        if let Some(mode) = self.mode {
            // SAFETY: restores the mode this guard exchanged on this thread.
            let _ = unsafe { result::exchange_capture_mode(mode) };
        }
        if self.pushed {
            // SAFETY: balances the push made on this thread by make_current.
            let _ = unsafe { result::ctx_pop_current() };
        }
    }
}

/// Owner of one retain of a device's primary context.
struct Primary {
    device: sys::CUdevice,
    ctx: Context,
}

impl Primary {
    /// # Safety
    /// The probe passed and `cuInit` succeeded.
    unsafe fn retain(device: sys::CUdevice) -> Result<Self, DriverError> {
        // SAFETY: the caller guarantees the probe and init.
        let ctx = unsafe { result::primary_ctx_retain(device) }?;
        Ok(Primary {
            device,
            ctx: Raw(ctx),
        })
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `Primary::retain`.
        let _ = unsafe { result::primary_ctx_release(self.device) };
    }
}

/// A physical memory handle of the CUDA backend (`CUmemGenericAllocationHandle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CudaHandle(pub u64);

/// A fence of the CUDA backend: a pooled event recorded on a stream.
///
/// Give it back with [`Driver::drop_fence`]; one that is simply dropped keeps
/// its event until the driver is dropped.
#[derive(Debug)]
pub struct CudaFence {
    event: Raw<sys::CUevent_st>,
    owner: u64,
}

/// Which location type host-located handles use on this driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    /// `CU_MEM_LOCATION_TYPE_HOST` (CUDA 12.2+ drivers).
    Host,
    /// `CU_MEM_LOCATION_TYPE_HOST_NUMA`, NUMA node 0 (the fallback).
    HostNuma,
}

impl HostKind {
    /// The driver's name of the location type.
    pub const fn name(self) -> &'static str {
        match self {
            HostKind::Host => "CU_MEM_LOCATION_TYPE_HOST",
            HostKind::HostNuma => "CU_MEM_LOCATION_TYPE_HOST_NUMA",
        }
    }

    const fn location(self) -> sys::CUmemLocation {
        sys::CUmemLocation {
            type_: match self {
                HostKind::Host => sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST,
                HostKind::HostNuma => sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA,
            },
            id: 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct HostVmm {
    kind: HostKind,
    granularity: usize,
}

/// Pooled events: `free` are ready for `record`; `all` is every event made
/// (destroyed in `Drop`, including those of fences never given back).
struct Events {
    free: MetaVec<Raw<sys::CUevent_st>>,
    all: MetaVec<Raw<sys::CUevent_st>>,
}

/// The CUDA backend for one device (see the module docs).
pub struct CudaDriver {
    caps: Capabilities,
    id: u64,
    ordinal: u32,
    driver_version: i32,
    device_handle_types: sys::CUmemAllocationHandleType,
    host: Option<HostVmm>,
    /// Live handles created here: the only ones `map` and `release` accept.
    handles: Mutex<MetaMap<u64, Location>>,
    events: Mutex<Events>,
    #[cfg(feature = "test-support")]
    kernels: std::sync::OnceLock<Kernels>,
    #[cfg(feature = "test-support")]
    kernels_init: Mutex<()>,
    /// Dropped last: everything above belongs to this context.
    primary: Primary,
}

impl core::fmt::Debug for CudaDriver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CudaDriver")
            .field("device", &self.ordinal)
            .field("driver_version", &self.driver_version)
            .field("caps", &self.caps)
            .field("host", &self.host.map(|h| h.kind))
            .finish_non_exhaustive()
    }
}

/// The stream handle of `s` (`Stream::DEFAULT` = the legacy null stream).
pub(crate) fn cu_stream(s: Stream) -> sys::CUstream {
    core::ptr::with_exposed_provenance_mut(s.0 as usize)
}

fn no_device(code: i32) -> Error {
    result::error(Call::Init, code).into()
}

fn refused(call: Call, kind: ErrorKind, reason: Reason) -> DriverError {
    DriverError::new(Backend::Cuda, call, kind, reason)
}

const fn alloc_prop(
    location: sys::CUmemLocation,
    handle_types: sys::CUmemAllocationHandleType,
) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: handle_types,
        location,
        win32HandleMetaData: core::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    }
}

fn device_location(call: Call, d: u32) -> Result<sys::CUmemLocation, DriverError> {
    let id = c_int::try_from(d)
        .map_err(|_| refused(call, ErrorKind::InvalidValue, Reason::NoSuchDevice))?;
    Ok(sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id,
    })
}

const NO_HANDLE_TYPES: sys::CUmemAllocationHandleType =
    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
const POSIX_FD: sys::CUmemAllocationHandleType =
    sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
const MINIMUM: sys::CUmemAllocationGranularity_flags =
    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM;
const RECOMMENDED: sys::CUmemAllocationGranularity_flags =
    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED;
const EMPTY_DESC: sys::CUmemAccessDesc = sys::CUmemAccessDesc {
    location: sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_INVALID,
        id: 0,
    },
    flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_NONE,
};

/// Granularities of device-located memory with these handle types, after
/// creating and releasing one granule to prove the combination works.
///
/// # Safety
/// The probe passed and a context is current.
unsafe fn probe_device(
    location: sys::CUmemLocation,
    handle_types: sys::CUmemAllocationHandleType,
) -> Result<(usize, usize), DriverError> {
    let prop = alloc_prop(location, handle_types);
    // SAFETY: (all calls) the caller guarantees the probe and a current
    // context; the handle is created and released here and never escapes.
    unsafe {
        let min = result::mem_granularity(&prop, MINIMUM)?;
        let rec = result::mem_granularity(&prop, RECOMMENDED)?;
        let h = result::mem_create(min, &prop)?;
        result::mem_release(h)?;
        Ok((min, rec))
    }
}

/// Whether host-located memory of `kind` can be created, mapped and given
/// read-write access for the device and the CPU; its granularity if so.
/// Everything made here is undone before returning.
///
/// # Safety
/// The probe passed and a context is current.
unsafe fn probe_host(kind: HostKind, device: sys::CUmemLocation) -> Option<usize> {
    let prop = alloc_prop(kind.location(), NO_HANDLE_TYPES);
    let rw = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    let desc = [
        sys::CUmemAccessDesc {
            location: kind.location(),
            flags: rw,
        },
        sys::CUmemAccessDesc {
            location: device,
            flags: rw,
        },
    ];
    // SAFETY: 1. the caller guarantees the probe and a current context;
    // 2. the handle and reservation are made here, used only here and
    //    undone on every path; 3. the memory is never touched.
    unsafe {
        let g = result::mem_granularity(&prop, MINIMUM).ok()?;
        let h = result::mem_create(g, &prop).ok()?;
        let ok = match result::mem_address_reserve(g, 0) {
            Ok(va) => {
                let ok = match result::mem_map(va, g, 0, h) {
                    Ok(()) => {
                        let ok = result::mem_set_access(va, g, &desc).is_ok();
                        result::mem_unmap(va, g).is_ok() && ok
                    }
                    Err(_) => false,
                };
                result::mem_address_free(va, g).is_ok() && ok
            }
            Err(_) => false,
        };
        let released = result::mem_release(h).is_ok();
        (ok && released).then_some(g)
    }
}

impl CudaDriver {
    /// Opens device `device` (an ordinal of the CUDA driver API).
    ///
    /// Probes for `libcuda` before any other call (never panics), then
    /// `cuInit`, counts devices, checks virtual memory management support,
    /// retains the primary context, and probes what the device offers:
    /// granularities, shareable (POSIX fd) handles, host-located memory.
    ///
    /// # Errors
    /// - [`ErrorKind::NoDevice`] where no CUDA library or no device is found;
    /// - [`ErrorKind::InvalidValue`] for an ordinal past the device count;
    /// - [`Error::Unsupported`] for a driver or device without VMM support;
    /// - any driver error of the probing calls.
    ///
    /// # Cost
    /// Calls the driver: first use of a device initializes its context
    /// (hundreds of milliseconds); later opens take well under one.
    pub fn new(device: u32) -> Result<CudaDriver> {
        match result::probe() {
            Ok(()) => {}
            Err(result::ProbeError::NoLibrary) => return Err(no_device(100)),
            Err(result::ProbeError::MissingSymbol(_)) => {
                return Err(Error::Unsupported(
                    "the installed CUDA driver lacks the virtual memory management calls \
                     (cuMemCreate, cuMemMap, ...): update the NVIDIA driver, or use the host backend",
                ));
            }
        }
        // SAFETY: the probe passed (the shared precondition of `result`).
        unsafe { result::init() }?;
        // SAFETY: as above, and init succeeded.
        let driver_version = unsafe { result::driver_version() }?;
        // SAFETY: as above.
        let count = unsafe { result::device_count() }?;
        if count <= 0 {
            return Err(no_device(100));
        }
        if i64::from(device) >= i64::from(count) {
            return Err(refused(Call::Init, ErrorKind::InvalidValue, Reason::NoSuchDevice).into());
        }
        let ordinal = c_int::try_from(device)
            .map_err(|_| refused(Call::Init, ErrorKind::InvalidValue, Reason::NoSuchDevice))?;
        // SAFETY: as above; the ordinal is below the count.
        let dev = unsafe { result::device_get(ordinal) }?;
        let attr = |a| {
            // SAFETY: as above; `dev` is a valid device.
            unsafe { result::device_attribute(dev, a) }
        };
        if attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)?
            == 0
        {
            return Err(Error::Unsupported(
                "this CUDA device does not support virtual memory management \
                 (CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0), which gpu-arena \
                 needs: use the host backend or another device",
            ));
        }
        if attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING)? == 0 {
            return Err(Error::Unsupported(
                "this CUDA device lacks unified addressing, which gpu-arena's copies need: \
                 use the host backend or another device",
            ));
        }
        // SAFETY: probe and init passed; `Primary` releases it in Drop.
        let primary = unsafe { Primary::retain(dev) }?;
        let _cur = primary.ctx.make_current()?;
        let dev_loc = device_location(Call::Init, device)?;

        // Shareable handles where they do not break create; else plain ones.
        // SAFETY: the probe passed and our context is current.
        let (granularity, recommended, handle_types) =
            match unsafe { probe_device(dev_loc, POSIX_FD) } {
                Ok((g, r)) => (g, r, POSIX_FD),
                Err(_) => {
                    // SAFETY: as above.
                    let (g, r) = unsafe { probe_device(dev_loc, NO_HANDLE_TYPES) }?;
                    (g, r, NO_HANDLE_TYPES)
                }
            };
        let host = [HostKind::Host, HostKind::HostNuma]
            .into_iter()
            .find_map(|kind| {
                // SAFETY: the probe passed and our context is current.
                unsafe { probe_host(kind, dev_loc) }
                    .map(|granularity| HostVmm { kind, granularity })
            });
        // SAFETY: probe and init passed; `dev` is valid.
        let device_memory = unsafe { result::device_total_mem(dev) }? as u64;

        let caps = Capabilities {
            backend: Backend::Cuda,
            granularity,
            recommended_granularity: recommended.max(granularity),
            device_count: count as u32,
            device_memory,
            max_reservation: MAX_RESERVATION,
            cpu_reads_device_memory: false,
            host_memory: host.is_some(),
            peer_access: count > 1,
            shareable_handles: handle_types == POSIX_FD,
        };
        let mut free = MetaVec::with_capacity_in(64, std::alloc::System);
        let mut all = MetaVec::with_capacity_in(64, std::alloc::System);
        for _ in 0..EVENT_PREALLOC {
            // SAFETY: probe passed and our context is current.
            match unsafe { result::event_create(event_flags()) } {
                Ok(ev) => {
                    free.push(Raw(ev));
                    all.push(Raw(ev));
                }
                Err(_) => break,
            }
        }
        drop(_cur);
        Ok(CudaDriver {
            caps,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ordinal: device,
            driver_version,
            device_handle_types: handle_types,
            host,
            handles: Mutex::new(MetaMap::with_hasher_in(
                Default::default(),
                std::alloc::System,
            )),
            events: Mutex::new(Events { free, all }),
            #[cfg(feature = "test-support")]
            kernels: std::sync::OnceLock::new(),
            #[cfg(feature = "test-support")]
            kernels_init: Mutex::new(()),
            primary,
        })
    }

    /// The device ordinal this driver was opened on.
    pub fn device(&self) -> u32 {
        self.ordinal
    }

    /// The CUDA driver's version (`cuDriverGetVersion`, e.g. 13000 for 13.0).
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }

    /// The location type host-located handles use (`None` where the driver
    /// cannot create CPU-accessible VMM memory).
    pub fn host_kind(&self) -> Option<HostKind> {
        self.host.map(|h| h.kind)
    }

    /// The retained primary context (for interop with other CUDA code).
    pub fn context(&self) -> sys::CUcontext {
        self.primary.ctx.0
    }

    /// Handles created and not yet released.
    pub fn live_handles(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Events made so far (pooled or held by fences).
    pub fn events_created(&self) -> usize {
        lock(&self.events).all.len()
    }

    /// Events in the pool, ready for the next `record`.
    pub fn events_pooled(&self) -> usize {
        lock(&self.events).free.len()
    }

    /// The test kernels, loaded (JIT-compiled from PTX) on first use.
    ///
    /// For tests and benchmarks (feature `test-support`); the allocator
    /// never launches kernels.
    #[cfg(feature = "test-support")]
    pub fn kernels(&self) -> Result<&Kernels> {
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let _init = lock(&self.kernels_init);
        if let Some(k) = self.kernels.get() {
            return Ok(k);
        }
        let _cur = self.enter()?;
        // SAFETY: the probe passed, our context is current, and `Drop`
        // unloads the module before releasing the context.
        let k = unsafe { Kernels::load(self.primary.ctx) }?;
        Ok(self.kernels.get_or_init(|| k))
    }

    /// Makes the primary context current on this thread for the guard's life.
    #[inline]
    fn enter(&self) -> Result<Current, DriverError> {
        self.primary.ctx.make_current()
    }

    fn take_event(&self) -> Result<Raw<sys::CUevent_st>, DriverError> {
        if let Some(ev) = lock(&self.events).free.pop() {
            return Ok(ev);
        }
        // SAFETY: the probe passed; callers made our context current.
        let ev = Raw(unsafe { result::event_create(event_flags()) }?);
        lock(&self.events).all.push(ev);
        Ok(ev)
    }

    fn put_event(&self, ev: Raw<sys::CUevent_st>) {
        lock(&self.events).free.push(ev);
    }

    /// Waits until the work queued so far on the legacy null stream (the copy
    /// or fill just issued there) has completed: one pooled event, recorded
    /// and waited on. Never a stream or device synchronize.
    fn finish_default_stream(&self) -> Result<(), DriverError> {
        let ev = self.take_event()?;
        // SAFETY: 1. the probe passed and callers made our context current;
        // 2. `ev` is a live pooled event of this context; null = legacy stream.
        let r = unsafe {
            result::event_record(ev.0, core::ptr::null_mut())
                .and_then(|()| result::event_synchronize(ev.0))
        };
        self.put_event(ev);
        r
    }

    fn access_desc(&self, a: &Access) -> Result<sys::CUmemAccessDesc, DriverError> {
        let location = match a.location {
            Location::Device(d) => device_location(Call::SetAccess, d)?,
            Location::Host => self.host_location(),
        };
        let flags = match a.mode {
            AccessMode::None => sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_NONE,
            AccessMode::Read => sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READ,
            AccessMode::ReadWrite => sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        Ok(sys::CUmemAccessDesc { location, flags })
    }

    fn host_location(&self) -> sys::CUmemLocation {
        self.host.map_or(HostKind::Host, |h| h.kind).location()
    }

    fn check_fence(&self, call: Call, fence: &CudaFence) -> Result<(), DriverError> {
        if fence.owner == self.id {
            Ok(())
        } else {
            Err(refused(
                call,
                ErrorKind::InvalidHandle,
                Reason::UnknownHandle,
            ))
        }
    }
}

const fn event_flags() -> c_uint {
    sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as c_uint
}

impl Drop for CudaDriver {
    fn drop(&mut self) {
        let _cur = self.enter();
        #[cfg(feature = "test-support")]
        if let Some(k) = self.kernels.take() {
            // SAFETY: the context is still retained (by `self.primary`,
            // dropped after this body) and nothing launches these kernels
            // once the driver is gone.
            unsafe { k.unload() };
        }
        let events = self.events.get_mut().unwrap_or_else(|e| e.into_inner());
        for ev in events.all.drain(..) {
            // SAFETY: every event was made by this driver and is destroyed
            // once; fences outliving the driver cannot be used without it.
            let _ = unsafe { result::event_destroy(ev.0) };
        }
        events.free.clear();
        // Handles still live are the caller's leak; the primary context is
        // released when `self.primary` drops, after this body.
    }
}

// SAFETY: 1. `reserve` is `cuMemAddressReserve` with no address hint: the
// driver returns address space no reservation or allocation overlaps,
// aligned as asked; 2. mappings change only through `map`/`unmap`;
// 3. two mappings of one handle share its physical memory (measured);
// 4. failed calls change nothing: arguments the driver would half-apply
// (`set_access` with a HOST descriptor on device memory) are ordered so the
// refusal comes first, and stale handles never reach the driver; 5. the only
// blocking call is `cuEventSynchronize` on the one event being waited on
// (and, for `Stream::DEFAULT` copies, on the event just recorded after them).
unsafe impl Driver for CudaDriver {
    type Handle = CudaHandle;
    type Fence = CudaFence;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn granularity(&self, location: Location) -> Result<usize> {
        match location {
            Location::Device(d) if d == self.ordinal => Ok(self.caps.granularity),
            Location::Device(d) => {
                let prop = alloc_prop(
                    device_location(Call::Granularity, d)?,
                    self.device_handle_types,
                );
                let _cur = self.enter()?;
                // SAFETY: the probe passed and our context is current.
                Ok(unsafe { result::mem_granularity(&prop, MINIMUM) }?)
            }
            Location::Host => match self.host {
                Some(h) => Ok(h.granularity),
                None => Err(refused(
                    Call::Granularity,
                    ErrorKind::NotSupported,
                    Reason::Unavailable,
                )
                .into()),
            },
        }
    }

    fn reserve(&self, size: usize, align: usize) -> Result<u64> {
        let _cur = self.enter()?;
        // SAFETY: the probe passed and our context is current.
        Ok(unsafe { result::mem_address_reserve(size, align) }?)
    }

    unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()> {
        let _cur = self.enter()?;
        // SAFETY: the caller guarantees a whole reservation nothing uses.
        Ok(unsafe { result::mem_address_free(va, size) }?)
    }

    fn create(&self, size: usize, location: Location) -> Result<CudaHandle> {
        let prop = match location {
            Location::Device(d) => {
                alloc_prop(device_location(Call::Create, d)?, self.device_handle_types)
            }
            Location::Host => match self.host {
                Some(h) => alloc_prop(h.kind.location(), NO_HANDLE_TYPES),
                None => {
                    return Err(refused(
                        Call::Create,
                        ErrorKind::NotSupported,
                        Reason::Unavailable,
                    )
                    .into());
                }
            },
        };
        let _cur = self.enter()?;
        // SAFETY: the probe passed and our context is current.
        let h = unsafe { result::mem_create(size, &prop) }?;
        lock(&self.handles).insert(h, location);
        Ok(CudaHandle(h))
    }

    fn release(&self, handle: CudaHandle) -> Result<()> {
        let _cur = self.enter()?;
        // Removed first: from here on no `map` can reach the driver with it.
        let Some(location) = lock(&self.handles).remove(&handle.0) else {
            return Err(refused(
                Call::Release,
                ErrorKind::InvalidValue,
                Reason::UnknownHandle,
            )
            .into());
        };
        // SAFETY: 1. the probe passed and our context is current; 2. the
        // handle was live in our set (made by `create`, not yet released) and
        // is now out of it, so it reaches `cuMemRelease` exactly once.
        match unsafe { result::mem_release(handle.0) } {
            Ok(()) => Ok(()),
            Err(e) => {
                lock(&self.handles).insert(handle.0, location);
                Err(e.into())
            }
        }
    }

    unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: CudaHandle) -> Result<()> {
        let _cur = self.enter()?;
        let handles = lock(&self.handles);
        if !handles.contains_key(&handle.0) {
            return Err(refused(Call::Map, ErrorKind::InvalidValue, Reason::UnknownHandle).into());
        }
        // SAFETY: 1. the probe passed and our context is current; 2. the
        // handle is live and stays so while `handles` is locked (release
        // removes it under this lock first); 3. the caller guarantees the
        // range lies in one of our reservations and is unmapped.
        unsafe { result::mem_map(va, size, offset, handle.0) }?;
        drop(handles);
        Ok(())
    }

    unsafe fn unmap(&self, va: u64, size: usize) -> Result<()> {
        let _cur = self.enter()?;
        // SAFETY: the caller guarantees nothing touches the range again
        // before it is mapped anew.
        Ok(unsafe { result::mem_unmap(va, size) }?)
    }

    unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()> {
        if access.is_empty() || access.len() > MAX_ACCESS {
            return Err(result::error(Call::SetAccess, 1).into());
        }
        // Host descriptors first, then other devices, this device last: the
        // driver applies descriptors in order and a host descriptor on device
        // memory fails (NOT_SUPPORTED) only when it is reached.
        let rank = |a: &Access| match a.location {
            Location::Host => 0,
            Location::Device(d) if d != self.ordinal => 1,
            Location::Device(_) => 2,
        };
        let mut desc = [EMPTY_DESC; MAX_ACCESS];
        let mut n = 0;
        for pass in 0..3 {
            for a in access.iter().filter(|a| rank(a) == pass) {
                desc[n] = self.access_desc(a)?;
                n += 1;
            }
        }
        let _cur = self.enter()?;
        // SAFETY: 1. the probe passed and our context is current; 2. the
        // caller guarantees accessors losing rights no longer use the range.
        Ok(unsafe { result::mem_set_access(va, size, &desc[..n]) }?)
    }

    fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode> {
        let location = match accessor {
            Location::Device(d) => device_location(Call::GetAccess, d)?,
            Location::Host => self.host_location(),
        };
        let _cur = self.enter()?;
        // SAFETY: the probe passed and our context is current.
        let flags = unsafe { result::mem_get_access(&location, va) }?;
        Ok(if flags & 2 != 0 {
            AccessMode::ReadWrite
        } else if flags & 1 != 0 {
            AccessMode::Read
        } else {
            AccessMode::None
        })
    }

    fn record(&self, stream: Stream) -> Result<CudaFence> {
        let _cur = self.enter()?;
        let ev = self.take_event()?;
        // SAFETY: 1. the probe passed and our context is current; 2. `ev` is
        // a live event of this context; 3. the caller passes a live stream
        // (or the legacy null stream).
        if let Err(e) = unsafe { result::event_record(ev.0, cu_stream(stream)) } {
            self.put_event(ev);
            return Err(e.into());
        }
        Ok(CudaFence {
            event: ev,
            owner: self.id,
        })
    }

    fn is_complete(&self, fence: &CudaFence) -> Result<bool> {
        self.check_fence(Call::QueryFence, fence)?;
        let _cur = self.enter()?;
        // SAFETY: the probe passed; the event is ours and live until Drop.
        Ok(unsafe { result::event_query(fence.event.0) }?)
    }

    fn wait(&self, fence: &CudaFence) -> Result<()> {
        self.check_fence(Call::Wait, fence)?;
        let _cur = self.enter()?;
        // SAFETY: the probe passed; the event is ours and live until Drop.
        Ok(unsafe { result::event_synchronize(fence.event.0) }?)
    }

    fn drop_fence(&self, fence: CudaFence) {
        // A foreign fence's event stays with the driver that made it.
        if fence.owner == self.id {
            self.put_event(fence.event);
        }
    }

    fn create_stream(&self) -> Result<Stream> {
        let _cur = self.enter()?;
        // SAFETY: the probe passed and our context is current.
        let s = unsafe {
            result::stream_create(sys::CUstream_flags::CU_STREAM_NON_BLOCKING as c_uint)
        }?;
        Ok(Stream(s.expose_provenance() as u64))
    }

    unsafe fn destroy_stream(&self, stream: Stream) -> Result<()> {
        if stream == Stream::DEFAULT {
            return Err(refused(
                Call::Stream,
                ErrorKind::InvalidHandle,
                Reason::UnknownHandle,
            )
            .into());
        }
        let _cur = self.enter()?;
        // SAFETY: the caller guarantees a stream of `create_stream` that is
        // not used afterwards.
        Ok(unsafe { result::stream_destroy(cu_stream(stream)) }?)
    }

    unsafe fn copy(&self, dst: u64, src: u64, len: usize, stream: Stream) -> Result<()> {
        let _cur = self.enter()?;
        // SAFETY: 1. the probe passed and our context is current; 2. the
        // caller guarantees both ranges and the stream; for the default
        // stream the copy has completed before this returns.
        unsafe { result::memcpy_async(dst, src, len, cu_stream(stream)) }?;
        if stream == Stream::DEFAULT {
            self.finish_default_stream()?;
        }
        Ok(())
    }

    unsafe fn fill(&self, dst: u64, byte: u8, len: usize, stream: Stream) -> Result<()> {
        let _cur = self.enter()?;
        // SAFETY: as in `copy`; the caller guarantees the range is mapped and
        // writable by this device.
        unsafe { result::memset_d8_async(dst, byte, len, cu_stream(stream)) }?;
        if stream == Stream::DEFAULT {
            self.finish_default_stream()?;
        }
        Ok(())
    }

    fn create_shareable(&self, size: usize, location: Location) -> Result<CudaHandle> {
        match location {
            Location::Device(_) if self.caps.shareable_handles => self.create(size, location),
            _ => Err(refused(Call::Share, ErrorKind::NotSupported, Reason::Unavailable).into()),
        }
    }

    fn export(&self, handle: CudaHandle) -> Result<OwnedFd> {
        let _cur = self.enter()?;
        let handles = lock(&self.handles);
        match handles.get(&handle.0) {
            Some(Location::Device(_)) if self.caps.shareable_handles => {}
            Some(_) => {
                return Err(
                    refused(Call::Share, ErrorKind::NotSupported, Reason::NotShareable).into(),
                );
            }
            None => {
                return Err(
                    refused(Call::Share, ErrorKind::InvalidValue, Reason::UnknownHandle).into(),
                );
            }
        }
        // SAFETY: 1. the probe passed and our context is current; 2. the
        // handle is live while `handles` is locked and was created with the
        // POSIX-fd type (shareable_handles) or imported from such a handle.
        let fd = unsafe { result::mem_export_fd(handle.0) }?;
        drop(handles);
        // SAFETY: the driver just made this descriptor for us; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    unsafe fn import(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        location: Location,
    ) -> Result<CudaHandle> {
        let _ = size;
        let _cur = self.enter()?;
        // SAFETY: 1. the probe passed and our context is current; 2. the
        // caller guarantees `fd` is an exported POSIX-fd handle; the driver
        // does not take ownership of it.
        let h = unsafe { result::mem_import_fd(fd.as_raw_fd()) }?;
        lock(&self.handles).insert(h, location);
        Ok(CudaHandle(h))
    }
}
