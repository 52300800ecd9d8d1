//! The HIP backend (feature `hip`): AMD's VMM API (`hipMem*`) and events.
//!
//! Three layers, as cudarc does it: [`sys`] only declares the entry points
//! (own `extern "C"` signatures returning a plain `i32`), [`result`] turns
//! each call's code into a `Result<_, DriverError>`, and [`HipDriver`] owns the
//! state: the bookkeeping of reservations, mappings and handles, the one lock
//! that serializes VMM calls, and a bounded pool of events.
//!
//! # How it meets the driver contract on ROCm
//!
//! - **Rules first, then the runtime.** Every VMM call is validated by the
//!   same [`VmState`] rules the host backend uses, before it reaches HIP: a
//!   zero or unaligned size, a partial unmap, a nonzero map offset, a mapped
//!   range mapped again, a reservation freed with mappings left are refused
//!   with the [`ErrorKind`] CUDA returns for them (hip-tests show HIP
//!   returning other codes, e.g. `hipErrorMemoryAllocation` for a bad
//!   reservation size and `hipErrorInvalidValue` for a nonzero offset).
//! - **Release while mapped** is allowed, as on CUDA: the handle is marked
//!   released and `hipMemRelease` runs when its last mapping is unmapped.
//! - **One mutex** serializes every VMM call (reserve, free, create, release,
//!   map, unmap, set-access, get-access): ROCm has had races between
//!   concurrent VMM calls, and commits are amortized, so this costs nothing
//!   measurable.
//! - **Set-access** is applied per mapping with a fixed-size stack array of
//!   descriptors (no heap), the local device granted last (peer access on
//!   ROCm), and retried once on `hipErrorInvalidValue`: right after a map,
//!   set-access can race ROCm's processing of it (rocm-systems#2667). The
//!   layout-dependent refusal of set-access on tail mappings
//!   (rocm-systems#2516, still on ROCm 7.2) is not helped by a retry; it is
//!   reported, and the commit leaves nothing behind (`docs/conformance.md`).
//! - **Granularity** is asked from the runtime (minimum and recommended, for
//!   device and host memory): never assumed to be 2 MiB (some AMD GPUs report
//!   4 KiB).
//! - **Fences** are `hipEvent_t`s created with `hipEventDisableTiming`,
//!   recycled through a bounded pool (no allocation after start-up); `is_complete` is `hipEventQuery`
//!   (`hipErrorNotReady` = not yet), `wait` is `hipEventSynchronize` on that
//!   one event. Nothing in this backend synchronizes the device.
//! - **Default stream.** `copy` and `fill` on [`Stream::DEFAULT`] wait on a
//!   pooled event recorded after them on the null stream, so they have
//!   completed on return: ROCm's `hipMemcpy` returns before a
//!   device-to-device copy has run (`ihipMemcpy` skips the host wait).
//! - **Sharing.** Where the probe at [`HipDriver::new`] could create,
//!   export and release a handle of the POSIX-fd type
//!   ([`Capabilities::shareable_handles`]), `create_shareable` creates device
//!   handles of that type, `export` gives a close-on-exec descriptor
//!   (`hipMemExportToShareableHandle`) and `import` makes a handle of one
//!   (`hipMemImportFromShareableHandle`); older ROCm refuses the export and
//!   the backend says `NotSupported`.
//! - **Access of the CPU.** ROCm's `hipMemGetAccess` answers for device
//!   locations only: `get_access(va, Location::Host)` answers from the
//!   rights this backend's `set_access` applied.
//!
//! # ROCm version caveats (from the headers)
//!
//! - ROCm 5.2 (Debian's `libamdhip64-dev` 5.2.3) declares
//!   `hipMemAllocationProp` with another field order than ROCm ≥ 5.3 (same
//!   size, 32 bytes), and has no `hipDeviceAttributeVirtualMemoryManagementSupported`.
//!   Its VMM API is marked beta. [`HipDriver::new`] refuses runtimes older
//!   than 5.3 (`hipRuntimeGetVersion`), then requires the VMM attribute (89
//!   in ROCm 5.5–7.x) to be known and nonzero, saying which check failed.
//! - Host-located handles (`hipMemLocationTypeHost` = 2) only exist in recent
//!   ROCm: support is probed with a granularity query at start-up
//!   ([`Capabilities::host_memory`]).
//! - On ROCm < 7.0, unmapping one of two mappings of a handle has been
//!   reported to break the later `hipMemAddressFree`; the layers above map
//!   each handle once.
//!
//! # Build and run
//!
//! Building needs the HIP headers and `libamdhip64` (`hip-sys` finds them
//! under `HIP_PATH`, `ROCM_PATH` or `/opt/rocm`; Debian: `apt-get install
//! libamdhip64-dev` and `HIP_PATH=/usr`). A binary built with this feature
//! links `libamdhip64` and so needs it at run time; without an AMD GPU,
//! [`HipDriver::new`] returns an [`ErrorKind::NoDevice`] error (it never
//! panics) and [`SystemDriver`](crate::driver::SystemDriver) falls back to
//! the host backend.

