//! One thin function per HIP call: arguments in, `Result<_, DriverError>` out.
//!
//! Each function makes exactly one runtime call and turns its raw code into a
//! [`DriverError`] carrying the backend (`Hip`), the [`Call`], the raw code
//! and its [`ErrorKind`]. Kinds follow [`hip_code_kind`], adjusted per call
//! where HIP and CUDA report the same violation differently (see
//! [`kind_of`]), so the layers above never see a backend difference.
//!
//! Nothing here allocates, locks or keeps state; the owners in
//! [`super::HipDriver`] decide when to call.

use core::ffi::{c_int, c_ulonglong, c_void};
use core::ptr;

use super::sys;
use crate::error::{Backend, Call, DriverError, ErrorKind, hip_code_kind};

/// The [`ErrorKind`] of HIP code `code` returned by `call`.
///
/// Adjustments to [`hip_code_kind`], so that HIP and CUDA agree:
/// - `Call::Init`: every failure of `hipInit` / `hipGetDeviceCount` that says
///   "no usable GPU" is [`ErrorKind::NoDevice`]. Without an AMD GPU, ROCm 5.2's
///   `hipInit` returns `hipErrorInvalidDevice` (101), which elsewhere means a
///   bad ordinal ([`ErrorKind::InvalidValue`], as CUDA's 101).
/// - `Call::Reserve`: `hipErrorMemoryAllocation` (2) is what hip-tests expect
///   for a reservation of size 0 or of a non-multiple of the granularity;
///   CUDA says `CUDA_ERROR_INVALID_VALUE` for the same violation. With
///   `bad_size` the code means [`ErrorKind::InvalidValue`], otherwise a real
///   address-space exhaustion ([`ErrorKind::OutOfMemory`], as CUDA's
///   128 TiB reservation).
pub const fn kind_of(call: Call, code: i32, bad_size: bool) -> ErrorKind {
    match (call, code) {
        (
            Call::Init,
            sys::HIP_ERROR_NOT_INITIALIZED
            | sys::HIP_ERROR_INSUFFICIENT_DRIVER
            | sys::HIP_ERROR_NO_DEVICE
            | sys::HIP_ERROR_INVALID_DEVICE,
        ) => ErrorKind::NoDevice,
        (Call::Reserve, sys::HIP_ERROR_OUT_OF_MEMORY) if bad_size => ErrorKind::InvalidValue,
        _ => hip_code_kind(code),
    }
}

/// The error for a failed `call` with raw code `code`.
#[inline]
pub const fn error(call: Call, code: i32) -> DriverError {
    error_sized(call, code, false)
}

const fn error_sized(call: Call, code: i32, bad_size: bool) -> DriverError {
    DriverError {
        backend: Backend::Hip,
        call,
        code,
        kind: kind_of(call, code, bad_size),
        reason: None,
        checked: false,
    }
}

#[inline]
fn check(call: Call, code: i32) -> Result<(), DriverError> {
    if code == sys::HIP_SUCCESS {
        Ok(())
    } else {
        Err(error(call, code))
    }
}

/// The HIP runtime's symbolic name for `code` (`hipGetErrorName`), or
/// `None` where it gives none. Needs no initialized runtime.
pub fn error_name(code: i32) -> Option<&'static str> {
    // SAFETY: the declaration takes any integer; the runtime returns NULL or
    // a NUL-terminated string.
    let p = unsafe { sys::hipGetErrorName(code) };
    // SAFETY: the string lives in the runtime's static storage, which stays
    // as long as the process: the library is linked, never unloaded.
    unsafe { static_str(p) }
}

/// The HIP runtime's description of `code` (`hipGetErrorString`), or
/// `None` where it gives none. Needs no initialized runtime.
pub fn error_string(code: i32) -> Option<&'static str> {
    // SAFETY: as in `error_name`.
    let p = unsafe { sys::hipGetErrorString(code) };
    // SAFETY: as in `error_name`.
    unsafe { static_str(p) }
}

