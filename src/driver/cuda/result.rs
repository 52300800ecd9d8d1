//! The thin layer: one function per CUDA driver call, turning `CUresult`
//! into `Result<_, DriverError>` (backend [`Backend::Cuda`], the [`Call`],
//! the raw code and its [`ErrorKind`](crate::error::ErrorKind) from
//! [`cuda_code_kind`]).
//!
//! Nothing here owns anything or keeps state; the owners live in
//! [`super`](crate::driver::cuda). Out-parameters become return values.
//!
//! # Safety (shared by every function of this module)
//!
//! Callers guarantee that [`probe`] returned `Ok` in this process before any
//! other function here is called: cudarc's dynamic loader panics when
//! `libcuda` is absent, and each symbol is looked up on its first call.
//! Handles passed in (contexts, events, streams, modules, functions, memory
//! handles) are live values this process got from the driver. Further
//! obligations are listed on each function.

use core::ffi::{CStr, c_char, c_int, c_uint, c_void};
use core::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::error::{Backend, Call, DriverError, cuda_code_kind};

use super::{entry, sys};

/// `Result` of this layer: the error is always a [`DriverError`].
pub type CuResult<T> = core::result::Result<T, DriverError>;

/// The raw code `CUDA_ERROR_NOT_READY` (an event or stream still has work).
pub const NOT_READY: i32 = 600;

/// The [`DriverError`] for `call` failing with the raw CUDA `code`.
#[inline]
pub const fn error(call: Call, code: i32) -> DriverError {
    DriverError {
        backend: Backend::Cuda,
        call,
        code,
        kind: cuda_code_kind(code),
        reason: None,
        checked: false,
    }
}

/// `Ok(())` for `CUDA_SUCCESS`, else the error for `call`.
#[inline]
fn check(call: Call, code: c_int) -> CuResult<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(error(call, code))
    }
}

/// The driver entry points this backend calls besides those of
/// [`entry`] (whose [`entry::NAMES`] [`probe`] looks up too): the error
/// texts, looked up on their own when first needed.
const TEXT_SYMBOLS: &[&str] = &["cuGetErrorName", "cuGetErrorString"];

/// Set once [`probe`] passed: from then on the driver library is loaded and
/// [`error_name`] / [`error_string`] may look their entry points up.
static PROBED: AtomicBool = AtomicBool::new(false);

/// `CUresult cuGetErrorName(CUresult, const char**)` and `cuGetErrorString`,
/// declared with a plain integer code: cudarc's `CUresult` is a Rust enum,
/// and a code it lacks would be undefined behaviour.
type ErrorText = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

static ERROR_NAME: OnceLock<Option<ErrorText>> = OnceLock::new();
static ERROR_STRING: OnceLock<Option<ErrorText>> = OnceLock::new();

/// The driver's symbolic name for `code` (`cuGetErrorName`, e.g.
/// `CUDA_ERROR_INVALID_VALUE`), or `None` before [`probe`] passed or where
/// the driver does not know the code. Looked up on first use.
pub fn error_name(code: i32) -> Option<&'static str> {
    error_text(&ERROR_NAME, b"cuGetErrorName\0", code)
}

/// The driver's description of `code` (`cuGetErrorString`), or `None`
/// before [`probe`] passed or where the driver does not know the code.
pub fn error_string(code: i32) -> Option<&'static str> {
    error_text(&ERROR_STRING, b"cuGetErrorString\0", code)
}

fn error_text(
    slot: &'static OnceLock<Option<ErrorText>>,
    symbol: &'static [u8],
    code: i32,
) -> Option<&'static str> {
    if !PROBED.load(Ordering::Acquire) {
        return None;
    }
    let f = (*slot.get_or_init(|| {
        // SAFETY: the probe passed, so `culib()` finds the library (it
        // does not panic); `symbol` is NUL-terminated (no allocation).
        let lib = unsafe { sys::culib() };
        // SAFETY: both entry points have the C signature of `ErrorText`
        // (`CUresult` is a C enum, passed as an int).
        unsafe { lib.get::<ErrorText>(symbol) }.ok().map(|f| *f)
    }))?;
    let mut p: *const c_char = core::ptr::null();
    // SAFETY: `p` is a valid out-pointer; an unknown code makes the driver
    // return CUDA_ERROR_INVALID_VALUE, not undefined behaviour.
    if unsafe { f(code, &mut p) } != 0 || p.is_null() {
        return None;
    }
    // SAFETY: the driver points `p` at a NUL-terminated string in its static
    // storage, which lives as long as the library; cudarc never unloads it.
    let s = unsafe { CStr::from_ptr(p) }.to_str().ok()?;
    (!s.is_empty()).then_some(s)
}

