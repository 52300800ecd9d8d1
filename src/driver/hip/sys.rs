//! Raw declarations of the HIP runtime entry points the HIP backend uses.
//!
//! This module only declares. Every function returns the raw `hipError_t` as
//! a plain `i32`: `hip_sys::hiprt::hipError_t` is a Rust enum, and a code the
//! enum lacks (a newer ROCm adds codes) would be undefined behaviour. For the
//! same reason enum-typed parameters and struct fields are plain integers
//! here, with the values we use as constants.
//!
//! `hip-sys` still matters: its build script finds `libamdhip64` (under
//! `HIP_PATH`, `ROCM_PATH` or `/opt/rocm`) and adds it to the link line; the
//! `#[link]` below names the library for our own declarations.
//!
//! # ROCm versions (read from the headers; summarized in [`super`])
//!
//! - `hipMemAllocationProp` changed layout in ROCm 5.3. ROCm 5.2 (Debian's
//!   `libamdhip64-dev` 5.2.3, the one installed here) declares
//!   `{ u8 compressionType; hipMemLocation location; handleType; type;
//!   u16 usage; void* win32HandleMetaData }`; ROCm 5.3 and later (and
//!   `hip-sys` 0.1.2's bindings) declare the CUDA-compatible
//!   `{ type; requestedHandleType; hipMemLocation location; void*
//!   win32HandleMetaData; { u8 compressionType; u8 gpuDirectRDMACapable; u16
//!   usage } allocFlags }`. Both are 32 bytes, so a mismatch is silent: the
//!   backend refuses runtimes older than [`MIN_RUNTIME_VERSION`] at run time.
//! - `hipDeviceAttributeVirtualMemoryManagementSupported` does not exist in
//!   ROCm 5.2 (its enum ends at `hipDeviceAttributeMemoryPoolsSupported` =
//!   88); ROCm 5.5 through 7.x (and `hip-sys` 0.1.2) give it the value 89.
//! - `hipMemLocationTypeHost` (2) only exists in recent ROCm (6.x/7.x
//!   headers); ROCm 5.x knows only `hipMemLocationTypeDevice` (1). Host
//!   support is therefore probed, never assumed.
//! - `hipErrorMemoryAllocation` is an alias of `hipErrorOutOfMemory` (2).
//! - `hipInit` with no AMD GPU (no `/dev/kfd`) returns
//!   `hipErrorInvalidDevice` (101) on ROCm 5.2, and `hipGetDeviceCount`
//!   returns `hipErrorNoDevice` (100); nothing is printed.
#![allow(non_camel_case_types, non_snake_case)]

use core::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void};
use core::mem::{offset_of, size_of};

/// A raw `hipError_t`.
pub type hipError = i32;
/// `hipStream_t` (an opaque pointer).
pub type hipStream_t = *mut c_void;
/// `hipEvent_t` (an opaque pointer).
pub type hipEvent_t = *mut c_void;
/// `hipMemGenericAllocationHandle_t` (`*mut ihipMemGenericAllocationHandle`).
pub type hipMemGenericAllocationHandle_t = *mut c_void;

/// `hipSuccess`.
pub const HIP_SUCCESS: hipError = 0;
/// `hipErrorInvalidValue`.
pub const HIP_ERROR_INVALID_VALUE: hipError = 1;
/// `hipErrorOutOfMemory`, also spelled `hipErrorMemoryAllocation`.
pub const HIP_ERROR_OUT_OF_MEMORY: hipError = 2;
/// `hipErrorNotInitialized`.
pub const HIP_ERROR_NOT_INITIALIZED: hipError = 3;
/// `hipErrorInsufficientDriver`.
pub const HIP_ERROR_INSUFFICIENT_DRIVER: hipError = 35;
/// `hipErrorNoDevice`.
pub const HIP_ERROR_NO_DEVICE: hipError = 100;
/// `hipErrorInvalidDevice` (what `hipInit` returns on ROCm 5.2 without a GPU).
pub const HIP_ERROR_INVALID_DEVICE: hipError = 101;
/// `hipErrorNotReady`: an event query whose work has not completed.
pub const HIP_ERROR_NOT_READY: hipError = 600;

