//! CUDA mode: the HIP calls forwarded to the CUDA driver API.
//!
//! `libcuda` is loaded at run time (cudarc's bindings, as gpu-arena's CUDA
//! backend does); every entry point it needs is looked up once at start,
//! so a machine without it gets `hipErrorNoDevice`, never a crash.
//!
//! Translations:
//! - structures: `hipMemAllocationProp` / `hipMemLocation` /
//!   `hipMemAccessDesc` are rebuilt field by field as their CUDA
//!   counterparts (never cast);
//! - a host location is `CU_MEM_LOCATION_TYPE_HOST`, or
//!   `CU_MEM_LOCATION_TYPE_HOST_NUMA` node 0 where the driver only knows that;
//! - handles: the CUDA handle (`u64`) stays behind the HIP handle object;
//! - `hipStream_t` / `hipEvent_t` are the `CUstream` / `CUevent` values
//!   (the null stream is the legacy default stream), so a CUDA kernel can
//!   be launched on a stream made through HIP;
//! - codes: `CUresult` to `hipError_t` by [`hip_code`].
//!
//! HIP keeps a current device per thread and needs no explicit context:
//! every call here first makes the primary context of the calling thread's
//! device (set by `hipSetDevice`, 0 by default) current, as gpu-arena's
//! CUDA backend does on threads that have none.
//!
//! `hipMemcpy` returns once the copy has completed, except from device
//! memory to device memory, as on ROCm: the copy is followed by an event on
//! the null stream, waited for. Nothing here synchronizes the device or a
//! stream.

use core::cell::Cell;
use core::ffi::{CStr, c_int, c_uint, c_ulonglong, c_void};
use std::sync::Mutex;

use cudarc::driver::sys;

use crate::abi::*;
use crate::{Loc, R, Runtime};

/// Every driver entry point this mode calls.
const SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuMemGetInfo_v2",
    "cuMemGetAllocationGranularity",
    "cuMemAddressReserve",
    "cuMemAddressFree",
    "cuMemCreate",
    "cuMemRelease",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemSetAccess",
    "cuMemGetAccess",
    "cuMemExportToShareableHandle",
    "cuMemImportFromShareableHandle",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuMemcpy",
    "cuMemcpyAsync",
    "cuMemsetD8Async",
];

/// The `hipError_t` for a `CUresult`.
fn hip_code(r: sys::CUresult) -> hipError_t {
    use sys::CUresult as C;
    match r {
        C::CUDA_SUCCESS => hipSuccess,
        C::CUDA_ERROR_INVALID_VALUE => hipErrorInvalidValue,
        C::CUDA_ERROR_OUT_OF_MEMORY => hipErrorOutOfMemory,
        C::CUDA_ERROR_NOT_INITIALIZED => hipErrorNotInitialized,
        C::CUDA_ERROR_DEINITIALIZED => hipErrorDeinitialized,
        C::CUDA_ERROR_NO_DEVICE => hipErrorNoDevice,
        C::CUDA_ERROR_INVALID_DEVICE => hipErrorInvalidDevice,
        C::CUDA_ERROR_INVALID_CONTEXT => hipErrorInvalidContext,
        C::CUDA_ERROR_INVALID_HANDLE => hipErrorInvalidHandle,
        C::CUDA_ERROR_NOT_FOUND => hipErrorNotFound,
        C::CUDA_ERROR_NOT_READY => hipErrorNotReady,
        C::CUDA_ERROR_ILLEGAL_ADDRESS => hipErrorIllegalAddress,
        C::CUDA_ERROR_NOT_PERMITTED => hipErrorNotPermitted,
        C::CUDA_ERROR_NOT_SUPPORTED => hipErrorNotSupported,
        _ => hipErrorUnknown,
    }
}

fn check(r: sys::CUresult) -> R<()> {
    match hip_code(r) {
        hipSuccess => Ok(()),
        e => Err(e),
    }
}

thread_local! {
    /// HIP's current device of this thread.
    static DEVICE: Cell<c_int> = const { Cell::new(0) };
}

pub(crate) struct CudaRt {
    count: c_int,
    /// Retained primary contexts by device (addresses; retained for the
    /// process's life).
    primary: Mutex<Vec<usize>>,
    /// How this driver names host memory.
    host: Option<sys::CUmemLocation>,
}