use core::ffi::c_int;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use crate::driver::rules::{Refusal, VmState};
use crate::driver::{Access, AccessMode, Capabilities, Driver, Location, Stream};
use crate::error::{Backend, Call, DriverError, Error, ErrorKind, Reason, Result};
use crate::lock::lock;
use crate::meta::{MetaMap, MetaVec};

pub mod result;
pub mod sys;

/// Largest access list [`HipDriver::set_access`](Driver::set_access) accepts
/// (descriptors live in a stack array; 62 devices and the host fit).
pub const MAX_ACCESS: usize = 64;

/// Events kept for reuse by [`Driver::drop_fence`]; beyond this they are destroyed.
const EVENT_POOL: usize = 64;

/// Largest single reservation accepted (as measured on an H100; the HIP
/// runtime may refuse smaller ones with out-of-memory).
const MAX_RESERVATION: u64 = 64 << 40;

/// A physical memory handle of the HIP backend: the address of the runtime's
/// `ihipMemGenericAllocationHandle` (`hipMemGenericAllocationHandle_t`).
///
/// A plain integer, so it is `Copy`, `Send`, `Sync` and hashable; only the
/// driver that created it turns it back into a pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HipHandle(usize);

impl HipHandle {
    /// The runtime's handle value (a pointer's address).
    pub const fn addr(self) -> usize {
        self.0
    }
}

/// A fence of the HIP backend: a recorded `hipEvent_t`.
///
/// Give it back with [`Driver::drop_fence`] (a dropped fence leaks its event).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HipFence {
    event: usize,
}

impl HipFence {
    /// The `hipEvent_t` value (a pointer's address).
    pub const fn event(&self) -> usize {
        self.event
    }
}

/// The HIP backend (see the module docs).
///
/// # Example
///
/// ```no_run
/// use gpu_arena::driver::hip::HipDriver;
/// use gpu_arena::driver::{Access, Driver, Location};
/// let d = match HipDriver::new(0) {
///     Ok(d) => d,
///     Err(e) => { eprintln!("no HIP: {e}"); return Ok(()); }
/// };
/// let g = d.capabilities().granularity;
/// let va = d.reserve(4 * g, 0)?;
/// let h = d.create(g, Location::Device(0))?;
/// // SAFETY: the range is inside our reservation and unmapped.
/// unsafe {
///     d.map(va, g, 0, h)?;
///     d.set_access(va, g, &[Access::read_write(Location::Device(0))])?;
///     d.unmap(va, g)?;
/// }
/// d.release(h)?;
/// // SAFETY: no mapping is left and nothing uses the range.
/// unsafe { d.free_reservation(va, 4 * g)? };
/// # Ok::<(), gpu_arena::Error>(())
/// ```
pub struct HipDriver {
    device: u32,
    runtime_version: i32,
    host_granularity: usize,
    caps: Capabilities,
    /// The one lock of all VMM calls; its state is the bookkeeping.
    vmm: Mutex<VmState<HipHandle>>,
    /// Live handles that can be exported (created shareable, or imported),
    /// with their own lock, taken after `vmm` where both are held. On the
    /// system allocator, as all driver bookkeeping.
    exportable: Mutex<MetaMap<HipHandle, ()>>,
    /// Live events owned by no fence, for reuse: distinct, created by this
    /// driver, at most `EVENT_POOL` (capacity reserved up front on the system
    /// allocator, so recycling never allocates).
    events: Mutex<MetaVec<usize>>,
}

impl core::fmt::Debug for HipDriver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HipDriver")
            .field("device", &self.device)
            .field("runtime_version", &self.runtime_version)
            .field("granularity", &self.caps.granularity)
            .field("host_granularity", &self.host_granularity)
            .finish_non_exhaustive()
    }
}

const fn refuse(call: Call, (kind, reason): Refusal) -> DriverError {
    DriverError::new(Backend::Hip, call, kind, reason)
}

const fn location(l: Location) -> sys::hipMemLocation {
    match l {
        Location::Device(d) => sys::hipMemLocation {
            type_: sys::HIP_MEM_LOCATION_TYPE_DEVICE,
            id: d as c_int,
        },
        Location::Host => sys::hipMemLocation {
            type_: sys::HIP_MEM_LOCATION_TYPE_HOST,
            id: 0,
        },
    }
}

