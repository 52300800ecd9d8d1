//! HIP's C types and constants, transcribed from ROCm 6.3's
//! `hip/hip_runtime_api.h` (ROCm/HIP at c5e11fc, with ROCm/clr's
//! `hip/amd_detail` headers).
//!
//! Deliberately not taken from gpu-arena or hip-sys: this library exists to
//! hold the HIP backend's own declarations against an independent copy of
//! the ABI. The layouts below were checked by compiling that header with
//! gcc (`sizeof`/`offsetof` of each struct, the value of each enumerator);
//! the `const` block at the end repeats those numbers.
#![allow(non_camel_case_types, non_upper_case_globals, dead_code)]

use core::ffi::{c_int, c_uint, c_void};
use core::mem::{offset_of, size_of};

/// `hipError_t` (a C enum, `int`-sized).
pub type hipError_t = c_int;

pub const hipSuccess: hipError_t = 0;
pub const hipErrorInvalidValue: hipError_t = 1;
/// Also spelled `hipErrorMemoryAllocation`.
pub const hipErrorOutOfMemory: hipError_t = 2;
pub const hipErrorNotInitialized: hipError_t = 3;
pub const hipErrorDeinitialized: hipError_t = 4;
pub const hipErrorInvalidMemcpyDirection: hipError_t = 21;
pub const hipErrorInsufficientDriver: hipError_t = 35;
pub const hipErrorNoDevice: hipError_t = 100;
pub const hipErrorInvalidDevice: hipError_t = 101;
pub const hipErrorInvalidContext: hipError_t = 201;
pub const hipErrorInvalidHandle: hipError_t = 400;
pub const hipErrorNotFound: hipError_t = 500;
pub const hipErrorNotReady: hipError_t = 600;
pub const hipErrorIllegalAddress: hipError_t = 700;
pub const hipErrorNotPermitted: hipError_t = 800;
pub const hipErrorNotSupported: hipError_t = 801;
pub const hipErrorUnknown: hipError_t = 999;

/// `HIP_VERSION` this library reports from `hipRuntimeGetVersion`: the
/// release whose header the declarations here follow (6.3.0).
pub const HIP_VERSION: c_int = 60_300_000;

/// `hipDeviceAttributeVirtualMemoryManagementSupported` in ROCm 6.3.
pub const hipDeviceAttributeVirtualMemoryManagementSupported: c_int = 89;

/// `hipMemAllocationType`.
pub const hipMemAllocationTypeInvalid: u32 = 0;
pub const hipMemAllocationTypePinned: u32 = 1;

/// `hipMemAllocationHandleType`.
pub const hipMemHandleTypeNone: u32 = 0;
pub const hipMemHandleTypePosixFileDescriptor: u32 = 1;

/// `hipMemLocationType` (`Host` and the NUMA kinds in recent ROCm).
pub const hipMemLocationTypeInvalid: u32 = 0;
pub const hipMemLocationTypeDevice: u32 = 1;
pub const hipMemLocationTypeHost: u32 = 2;

/// `hipMemAccessFlags`.
pub const hipMemAccessFlagsProtNone: u32 = 0;
pub const hipMemAccessFlagsProtRead: u32 = 1;
pub const hipMemAccessFlagsProtReadWrite: u32 = 3;

/// `hipMemAllocationGranularity_flags`.
pub const hipMemAllocationGranularityMinimum: c_int = 0;
pub const hipMemAllocationGranularityRecommended: c_int = 1;

/// `hipMemcpyKind`: `hipMemcpyHostToHost` (0) through `hipMemcpyDefault` (4).
pub const hipMemcpyDefault: c_int = 4;

/// `hipStreamCreateWithFlags` flags.
pub const hipStreamDefault: c_uint = 0;
pub const hipStreamNonBlocking: c_uint = 1;

/// `hipEventCreateWithFlags` flags.
pub const hipEventDefault: c_uint = 0;
pub const hipEventBlockingSync: c_uint = 1;
pub const hipEventDisableTiming: c_uint = 2;
pub const hipEventInterprocess: c_uint = 4;

/// `hipMemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hipMemLocation {
    /// `hipMemLocationType`.
    pub type_: u32,
    /// Device ordinal (or NUMA node).
    pub id: c_int,
}

/// `hipMemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hipMemAccessDesc {
    pub location: hipMemLocation,
    /// `hipMemAccessFlags`.
    pub flags: u32,
}