/// A NUL-terminated UTF-8 string as `&'static str` (`None` for NULL, empty
/// or non-UTF-8 text).
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that is never freed.
unsafe fn static_str(p: *const core::ffi::c_char) -> Option<&'static str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string that lives forever.
    let s = unsafe { core::ffi::CStr::from_ptr(p) }.to_str().ok()?;
    (!s.is_empty()).then_some(s)
}

/// `hipInit(0)`.
pub fn init() -> Result<(), DriverError> {
    // SAFETY: hipInit takes no pointers; it may be called any number of times.
    check(Call::Init, unsafe { sys::hipInit(0) })
}

/// `hipRuntimeGetVersion`: `HIP_VERSION` of the loaded runtime.
pub fn runtime_version() -> Result<c_int, DriverError> {
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer for the call's duration.
    check(Call::Init, unsafe { sys::hipRuntimeGetVersion(&mut v) })?;
    Ok(v)
}

/// `hipGetDeviceCount`. "No device" codes map to [`ErrorKind::NoDevice`].
pub fn device_count() -> Result<c_int, DriverError> {
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer for the call's duration.
    check(Call::Init, unsafe { sys::hipGetDeviceCount(&mut n) })?;
    Ok(n)
}

/// `hipSetDevice`: makes `device` current on the calling thread.
pub fn set_device(device: c_int) -> Result<(), DriverError> {
    // SAFETY: takes no pointers; an invalid ordinal is reported as a code.
    check(Call::Attribute, unsafe { sys::hipSetDevice(device) })
}

/// `hipDeviceGetAttribute`.
pub fn device_attribute(attr: c_int, device: c_int) -> Result<c_int, DriverError> {
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer; unknown attributes are reported as a code.
    check(Call::Attribute, unsafe {
        sys::hipDeviceGetAttribute(&mut v, attr, device)
    })?;
    Ok(v)
}

/// `hipDeviceTotalMem`.
pub fn device_total_mem(device: c_int) -> Result<usize, DriverError> {
    let mut bytes = 0usize;
    // SAFETY: `bytes` is a valid out-pointer for the call's duration.
    check(Call::Attribute, unsafe {
        sys::hipDeviceTotalMem(&mut bytes, device)
    })?;
    Ok(bytes)
}

/// Allocation properties for pinned memory at `location`, exportable as
/// `handle_type` (`HIP_MEM_HANDLE_TYPE_*`).
pub const fn allocation_prop(
    location: sys::hipMemLocation,
    handle_type: u32,
) -> sys::hipMemAllocationProp {
    sys::hipMemAllocationProp {
        type_: sys::HIP_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleType: handle_type,
        location,
        win32HandleMetaData: ptr::null_mut(),
        allocFlags: sys::hipMemAllocFlags {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
        },
    }
}

/// `hipMemGetAllocationGranularity` for pinned memory at `location`;
/// `option` is `HIP_MEM_ALLOCATION_GRANULARITY_{MINIMUM,RECOMMENDED}`.
pub fn granularity(location: sys::hipMemLocation, option: c_int) -> Result<usize, DriverError> {
    let prop = allocation_prop(location, sys::HIP_MEM_HANDLE_TYPE_NONE);
    let mut g = 0usize;
    // SAFETY: `g` and `prop` are valid for the call's duration; `prop` has the
    // ROCm ≥ 5.3 layout, which the caller checked the runtime uses.
    check(Call::Granularity, unsafe {
        sys::hipMemGetAllocationGranularity(&mut g, &prop, option)
    })?;
    Ok(g)
}

/// `hipMemAddressReserve(size, align)` at no fixed address.
///
/// `granularity` only classifies a failure (see [`kind_of`]).
pub fn reserve(size: usize, align: usize, granularity: usize) -> Result<u64, DriverError> {
    let mut p: *mut c_void = ptr::null_mut();
    // SAFETY: `p` is a valid out-pointer; a null hint and zero flags ask for
    // fresh address space, which touches no existing memory.
    let code = unsafe { sys::hipMemAddressReserve(&mut p, size, align, ptr::null_mut(), 0) };
    if code != sys::HIP_SUCCESS {
        let bad = size == 0 || granularity == 0 || size % granularity != 0;
        return Err(error_sized(Call::Reserve, code, bad));
    }
    Ok(p as u64)
}