const fn access_flags(mode: AccessMode) -> u32 {
    match mode {
        AccessMode::None => sys::HIP_MEM_ACCESS_FLAGS_PROT_NONE,
        AccessMode::Read => sys::HIP_MEM_ACCESS_FLAGS_PROT_READ,
        AccessMode::ReadWrite => sys::HIP_MEM_ACCESS_FLAGS_PROT_READ_WRITE,
    }
}

const fn access_mode(flags: u64) -> AccessMode {
    if flags & 2 != 0 {
        AccessMode::ReadWrite
    } else if flags & 1 != 0 {
        AccessMode::Read
    } else {
        AccessMode::None
    }
}

/// Fills `out` with the descriptors of `access`, entries for `local` (the
/// driver's device) last: ROCm wants peers granted before the local device.
/// Returns how many were written. Constant space, no allocation.
fn access_descs(
    local: u32,
    access: &[Access],
    out: &mut [sys::hipMemAccessDesc; MAX_ACCESS],
) -> usize {
    let mut n = 0;
    let is_local = |a: &Access| a.location == Location::Device(local);
    for a in access
        .iter()
        .filter(|a| !is_local(a))
        .chain(access.iter().filter(|a| is_local(a)))
        .take(MAX_ACCESS)
    {
        out[n] = sys::hipMemAccessDesc {
            location: location(a.location),
            flags: access_flags(a.mode),
        };
        n += 1;
    }
    n
}

/// Whether handles at `location` can be created exportable and exported as
/// POSIX file descriptors: one granule is created, exported and released
/// (older ROCm refuses with `hipErrorNotSupported`).
fn probe_shareable(location: sys::hipMemLocation, granularity: usize) -> bool {
    let Ok(h) = result::create(
        granularity,
        location,
        sys::HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
    ) else {
        return false;
    };
    // SAFETY: a live handle just created with the POSIX-fd type.
    let exported = match unsafe { result::export(h) } {
        Ok(fd) => {
            // SAFETY: the runtime made this descriptor for us; closed once.
            unsafe { libc::close(fd) };
            true
        }
        Err(_) => false,
    };
    // SAFETY: the handle is live, unmapped and released once.
    let released = unsafe { result::release(h) }.is_ok();
    exported && released
}