fn device_location(id: c_int) -> sys::CUmemLocation {
    sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id,
    }
}

fn prop(location: sys::CUmemLocation, shareable: bool) -> sys::CUmemAllocationProp {
    sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes: if shareable {
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        } else {
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE
        },
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

impl CudaRt {
    pub(crate) fn new() -> R<Self> {
        // SAFETY: only tries to open the library; never panics.
        if !unsafe { sys::is_culib_present() } {
            eprintln!("gpu-arena HIP shim: cuda mode, but no libcuda was found");
            return Err(hipErrorNoDevice);
        }
        // SAFETY: the library was just found, so this does not panic.
        let lib = unsafe { sys::culib() };
        for name in SYMBOLS {
            // SAFETY: a lookup; the symbol is not called here.
            if unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_err() {
                eprintln!("gpu-arena HIP shim: libcuda lacks {name}");
                return Err(hipErrorInsufficientDriver);
            }
        }
        // SAFETY: every entry point used below exists (checked above).
        check(unsafe { sys::cuInit(0) })?;
        let mut count = 0;
        // SAFETY: a valid out-pointer.
        check(unsafe { sys::cuDeviceGetCount(&mut count) })?;
        let rt = CudaRt {
            count,
            primary: Mutex::new(vec![0; count.max(0) as usize]),
            host: None,
        };
        if count == 0 {
            return Ok(rt);
        }
        rt.bind()?;
        let host = [
            sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST,
                id: 0,
            },
            sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_HOST_NUMA,
                id: 0,
            },
        ]
        .into_iter()
        .find(|l| {
            let p = prop(*l, false);
            let mut g = 0usize;
            // SAFETY: valid pointers; a context is current.
            let r = unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut g,
                    &p,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                )
            };
            r == sys::CUresult::CUDA_SUCCESS && g > 0
        });
        Ok(CudaRt { host, ..rt })
    }

    /// The retained primary context of `device`.
    fn primary(&self, device: c_int) -> R<sys::CUcontext> {
        let mut p = self.primary.lock().unwrap_or_else(|e| e.into_inner());
        let slot = p.get_mut(device as usize).ok_or(hipErrorInvalidDevice)?;
        if *slot == 0 {
            let dev = cu_device(device)?;
            let mut ctx: sys::CUcontext = core::ptr::null_mut();
            // SAFETY: a valid out-pointer and device handle.
            check(unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, dev) })?;
            *slot = ctx as usize;
        }
        Ok(*slot as sys::CUcontext)
    }

    /// Makes the calling thread's device's primary context current.
    fn bind(&self) -> R<()> {
        let ctx = self.primary(DEVICE.with(|d| d.get()))?;
        let mut cur: sys::CUcontext = core::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        check(unsafe { sys::cuCtxGetCurrent(&mut cur) })?;
        if cur != ctx {
            // SAFETY: a retained primary context.
            check(unsafe { sys::cuCtxSetCurrent(ctx) })?;
        }
        Ok(())
    }

    fn location(&self, l: Loc) -> R<sys::CUmemLocation> {
        match l {
            Loc::Device(d) => Ok(device_location(d)),
            Loc::Host => self.host.ok_or(hipErrorNotSupported),
        }
    }
}

/// The `CUdevice` of a HIP device ordinal.
fn cu_device(ordinal: c_int) -> R<sys::CUdevice> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: a valid out-pointer; the driver checks the ordinal.
    check(unsafe { sys::cuDeviceGet(&mut dev, ordinal) })?;
    Ok(dev)
}

fn access_flags(flags: u32) -> sys::CUmemAccess_flags {
    use sys::CUmemAccess_flags as F;
    match flags {
        hipMemAccessFlagsProtReadWrite => F::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        hipMemAccessFlagsProtRead => F::CU_MEM_ACCESS_FLAGS_PROT_READ,
        _ => F::CU_MEM_ACCESS_FLAGS_PROT_NONE,
    }
}

