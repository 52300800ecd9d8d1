//! A stand-in `libamdhip64`: the HIP runtime entry points that gpu-arena's
//! HIP backend calls, so that the backend can run where no AMD GPU is.
//!
//! Test support only; never shipped. The HIP backend's binaries need
//! `libamdhip64.so.5` (the soname they were linked against, Debian's ROCm
//! 5); with this library's directory first on `LD_LIBRARY_PATH`, the
//! dynamic loader takes it instead of ROCm's. `build.sh` builds this crate
//! as a static library and links it into that file, with the symbol
//! versions ROCm gives them (`hip.map`: `hipInit@hip_4.2`,
//! `hipMemCreate@hip_5.1`, ...) and nothing else exported.
//!
//! # Two modes, chosen by `GPU_ARENA_HIP_SHIM` at the first call
//!
//! - `host` (the default): the memory behind the calls is gpu-arena's own
//!   host backend (memfd + mmap, [`gpu_arena::driver::HostDriver`]), so the
//!   rules are those of `src/driver/host.rs` and `src/driver/rules.rs` (one
//!   source of truth). CI runs the HIP backend's tests this way.
//! - `cuda`: every call is forwarded to the CUDA driver API (`libcuda`,
//!   loaded at run time), translating structures, enumerations and error
//!   codes: the HIP backend then drives a real NVIDIA GPU.
//!
//! # What is HIP's here and what is not
//!
//! The ABI is HIP's: structures, enumerations and codes are this crate's
//! own transcription of ROCm 6.3's header ([`abi`]), not the backend's, so a
//! layout or constant the backend got wrong shows up as a refused call.
//! Handles are pointers to objects this library allocates (as ROCm's are),
//! so a handle value can be reused after its release, as on ROCm. The
//! argument checks in front of each call follow ROCm's own implementation
//! (`hipamd/src/hip_vm.cpp` in ROCm/clr) where it differs from CUDA:
//!
//! - `hipMemCreate` and `hipMemGetAllocationGranularity` want
//!   `hipMemAllocationTypePinned`, a device or host location, flags 0;
//! - `hipMemMap` refuses a nonzero offset or flags with `hipErrorInvalidValue`;
//! - `hipMemUnmap` and `hipMemSetAccess` take a range that starts at a
//!   mapping and covers whole, adjacent mappings (no holes); after one
//!   `hipMemUnmap` of several mappings, `hipMemAddressFree` of their
//!   reservation fails (ROCR-Runtime#285);
//! - `hipMemSetAccess` refuses a host accessor on device memory;
//! - `hipMemGetAccess` only answers for device locations (a host location
//!   is `hipErrorInvalidValue`);
//! - releasing a mapped handle is allowed: the mapping keeps the memory
//!   until it is unmapped (ROCm counts references).
//!
//! What no stand-in shows is AMD's driver itself: its granularities, its
//! timings, its defects. `docs/conformance.md` lists those and what the
//! backend does about each.
//!
//! # Test hooks
//!
//! A few symbols outside HIP's API, which tests find with `dlsym` (a real
//! ROCm has none of them, so the same tests run there without them):
//! [`hipShimDescribe`], [`hipShimHoldStream`] / [`hipShimCompleteStream`]
//! (host mode: keep a stream's work pending, as a long kernel would) and
//! [`hipShimFailNext`] (make the calling thread's next calls of one entry
//! point fail with a chosen code, as ROCm's intermittent failures do).
#![allow(non_snake_case, non_upper_case_globals, clippy::missing_safety_doc)]

mod abi;
mod cuda;
mod host;

use core::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong, c_void};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, OnceLock};

use abi::*;

/// A failure: the HIP code to return.
pub(crate) type R<T> = Result<T, hipError_t>;

/// Where memory lives, or who accesses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A device ordinal.
    Device(c_int),
    /// The host (the CPU).
    Host,
}