impl HipDriver {
    /// Opens the HIP backend on `device`.
    ///
    /// Initializes the runtime, checks the device ordinal, the runtime
    /// version (≥ ROCm 5.3, whose `hipMemAllocationProp` layout this backend
    /// declares) and the device's VMM attribute, then asks the runtime for
    /// the minimum and recommended granularity of device memory and probes
    /// host-located memory.
    ///
    /// # Errors
    /// - [`Error::Driver`] with [`ErrorKind::NoDevice`] when there is no
    ///   usable AMD GPU or runtime (e.g. no `/dev/kfd`);
    /// - [`Error::Driver`] with [`ErrorKind::InvalidValue`] when `device` is
    ///   not an ordinal of this machine;
    /// - [`Error::Unsupported`], saying why, when the runtime is too old or
    ///   the device lacks virtual memory management.
    ///
    /// Never panics. Calls the driver (start-up cost).
    pub fn new(device: u32) -> Result<Self> {
        // The messages of HIP errors use the runtime's own names and texts.
        crate::error::set_runtime_texts(
            crate::error::Backend::Hip,
            crate::error::RuntimeTexts {
                name: result::error_name,
                string: result::error_string,
            },
        );
        let Ok(dev) = c_int::try_from(device) else {
            return Err(refuse(Call::Init, (ErrorKind::InvalidValue, Reason::NoSuchDevice)).into());
        };
        result::init()?;
        let count = result::device_count()?;
        if count <= 0 {
            return Err(result::error(Call::Init, sys::HIP_ERROR_NO_DEVICE).into());
        }
        if dev >= count {
            return Err(refuse(Call::Init, (ErrorKind::InvalidValue, Reason::NoSuchDevice)).into());
        }
        let runtime_version = result::runtime_version()?;
        if runtime_version < sys::MIN_RUNTIME_VERSION {
            return Err(Error::Unsupported(
                "the HIP runtime is older than ROCm 5.3: its (beta) VMM API declares hipMemAllocationProp with another layout and has no VMM-support attribute; install ROCm 5.5 or later, or use the host backend",
            ));
        }
        result::set_device(dev)?;
        let vmm = match result::device_attribute(
            sys::HIP_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
            dev,
        ) {
            Ok(v) => v,
            Err(e) if e.kind == ErrorKind::InvalidValue => {
                return Err(Error::Unsupported(
                    "this HIP runtime does not know hipDeviceAttributeVirtualMemoryManagementSupported (89, ROCm 5.5 and later), so VMM support cannot be confirmed; install ROCm 5.5 or later, or use the host backend",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if vmm == 0 {
            return Err(Error::Unsupported(
                "the HIP device does not support virtual memory management (hipDeviceAttributeVirtualMemoryManagementSupported = 0); gpu-arena needs hipMemCreate/hipMemMap there: use the host backend",
            ));
        }
        let here = location(Location::Device(device));
        let granularity = result::granularity(here, sys::HIP_MEM_ALLOCATION_GRANULARITY_MINIMUM)?;
        if !granularity.is_power_of_two() {
            return Err(Error::Unsupported(
                "the HIP runtime reported a VMM granularity that is not a power of two",
            ));
        }
        let recommended =
            match result::granularity(here, sys::HIP_MEM_ALLOCATION_GRANULARITY_RECOMMENDED) {
                Ok(r) if r >= granularity && r % granularity == 0 => r,
                _ => granularity,
            };
        // Host-located VMM memory exists only in recent ROCm: probe it.
        let host_granularity = match result::granularity(
            location(Location::Host),
            sys::HIP_MEM_ALLOCATION_GRANULARITY_MINIMUM,
        ) {
            Ok(g) if g.is_power_of_two() => g,
            _ => 0,
        };
        let device_memory = result::device_total_mem(dev)? as u64;
        let device_count = count as u32;
        let shareable_handles = probe_shareable(here, granularity);
        let caps = Capabilities {
            backend: Backend::Hip,
            granularity,
            recommended_granularity: recommended,
            device_count,
            device_memory,
            max_reservation: MAX_RESERVATION,
            cpu_reads_device_memory: false,
            host_memory: host_granularity != 0,
            peer_access: device_count > 1,
            shareable_handles,
        };
        Ok(HipDriver {
            device,
            runtime_version,
            host_granularity,
            caps,
            vmm: Mutex::new(VmState::new(
                granularity as u64,
                device_count.min(62),
                host_granularity != 0,
                MAX_RESERVATION,
            )),
            events: Mutex::new(MetaVec::with_capacity_in(EVENT_POOL, std::alloc::System)),
            exportable: Mutex::new(MetaMap::with_hasher_in(
                Default::default(),
                std::alloc::System,
            )),
        })
    }

    /// The device ordinal this driver was opened on.
    pub const fn device(&self) -> u32 {
        self.device
    }

    /// The runtime's `HIP_VERSION` (`major * 10_000_000 + minor * 100_000 + patch`).
    pub const fn runtime_version(&self) -> i32 {
        self.runtime_version
    }

    /// Granularity of host-located memory; 0 when the runtime has none.
    pub const fn host_granularity(&self) -> usize {
        self.host_granularity
    }

    /// Bytes of physical memory held by live handles (released handles
    /// still mapped included). Constant time.
    pub fn physical_bytes(&self) -> u64 {
        self.lock_vmm().physical_bytes()
    }

    /// Whether no reservation, mapping or handle is left. Constant time.
    pub fn is_clean(&self) -> bool {
        self.lock_vmm().is_empty()
    }

    fn lock_vmm(&self) -> MutexGuard<'_, VmState<HipHandle>> {
        lock(&self.vmm)
    }

    fn lock_exportable(&self) -> MutexGuard<'_, MetaMap<HipHandle, ()>> {
        lock(&self.exportable)
    }

    /// A handle whose memory went back: its value may be handed out again.
    fn forget(&self, handle: HipHandle) {
        self.lock_exportable().remove(&handle);
    }

    /// `create` with the handle type `handle_type` (`HIP_MEM_HANDLE_TYPE_*`).
    fn create_as(&self, size: usize, location: Location, handle_type: u32) -> Result<HipHandle> {
        if location == Location::Host && self.host_granularity == 0 {
            return Err(
                refuse(Call::Create, (ErrorKind::NotSupported, Reason::Unavailable)).into(),
            );
        }
        let mut vm = self.lock_vmm();
        vm.check_create(size as u64, location)
            .map_err(|r| refuse(Call::Create, r))?;
        if location == Location::Host && size % self.host_granularity != 0 {
            return Err(refuse(
                Call::Create,
                (
                    ErrorKind::InvalidValue,
                    Reason::NotGranular {
                        value: size as u64,
                        granularity: self.host_granularity as u64,
                    },
                ),
            )
            .into());
        }
        self.bind()?;
        let h = HipHandle(result::create(size, self::location(location), handle_type)?);
        vm.add_handle(h, size as u64, location);
        if handle_type == sys::HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            self.lock_exportable().insert(h, ());
        }
        Ok(h)
    }

    /// Makes this driver's device current on the calling thread (HIP keeps
    /// the current device per thread; streams, events and the null stream
    /// belong to it). A thread-local store in the runtime: no synchronization.
    fn bind(&self) -> core::result::Result<(), DriverError> {
        result::set_device(self.device as c_int)
    }

    fn take_event(&self) -> core::result::Result<usize, DriverError> {
        if let Some(event) = lock(&self.events).pop() {
            return Ok(event);
        }
        self.bind()?;
        result::event_create()
    }

    fn put_event(&self, event: usize) {
        {
            let mut pool = lock(&self.events);
            if pool.len() < EVENT_POOL {
                // Within the capacity reserved at start-up: no allocation.
                pool.push(event);
                return;
            }
        }
        // SAFETY: `event` is live and owned by no fence or pool slot.
        let _ = unsafe { result::event_destroy(event) };
    }

    /// Waits until the work queued so far on the null stream has run: on a
    /// fence recorded there (that one event; never the device).
    fn wait_default(&self) -> Result<()> {
        let fence = self.record(Stream::DEFAULT)?;
        let r = self.wait(&fence);
        self.drop_fence(fence);
        r
    }

    /// Sets access on one mapping, retrying once on `hipErrorInvalidValue`
    /// (set-access racing the runtime's processing of the map on ROCm,
    /// rocm-systems#2667).
    ///
    /// # Safety
    /// As [`result::set_access`].
    unsafe fn set_access_one(
        va: u64,
        size: usize,
        descs: &[sys::hipMemAccessDesc],
    ) -> core::result::Result<(), DriverError> {
        // SAFETY: forwarded under the caller's guarantees.
        match unsafe { result::set_access(va, size, descs) } {
            Err(e) if e.code == sys::HIP_ERROR_INVALID_VALUE => {
                // SAFETY: as above; the first attempt changed nothing.
                unsafe { result::set_access(va, size, descs) }
            }
            r => r,
        }
    }
}

impl Drop for HipDriver {
    fn drop(&mut self) {
        let pool = self.events.get_mut().unwrap_or_else(|e| e.into_inner());
        for event in pool.drain(..) {
            // SAFETY: pooled events are live and owned by nobody else.
            let _ = unsafe { result::event_destroy(event) };
        }
        // Reservations, mappings and handles still alive are the caller's
        // (see `is_clean`); the runtime reclaims them at process exit.
    }
}

// SAFETY: (1) reservations come from hipMemAddressReserve with a null hint
// and are checked against the requested alignment; (2) ranges are mapped and
// unmapped only through `map`/`unmap`, validated by VmState, and handles
// released while mapped are only given back after their last unmap;
// (3) two mappings of one handle share its physical memory (VMM semantics);
// (4) every call is validated before it reaches the runtime, and runtime
// failures of map/create/release/free roll the bookkeeping back; (5) the only
// blocking calls are hipEventSynchronize on one event (`wait`, and `copy` and
// `fill` on the null stream) and hipMemcpy on the null stream (`copy`);
// nothing synchronizes the device.
unsafe impl Driver for HipDriver {
    type Handle = HipHandle;
    type Fence = HipFence;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn granularity(&self, location: Location) -> Result<usize> {
        match location {
            Location::Device(d) if d >= self.caps.device_count => Err(refuse(
                Call::Granularity,
                (ErrorKind::InvalidValue, Reason::NoSuchDevice),
            )
            .into()),
            Location::Device(d) if d == self.device => Ok(self.caps.granularity),
            Location::Device(_) => Ok(result::granularity(
                self::location(location),
                sys::HIP_MEM_ALLOCATION_GRANULARITY_MINIMUM,
            )?),
            Location::Host if self.host_granularity == 0 => Err(refuse(
                Call::Granularity,
                (ErrorKind::NotSupported, Reason::Unavailable),
            )
            .into()),
            Location::Host => Ok(self.host_granularity),
        }
    }