/// `hipDeviceAttributeVirtualMemoryManagementSupported` in ROCm ≥ 5.5 (absent in 5.2).
pub const HIP_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: c_int = 89;

/// `HIP_VERSION` of ROCm 5.3.0 (`major * 10_000_000 + minor * 100_000 + patch`):
/// the first runtime with the CUDA-compatible `hipMemAllocationProp` layout.
pub const MIN_RUNTIME_VERSION: c_int = 50_300_000;

/// `hipMemAllocationTypePinned`.
pub const HIP_MEM_ALLOCATION_TYPE_PINNED: u32 = 1;
/// `hipMemHandleTypeNone`.
pub const HIP_MEM_HANDLE_TYPE_NONE: u32 = 0;
/// `hipMemHandleTypePosixFileDescriptor`: exportable as a file descriptor.
pub const HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR: u32 = 1;
/// `hipMemLocationTypeDevice`.
pub const HIP_MEM_LOCATION_TYPE_DEVICE: u32 = 1;
/// `hipMemLocationTypeHost` (recent ROCm only).
pub const HIP_MEM_LOCATION_TYPE_HOST: u32 = 2;
/// `hipMemAccessFlagsProtNone`.
pub const HIP_MEM_ACCESS_FLAGS_PROT_NONE: u32 = 0;
/// `hipMemAccessFlagsProtRead`.
pub const HIP_MEM_ACCESS_FLAGS_PROT_READ: u32 = 1;
/// `hipMemAccessFlagsProtReadWrite`.
pub const HIP_MEM_ACCESS_FLAGS_PROT_READ_WRITE: u32 = 3;
/// `hipMemAllocationGranularityMinimum`.
pub const HIP_MEM_ALLOCATION_GRANULARITY_MINIMUM: c_int = 0;
/// `hipMemAllocationGranularityRecommended`.
pub const HIP_MEM_ALLOCATION_GRANULARITY_RECOMMENDED: c_int = 1;
/// `hipMemcpyDefault`: direction inferred from the unified address space.
pub const HIP_MEMCPY_DEFAULT: c_int = 4;
/// `hipStreamNonBlocking`.
pub const HIP_STREAM_NON_BLOCKING: c_uint = 1;
/// `hipEventDisableTiming`.
pub const HIP_EVENT_DISABLE_TIMING: c_uint = 2;

/// `hipMemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hipMemLocation {
    /// `hipMemLocationType` (`HIP_MEM_LOCATION_TYPE_*`).
    pub type_: u32,
    /// Device ordinal (ignored for the host).
    pub id: c_int,
}

/// `hipMemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hipMemAccessDesc {
    /// Who gets the rights.
    pub location: hipMemLocation,
    /// `hipMemAccessFlags` (`HIP_MEM_ACCESS_FLAGS_*`).
    pub flags: u32,
}

/// The anonymous `allocFlags` struct of `hipMemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct hipMemAllocFlags {
    /// Compression type (0: none).
    pub compressionType: u8,
    /// GPUDirect RDMA capable (0: no).
    pub gpuDirectRDMACapable: u8,
    /// Usage (0).
    pub usage: u16,
}

/// `hipMemAllocationProp`, ROCm ≥ 5.3 (CUDA-compatible) layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct hipMemAllocationProp {
    /// `hipMemAllocationType` (`HIP_MEM_ALLOCATION_TYPE_PINNED`).
    pub type_: u32,
    /// `hipMemAllocationHandleType` (`HIP_MEM_HANDLE_TYPE_*`).
    pub requestedHandleType: u32,
    /// Where the memory lives.
    pub location: hipMemLocation,
    /// Windows only; null.
    pub win32HandleMetaData: *mut c_void,
    /// Allocation flags (all zero).
    pub allocFlags: hipMemAllocFlags,
}