/// `hipMemAddressFree`.
///
/// # Safety
/// `va`/`size` name a whole reservation with no mapping left, which nothing
/// touches again.
pub unsafe fn free_reservation(va: u64, size: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::FreeReservation, unsafe {
        sys::hipMemAddressFree(va as *mut c_void, size)
    })
}

/// `hipMemCreate` of `size` bytes of pinned memory at `location`,
/// exportable as `handle_type` (`HIP_MEM_HANDLE_TYPE_*`).
pub fn create(
    size: usize,
    location: sys::hipMemLocation,
    handle_type: u32,
) -> Result<usize, DriverError> {
    let prop = allocation_prop(location, handle_type);
    let mut h: sys::hipMemGenericAllocationHandle_t = ptr::null_mut();
    // SAFETY: `h` and `prop` are valid for the call's duration; flags are 0.
    check(Call::Create, unsafe {
        sys::hipMemCreate(&mut h, size, &prop, 0)
    })?;
    Ok(h as usize)
}

/// `hipMemExportToShareableHandle` as a POSIX file descriptor, which the
/// caller owns.
///
/// # Safety
/// `handle` came from [`create`] with `HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR`
/// (or from [`import`]) and is live for the call.
pub unsafe fn export(handle: usize) -> Result<c_int, DriverError> {
    let mut fd: c_int = -1;
    // SAFETY: guaranteed by the caller; for POSIX descriptors the
    // shareable handle is an `int` out-parameter.
    check(Call::Share, unsafe {
        sys::hipMemExportToShareableHandle(
            (&raw mut fd).cast(),
            handle as sys::hipMemGenericAllocationHandle_t,
            sys::HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    })?;
    Ok(fd)
}

/// `hipMemImportFromShareableHandle` of a POSIX file descriptor (the
/// descriptor travels in the pointer's value; the runtime does not take it).
///
/// # Safety
/// `fd` is an open descriptor made by [`export`] (in any process).
pub unsafe fn import(fd: c_int) -> Result<usize, DriverError> {
    let mut h: sys::hipMemGenericAllocationHandle_t = ptr::null_mut();
    // SAFETY: guaranteed by the caller; `h` is a valid out-pointer.
    check(Call::Share, unsafe {
        sys::hipMemImportFromShareableHandle(
            &mut h,
            fd as usize as *mut c_void,
            sys::HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        )
    })?;
    Ok(h as usize)
}

/// `hipMemRelease`.
///
/// # Safety
/// `handle` came from [`create`] and is released once.
pub unsafe fn release(handle: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Release, unsafe {
        sys::hipMemRelease(handle as sys::hipMemGenericAllocationHandle_t)
    })
}

/// `hipMemMap` of the whole `handle` at `va` (offset 0, flags 0).
///
/// # Safety
/// `va..va + size` lies in a reservation and is unmapped; `handle` is live
/// and `size` bytes long.
pub unsafe fn map(va: u64, size: usize, handle: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Map, unsafe {
        sys::hipMemMap(
            va as *mut c_void,
            size,
            0,
            handle as sys::hipMemGenericAllocationHandle_t,
            0,
        )
    })
}

/// `hipMemUnmap`.
///
/// # Safety
/// `va..va + size` is exactly one mapping that nothing uses any more.
pub unsafe fn unmap(va: u64, size: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Unmap, unsafe {
        sys::hipMemUnmap(va as *mut c_void, size)
    })
}

/// `hipMemSetAccess` with the descriptors `desc`.
///
/// # Safety
/// `va..va + size` is exactly one mapping; no accessor losing rights still
/// uses it.
pub unsafe fn set_access(
    va: u64,
    size: usize,
    desc: &[sys::hipMemAccessDesc],
) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller; `desc` is valid for `desc.len()` entries.
    check(Call::SetAccess, unsafe {
        sys::hipMemSetAccess(va as *mut c_void, size, desc.as_ptr(), desc.len())
    })
}