    fn reserve(&self, size: usize, align: usize) -> Result<u64> {
        let mut vm = self.lock_vmm();
        vm.check_reserve(size as u64, align as u64)
            .map_err(|r| refuse(Call::Reserve, r))?;
        let va = result::reserve(size, align, self.caps.granularity)?;
        let want = align.max(self.caps.granularity) as u64;
        if va % want != 0 {
            // SAFETY: we just reserved exactly this range; nothing uses it.
            let _ = unsafe { result::free_reservation(va, size) };
            return Err(refuse(
                Call::Reserve,
                (
                    ErrorKind::InvalidValue,
                    Reason::NotGranular {
                        value: va,
                        granularity: want,
                    },
                ),
            )
            .into());
        }
        vm.add_reservation(va, size as u64);
        Ok(va)
    }

    unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()> {
        let mut vm = self.lock_vmm();
        vm.free_reservation(va, size as u64)
            .map_err(|r| refuse(Call::FreeReservation, r))?;
        // SAFETY: VmState confirmed a whole reservation of ours with no
        // mapping left; the caller guarantees nothing touches it again.
        if let Err(e) = unsafe { result::free_reservation(va, size) } {
            vm.add_reservation(va, size as u64);
            return Err(e.into());
        }
        Ok(())
    }

    fn create(&self, size: usize, location: Location) -> Result<HipHandle> {
        self.create_as(size, location, sys::HIP_MEM_HANDLE_TYPE_NONE)
    }