/// Why [`probe`] refused the CUDA library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// No `libcuda.so` (or `libcuda.so.1`) could be loaded.
    NoLibrary,
    /// The library lacks this entry point (a driver too old for VMM).
    MissingSymbol(&'static str),
}

/// The presence probe: whether `libcuda` can be loaded and exports every
/// entry point this backend calls ([`entry::NAMES`] and the error texts), so
/// that a driver too old for VMM is refused with an error instead of a
/// panic on first use. Never panics.
///
/// This is the only function of this module that may be called first.
pub fn probe() -> Result<(), ProbeError> {
    // SAFETY: `is_culib_present` only tries to dlopen the candidate names
    // and drops the handles again; it has no preconditions and, unlike every
    // other cudarc `sys` function, does not panic when the library is absent.
    if !unsafe { sys::is_culib_present() } {
        return Err(ProbeError::NoLibrary);
    }
    // SAFETY: the probe just loaded one of the same candidate names, so
    // `culib()` finds a library and does not panic.
    let lib = unsafe { sys::culib() };
    for &name in entry::NAMES.iter().chain(TEXT_SYMBOLS) {
        // SAFETY: looking a symbol up does not call it; the pointer type is
        // never used to call anything.
        let found = unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) };
        if found.is_err() {
            return Err(ProbeError::MissingSymbol(name));
        }
    }
    PROBED.store(true, Ordering::Release);
    crate::error::set_runtime_texts(
        crate::error::Backend::Cuda,
        crate::error::RuntimeTexts {
            name: error_name,
            string: error_string,
        },
    );
    Ok(())
}

/// `cuInit(0)`.
///
/// # Safety
/// See the module docs.
pub unsafe fn init() -> CuResult<()> {
    // SAFETY: flags 0 is the only documented value.
    check(Call::Init, unsafe { entry::cuInit(0) })
}

/// `cuDriverGetVersion`: e.g. 13000 for CUDA 13.0.
///
/// # Safety
/// See the module docs.
pub unsafe fn driver_version() -> CuResult<i32> {
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer.
    check(Call::Init, unsafe { entry::cuDriverGetVersion(&mut v) })?;
    Ok(v)
}

/// `cuDeviceGetCount`.
///
/// # Safety
/// See the module docs; `init` succeeded.
pub unsafe fn device_count() -> CuResult<i32> {
    let mut n: c_int = 0;
    // SAFETY: `n` is a valid out-pointer.
    check(Call::Attribute, unsafe { entry::cuDeviceGetCount(&mut n) })?;
    Ok(n)
}

/// `cuDeviceGet(ordinal)`.
///
/// # Safety
/// See the module docs; `init` succeeded.
pub unsafe fn device_get(ordinal: c_int) -> CuResult<sys::CUdevice> {
    let mut d: sys::CUdevice = 0;
    // SAFETY: `d` is a valid out-pointer; a bad ordinal is an error code.
    check(Call::Attribute, unsafe {
        entry::cuDeviceGet(&mut d, ordinal)
    })?;
    Ok(d)
}

/// `cuDeviceGetAttribute(attr, dev)`.
///
/// # Safety
/// See the module docs; `init` succeeded.
pub unsafe fn device_attribute(dev: sys::CUdevice, attr: sys::CUdevice_attribute) -> CuResult<i32> {
    let mut v: c_int = 0;
    // SAFETY: `v` is a valid out-pointer; `attr` is a declared enum value.
    check(Call::Attribute, unsafe {
        entry::cuDeviceGetAttribute(&mut v, attr, dev)
    })?;
    Ok(v)
}

/// `cuDeviceTotalMem`: physical memory of `dev` in bytes.
///
/// # Safety
/// See the module docs; `init` succeeded.
pub unsafe fn device_total_mem(dev: sys::CUdevice) -> CuResult<usize> {
    let mut bytes: usize = 0;
    // SAFETY: `bytes` is a valid out-pointer.
    check(Call::Attribute, unsafe {
        entry::cuDeviceTotalMem_v2(&mut bytes, dev)
    })?;
    Ok(bytes)
}