/// The anonymous `allocFlags` struct of `hipMemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hipMemAllocFlags {
    pub compressionType: u8,
    pub gpuDirectRDMACapable: u8,
    pub usage: u16,
}

/// `hipMemAllocationProp` (the CUDA-compatible order of ROCm 5.3 and later).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct hipMemAllocationProp {
    /// `hipMemAllocationType`.
    pub type_: u32,
    /// `hipMemAllocationHandleType`.
    pub requestedHandleType: u32,
    pub location: hipMemLocation,
    pub win32HandleMetaData: *mut c_void,
    pub allocFlags: hipMemAllocFlags,
}

/// `hipMemGenericAllocationHandle_t`: a pointer to the runtime's object.
pub type hipMemGenericAllocationHandle_t = *mut c_void;
/// `hipStream_t`.
pub type hipStream_t = *mut c_void;
/// `hipEvent_t`.
pub type hipEvent_t = *mut c_void;

// gcc on ROCm 6.3's header: sizeof(hipMemAllocationProp) 32, type@0,
// requestedHandleType@4, location@8, win32HandleMetaData@16, allocFlags@24;
// sizeof(hipMemAccessDesc) 12, flags@8; sizeof(hipMemLocation) 8.
const _: () = {
    assert!(size_of::<hipMemLocation>() == 8);
    assert!(size_of::<hipMemAccessDesc>() == 12);
    assert!(offset_of!(hipMemAccessDesc, flags) == 8);
    assert!(size_of::<hipMemAllocationProp>() == 32);
    assert!(offset_of!(hipMemAllocationProp, requestedHandleType) == 4);
    assert!(offset_of!(hipMemAllocationProp, location) == 8);
    assert!(offset_of!(hipMemAllocationProp, win32HandleMetaData) == 16);
    assert!(offset_of!(hipMemAllocationProp, allocFlags) == 24);
};

/// `hipGetErrorName` of `code`.
pub const fn error_name(code: hipError_t) -> &'static core::ffi::CStr {
    match code {
        hipSuccess => c"hipSuccess",
        hipErrorInvalidValue => c"hipErrorInvalidValue",
        hipErrorOutOfMemory => c"hipErrorOutOfMemory",
        hipErrorNotInitialized => c"hipErrorNotInitialized",
        hipErrorDeinitialized => c"hipErrorDeinitialized",
        hipErrorInvalidMemcpyDirection => c"hipErrorInvalidMemcpyDirection",
        hipErrorInsufficientDriver => c"hipErrorInsufficientDriver",
        hipErrorNoDevice => c"hipErrorNoDevice",
        hipErrorInvalidDevice => c"hipErrorInvalidDevice",
        hipErrorInvalidContext => c"hipErrorInvalidContext",
        hipErrorInvalidHandle => c"hipErrorInvalidHandle",
        hipErrorNotFound => c"hipErrorNotFound",
        hipErrorNotReady => c"hipErrorNotReady",
        hipErrorIllegalAddress => c"hipErrorIllegalAddress",
        hipErrorNotPermitted => c"hipErrorNotPermitted",
        hipErrorNotSupported => c"hipErrorNotSupported",
        hipErrorUnknown => c"hipErrorUnknown",
        _ => c"hipErrorUnknown",
    }
}

/// `hipGetErrorString` of `code`.
pub const fn error_string(code: hipError_t) -> &'static core::ffi::CStr {
    match code {
        hipSuccess => c"no error",
        hipErrorInvalidValue => c"invalid argument",
        hipErrorOutOfMemory => c"out of memory",
        hipErrorNotInitialized => c"initialization error",
        hipErrorDeinitialized => c"driver shutting down",
        hipErrorInvalidMemcpyDirection => c"invalid copy direction for memcpy",
        hipErrorInsufficientDriver => c"driver version is insufficient for runtime version",
        hipErrorNoDevice => c"no ROCm-capable device is detected",
        hipErrorInvalidDevice => c"invalid device ordinal",
        hipErrorInvalidContext => c"invalid device context",
        hipErrorInvalidHandle => c"invalid resource handle",
        hipErrorNotFound => c"named symbol not found",
        hipErrorNotReady => c"device not ready",
        hipErrorIllegalAddress => c"an illegal memory access was encountered",
        hipErrorNotPermitted => c"operation not permitted",
        hipErrorNotSupported => c"operation not supported",
        _ => c"unknown error",
    }
}