    fn release(&self, handle: HipHandle) -> Result<()> {
        let mut vm = self.lock_vmm();
        let Some(state) = vm.handle(handle).copied().filter(|s| !s.released) else {
            return Err(refuse(
                Call::Release,
                (ErrorKind::InvalidValue, Reason::UnknownHandle),
            )
            .into());
        };
        if state.mappings == 0 {
            // SAFETY: a live handle of ours, unmapped, released once (VmState
            // forgets it below).
            unsafe { result::release(handle.0)? };
            self.forget(handle);
        }
        // Still mapped: hipMemRelease runs at its last unmap.
        vm.release(handle).map_err(|r| refuse(Call::Release, r))?;
        Ok(())
    }

    unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: HipHandle) -> Result<()> {
        let mut vm = self.lock_vmm();
        vm.map(va, size as u64, offset as u64, handle)
            .map_err(|r| refuse(Call::Map, r))?;
        // SAFETY: VmState confirmed an unmapped range inside one of our
        // reservations, a live unreleased handle of exactly `size` bytes and
        // offset 0.
        if let Err(e) = unsafe { result::map(va, size, handle.0) } {
            // Roll the bookkeeping back (the handle is not released, so
            // nothing is given back here).
            let _ = vm.unmap(va, size as u64, |_, _| {});
            return Err(e.into());
        }
        Ok(())
    }