/// `cuDevicePrimaryCtxRetain`: the device's primary context, retained.
///
/// # Safety
/// See the module docs; `init` succeeded. Each success is balanced by one
/// [`primary_ctx_release`].
pub unsafe fn primary_ctx_retain(dev: sys::CUdevice) -> CuResult<sys::CUcontext> {
    let mut ctx: sys::CUcontext = core::ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer.
    check(Call::Init, unsafe {
        entry::cuDevicePrimaryCtxRetain(&mut ctx, dev)
    })?;
    Ok(ctx)
}

/// `cuDevicePrimaryCtxRelease`.
///
/// # Safety
/// See the module docs; balances one successful [`primary_ctx_retain`].
pub unsafe fn primary_ctx_release(dev: sys::CUdevice) -> CuResult<()> {
    // SAFETY: the caller balances a retain.
    check(Call::Init, unsafe {
        entry::cuDevicePrimaryCtxRelease_v2(dev)
    })
}

/// `cuCtxGetCurrent`: the calling thread's current context (null if none).
///
/// # Safety
/// See the module docs.
pub unsafe fn ctx_get_current() -> CuResult<sys::CUcontext> {
    let mut ctx: sys::CUcontext = core::ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer.
    check(Call::Init, unsafe { entry::cuCtxGetCurrent(&mut ctx) })?;
    Ok(ctx)
}

/// `cuThreadExchangeStreamCaptureMode`: sets the calling thread's
/// stream-capture mode to `mode` and returns the one it had.
///
/// # Safety
/// See the module docs.
pub unsafe fn exchange_capture_mode(
    mode: sys::CUstreamCaptureMode,
) -> CuResult<sys::CUstreamCaptureMode> {
    let mut m = mode;
    // SAFETY: `m` is a valid in/out pointer.
    check(Call::Init, unsafe {
        entry::cuThreadExchangeStreamCaptureMode(&mut m)
    })?;
    Ok(m)
}

/// `cuCtxSetCurrent(ctx)` on the calling thread.
///
/// # Safety
/// See the module docs; `ctx` is a live (retained) context.
pub unsafe fn ctx_set_current(ctx: sys::CUcontext) -> CuResult<()> {
    // SAFETY: the caller keeps `ctx` alive.
    check(Call::Init, unsafe { entry::cuCtxSetCurrent(ctx) })
}

/// `cuCtxPushCurrent(ctx)` on the calling thread.
///
/// # Safety
/// See the module docs; `ctx` is a live context; balanced by [`ctx_pop_current`].
pub unsafe fn ctx_push_current(ctx: sys::CUcontext) -> CuResult<()> {
    // SAFETY: the caller keeps `ctx` alive and pops it again.
    check(Call::Init, unsafe { entry::cuCtxPushCurrent_v2(ctx) })
}

/// `cuCtxPopCurrent`, discarding the popped context.
///
/// # Safety
/// See the module docs; balances one [`ctx_push_current`] on this thread.
pub unsafe fn ctx_pop_current() -> CuResult<()> {
    let mut ctx: sys::CUcontext = core::ptr::null_mut();
    // SAFETY: `ctx` is a valid out-pointer.
    check(Call::Init, unsafe { entry::cuCtxPopCurrent_v2(&mut ctx) })
}

/// `cuMemGetAllocationGranularity(prop, option)`.
///
/// # Safety
/// See the module docs; a context is current.
pub unsafe fn mem_granularity(
    prop: &sys::CUmemAllocationProp,
    option: sys::CUmemAllocationGranularity_flags,
) -> CuResult<usize> {
    let mut g: usize = 0;
    // SAFETY: `g` is a valid out-pointer, `prop` a valid reference.
    check(Call::Granularity, unsafe {
        entry::cuMemGetAllocationGranularity(&mut g, prop, option)
    })?;
    Ok(g)
}

/// `cuMemAddressReserve(size, align, addr 0, flags 0)`.
///
/// # Safety
/// See the module docs; a context is current.
pub unsafe fn mem_address_reserve(size: usize, align: usize) -> CuResult<sys::CUdeviceptr> {
    let mut ptr: sys::CUdeviceptr = 0;
    // SAFETY: `ptr` is a valid out-pointer; no address hint, flags 0.
    check(Call::Reserve, unsafe {
        entry::cuMemAddressReserve(&mut ptr, size, align, 0, 0)
    })?;
    Ok(ptr)
}