// Layouts, checked against the C headers (ROCm ≥ 5.3) and against hip-sys's
// bindgen output for the same structs.
const _: () = {
    assert!(size_of::<hipMemLocation>() == 8);
    assert!(size_of::<hipMemAccessDesc>() == 12);
    assert!(offset_of!(hipMemAccessDesc, flags) == 8);
    assert!(size_of::<hipMemAllocationProp>() == 32);
    assert!(offset_of!(hipMemAllocationProp, requestedHandleType) == 4);
    assert!(offset_of!(hipMemAllocationProp, location) == 8);
    assert!(offset_of!(hipMemAllocationProp, win32HandleMetaData) == 16);
    assert!(offset_of!(hipMemAllocationProp, allocFlags) == 24);

    use hip_sys::hiprt as b;
    assert!(size_of::<hipMemLocation>() == size_of::<b::hipMemLocation>());
    assert!(size_of::<hipMemAccessDesc>() == size_of::<b::hipMemAccessDesc>());
    assert!(offset_of!(hipMemAccessDesc, flags) == offset_of!(b::hipMemAccessDesc, flags));
    assert!(size_of::<hipMemAllocationProp>() == size_of::<b::hipMemAllocationProp>());
    assert!(
        offset_of!(hipMemAllocationProp, location) == offset_of!(b::hipMemAllocationProp, location)
    );
    assert!(
        offset_of!(hipMemAllocationProp, win32HandleMetaData)
            == offset_of!(b::hipMemAllocationProp, win32HandleMetaData)
    );
    assert!(
        offset_of!(hipMemAllocationProp, allocFlags)
            == offset_of!(b::hipMemAllocationProp, allocFlags)
    );
    assert!(
        size_of::<hipMemGenericAllocationHandle_t>()
            == size_of::<b::hipMemGenericAllocationHandle_t>()
    );
    assert!(
        HIP_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
            == b::hipDeviceAttribute_t::hipDeviceAttributeVirtualMemoryManagementSupported as c_int
    );
};