/// `hipMemGetAccess`: the raw `hipMemAccessFlags` of `location` at `va`.
pub fn get_access(va: u64, location: sys::hipMemLocation) -> Result<u64, DriverError> {
    let mut flags: c_ulonglong = 0;
    // SAFETY: `flags` and `location` are valid for the call's duration; the
    // runtime only looks `va` up in its tables, it does not dereference it.
    check(Call::GetAccess, unsafe {
        sys::hipMemGetAccess(&mut flags, &location, va as *mut c_void)
    })?;
    Ok(flags)
}

/// `hipEventCreateWithFlags(hipEventDisableTiming)` on the current device.
pub fn event_create() -> Result<usize, DriverError> {
    let mut e: sys::hipEvent_t = ptr::null_mut();
    // SAFETY: `e` is a valid out-pointer for the call's duration.
    check(Call::Record, unsafe {
        sys::hipEventCreateWithFlags(&mut e, sys::HIP_EVENT_DISABLE_TIMING)
    })?;
    Ok(e as usize)
}

/// `hipEventRecord(event, stream)`.
///
/// # Safety
/// `event` is a live event and `stream` a live stream (or 0, the null stream).
pub unsafe fn event_record(event: usize, stream: u64) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Record, unsafe {
        sys::hipEventRecord(event as sys::hipEvent_t, stream as sys::hipStream_t)
    })
}

/// `hipEventQuery`: `Ok(true)` once the work before the event has completed,
/// `Ok(false)` on `hipErrorNotReady`. Never blocks.
///
/// # Safety
/// `event` is a live event.
pub unsafe fn event_query(event: usize) -> Result<bool, DriverError> {
    // SAFETY: guaranteed by the caller.
    match unsafe { sys::hipEventQuery(event as sys::hipEvent_t) } {
        sys::HIP_SUCCESS => Ok(true),
        sys::HIP_ERROR_NOT_READY => Ok(false),
        code => Err(error(Call::QueryFence, code)),
    }
}

/// `hipEventSynchronize`: waits for this one event.
///
/// # Safety
/// `event` is a live event.
pub unsafe fn event_synchronize(event: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Wait, unsafe {
        sys::hipEventSynchronize(event as sys::hipEvent_t)
    })
}

/// `hipEventDestroy`.
///
/// # Safety
/// `event` is a live event, destroyed once.
pub unsafe fn event_destroy(event: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Record, unsafe {
        sys::hipEventDestroy(event as sys::hipEvent_t)
    })
}

/// `hipStreamCreateWithFlags(hipStreamNonBlocking)` on the current device.
pub fn stream_create() -> Result<u64, DriverError> {
    let mut s: sys::hipStream_t = ptr::null_mut();
    // SAFETY: `s` is a valid out-pointer for the call's duration.
    check(Call::Stream, unsafe {
        sys::hipStreamCreateWithFlags(&mut s, sys::HIP_STREAM_NON_BLOCKING)
    })?;
    Ok(s as u64)
}

/// `hipStreamDestroy`.
///
/// # Safety
/// `stream` came from [`stream_create`], is destroyed once and not used again.
pub unsafe fn stream_destroy(stream: u64) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Stream, unsafe {
        sys::hipStreamDestroy(stream as sys::hipStream_t)
    })
}

/// `hipMemcpy(dst, src, len, hipMemcpyDefault)` on the null stream. Returns
/// once the copy is done, except from device to device memory: ROCm then
/// returns before the copy has run.
///
/// # Safety
/// Both ranges are valid for `len` bytes and do not overlap.
pub unsafe fn memcpy(dst: u64, src: u64, len: usize) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Copy, unsafe {
        sys::hipMemcpy(
            dst as *mut c_void,
            src as *const c_void,
            len,
            sys::HIP_MEMCPY_DEFAULT,
        )
    })
}