/// What a mode does under the HIP entry points. Handles, events and
/// streams are the mode's own values (`u64` for handles); the entry points
/// keep the HIP-facing objects, the checks and the bookkeeping.
pub(crate) trait Runtime: Send + Sync {
    fn describe(&self) -> &'static CStr;
    fn device_count(&self) -> R<c_int>;
    /// Makes `device` current on the calling thread.
    fn set_device(&self, device: c_int) -> R<()>;
    fn vmm_supported(&self, device: c_int) -> R<c_int>;
    fn total_mem(&self, device: c_int) -> R<usize>;
    /// `(free, total)` bytes of the current device.
    fn mem_info(&self) -> R<(usize, usize)>;
    fn granularity(&self, location: Loc, recommended: bool) -> R<usize>;
    fn reserve(&self, size: usize, align: usize) -> R<u64>;
    fn free_reservation(&self, va: u64, size: usize) -> R<()>;
    fn create(&self, size: usize, location: Loc, shareable: bool) -> R<u64>;
    fn release(&self, handle: u64) -> R<()>;
    fn map(&self, va: u64, size: usize, handle: u64) -> R<()>;
    /// Unmaps exactly one mapping.
    fn unmap(&self, va: u64, size: usize) -> R<()>;
    /// Sets access on exactly one mapping.
    fn set_access(&self, va: u64, size: usize, access: &[(Loc, u32)]) -> R<()>;
    fn get_access(&self, va: u64, device: c_int) -> R<u64>;
    fn export(&self, handle: u64) -> R<c_int>;
    /// Imports a descriptor made by `export` (in any process).
    fn import(&self, fd: c_int) -> R<u64>;
    fn event_create(&self, flags: c_uint) -> R<usize>;
    fn event_record(&self, event: usize, stream: usize) -> R<()>;
    fn event_query(&self, event: usize) -> R<bool>;
    fn event_synchronize(&self, event: usize) -> R<()>;
    fn event_destroy(&self, event: usize) -> R<()>;
    fn stream_create(&self, flags: c_uint) -> R<usize>;
    fn stream_destroy(&self, stream: usize) -> R<()>;
    /// A copy in `stream` order, or (`None`) `hipMemcpy` on the null stream,
    /// which returns once the copy completed, except between two ranges of
    /// device memory (`device_to_device`): ROCm then returns at once
    /// (`ihipMemcpy` in `hipamd/src/hip_memory.cpp`: "Device to Device
    /// copies do not need to host side synchronization").
    fn copy(
        &self,
        dst: u64,
        src: u64,
        len: usize,
        stream: Option<usize>,
        device_to_device: bool,
    ) -> R<()>;
    fn fill(&self, dst: u64, byte: u8, len: usize, stream: usize) -> R<()>;
    fn hold(&self, stream: usize, hold: bool) -> R<()>;
}

/// A physical handle as this library hands it out: the address of `token`.
struct Alloc {
    /// Gives the handle a unique address for as long as the memory lives.
    _token: Box<u64>,
    inner: u64,
    location: Loc,
    shareable: bool,
    /// Mappings that hold it.
    mappings: u32,
    /// Released by its owner; dropped at its last unmap.
    released: bool,
}

/// One mapping made through this library.
struct Mapping {
    size: usize,
    /// The handle's address (the key of `State::allocs`).
    handle: usize,
}

#[derive(Default)]
struct State {
    allocs: HashMap<usize, Alloc>,
    /// Mappings by start address.
    mappings: BTreeMap<u64, Mapping>,
    /// Injected failures: entry point name, calls left, code, and the
    /// thread whose calls fail.
    faults: Vec<(String, u32, hipError_t, std::thread::ThreadId)>,
    /// Reservations by base: size, and whether one `hipMemUnmap` call took
    /// several mappings out of it (see [`hipMemUnmap`]).
    reservations: BTreeMap<u64, (usize, bool)>,
}

struct Shim {
    rt: Box<dyn Runtime>,
    state: Mutex<State>,
}

static SHIM: OnceLock<Result<Shim, hipError_t>> = OnceLock::new();

fn shim() -> R<&'static Shim> {
    SHIM.get_or_init(|| {
        let mode = std::env::var("GPU_ARENA_HIP_SHIM").unwrap_or_default();
        let rt: Box<dyn Runtime> = match mode.as_str() {
            "" | "host" => Box::new(host::HostRt::new()?),
            "cuda" => Box::new(cuda::CudaRt::new()?),
            other => {
                eprintln!(
                    "gpu-arena HIP shim: GPU_ARENA_HIP_SHIM={other:?} is neither `host` nor `cuda`"
                );
                return Err(hipErrorNoDevice);
            }
        };
        Ok(Shim {
            rt,
            state: Mutex::new(State::default()),
        })
    })
    .as_ref()
    .map_err(|e| *e)
}

impl Shim {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// An injected failure for `call`, if one is pending.
    fn fault(&mut self, call: &str) -> R<()> {
        let me = std::thread::current().id();
        if let Some(i) = self
            .faults
            .iter()
            .position(|(c, _, _, t)| c == call && *t == me)
        {
            let code = self.faults[i].2;
            self.faults[i].1 -= 1;
            if self.faults[i].1 == 0 {
                self.faults.remove(i);
            }
            return Err(code);
        }
        Ok(())
    }