impl Runtime for CudaRt {
    fn describe(&self) -> &'static CStr {
        c"gpu-arena HIP shim, cuda mode (forwards to the CUDA driver API)"
    }

    fn device_count(&self) -> R<c_int> {
        Ok(self.count)
    }

    fn set_device(&self, device: c_int) -> R<()> {
        DEVICE.with(|d| d.set(device));
        self.bind()
    }

    fn vmm_supported(&self, device: c_int) -> R<c_int> {
        let dev = cu_device(device)?;
        let mut v = 0;
        // SAFETY: a valid out-pointer and device handle.
        check(unsafe {
            sys::cuDeviceGetAttribute(
                &mut v,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                dev,
            )
        })?;
        Ok(v)
    }

    fn total_mem(&self, device: c_int) -> R<usize> {
        let dev = cu_device(device)?;
        let mut bytes = 0usize;
        // SAFETY: a valid out-pointer and device handle.
        check(unsafe { sys::cuDeviceTotalMem_v2(&mut bytes, dev) })?;
        Ok(bytes)
    }

    fn mem_info(&self) -> R<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; a context is current.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) })?;
        Ok((free, total))
    }

    fn granularity(&self, location: Loc, recommended: bool) -> R<usize> {
        self.bind()?;
        let p = prop(self.location(location)?, false);
        let option = if recommended {
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
        } else {
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM
        };
        let mut g = 0usize;
        // SAFETY: valid pointers; a context is current.
        check(unsafe { sys::cuMemGetAllocationGranularity(&mut g, &p, option) })?;
        Ok(g)
    }

    fn reserve(&self, size: usize, align: usize) -> R<u64> {
        self.bind()?;
        let mut va: sys::CUdeviceptr = 0;
        // SAFETY: a valid out-pointer; no fixed address, flags 0.
        check(unsafe { sys::cuMemAddressReserve(&mut va, size, align, 0, 0) })?;
        Ok(va)
    }

    fn free_reservation(&self, va: u64, size: usize) -> R<()> {
        self.bind()?;
        // SAFETY: HIP's contract: a whole reservation nothing uses any more.
        check(unsafe { sys::cuMemAddressFree(va, size) })
    }

    fn create(&self, size: usize, location: Loc, shareable: bool) -> R<u64> {
        self.bind()?;
        let p = prop(self.location(location)?, shareable);
        let mut h: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: valid pointers; a context is current.
        check(unsafe { sys::cuMemCreate(&mut h, size, &p, 0) })?;
        Ok(h)
    }

    fn release(&self, handle: u64) -> R<()> {
        self.bind()?;
        // SAFETY: a live handle of ours (the entry point checked it).
        check(unsafe { sys::cuMemRelease(handle) })
    }

    fn map(&self, va: u64, size: usize, handle: u64) -> R<()> {
        self.bind()?;
        // SAFETY: a live handle of ours; HIP's contract: a reserved range.
        check(unsafe { sys::cuMemMap(va, size, 0, handle, 0) })
    }

    fn unmap(&self, va: u64, size: usize) -> R<()> {
        self.bind()?;
        // SAFETY: one whole mapping made through this library.
        check(unsafe { sys::cuMemUnmap(va, size) })
    }

    fn set_access(&self, va: u64, size: usize, access: &[(Loc, u32)]) -> R<()> {
        self.bind()?;
        let desc = access
            .iter()
            .map(|(l, f)| {
                Ok(sys::CUmemAccessDesc {
                    location: self.location(*l)?,
                    flags: access_flags(*f),
                })
            })
            .collect::<R<Vec<_>>>()?;
        // SAFETY: `desc` holds `desc.len()` descriptors; one whole mapping.
        check(unsafe { sys::cuMemSetAccess(va, size, desc.as_ptr(), desc.len()) })
    }

    fn get_access(&self, va: u64, device: c_int) -> R<u64> {
        self.bind()?;
        let mut flags: c_ulonglong = 0;
        let l = device_location(device);
        // SAFETY: valid pointers; the driver only looks the address up.
        check(unsafe { sys::cuMemGetAccess(&mut flags, &l, va) })?;
        Ok(flags)
    }

    fn export(&self, handle: u64) -> R<c_int> {
        self.bind()?;
        let mut fd: c_int = -1;
        // SAFETY: for POSIX descriptors the out-pointer is an int.
        check(unsafe {
            sys::cuMemExportToShareableHandle(
                (&raw mut fd).cast::<c_void>(),
                handle,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        })?;
        Ok(fd)
    }

    fn import(&self, fd: c_int) -> R<u64> {
        self.bind()?;
        let mut h: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: POSIX descriptors travel in the pointer's value.
        check(unsafe {
            sys::cuMemImportFromShareableHandle(
                &mut h,
                fd as usize as *mut c_void,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )
        })?;
        Ok(h)
    }

    fn event_create(&self, flags: c_uint) -> R<usize> {
        self.bind()?;
        // HIP's event flags have CUDA's values (blocking sync 1, disable
        // timing 2, interprocess 4).
        let mut e: sys::CUevent = core::ptr::null_mut();
        // SAFETY: a valid out-pointer; a context is current.
        check(unsafe { sys::cuEventCreate(&mut e, flags) })?;
        Ok(e as usize)
    }

    fn event_record(&self, event: usize, stream: usize) -> R<()> {
        self.bind()?;
        // SAFETY: HIP's contract: a live event and a live (or null) stream.
        check(unsafe { sys::cuEventRecord(event as sys::CUevent, stream as sys::CUstream) })
    }

    fn event_query(&self, event: usize) -> R<bool> {
        self.bind()?;
        // SAFETY: HIP's contract: a live event.
        match unsafe { sys::cuEventQuery(event as sys::CUevent) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            r => Err(hip_code(r)),
        }
    }

    fn event_synchronize(&self, event: usize) -> R<()> {
        self.bind()?;
        // SAFETY: HIP's contract: a live event.
        check(unsafe { sys::cuEventSynchronize(event as sys::CUevent) })
    }

    fn event_destroy(&self, event: usize) -> R<()> {
        self.bind()?;
        // SAFETY: HIP's contract: a live event, destroyed once.
        check(unsafe { sys::cuEventDestroy_v2(event as sys::CUevent) })
    }

    fn stream_create(&self, flags: c_uint) -> R<usize> {
        self.bind()?;
        // hipStreamNonBlocking has CU_STREAM_NON_BLOCKING's value (1).
        let mut s: sys::CUstream = core::ptr::null_mut();
        // SAFETY: a valid out-pointer; a context is current.
        check(unsafe { sys::cuStreamCreate(&mut s, flags) })?;
        Ok(s as usize)
    }

    fn stream_destroy(&self, stream: usize) -> R<()> {
        self.bind()?;
        // SAFETY: HIP's contract: a live stream, not used again.
        check(unsafe { sys::cuStreamDestroy_v2(stream as sys::CUstream) })
    }

    fn copy(
        &self,
        dst: u64,
        src: u64,
        len: usize,
        stream: Option<usize>,
        device_to_device: bool,
    ) -> R<()> {
        self.bind()?;
        match stream {
            // SAFETY: HIP's contract: both ranges valid, in stream order.
            Some(s) => check(unsafe { sys::cuMemcpyAsync(dst, src, len, s as sys::CUstream) }),
            None => {
                // SAFETY: HIP's contract: both ranges valid.
                check(unsafe { sys::cuMemcpy(dst, src, len) })?;
                // As ROCm: the host waits unless both ends are device memory
                // (cuMemcpy itself may return early then, too).
                if device_to_device {
                    Ok(())
                } else {
                    self.null_stream_done()
                }
            }
        }
    }

    fn fill(&self, dst: u64, byte: u8, len: usize, stream: usize) -> R<()> {
        self.bind()?;
        // SAFETY: HIP's contract: the range is writable, in stream order.
        check(unsafe { sys::cuMemsetD8Async(dst, byte, len, stream as sys::CUstream) })
    }

    fn hold(&self, _stream: usize, _hold: bool) -> R<()> {
        Err(hipErrorNotSupported)
    }
}

impl CudaRt {
    /// Waits for the work queued so far on the null stream (one event).
    fn null_stream_done(&self) -> R<()> {
        let mut e: sys::CUevent = core::ptr::null_mut();
        // SAFETY: (all calls) valid pointers; a context is current; the
        // event is made, recorded, waited for and destroyed here.
        unsafe {
            check(sys::cuEventCreate(
                &mut e,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as c_uint,
            ))?;
            let r = check(sys::cuEventRecord(e, core::ptr::null_mut()))
                .and_then(|()| check(sys::cuEventSynchronize(e)));
            let _ = sys::cuEventDestroy_v2(e);
            r
        }
    }
}