/// `hipMemcpyAsync(dst, src, len, hipMemcpyDefault, stream)`.
///
/// # Safety
/// Both ranges are valid for `len` bytes, do not overlap, and stay valid
/// until the copy has completed in `stream` order.
pub unsafe fn memcpy_async(dst: u64, src: u64, len: usize, stream: u64) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Copy, unsafe {
        sys::hipMemcpyAsync(
            dst as *mut c_void,
            src as *const c_void,
            len,
            sys::HIP_MEMCPY_DEFAULT,
            stream as sys::hipStream_t,
        )
    })
}

/// `hipMemsetAsync(dst, byte, len, stream)`.
///
/// # Safety
/// The range is mapped and writable by the stream's device until the fill has
/// completed in `stream` order.
pub unsafe fn memset_async(dst: u64, byte: u8, len: usize, stream: u64) -> Result<(), DriverError> {
    // SAFETY: guaranteed by the caller.
    check(Call::Copy, unsafe {
        sys::hipMemsetAsync(
            dst as *mut c_void,
            c_int::from(byte),
            len,
            stream as sys::hipStream_t,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_match_cuda_for_the_same_violation() {
        // No GPU: hipInit says "invalid device" on ROCm 5.2, which means NoDevice here.
        assert_eq!(kind_of(Call::Init, 101, false), ErrorKind::NoDevice);
        assert_eq!(kind_of(Call::Init, 100, false), ErrorKind::NoDevice);
        assert_eq!(kind_of(Call::Init, 35, false), ErrorKind::NoDevice);
        // ...but a bad ordinal elsewhere is an invalid value, as CUDA's 101.
        assert_eq!(kind_of(Call::Map, 101, false), ErrorKind::InvalidValue);
        // hipErrorMemoryAllocation for a bad reservation size = CUDA's INVALID_VALUE.
        assert_eq!(kind_of(Call::Reserve, 2, true), ErrorKind::InvalidValue);
        // ...and a real exhaustion stays out-of-memory.
        assert_eq!(kind_of(Call::Reserve, 2, false), ErrorKind::OutOfMemory);
        assert_eq!(kind_of(Call::Create, 2, true), ErrorKind::OutOfMemory);
        assert_eq!(kind_of(Call::Map, 1, false), ErrorKind::InvalidValue);
        assert_eq!(kind_of(Call::Map, 801, false), ErrorKind::NotSupported);
        assert_eq!(kind_of(Call::Record, 400, false), ErrorKind::InvalidHandle);
        // Codes the hipError_t enum may lack are plain integers here.
        assert_eq!(kind_of(Call::Map, 123_456, false), ErrorKind::Other);
    }

    #[test]
    fn errors_name_the_hip_call_and_code() {
        let e = error(Call::Reserve, 2);
        assert_eq!(e.backend, Backend::Hip);
        let s = e.to_string();
        assert!(s.contains("hipMemAddressReserve"), "{s}");
        assert!(s.contains("hipErrorOutOfMemory"), "{s}");
    }

    #[test]
    fn the_runtime_names_its_codes() {
        // No AMD GPU is needed: the names are a lookup in the runtime.
        assert_eq!(error_name(1), Some("hipErrorInvalidValue"));
        assert_eq!(error_name(100), Some("hipErrorNoDevice"));
        assert!(error_string(1).is_some_and(|s| !s.is_empty()));
        // A code no enum knows is still named or refused, never UB.
        let _ = error_name(123_456);
    }

    #[test]
    fn allocation_prop_is_pinned_with_no_export() {
        let p = allocation_prop(
            sys::hipMemLocation {
                type_: sys::HIP_MEM_LOCATION_TYPE_DEVICE,
                id: 3,
            },
            sys::HIP_MEM_HANDLE_TYPE_NONE,
        );
        assert_eq!(p.type_, 1);
        assert_eq!(p.requestedHandleType, 0);
        assert_eq!(p.location.id, 3);
        assert!(p.win32HandleMetaData.is_null());
    }
}