    /// Whether `va` lies in a mapping of device-located memory.
    fn on_device(&self, va: u64) -> bool {
        self.mappings
            .range(..=va)
            .next_back()
            .filter(|(start, m)| va < *start + m.size as u64)
            .and_then(|(_, m)| self.allocs.get(&m.handle))
            .is_some_and(|a| matches!(a.location, Loc::Device(_)))
    }

    /// The mappings that exactly tile `va..va + size`, starting at `va`
    /// (ROCm walks adjacent sub-buffers from the one at `ptr`).
    fn tiling(&self, va: u64, size: usize) -> R<Vec<u64>> {
        let end = va.checked_add(size as u64).ok_or(hipErrorInvalidValue)?;
        let mut at = va;
        let mut out = Vec::new();
        while at < end {
            let m = self.mappings.get(&at).ok_or(hipErrorInvalidValue)?;
            out.push(at);
            at += m.size as u64;
        }
        if at != end {
            return Err(hipErrorInvalidValue);
        }
        Ok(out)
    }
}

/// Runs an entry point's body: its code, never an unwinding panic.
fn entry(body: impl FnOnce() -> R<()>) -> hipError_t {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => hipSuccess,
        Ok(Err(code)) => code,
        Err(_) => hipErrorUnknown,
    }
}

fn location(l: &hipMemLocation) -> R<Loc> {
    match l.type_ {
        hipMemLocationTypeDevice => Ok(Loc::Device(l.id)),
        hipMemLocationTypeHost => Ok(Loc::Host),
        _ => Err(hipErrorInvalidValue),
    }
}

/// `prop` checked as ROCm checks it: pinned, at a device or the host.
fn prop_location(prop: &hipMemAllocationProp, shim: &Shim) -> R<Loc> {
    if prop.type_ != hipMemAllocationTypePinned {
        return Err(hipErrorInvalidValue);
    }
    let loc = location(&prop.location)?;
    if let Loc::Device(d) = loc
        && (d < 0 || d >= shim.rt.device_count()?)
    {
        return Err(hipErrorInvalidDevice);
    }
    Ok(loc)
}

// ----- initialization and devices -----