    unsafe fn unmap(&self, va: u64, size: usize) -> Result<()> {
        let mut vm = self.lock_vmm();
        // Lenient, as on CUDA (rules.rs): holes are allowed, cutting a
        // mapping in two is not.
        vm.check_unmap(va, size as u64)
            .map_err(|r| refuse(Call::Unmap, r))?;
        let end = va + size as u64;
        let granularity = self.caps.granularity as u64;
        let mut at = va;
        let mut deferred: Option<DriverError> = None;
        while at < end {
            let Some(m) = vm.mapping_at(at).copied() else {
                at += granularity;
                continue;
            };
            // SAFETY: `m` is one whole mapping of ours inside the range the
            // caller guarantees nothing uses any more.
            unsafe { result::unmap(m.va, m.size as usize)? };
            let _ = vm.unmap(m.va, m.size, |h, _| {
                // Released while mapped: its last mapping is gone now.
                // SAFETY: the handle is ours, unmapped, released once.
                if let Err(e) = unsafe { result::release(h.0) } {
                    deferred.get_or_insert(e);
                }
                self.forget(h);
            });
            at = m.va + m.size;
        }
        match deferred {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()> {
        if access.len() > MAX_ACCESS {
            return Err(
                refuse(Call::SetAccess, (ErrorKind::InvalidValue, Reason::Overflow)).into(),
            );
        }
        if self.host_granularity == 0 && access.iter().any(|a| a.location == Location::Host) {
            return Err(refuse(
                Call::SetAccess,
                (ErrorKind::NotSupported, Reason::Unavailable),
            )
            .into());
        }
        let mut vm = self.lock_vmm();
        if access.is_empty() {
            return Err(
                refuse(Call::SetAccess, (ErrorKind::InvalidValue, Reason::ZeroSize)).into(),
            );
        }
        if access
            .iter()
            .any(|a| matches!(a.location, Location::Device(d) if d >= self.caps.device_count))
        {
            return Err(refuse(
                Call::SetAccess,
                (ErrorKind::InvalidValue, Reason::NoSuchDevice),
            )
            .into());
        }
        // Every rule first (whole mappings, no host access to device memory):
        // HIP applies descriptors one mapping at a time, so a refusal
        // half-way would leave some mappings changed.
        vm.check_set_access(va, size as u64, access)
            .map_err(|r| refuse(Call::SetAccess, r))?;
        let mut descs = [sys::hipMemAccessDesc::default(); MAX_ACCESS];
        let n = access_descs(self.device, access, &mut descs);
        let end = va + size as u64;
        let mut at = va;
        while at < end {
            let Some(m) = vm.mapping_at(at).copied() else {
                break;
            };
            // SAFETY: `m` is one whole mapping of ours; the caller guarantees
            // no accessor losing rights still uses it.
            unsafe { Self::set_access_one(m.va, m.size as usize, &descs[..n])? };
            vm.set_access(m.va, m.size, access, |_| {})
                .map_err(|r| refuse(Call::SetAccess, r))?;
            at = m.va + m.size;
        }
        Ok(())
    }

    fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode> {
        if accessor == Location::Host && self.host_granularity == 0 {
            return Err(refuse(
                Call::GetAccess,
                (ErrorKind::NotSupported, Reason::Unavailable),
            )
            .into());
        }
        let vm = self.lock_vmm();
        if vm.mapping_at(va).is_none() {
            return Err(refuse(
                Call::GetAccess,
                (ErrorKind::InvalidValue, Reason::NotMapped),
            )
            .into());
        }
        if accessor == Location::Host {
            // ROCm's hipMemGetAccess answers for device locations only (any
            // other location type is hipErrorInvalidValue): the CPU's rights
            // are the ones `set_access` applied, as recorded here.
            return vm
                .get_access(va, accessor)
                .map_err(|r| refuse(Call::GetAccess, r).into());
        }
        let flags = result::get_access(va, location(accessor))?;
        Ok(access_mode(flags))
    }

    fn record(&self, stream: Stream) -> Result<HipFence> {
        let event = self.take_event()?;
        if stream == Stream::DEFAULT {
            // The null stream is the current device's.
            if let Err(e) = self.bind() {
                self.put_event(event);
                return Err(e.into());
            }
        }
        // SAFETY: `event` is live and ours; `stream` is a stream of this
        // driver's device or the null stream (caller's contract).
        if let Err(e) = unsafe { result::event_record(event, stream.0) } {
            self.put_event(event);
            return Err(e.into());
        }
        Ok(HipFence { event })
    }

    fn is_complete(&self, fence: &HipFence) -> Result<bool> {
        // SAFETY: a fence owns a live event until `drop_fence`.
        unsafe { result::event_query(fence.event) }.map_err(Error::from)
    }

    fn wait(&self, fence: &HipFence) -> Result<()> {
        // SAFETY: as above; waits on this one event only.
        unsafe { result::event_synchronize(fence.event) }.map_err(Error::from)
    }

    fn drop_fence(&self, fence: HipFence) {
        self.put_event(fence.event);
    }

    fn create_stream(&self) -> Result<Stream> {
        self.bind()?;
        Ok(Stream(result::stream_create()?))
    }

    unsafe fn destroy_stream(&self, stream: Stream) -> Result<()> {
        if stream == Stream::DEFAULT {
            return Err(refuse(
                Call::Stream,
                (ErrorKind::InvalidHandle, Reason::UnknownHandle),
            )
            .into());
        }
        // SAFETY: the caller guarantees a stream of `create_stream`, unused afterwards.
        unsafe { result::stream_destroy(stream.0) }.map_err(Error::from)
    }

    unsafe fn copy(&self, dst: u64, src: u64, len: usize, stream: Stream) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if stream != Stream::DEFAULT {
            // SAFETY: the caller guarantees both ranges, in stream order.
            return unsafe { result::memcpy_async(dst, src, len, stream.0) }.map_err(Error::from);
        }
        self.bind()?;
        // SAFETY: the caller guarantees both ranges.
        unsafe { result::memcpy(dst, src, len)? };
        // hipMemcpy returns before a device-to-device copy has run (ROCm's
        // ihipMemcpy skips the host wait for those, as cuMemcpy may): the
        // copy has completed once a fence recorded after it has.
        self.wait_default()
    }

    unsafe fn fill(&self, dst: u64, byte: u8, len: usize, stream: Stream) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if stream != Stream::DEFAULT {
            // SAFETY: the caller guarantees the range, in stream order.
            return unsafe { result::memset_async(dst, byte, len, stream.0) }.map_err(Error::from);
        }
        // On the null stream the fill has completed when this returns, as a
        // copy does.
        self.bind()?;
        // SAFETY: the caller guarantees the range is mapped and writable.
        unsafe { result::memset_async(dst, byte, len, 0)? };
        self.wait_default()
    }

    fn create_shareable(&self, size: usize, location: Location) -> Result<HipHandle> {
        match location {
            Location::Device(_) if self.caps.shareable_handles => self.create_as(
                size,
                location,
                sys::HIP_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            ),
            _ => Err(refuse(Call::Share, (ErrorKind::NotSupported, Reason::Unavailable)).into()),
        }
    }

    fn export(&self, handle: HipHandle) -> Result<OwnedFd> {
        let vm = self.lock_vmm();
        vm.check_release(handle)
            .map_err(|r| refuse(Call::Share, r))?;
        if !self.lock_exportable().contains_key(&handle) {
            return Err(
                refuse(Call::Share, (ErrorKind::NotSupported, Reason::NotShareable)).into(),
            );
        }
        self.bind()?;
        // SAFETY: a live handle of ours (checked under the lock, so no
        // release runs meanwhile), created with the POSIX-fd type or imported.
        let raw = unsafe { result::export(handle.0) }?;
        // SAFETY: the runtime just made this descriptor for us; nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: F_SETFD on our own descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(fd)
    }