/// `cuMemAddressFree(ptr, size)`.
///
/// # Safety
/// See the module docs; `ptr`/`size` name a reservation nothing uses any more.
pub unsafe fn mem_address_free(ptr: sys::CUdeviceptr, size: usize) -> CuResult<()> {
    // SAFETY: the caller guarantees nothing touches the range again.
    check(Call::FreeReservation, unsafe {
        entry::cuMemAddressFree(ptr, size)
    })
}

/// `cuMemCreate(size, prop, flags 0)`: a new physical memory handle.
///
/// # Safety
/// See the module docs; a context is current.
pub unsafe fn mem_create(
    size: usize,
    prop: &sys::CUmemAllocationProp,
) -> CuResult<sys::CUmemGenericAllocationHandle> {
    let mut h: sys::CUmemGenericAllocationHandle = 0;
    // SAFETY: `h` is a valid out-pointer, `prop` a valid reference; flags 0.
    check(Call::Create, unsafe {
        entry::cuMemCreate(&mut h, size, prop, 0)
    })?;
    Ok(h)
}

/// `cuMemRelease(handle)`.
///
/// # Safety
/// See the module docs; `handle` is live and never used again (the driver
/// crashes on stale or bogus handles, see `research/vmm-probe-h100.md`).
pub unsafe fn mem_release(handle: sys::CUmemGenericAllocationHandle) -> CuResult<()> {
    // SAFETY: the caller guarantees the handle is live.
    check(Call::Release, unsafe { entry::cuMemRelease(handle) })
}

/// `cuMemMap(ptr, size, offset, handle, flags 0)`.
///
/// # Safety
/// See the module docs; `handle` is live (the driver crashes on stale or
/// bogus handles) and the range lies in a reservation of this process.
pub unsafe fn mem_map(
    ptr: sys::CUdeviceptr,
    size: usize,
    offset: usize,
    handle: sys::CUmemGenericAllocationHandle,
) -> CuResult<()> {
    // SAFETY: the caller guarantees a live handle and a reserved range.
    check(Call::Map, unsafe {
        entry::cuMemMap(ptr, size, offset, handle, 0)
    })
}

/// `cuMemUnmap(ptr, size)`.
///
/// # Safety
/// See the module docs; nothing touches the range until it is mapped again.
pub unsafe fn mem_unmap(ptr: sys::CUdeviceptr, size: usize) -> CuResult<()> {
    // SAFETY: the caller guarantees the range is no longer used.
    check(Call::Unmap, unsafe { entry::cuMemUnmap(ptr, size) })
}

/// `cuMemSetAccess(ptr, size, desc, desc.len())`.
///
/// # Safety
/// See the module docs; accessors losing rights no longer use the range.
pub unsafe fn mem_set_access(
    ptr: sys::CUdeviceptr,
    size: usize,
    desc: &[sys::CUmemAccessDesc],
) -> CuResult<()> {
    // SAFETY: `desc` points to `desc.len()` initialized descriptors.
    check(Call::SetAccess, unsafe {
        entry::cuMemSetAccess(ptr, size, desc.as_ptr(), desc.len())
    })
}

/// `cuMemGetAccess(location, ptr)`: the raw `CU_MEM_ACCESS_FLAGS_*` value.
///
/// # Safety
/// See the module docs.
pub unsafe fn mem_get_access(
    location: &sys::CUmemLocation,
    ptr: sys::CUdeviceptr,
) -> CuResult<u64> {
    let mut flags: u64 = 0;
    // SAFETY: `flags` is a valid out-pointer, `location` a valid reference.
    check(Call::GetAccess, unsafe {
        entry::cuMemGetAccess(&mut flags, location, ptr)
    })?;
    Ok(flags)
}

/// `cuMemExportToShareableHandle(&fd, handle, POSIX_FILE_DESCRIPTOR, 0)`: a
/// new descriptor the caller owns.
///
/// # Safety
/// See the module docs; `handle` is live (the driver may crash on stale
/// handles) and was created with the POSIX-fd handle type requested.
pub unsafe fn mem_export_fd(handle: sys::CUmemGenericAllocationHandle) -> CuResult<c_int> {
    let mut fd: c_int = -1;
    // SAFETY: `fd` is a valid out-pointer for the int a POSIX-fd export writes.
    check(Call::Share, unsafe {
        entry::cuMemExportToShareableHandle(
            (&raw mut fd).cast::<c_void>(),
            handle,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            0,
        )
    })?;
    Ok(fd)
}