#[unsafe(no_mangle)]
pub extern "C" fn hipInit(flags: c_uint) -> hipError_t {
    entry(|| {
        if flags != 0 {
            return Err(hipErrorInvalidValue);
        }
        shim().map(|_| ())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipRuntimeGetVersion(version: *mut c_int) -> hipError_t {
    entry(|| {
        if version.is_null() {
            return Err(hipErrorInvalidValue);
        }
        shim()?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *version = HIP_VERSION };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipDriverGetVersion(version: *mut c_int) -> hipError_t {
    // SAFETY: forwarded under the caller's guarantees.
    unsafe { hipRuntimeGetVersion(version) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipGetDeviceCount(count: *mut c_int) -> hipError_t {
    entry(|| {
        if count.is_null() {
            return Err(hipErrorInvalidValue);
        }
        let n = shim()?.rt.device_count()?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *count = n };
        if n == 0 {
            Err(hipErrorNoDevice)
        } else {
            Ok(())
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipSetDevice(device: c_int) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if device < 0 || device >= s.rt.device_count()? {
            return Err(hipErrorInvalidDevice);
        }
        s.rt.set_device(device)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipDeviceGetAttribute(
    value: *mut c_int,
    attr: c_int,
    device: c_int,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if value.is_null() {
            return Err(hipErrorInvalidValue);
        }
        if device < 0 || device >= s.rt.device_count()? {
            return Err(hipErrorInvalidDevice);
        }
        let v = match attr {
            hipDeviceAttributeVirtualMemoryManagementSupported => s.rt.vmm_supported(device)?,
            _ => return Err(hipErrorInvalidValue),
        };
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *value = v };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipDeviceTotalMem(bytes: *mut usize, device: c_int) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if bytes.is_null() {
            return Err(hipErrorInvalidValue);
        }
        if device < 0 || device >= s.rt.device_count()? {
            return Err(hipErrorInvalidDevice);
        }
        let v = s.rt.total_mem(device)?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *bytes = v };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemGetInfo(free: *mut usize, total: *mut usize) -> hipError_t {
    entry(|| {
        if free.is_null() || total.is_null() {
            return Err(hipErrorInvalidValue);
        }
        let (f, t) = shim()?.rt.mem_info()?;
        // SAFETY: non-null out-pointers from the caller.
        unsafe {
            *free = f;
            *total = t;
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipGetErrorName(code: hipError_t) -> *const c_char {
    error_name(code).as_ptr()
}

#[unsafe(no_mangle)]
pub extern "C" fn hipGetErrorString(code: hipError_t) -> *const c_char {
    error_string(code).as_ptr()
}

// ----- virtual memory management -----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const hipMemAllocationProp,
    option: c_int,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if granularity.is_null() || prop.is_null() {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: a non-null pointer to the caller's properties.
        let prop = unsafe { *prop };
        let loc = prop_location(&prop, s).map_err(|_| hipErrorInvalidValue)?;
        let recommended = match option {
            hipMemAllocationGranularityMinimum => false,
            hipMemAllocationGranularityRecommended => true,
            _ => return Err(hipErrorInvalidValue),
        };
        let g = s.rt.granularity(loc, recommended)?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *granularity = g };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemAddressReserve(
    ptr: *mut *mut c_void,
    size: usize,
    alignment: usize,
    addr: *mut c_void,
    flags: c_ulonglong,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if ptr.is_null() || flags != 0 {
            return Err(hipErrorInvalidValue);
        }
        let g = s.rt.granularity(Loc::Device(0), false)?;
        if size == 0 || !size.is_multiple_of(g) || (alignment & alignment.wrapping_sub(1)) != 0 {
            return Err(hipErrorInvalidValue);
        }
        // The address hint is only a hint (ROCm logs when it is not met).
        let _ = addr;
        let mut st = s.lock();
        st.fault("hipMemAddressReserve")?;
        let va = s.rt.reserve(size, alignment)?;
        st.reservations.insert(va, (size, false));
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *ptr = va as *mut c_void };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemAddressFree(ptr: *mut c_void, size: usize) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if ptr.is_null() || size == 0 {
            return Err(hipErrorInvalidValue);
        }
        let mut st = s.lock();
        st.fault("hipMemAddressFree")?;
        if st.reservations.get(&(ptr as u64)).is_some_and(|r| r.1) {
            // ROCR still counts a use of the range (ROCR-Runtime#285).
            return Err(hipErrorUnknown);
        }
        s.rt.free_reservation(ptr as u64, size)?;
        st.reservations.remove(&(ptr as u64));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemCreate(
    handle: *mut hipMemGenericAllocationHandle_t,
    size: usize,
    prop: *const hipMemAllocationProp,
    flags: c_ulonglong,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if handle.is_null() || size == 0 || flags != 0 || prop.is_null() {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: a non-null pointer to the caller's properties.
        let prop = unsafe { *prop };
        let loc = prop_location(&prop, s)?;
        let shareable = match prop.requestedHandleType {
            hipMemHandleTypeNone => false,
            hipMemHandleTypePosixFileDescriptor => true,
            _ => return Err(hipErrorNotSupported),
        };
        if !prop.win32HandleMetaData.is_null() {
            return Err(hipErrorInvalidValue);
        }
        let mut st = s.lock();
        st.fault("hipMemCreate")?;
        let inner = s.rt.create(size, loc, shareable)?;
        let token = Box::new(inner);
        let key = &*token as *const u64 as usize;
        st.allocs.insert(
            key,
            Alloc {
                _token: token,
                inner,
                location: loc,
                shareable,
                mappings: 0,
                released: false,
            },
        );
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *handle = key as hipMemGenericAllocationHandle_t };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemRelease(handle: hipMemGenericAllocationHandle_t) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if handle.is_null() {
            return Err(hipErrorInvalidValue);
        }
        let key = handle as usize;
        let mut st = s.lock();
        st.fault("hipMemRelease")?;
        let a = st.allocs.get_mut(&key).ok_or(hipErrorInvalidValue)?;
        if a.released {
            return Err(hipErrorInvalidValue);
        }
        s.rt.release(a.inner)?;
        a.released = true;
        if a.mappings == 0 {
            st.allocs.remove(&key);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemMap(
    ptr: *mut c_void,
    size: usize,
    offset: usize,
    handle: hipMemGenericAllocationHandle_t,
    flags: c_ulonglong,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if ptr.is_null() || handle.is_null() || size == 0 || offset != 0 || flags != 0 {
            return Err(hipErrorInvalidValue);
        }
        let key = handle as usize;
        let va = ptr as u64;
        let mut st = s.lock();
        st.fault("hipMemMap")?;
        let a = st.allocs.get(&key).ok_or(hipErrorInvalidValue)?;
        if a.released {
            return Err(hipErrorInvalidValue);
        }
        s.rt.map(va, size, a.inner)?;
        if let Some(a) = st.allocs.get_mut(&key) {
            a.mappings += 1;
        }
        st.mappings.insert(va, Mapping { size, handle: key });
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemUnmap(ptr: *mut c_void, size: usize) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if ptr.is_null() || size == 0 {
            return Err(hipErrorInvalidValue);
        }
        let mut st = s.lock();
        st.fault("hipMemUnmap")?;
        let tiles = st.tiling(ptr as u64, size)?;
        if tiles.len() > 1 {
            // ROCm unmaps several adjacent mappings in one call, but ROCR
            // then keeps counting a use of the reservation, whose
            // hipMemAddressFree fails (ROCR-Runtime#285).
            let va = ptr as u64;
            if let Some((_, r)) = st
                .reservations
                .range_mut(..=va)
                .next_back()
                .filter(|(base, r)| va < **base + r.0 as u64)
            {
                r.1 = true;
            }
        }
        for va in tiles {
            let m = st.mappings.get(&va).ok_or(hipErrorInvalidValue)?;
            let (msize, key) = (m.size, m.handle);
            s.rt.unmap(va, msize)?;
            st.mappings.remove(&va);
            if let Some(a) = st.allocs.get_mut(&key) {
                a.mappings -= 1;
                if a.released && a.mappings == 0 {
                    st.allocs.remove(&key);
                }
            }
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemSetAccess(
    ptr: *mut c_void,
    size: usize,
    desc: *const hipMemAccessDesc,
    count: usize,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if ptr.is_null() || size == 0 || desc.is_null() || count == 0 {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: the caller passes `count` descriptors at `desc`.
        let desc = unsafe { core::slice::from_raw_parts(desc, count) };
        let devices = s.rt.device_count()?;
        let mut access = Vec::with_capacity(count);
        for d in desc {
            let loc = location(&d.location)?;
            if matches!(loc, Loc::Device(id) if id < 0 || id >= devices) {
                return Err(hipErrorInvalidValue);
            }
            if !matches!(
                d.flags,
                hipMemAccessFlagsProtNone
                    | hipMemAccessFlagsProtRead
                    | hipMemAccessFlagsProtReadWrite
            ) {
                return Err(hipErrorInvalidValue);
            }
            access.push((loc, d.flags));
        }
        let mut st = s.lock();
        st.fault("hipMemSetAccess")?;
        let tiles = st.tiling(ptr as u64, size)?;
        // A host accessor only on host memory (ROCm: hipErrorInvalidValue).
        if access.iter().any(|(l, _)| *l == Loc::Host) {
            for va in &tiles {
                let key = st.mappings[va].handle;
                if st.allocs.get(&key).map(|a| a.location) != Some(Loc::Host) {
                    return Err(hipErrorInvalidValue);
                }
            }
        }
        for va in tiles {
            let msize = st.mappings[&va].size;
            s.rt.set_access(va, msize, &access)?;
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemGetAccess(
    flags: *mut c_ulonglong,
    location: *const hipMemLocation,
    ptr: *mut c_void,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if flags.is_null() || location.is_null() || ptr.is_null() {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: a non-null pointer to the caller's location.
        let loc = unsafe { *location };
        // ROCm answers for devices only.
        if loc.type_ != hipMemLocationTypeDevice || loc.id < 0 || loc.id >= s.rt.device_count()? {
            return Err(hipErrorInvalidValue);
        }
        let va = ptr as u64;
        let st = s.lock();
        let mapped = st
            .mappings
            .range(..=va)
            .next_back()
            .is_some_and(|(start, m)| va < start + m.size as u64);
        if !mapped {
            return Err(hipErrorInvalidValue);
        }
        let v = s.rt.get_access(va, loc.id)?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *flags = v };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemExportToShareableHandle(
    shareable: *mut c_void,
    handle: hipMemGenericAllocationHandle_t,
    handle_type: u32,
    flags: c_ulonglong,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if flags != 0 || handle.is_null() || shareable.is_null() {
            return Err(hipErrorInvalidValue);
        }
        let mut st = s.lock();
        st.fault("hipMemExportToShareableHandle")?;
        let a = st
            .allocs
            .get(&(handle as usize))
            .ok_or(hipErrorInvalidValue)?;
        // ROCm: the type asked for must be the one the handle was created with.
        if a.released || !a.shareable || handle_type != hipMemHandleTypePosixFileDescriptor {
            return Err(hipErrorInvalidValue);
        }
        let fd = s.rt.export(a.inner)?;
        // SAFETY: for POSIX descriptors `shareable` points to an int.
        unsafe { *shareable.cast::<c_int>() = fd };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipMemImportFromShareableHandle(
    handle: *mut hipMemGenericAllocationHandle_t,
    os_handle: *mut c_void,
    handle_type: u32,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if handle.is_null() || handle_type != hipMemHandleTypePosixFileDescriptor {
            return Err(hipErrorInvalidValue);
        }
        // POSIX descriptors travel in the pointer's value, as on CUDA.
        let fd = os_handle as usize as c_int;
        let mut st = s.lock();
        st.fault("hipMemImportFromShareableHandle")?;
        let inner = s.rt.import(fd)?;
        let token = Box::new(inner);
        let key = &*token as *const u64 as usize;
        st.allocs.insert(
            key,
            Alloc {
                _token: token,
                inner,
                location: Loc::Device(0),
                shareable: true,
                mappings: 0,
                released: false,
            },
        );
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *handle = key as hipMemGenericAllocationHandle_t };
        Ok(())
    })
}

// ----- events and streams -----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipEventCreateWithFlags(
    event: *mut hipEvent_t,
    flags: c_uint,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        let known = hipEventBlockingSync | hipEventDisableTiming | hipEventInterprocess;
        if event.is_null() || flags & !known != 0 {
            return Err(hipErrorInvalidValue);
        }
        let e = s.rt.event_create(flags)?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *event = e as hipEvent_t };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipEventCreate(event: *mut hipEvent_t) -> hipError_t {
    // SAFETY: forwarded under the caller's guarantees.
    unsafe { hipEventCreateWithFlags(event, hipEventDefault) }
}

#[unsafe(no_mangle)]
pub extern "C" fn hipEventRecord(event: hipEvent_t, stream: hipStream_t) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if event.is_null() {
            return Err(hipErrorInvalidHandle);
        }
        s.rt.event_record(event as usize, stream as usize)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipEventQuery(event: hipEvent_t) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if event.is_null() {
            return Err(hipErrorInvalidHandle);
        }
        if s.rt.event_query(event as usize)? {
            Ok(())
        } else {
            Err(hipErrorNotReady)
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipEventSynchronize(event: hipEvent_t) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if event.is_null() {
            return Err(hipErrorInvalidHandle);
        }
        s.rt.event_synchronize(event as usize)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipEventDestroy(event: hipEvent_t) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if event.is_null() {
            return Err(hipErrorInvalidHandle);
        }
        s.rt.event_destroy(event as usize)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipStreamCreateWithFlags(
    stream: *mut hipStream_t,
    flags: c_uint,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if stream.is_null() || flags & !hipStreamNonBlocking != 0 {
            return Err(hipErrorInvalidValue);
        }
        let h = s.rt.stream_create(flags)?;
        // SAFETY: a non-null out-pointer from the caller.
        unsafe { *stream = h as hipStream_t };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipStreamCreate(stream: *mut hipStream_t) -> hipError_t {
    // SAFETY: forwarded under the caller's guarantees.
    unsafe { hipStreamCreateWithFlags(stream, hipStreamDefault) }
}

#[unsafe(no_mangle)]
pub extern "C" fn hipStreamDestroy(stream: hipStream_t) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if stream.is_null() {
            return Err(hipErrorInvalidHandle);
        }
        s.rt.stream_destroy(stream as usize)
    })
}

// ----- copies and fills -----

fn memcpy_kind(kind: c_int) -> R<()> {
    if (0..=hipMemcpyDefault).contains(&kind) {
        Ok(())
    } else {
        Err(hipErrorInvalidMemcpyDirection)
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemcpy(
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    kind: c_int,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        memcpy_kind(kind)?;
        if size == 0 {
            return Ok(());
        }
        if dst.is_null() || src.is_null() {
            return Err(hipErrorInvalidValue);
        }
        let d2d = {
            let st = s.lock();
            st.on_device(dst as u64) && st.on_device(src as u64)
        };
        s.rt.copy(dst as u64, src as u64, size, None, d2d)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemcpyAsync(
    dst: *mut c_void,
    src: *const c_void,
    size: usize,
    kind: c_int,
    stream: hipStream_t,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        memcpy_kind(kind)?;
        if size == 0 {
            return Ok(());
        }
        if dst.is_null() || src.is_null() {
            return Err(hipErrorInvalidValue);
        }
        s.rt.copy(dst as u64, src as u64, size, Some(stream as usize), false)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn hipMemsetAsync(
    dst: *mut c_void,
    value: c_int,
    size: usize,
    stream: hipStream_t,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if size == 0 {
            return Ok(());
        }
        if dst.is_null() {
            return Err(hipErrorInvalidValue);
        }
        s.rt.fill(dst as u64, value as u8, size, stream as usize)
    })
}

// ----- test hooks (not HIP) -----

/// A one-line description of this library and its mode (a static string).
#[unsafe(no_mangle)]
pub extern "C" fn hipShimDescribe() -> *const c_char {
    match shim() {
        Ok(s) => s.rt.describe().as_ptr(),
        Err(_) => c"gpu-arena HIP shim (failed to start)".as_ptr(),
    }
}

/// Host mode: work recorded on `stream` from now on stays pending (a long
/// kernel) until [`hipShimCompleteStream`] or a wait on one of its events.
/// The CUDA mode has real kernels: `hipErrorNotSupported`.
#[unsafe(no_mangle)]
pub extern "C" fn hipShimHoldStream(stream: hipStream_t) -> hipError_t {
    entry(|| shim()?.rt.hold(stream as usize, true))
}

/// Host mode: completes the work pending on `stream` and stops holding it.
#[unsafe(no_mangle)]
pub extern "C" fn hipShimCompleteStream(stream: hipStream_t) -> hipError_t {
    entry(|| shim()?.rt.hold(stream as usize, false))
}

/// The next `count` calls of the entry point named `call` (e.g.
/// `"hipMemSetAccess"`) made by the calling thread fail with `code` and
/// change nothing (other threads, such as concurrent tests, are not
/// affected). `count` 0 clears the entry point's pending failures.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn hipShimFailNext(
    call: *const c_char,
    count: c_uint,
    code: hipError_t,
) -> hipError_t {
    entry(|| {
        let s = shim()?;
        if call.is_null() {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: a NUL-terminated string from the caller.
        let name = unsafe { CStr::from_ptr(call) }
            .to_str()
            .map_err(|_| hipErrorInvalidValue)?
            .to_owned();
        let me = std::thread::current().id();
        let mut st = s.lock();
        st.faults.retain(|(c, _, _, t)| *c != name || *t != me);
        if count > 0 {
            st.faults.push((name, count, code, me));
        }
        Ok(())
    })
}

/// The stand-in's own ROCm behaviours, in host mode.
#[cfg(test)]
mod tests {
    use super::*;

    const G: usize = 2 << 20;

    /// The tests share the library's one state (and its null stream).
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn prop(location: u32) -> hipMemAllocationProp {
        hipMemAllocationProp {
            type_: hipMemAllocationTypePinned,
            requestedHandleType: hipMemHandleTypeNone,
            location: hipMemLocation {
                type_: location,
                id: 0,
            },
            win32HandleMetaData: core::ptr::null_mut(),
            allocFlags: hipMemAllocFlags {
                compressionType: 0,
                gpuDirectRDMACapable: 0,
                usage: 0,
            },
        }
    }

    fn reserve(size: usize) -> *mut c_void {
        let mut p = core::ptr::null_mut();
        // SAFETY: valid out-pointer.
        assert_eq!(
            unsafe { hipMemAddressReserve(&mut p, size, 0, core::ptr::null_mut(), 0) },
            0
        );
        p
    }

    fn create(size: usize, location: u32) -> hipMemGenericAllocationHandle_t {
        let mut h = core::ptr::null_mut();
        // SAFETY: valid pointers.
        assert_eq!(unsafe { hipMemCreate(&mut h, size, &prop(location), 0) }, 0);
        h
    }

    fn at(p: *mut c_void, offset: usize) -> *mut c_void {
        (p as usize + offset) as *mut c_void
    }

    fn rw(p: *mut c_void, size: usize, location: u32) {
        let d = hipMemAccessDesc {
            location: hipMemLocation {
                type_: location,
                id: 0,
            },
            flags: hipMemAccessFlagsProtReadWrite,
        };
        // SAFETY: one valid descriptor.
        assert_eq!(unsafe { hipMemSetAccess(p, size, &d, 1) }, 0);
    }

    #[test]
    fn rocm_argument_checks() {
        let _serial = serial();
        assert_eq!(hipInit(1), hipErrorInvalidValue);
        assert_eq!(hipInit(0), 0);
        let mut bad = prop(hipMemLocationTypeDevice);
        bad.type_ = 2;
        let mut h = core::ptr::null_mut();
        // SAFETY: valid pointers.
        assert_eq!(
            unsafe { hipMemCreate(&mut h, G, &bad, 0) },
            hipErrorInvalidValue
        );
        let va = reserve(4 * G);
        let h = create(2 * G, hipMemLocationTypeDevice);
        assert_eq!(
            hipMemMap(va, 2 * G, G, h, 0),
            hipErrorInvalidValue,
            "nonzero offset"
        );
        assert_eq!(hipMemMap(va, 2 * G, 0, h, 0), 0);
        rw(va, 2 * G, hipMemLocationTypeDevice);
        let mut flags = 0;
        let host = hipMemLocation {
            type_: hipMemLocationTypeHost,
            id: 0,
        };
        let dev = hipMemLocation {
            type_: hipMemLocationTypeDevice,
            id: 0,
        };
        // SAFETY: valid pointers.
        unsafe {
            assert_eq!(hipMemGetAccess(&mut flags, &host, va), hipErrorInvalidValue);
            assert_eq!(hipMemGetAccess(&mut flags, &dev, at(va, G)), 0);
        }
        assert_eq!(flags, u64::from(hipMemAccessFlagsProtReadWrite));
        // A host accessor on device memory; a range with a hole.
        let d = hipMemAccessDesc {
            location: host,
            flags: hipMemAccessFlagsProtRead,
        };
        // SAFETY: one valid descriptor.
        unsafe {
            assert_eq!(hipMemSetAccess(va, 2 * G, &d, 1), hipErrorInvalidValue);
        }
        assert_eq!(hipMemUnmap(va, 3 * G), hipErrorInvalidValue, "a hole");
        assert_eq!(hipMemUnmap(at(va, G), G), hipErrorInvalidValue, "inside");
        // Release while mapped: the mapping keeps the memory.
        assert_eq!(hipMemRelease(h), 0);
        assert_eq!(hipMemRelease(h), hipErrorInvalidValue);
        assert_eq!(hipMemUnmap(va, 2 * G), 0);
        assert_eq!(hipMemAddressFree(va, 4 * G), 0);
    }

    #[test]
    fn one_unmap_of_several_mappings_breaks_the_address_free() {
        let _serial = serial();
        let va = reserve(2 * G);
        let (a, b) = (
            create(G, hipMemLocationTypeDevice),
            create(G, hipMemLocationTypeDevice),
        );
        assert_eq!(hipMemMap(va, G, 0, a, 0), 0);
        assert_eq!(hipMemMap(at(va, G), G, 0, b, 0), 0);
        assert_eq!(hipMemUnmap(va, 2 * G), 0);
        assert_eq!(hipMemAddressFree(va, 2 * G), hipErrorUnknown);
        assert_eq!(hipMemRelease(a), 0);
        assert_eq!(hipMemRelease(b), 0);
    }

    #[test]
    fn a_device_to_device_memcpy_returns_before_it_ran() {
        let _serial = serial();
        let va = reserve(2 * G);
        let (a, b) = (
            create(G, hipMemLocationTypeDevice),
            create(G, hipMemLocationTypeDevice),
        );
        assert_eq!(hipMemMap(va, G, 0, a, 0), 0);
        assert_eq!(hipMemMap(at(va, G), G, 0, b, 0), 0);
        rw(va, 2 * G, hipMemLocationTypeDevice);
        assert_eq!(hipMemcpy(at(va, G), va, G, hipMemcpyDefault), 0);
        let mut e = core::ptr::null_mut();
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { hipEventCreate(&mut e) }, 0);
        assert_eq!(hipEventRecord(e, core::ptr::null_mut()), 0);
        assert_eq!(hipEventQuery(e), hipErrorNotReady);
        assert_eq!(hipEventSynchronize(e), 0);
        assert_eq!(hipEventQuery(e), 0);
        assert_eq!(hipEventRecord(e, core::ptr::null_mut()), 0);
        assert_eq!(hipEventQuery(e), 0, "the null stream is idle again");
        assert_eq!(hipEventDestroy(e), 0);
        assert_eq!(hipMemUnmap(va, G), 0);
        assert_eq!(hipMemUnmap(at(va, G), G), 0);
        assert_eq!(hipMemAddressFree(va, 2 * G), 0);
        assert_eq!(hipMemRelease(a), 0);
        assert_eq!(hipMemRelease(b), 0);
    }

    #[test]
    fn copies_into_memory_without_access_are_refused() {
        let _serial = serial();
        let va = reserve(G);
        let h = create(G, hipMemLocationTypeDevice);
        assert_eq!(hipMemMap(va, G, 0, h, 0), 0);
        let mut buf = [0u8; 16];
        assert_eq!(
            hipMemcpy(buf.as_mut_ptr().cast(), va, 16, hipMemcpyDefault),
            hipErrorIllegalAddress
        );
        assert_eq!(hipMemUnmap(va, G), 0);
        assert_eq!(hipMemAddressFree(va, G), 0);
        assert_eq!(hipMemRelease(h), 0);
    }
}