    unsafe fn import(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        location: Location,
    ) -> Result<HipHandle> {
        if !self.caps.shareable_handles {
            return Err(refuse(Call::Share, (ErrorKind::NotSupported, Reason::Unavailable)).into());
        }
        let mut vm = self.lock_vmm();
        vm.check_create(size as u64, location)
            .map_err(|r| refuse(Call::Share, r))?;
        self.bind()?;
        // SAFETY: the caller guarantees an exported descriptor of `size`
        // bytes; the runtime does not take it.
        let h = HipHandle(unsafe { result::import(fd.as_raw_fd()) }?);
        vm.add_handle(h, size as u64, location);
        self.lock_exportable().insert(h, ());
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_device_is_granted_last() {
        let access = [
            Access::read_write(Location::Device(0)),
            Access::read(Location::Device(2)),
            Access::read_write(Location::Host),
            Access::read_write(Location::Device(1)),
        ];
        let mut out = [sys::hipMemAccessDesc::default(); MAX_ACCESS];
        let n = access_descs(0, &access, &mut out);
        assert_eq!(n, 4);
        let ids: Vec<(u32, i32, u32)> = out[..n]
            .iter()
            .map(|d| (d.location.type_, d.location.id, d.flags))
            .collect();
        assert_eq!(
            ids,
            [
                (sys::HIP_MEM_LOCATION_TYPE_DEVICE, 2, 1),
                (sys::HIP_MEM_LOCATION_TYPE_HOST, 0, 3),
                (sys::HIP_MEM_LOCATION_TYPE_DEVICE, 1, 3),
                (sys::HIP_MEM_LOCATION_TYPE_DEVICE, 0, 3),
            ]
        );
        // Device 1 as the local device moves to the end instead.
        let n = access_descs(1, &access, &mut out);
        assert_eq!(out[n - 1].location.id, 1);
    }

    #[test]
    fn access_flags_round_trip() {
        for m in [AccessMode::None, AccessMode::Read, AccessMode::ReadWrite] {
            assert_eq!(access_mode(u64::from(access_flags(m))), m);
        }
    }

    #[test]
    fn whole_mapping_check_matches_the_rules() {
        let g = 1u64 << 21;
        let mut vm: VmState<HipHandle> = VmState::new(g, 1, false, MAX_RESERVATION);
        vm.add_reservation(1 << 40, 8 * g);
        vm.add_handle(HipHandle(1), 2 * g, Location::Device(0));
        vm.add_handle(HipHandle(2), g, Location::Device(0));
        let va = 1u64 << 40;
        vm.map(va, 2 * g, 0, HipHandle(1)).unwrap();
        vm.map(va + 2 * g, g, 0, HipHandle(2)).unwrap();
        // set_access: whole mappings only (strict, as on CUDA).
        let rw = [Access::read_write(Location::Device(0))];
        let kind = |va, size| {
            vm.check_set_access(va, size, &rw)
                .map(|_| ())
                .map_err(|r| r.1)
        };
        assert_eq!(kind(va, 3 * g), Ok(()));
        assert_eq!(kind(va, 2 * g), Ok(()));
        assert_eq!(kind(va, g), Err(Reason::PartialMapping));
        assert_eq!(kind(va + g, g), Err(Reason::PartialMapping));
        assert_eq!(kind(va, 4 * g), Err(Reason::NotMapped));
        assert_eq!(kind(va, 0), Err(Reason::ZeroSize));
        assert!(matches!(kind(va, g / 2), Err(Reason::NotGranular { .. })));
        // unmap: holes allowed, cutting a mapping in two is not (lenient, as on CUDA).
        assert_eq!(vm.check_unmap(va, 4 * g), Ok(()));
        assert_eq!(
            vm.check_unmap(va + g, g).map_err(|r| r.1),
            Err(Reason::PartialMapping)
        );
    }

    #[test]
    fn new_without_a_gpu_is_a_clean_error() {
        // Here (CI, no /dev/kfd) this is NoDevice; on an AMD machine it may open.
        match HipDriver::new(0) {
            Ok(d) => assert!(d.capabilities().granularity.is_power_of_two()),
            Err(e) => {
                let s = e.to_string();
                assert!(!s.is_empty());
                if let Some(kind) = e.driver_kind() {
                    assert!(
                        matches!(kind, ErrorKind::NoDevice | ErrorKind::InvalidValue),
                        "{s}"
                    );
                }
            }
        }
        // An impossible ordinal is refused, never a panic.
        assert!(HipDriver::new(u32::MAX).is_err());
    }
}