/// `cuMemImportFromShareableHandle(&handle, fd, POSIX_FILE_DESCRIPTOR)`: a new
/// handle (released with [`mem_release`]); the caller keeps `fd`.
///
/// # Safety
/// See the module docs; a context is current and `fd` is an open descriptor
/// made by [`mem_export_fd`] (in this or another process).
pub unsafe fn mem_import_fd(fd: c_int) -> CuResult<sys::CUmemGenericAllocationHandle> {
    let mut h: sys::CUmemGenericAllocationHandle = 0;
    // SAFETY: `h` is a valid out-pointer; for POSIX descriptors the driver
    // takes the descriptor's value in place of the pointer.
    check(Call::Share, unsafe {
        entry::cuMemImportFromShareableHandle(
            &mut h,
            fd as isize as *mut c_void,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        )
    })?;
    Ok(h)
}

/// `cuEventCreate(flags)`.
///
/// # Safety
/// See the module docs; a context is current (the event belongs to it).
pub unsafe fn event_create(flags: c_uint) -> CuResult<sys::CUevent> {
    let mut ev: sys::CUevent = core::ptr::null_mut();
    // SAFETY: `ev` is a valid out-pointer.
    check(Call::Record, unsafe {
        entry::cuEventCreate(&mut ev, flags)
    })?;
    Ok(ev)
}

/// `cuEventDestroy(event)`.
///
/// # Safety
/// See the module docs; `event` is live and never used again.
pub unsafe fn event_destroy(event: sys::CUevent) -> CuResult<()> {
    // SAFETY: the caller gives up the event.
    check(Call::Record, unsafe { entry::cuEventDestroy_v2(event) })
}

/// `cuEventRecord(event, stream)`.
///
/// # Safety
/// See the module docs; `event` and `stream` are live (null = legacy stream).
pub unsafe fn event_record(event: sys::CUevent, stream: sys::CUstream) -> CuResult<()> {
    // SAFETY: the caller guarantees both handles are live.
    check(Call::Record, unsafe { entry::cuEventRecord(event, stream) })
}

/// `cuEventQuery(event)`: `Ok(true)` when complete, `Ok(false)` on
/// `CUDA_ERROR_NOT_READY`, an error otherwise. Never blocks.
///
/// # Safety
/// See the module docs; `event` is live.
pub unsafe fn event_query(event: sys::CUevent) -> CuResult<bool> {
    // SAFETY: the caller guarantees the event is live.
    let code = unsafe { entry::cuEventQuery(event) };
    match code {
        0 => Ok(true),
        NOT_READY => Ok(false),
        _ => Err(error(Call::QueryFence, code)),
    }
}

/// `cuEventSynchronize(event)`: blocks until this one event has completed.
///
/// # Safety
/// See the module docs; `event` is live.
pub unsafe fn event_synchronize(event: sys::CUevent) -> CuResult<()> {
    // SAFETY: the caller guarantees the event is live.
    check(Call::Wait, unsafe { entry::cuEventSynchronize(event) })
}

/// `cuStreamCreate(flags)`.
///
/// # Safety
/// See the module docs; a context is current (the stream belongs to it).
pub unsafe fn stream_create(flags: c_uint) -> CuResult<sys::CUstream> {
    let mut s: sys::CUstream = core::ptr::null_mut();
    // SAFETY: `s` is a valid out-pointer.
    check(Call::Stream, unsafe {
        entry::cuStreamCreate(&mut s, flags)
    })?;
    Ok(s)
}

/// `cuStreamDestroy(stream)`.
///
/// # Safety
/// See the module docs; `stream` is a live stream made by [`stream_create`]
/// and never used again.
pub unsafe fn stream_destroy(stream: sys::CUstream) -> CuResult<()> {
    // SAFETY: the caller gives up the stream.
    check(Call::Stream, unsafe { entry::cuStreamDestroy_v2(stream) })
}