#[link(name = "amdhip64")]
unsafe extern "C" {
    /// `hipError_t hipInit(unsigned int flags)`.
    pub fn hipInit(flags: c_uint) -> hipError;
    /// `hipError_t hipRuntimeGetVersion(int* runtimeVersion)`.
    pub fn hipRuntimeGetVersion(version: *mut c_int) -> hipError;
    /// `hipError_t hipGetDeviceCount(int* count)`.
    pub fn hipGetDeviceCount(count: *mut c_int) -> hipError;
    /// `hipError_t hipSetDevice(int deviceId)`.
    pub fn hipSetDevice(device: c_int) -> hipError;
    /// `hipError_t hipDeviceGetAttribute(int* pi, hipDeviceAttribute_t attr, int deviceId)`.
    pub fn hipDeviceGetAttribute(value: *mut c_int, attr: c_int, device: c_int) -> hipError;
    /// `hipError_t hipDeviceTotalMem(size_t* bytes, hipDevice_t device)`.
    pub fn hipDeviceTotalMem(bytes: *mut usize, device: c_int) -> hipError;

    /// `hipError_t hipMemGetAllocationGranularity(size_t*, const hipMemAllocationProp*, hipMemAllocationGranularity_flags)`.
    pub fn hipMemGetAllocationGranularity(
        granularity: *mut usize,
        prop: *const hipMemAllocationProp,
        option: c_int,
    ) -> hipError;
    /// `hipError_t hipMemAddressReserve(void** ptr, size_t size, size_t alignment, void* addr, unsigned long long flags)`.
    pub fn hipMemAddressReserve(
        ptr: *mut *mut c_void,
        size: usize,
        alignment: usize,
        addr: *mut c_void,
        flags: c_ulonglong,
    ) -> hipError;
    /// `hipError_t hipMemAddressFree(void* devPtr, size_t size)`.
    pub fn hipMemAddressFree(ptr: *mut c_void, size: usize) -> hipError;
    /// `hipError_t hipMemCreate(hipMemGenericAllocationHandle_t*, size_t, const hipMemAllocationProp*, unsigned long long)`.
    pub fn hipMemCreate(
        handle: *mut hipMemGenericAllocationHandle_t,
        size: usize,
        prop: *const hipMemAllocationProp,
        flags: c_ulonglong,
    ) -> hipError;
    /// `hipError_t hipMemRelease(hipMemGenericAllocationHandle_t)`.
    pub fn hipMemRelease(handle: hipMemGenericAllocationHandle_t) -> hipError;
    /// `hipError_t hipMemMap(void* ptr, size_t size, size_t offset, hipMemGenericAllocationHandle_t, unsigned long long flags)`.
    pub fn hipMemMap(
        ptr: *mut c_void,
        size: usize,
        offset: usize,
        handle: hipMemGenericAllocationHandle_t,
        flags: c_ulonglong,
    ) -> hipError;
    /// `hipError_t hipMemUnmap(void* ptr, size_t size)`.
    pub fn hipMemUnmap(ptr: *mut c_void, size: usize) -> hipError;
    /// `hipError_t hipMemSetAccess(void* ptr, size_t size, const hipMemAccessDesc* desc, size_t count)`.
    pub fn hipMemSetAccess(
        ptr: *mut c_void,
        size: usize,
        desc: *const hipMemAccessDesc,
        count: usize,
    ) -> hipError;
    /// `hipError_t hipMemExportToShareableHandle(void* shareableHandle, hipMemGenericAllocationHandle_t, hipMemAllocationHandleType, unsigned long long flags)`.
    pub fn hipMemExportToShareableHandle(
        shareable: *mut c_void,
        handle: hipMemGenericAllocationHandle_t,
        handle_type: u32,
        flags: c_ulonglong,
    ) -> hipError;
    /// `hipError_t hipMemImportFromShareableHandle(hipMemGenericAllocationHandle_t*, void* osHandle, hipMemAllocationHandleType)`.
    pub fn hipMemImportFromShareableHandle(
        handle: *mut hipMemGenericAllocationHandle_t,
        os_handle: *mut c_void,
        handle_type: u32,
    ) -> hipError;
    /// `hipError_t hipMemGetAccess(unsigned long long* flags, const hipMemLocation* location, void* ptr)`.
    pub fn hipMemGetAccess(
        flags: *mut c_ulonglong,
        location: *const hipMemLocation,
        ptr: *mut c_void,
    ) -> hipError;

    /// `hipError_t hipEventCreateWithFlags(hipEvent_t* event, unsigned flags)`.
    pub fn hipEventCreateWithFlags(event: *mut hipEvent_t, flags: c_uint) -> hipError;
    /// `hipError_t hipEventRecord(hipEvent_t event, hipStream_t stream)`.
    pub fn hipEventRecord(event: hipEvent_t, stream: hipStream_t) -> hipError;
    /// `hipError_t hipEventQuery(hipEvent_t event)`.
    pub fn hipEventQuery(event: hipEvent_t) -> hipError;
    /// `hipError_t hipEventSynchronize(hipEvent_t event)`.
    pub fn hipEventSynchronize(event: hipEvent_t) -> hipError;
    /// `hipError_t hipEventDestroy(hipEvent_t event)`.
    pub fn hipEventDestroy(event: hipEvent_t) -> hipError;
    /// `hipError_t hipStreamCreateWithFlags(hipStream_t* stream, unsigned int flags)`.
    pub fn hipStreamCreateWithFlags(stream: *mut hipStream_t, flags: c_uint) -> hipError;
    /// `hipError_t hipStreamDestroy(hipStream_t stream)`.
    pub fn hipStreamDestroy(stream: hipStream_t) -> hipError;

    /// `hipError_t hipMemcpy(void* dst, const void* src, size_t sizeBytes, hipMemcpyKind kind)`.
    pub fn hipMemcpy(dst: *mut c_void, src: *const c_void, size: usize, kind: c_int) -> hipError;
    /// `hipError_t hipMemcpyAsync(void* dst, const void* src, size_t sizeBytes, hipMemcpyKind kind, hipStream_t stream)`.
    pub fn hipMemcpyAsync(
        dst: *mut c_void,
        src: *const c_void,
        size: usize,
        kind: c_int,
        stream: hipStream_t,
    ) -> hipError;
    /// `const char* hipGetErrorName(hipError_t hip_error)`: the code's
    /// symbolic name, in the runtime's static storage.
    pub fn hipGetErrorName(error: hipError) -> *const c_char;
    /// `const char* hipGetErrorString(hipError_t hipError)`: a description
    /// of the code, in the runtime's static storage.
    pub fn hipGetErrorString(error: hipError) -> *const c_char;
    /// `hipError_t hipMemsetAsync(void* dst, int value, size_t sizeBytes, hipStream_t stream)`.
    pub fn hipMemsetAsync(
        dst: *mut c_void,
        value: c_int,
        size: usize,
        stream: hipStream_t,
    ) -> hipError;
}
