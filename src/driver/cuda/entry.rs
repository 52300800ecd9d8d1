//! The driver's entry points this backend calls, each declared with its
//! result as the plain `int` the C API returns.
//!
//! cudarc's declarations (`super::sys`) return `CUresult`, a Rust enum of
//! the codes of the CUDA version its bindings were made for (12.8 here).
//! A newer driver returns codes that enum lacks (CUDA 13 added, among
//! others, `CUDA_ERROR_STREAM_DETACHED`, 917), and an enum holding a value
//! none of its variants has is undefined behaviour before any code reads
//! it. Declared here with an `int` result, every code the driver returns is
//! a plain value that [`super::result`] turns into an error (found by a
//! review, 2026-11-30). Arguments keep cudarc's types: the values passed
//! are built from its declared variants.
//!
//! Each entry point is looked up once, on its first call, as cudarc does.

use core::ffi::{c_char, c_int, c_uchar, c_uint, c_ulonglong, c_void};
use std::sync::OnceLock;

use super::sys::{
    CUcontext, CUdevice, CUdevice_attribute, CUdeviceptr, CUevent, CUfunction, CUmemAccessDesc,
    CUmemAllocationGranularity_flags, CUmemAllocationHandleType, CUmemAllocationProp,
    CUmemGenericAllocationHandle, CUmemLocation, CUmodule, CUstream, CUstreamCaptureMode,
};

/// The entry point `name` (NUL-terminated) of the loaded driver library.
///
/// # Safety
/// `F` is the entry point's C signature; [`super::result::probe`] passed in
/// this process (the library is loaded and exports `name`).
unsafe fn load<F: Copy>(name: &'static str) -> F {
    // SAFETY: the probe passed, so `culib()` finds the library (no panic).
    let lib = unsafe { super::sys::culib() };
    // SAFETY: the caller guarantees that `F` is the symbol's signature.
    match unsafe { lib.get::<F>(name.as_bytes()) } {
        Ok(f) => *f,
        // The probe found every entry point of this module.
        Err(_) => panic!("gpu-arena: the CUDA driver lost the entry point {name} the probe found"),
    }
}

/// One function per entry point: the name, the parameters and types of the
/// C declaration (as cudarc declares them), the result as `int`.
macro_rules! entry_points {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        #[doc = concat!("`", stringify!($name), "`, returning the raw code.")]
        ///
        /// # Safety
        /// The entry point's own preconditions hold, and
        /// [`super::result::probe`] passed in this process.
        #[allow(non_snake_case, clippy::too_many_arguments)]
        pub unsafe fn $name($($arg: $ty),*) -> c_int {
            type F = unsafe extern "C" fn($($ty),*) -> c_int;
            static ENTRY: OnceLock<F> = OnceLock::new();
            // SAFETY: `F` is the entry point's C signature (cudarc's
            // declaration, its `CUresult` read as the `int` it is); the
            // caller guarantees that the probe passed.
            let f = *ENTRY.get_or_init(|| unsafe { load::<F>(concat!(stringify!($name), "\0")) });
            // SAFETY: the caller guarantees the entry point's preconditions.
            unsafe { f($($arg),*) }
        }
    )*
        /// The names of this module's entry points ([`super::result::probe`]
        /// finds each before any is called).
        pub const NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

entry_points! {
    cuCtxGetCurrent(pctx: *mut CUcontext);
    cuCtxPopCurrent_v2(pctx: *mut CUcontext);
    cuCtxPushCurrent_v2(ctx: CUcontext);
    cuCtxSetCurrent(ctx: CUcontext);
    cuDeviceGet(device: *mut CUdevice, ordinal: c_int);
    cuDeviceGetAttribute(pi: *mut c_int, attrib: CUdevice_attribute, dev: CUdevice);
    cuDeviceGetCount(count: *mut c_int);
    cuDevicePrimaryCtxRelease_v2(dev: CUdevice);
    cuDevicePrimaryCtxRetain(pctx: *mut CUcontext, dev: CUdevice);
    cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice);
    cuDriverGetVersion(driver_version: *mut c_int);
    cuEventCreate(ph_event: *mut CUevent, flags: c_uint);
    cuEventDestroy_v2(h_event: CUevent);
    cuEventQuery(h_event: CUevent);
    cuEventRecord(h_event: CUevent, h_stream: CUstream);
    cuEventSynchronize(h_event: CUevent);
    cuInit(flags: c_uint);
    cuLaunchKernel(f: CUfunction, grid_dim_x: c_uint, grid_dim_y: c_uint, grid_dim_z: c_uint, block_dim_x: c_uint, block_dim_y: c_uint, block_dim_z: c_uint, shared_mem_bytes: c_uint, h_stream: CUstream, kernel_params: *mut *mut c_void, extra: *mut *mut c_void);
    cuMemAddressFree(ptr: CUdeviceptr, size: usize);
    cuMemAddressReserve(ptr: *mut CUdeviceptr, size: usize, alignment: usize, addr: CUdeviceptr, flags: c_ulonglong);
    cuMemCreate(handle: *mut CUmemGenericAllocationHandle, size: usize, prop: *const CUmemAllocationProp, flags: c_ulonglong);
    cuMemExportToShareableHandle(shareable_handle: *mut c_void, handle: CUmemGenericAllocationHandle, handle_type: CUmemAllocationHandleType, flags: c_ulonglong);
    cuMemGetAccess(flags: *mut c_ulonglong, location: *const CUmemLocation, ptr: CUdeviceptr);
    cuMemGetAllocationGranularity(granularity: *mut usize, prop: *const CUmemAllocationProp, option: CUmemAllocationGranularity_flags);
    cuMemImportFromShareableHandle(handle: *mut CUmemGenericAllocationHandle, os_handle: *mut c_void, sh_handle_type: CUmemAllocationHandleType);
    cuMemMap(ptr: CUdeviceptr, size: usize, offset: usize, handle: CUmemGenericAllocationHandle, flags: c_ulonglong);
    cuMemRelease(handle: CUmemGenericAllocationHandle);
    cuMemSetAccess(ptr: CUdeviceptr, size: usize, desc: *const CUmemAccessDesc, count: usize);
    cuMemUnmap(ptr: CUdeviceptr, size: usize);
    cuMemcpyAsync(dst: CUdeviceptr, src: CUdeviceptr, byte_count: usize, h_stream: CUstream);
    cuMemsetD8Async(dst_device: CUdeviceptr, uc: c_uchar, n: usize, h_stream: CUstream);
    cuModuleGetFunction(hfunc: *mut CUfunction, hmod: CUmodule, name: *const c_char);
    cuModuleLoadData(module: *mut CUmodule, image: *const c_void);
    cuModuleUnload(hmod: CUmodule);
    cuStreamCreate(ph_stream: *mut CUstream, flags: c_uint);
    cuStreamDestroy_v2(h_stream: CUstream);
    cuThreadExchangeStreamCaptureMode(mode: *mut CUstreamCaptureMode);
}