/// `cuMemcpyAsync(dst, src, len, stream)` (unified addressing).
///
/// # Safety
/// See the module docs; both ranges are valid for `len` bytes until the copy
/// completes in stream order, and do not overlap.
pub unsafe fn memcpy_async(
    dst: sys::CUdeviceptr,
    src: sys::CUdeviceptr,
    len: usize,
    stream: sys::CUstream,
) -> CuResult<()> {
    // SAFETY: the caller guarantees both ranges.
    check(Call::Copy, unsafe {
        entry::cuMemcpyAsync(dst, src, len, stream)
    })
}

/// `cuMemsetD8Async(dst, byte, len, stream)`.
///
/// # Safety
/// See the module docs; the range is writable by the stream's device until
/// the fill completes in stream order.
pub unsafe fn memset_d8_async(
    dst: sys::CUdeviceptr,
    byte: u8,
    len: usize,
    stream: sys::CUstream,
) -> CuResult<()> {
    // SAFETY: the caller guarantees the range.
    check(Call::Copy, unsafe {
        entry::cuMemsetD8Async(dst, byte, len, stream)
    })
}

/// `cuModuleLoadData(image)` for a NUL-terminated PTX image (JIT-compiled by
/// the driver for the current device).
///
/// # Safety
/// See the module docs; a context is current (the module belongs to it).
pub unsafe fn module_load_data(image: &CStr) -> CuResult<sys::CUmodule> {
    let mut m: sys::CUmodule = core::ptr::null_mut();
    // SAFETY: `m` is a valid out-pointer and the image is NUL-terminated.
    check(Call::Kernel, unsafe {
        entry::cuModuleLoadData(&mut m, image.as_ptr().cast::<c_void>())
    })?;
    Ok(m)
}

/// `cuModuleUnload(module)`.
///
/// # Safety
/// See the module docs; no function of the module is used afterwards.
pub unsafe fn module_unload(module: sys::CUmodule) -> CuResult<()> {
    // SAFETY: the caller gives up the module.
    check(Call::Kernel, unsafe { entry::cuModuleUnload(module) })
}

/// `cuModuleGetFunction(module, name)`.
///
/// # Safety
/// See the module docs; `module` is live.
pub unsafe fn module_get_function(module: sys::CUmodule, name: &CStr) -> CuResult<sys::CUfunction> {
    let mut f: sys::CUfunction = core::ptr::null_mut();
    // SAFETY: `f` is a valid out-pointer and `name` is NUL-terminated.
    check(Call::Kernel, unsafe {
        entry::cuModuleGetFunction(&mut f, module, name.as_ptr())
    })?;
    Ok(f)
}

/// `cuLaunchKernel(f, grid, block, 0 shared bytes, stream, params, null)`.
///
/// # Safety
/// See the module docs; `params` holds one pointer per kernel parameter, in
/// order, each to a value of that parameter's type; every memory address
/// the kernel touches stays valid until it completes in stream order.
pub unsafe fn launch_kernel(
    f: sys::CUfunction,
    grid: u32,
    block: u32,
    stream: sys::CUstream,
    params: &mut [*mut c_void],
) -> CuResult<()> {
    // SAFETY: the caller guarantees `params` matches the kernel's signature.
    check(Call::Kernel, unsafe {
        entry::cuLaunchKernel(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            core::ptr::null_mut(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn codes_map_to_kinds_and_names() {
        let e = error(Call::Create, 2);
        assert_eq!(e.kind, ErrorKind::OutOfMemory);
        assert_eq!(e.backend, Backend::Cuda);
        let s = e.to_string();
        assert!(s.contains("cuMemCreate"), "{s}");
        assert!(s.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{s}");
        assert_eq!(error(Call::Map, 801).kind, ErrorKind::NotSupported);
        assert_eq!(error(Call::Unmap, 1).kind, ErrorKind::InvalidValue);
        assert_eq!(error(Call::Create, 101).kind, ErrorKind::InvalidValue);
        assert_eq!(error(Call::Init, 100).kind, ErrorKind::NoDevice);
        assert_eq!(error(Call::Init, 34).kind, ErrorKind::NoDevice);
        assert_eq!(error(Call::QueryFence, 700).kind, ErrorKind::Other);
    }

    #[test]
    fn probe_never_panics() {
        // On a machine without libcuda this must say so, not panic.
        match probe() {
            Ok(()) | Err(ProbeError::NoLibrary) | Err(ProbeError::MissingSymbol(_)) => {}
        }
    }
}
