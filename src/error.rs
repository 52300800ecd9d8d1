//! One error type for the whole crate.
//!
//! An [`Error`] is 32 bytes: every allocator call returns a `Result`, and
//! moving one copies it whole (with the out-of-memory report inline it was
//! 296 bytes, copied twice per C ABI call). The large payloads (an
//! out-of-memory report, a driver error, configuration text) sit behind one
//! box each, from `std::alloc::System`, never from the Rust global allocator:
//! gpu-arena may itself be the global allocator, and an error is built on
//! its allocation paths. Only failures allocate. Each message says what
//! happened and what to do.

use core::fmt;

use crate::meta::{MetaBox, meta_box};
use crate::ptr::DevicePtr;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Which backend produced a driver error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Linux memfd + mmap emulation of the VMM rules (the embedded default).
    Host,
    /// NVIDIA CUDA driver API (`cuMem*`).
    Cuda,
    /// AMD HIP (`hipMem*`).
    Hip,
}

impl Backend {
    /// Lower-case name (`host`, `cuda`, `hip`).
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Host => "host",
            Backend::Cuda => "cuda",
            Backend::Hip => "hip",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The driver entry point that failed, in the seed's VMM vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Loading the runtime library / initializing the driver.
    Init,
    /// Querying devices or attributes.
    Attribute,
    /// Allocation granularity query.
    Granularity,
    /// Virtual address reservation.
    Reserve,
    /// Giving a reservation back.
    FreeReservation,
    /// Creating a physical handle.
    Create,
    /// Releasing a physical handle.
    Release,
    /// Mapping a handle into a reservation.
    Map,
    /// Unmapping a range.
    Unmap,
    /// Setting access rights on a mapped range.
    SetAccess,
    /// Reading the access rights of a mapped range.
    GetAccess,
    /// Recording a fence (event) on a stream.
    Record,
    /// Querying a fence without blocking.
    QueryFence,
    /// Waiting on one fence.
    Wait,
    /// Copying bytes through the driver.
    Copy,
    /// Creating or destroying a stream.
    Stream,
    /// Exporting or importing a shareable handle.
    Share,
    /// Loading or launching a kernel (tests and benchmarks).
    Kernel,
}

impl Call {
    /// The name of the call on `backend` (e.g. `cuMemMap`), for messages.
    pub const fn name(self, backend: Backend) -> &'static str {
        match backend {
            Backend::Cuda => match self {
                Call::Init => "cuInit",
                Call::Attribute => "cuDeviceGetAttribute",
                Call::Granularity => "cuMemGetAllocationGranularity",
                Call::Reserve => "cuMemAddressReserve",
                Call::FreeReservation => "cuMemAddressFree",
                Call::Create => "cuMemCreate",
                Call::Release => "cuMemRelease",
                Call::Map => "cuMemMap",
                Call::Unmap => "cuMemUnmap",
                Call::SetAccess => "cuMemSetAccess",
                Call::GetAccess => "cuMemGetAccess",
                Call::Record => "cuEventRecord",
                Call::QueryFence => "cuEventQuery",
                Call::Wait => "cuEventSynchronize",
                Call::Copy => "cuMemcpy",
                Call::Stream => "cuStreamCreate",
                Call::Share => "cuMemExportToShareableHandle",
                Call::Kernel => "cuLaunchKernel",
            },
            Backend::Hip => match self {
                Call::Init => "hipInit",
                Call::Attribute => "hipDeviceGetAttribute",
                Call::Granularity => "hipMemGetAllocationGranularity",
                Call::Reserve => "hipMemAddressReserve",
                Call::FreeReservation => "hipMemAddressFree",
                Call::Create => "hipMemCreate",
                Call::Release => "hipMemRelease",
                Call::Map => "hipMemMap",
                Call::Unmap => "hipMemUnmap",
                Call::SetAccess => "hipMemSetAccess",
                Call::GetAccess => "hipMemGetAccess",
                Call::Record => "hipEventRecord",
                Call::QueryFence => "hipEventQuery",
                Call::Wait => "hipEventSynchronize",
                Call::Copy => "hipMemcpy",
                Call::Stream => "hipStreamCreate",
                Call::Share => "hipMemExportToShareableHandle",
                Call::Kernel => "hipModuleLaunchKernel",
            },
            Backend::Host => match self {
                Call::Init => "memfd_create",
                Call::Attribute => "host query",
                Call::Granularity => "host granularity",
                Call::Reserve => "mmap(PROT_NONE)",
                Call::FreeReservation => "munmap",
                Call::Create => "host create",
                Call::Release => "fallocate(PUNCH_HOLE)",
                Call::Map => "mmap(MAP_FIXED)",
                Call::Unmap => "mmap(PROT_NONE, MAP_FIXED)",
                Call::SetAccess => "mprotect",
                Call::GetAccess => "host get access",
                Call::Record => "host record",
                Call::QueryFence => "host query fence",
                Call::Wait => "host wait",
                Call::Copy => "memcpy",
                Call::Stream => "host stream",
                Call::Share => "memfd share",
                Call::Kernel => "host kernel",
            },
        }
    }
}

/// What a driver error means, independent of the backend: the layers above
/// and the property-test models compare these, never raw codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad argument (CUDA_ERROR_INVALID_VALUE, hipErrorInvalidValue).
    InvalidValue,
    /// Operation not supported in this form (CUDA_ERROR_NOT_SUPPORTED).
    NotSupported,
    /// The device or address space is out of memory.
    OutOfMemory,
    /// A handle or device ordinal is not valid.
    InvalidHandle,
    /// The operation is not permitted in the current state.
    NotPermitted,
    /// No device, or the runtime library is missing.
    NoDevice,
    /// Anything else (see the raw code).
    Other,
}

impl ErrorKind {
    /// A short lower-case description.
    pub const fn describe(self) -> &'static str {
        match self {
            ErrorKind::InvalidValue => "invalid value",
            ErrorKind::NotSupported => "not supported",
            ErrorKind::OutOfMemory => "out of memory",
            ErrorKind::InvalidHandle => "invalid handle",
            ErrorKind::NotPermitted => "not permitted",
            ErrorKind::NoDevice => "no device",
            ErrorKind::Other => "driver error",
        }
    }
}

/// Why the host backend or the `checked` layer refused a call, in words.
///
/// GPU drivers only return a code; where gpu-arena knows the reason it says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A size of zero.
    ZeroSize,
    /// A size or address not a multiple of the granularity.
    NotGranular {
        /// The value that is not aligned.
        value: u64,
        /// The granularity it must be a multiple of.
        granularity: u64,
    },
    /// The range is not inside one reservation made by this driver.
    OutsideReservation,
    /// The handle is unknown (never created, or already released).
    UnknownHandle,
    /// Part of the range is already mapped.
    AlreadyMapped,
    /// Part of the range is not mapped.
    NotMapped,
    /// The range would cut a mapping in two (partial unmap or partial access).
    PartialMapping,
    /// Mapping at a nonzero offset into a handle.
    NonzeroOffset,
    /// The mapping size differs from the handle size.
    SizeMismatch,
    /// The reservation still has mappings.
    MappingsRemain,
    /// The address is not the start of a reservation, or the size differs.
    NotAReservation,
    /// The size overflows the address space.
    Overflow,
    /// A device ordinal that does not exist.
    NoSuchDevice,
    /// The address-space or physical limit was reached.
    Exhausted,
    /// A fault injected by the `checked` layer.
    Injected,
    /// The operation is not available on this backend.
    Unavailable,
    /// A host (CPU) accessor for device-located memory.
    HostAccessToDeviceMemory,
    /// Export of a handle that was not created shareable.
    NotShareable,
    /// Import of a descriptor that is not an exported handle of this size.
    BadSharedHandle,
}

impl Reason {
    fn write(self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ZeroSize => f.write_str("the size is zero; ask for at least one granule"),
            Reason::NotGranular { value, granularity } => write!(
                f,
                "{value:#x} is not a multiple of the granularity {granularity:#x}; round it to the granularity"
            ),
            Reason::OutsideReservation => f.write_str(
                "the range is not inside one reservation of this driver; reserve it first",
            ),
            Reason::UnknownHandle => f.write_str(
                "the handle is unknown (never created or already released); use a live handle",
            ),
            Reason::AlreadyMapped => {
                f.write_str("part of the range is already mapped; unmap it first")
            }
            Reason::NotMapped => f.write_str("part of the range is not mapped; map it first"),
            Reason::PartialMapping => f.write_str(
                "the range cuts a mapping in two; drivers only unmap or change whole mappings",
            ),
            Reason::NonzeroOffset => f.write_str(
                "mapping at a nonzero offset into a handle is not supported; map from offset 0",
            ),
            Reason::SizeMismatch => f.write_str(
                "the mapping size differs from the handle size; map the whole handle",
            ),
            Reason::MappingsRemain => f.write_str(
                "the reservation still has mappings; unmap everything before freeing it",
            ),
            Reason::NotAReservation => f.write_str(
                "address and size do not name a whole reservation; pass what reserve returned",
            ),
            Reason::Overflow => f.write_str("the size overflows the address space"),
            Reason::NoSuchDevice => f.write_str("no such device ordinal"),
            Reason::Exhausted => f.write_str(
                "the physical memory or address space is exhausted; free or trim memory, or lower the request",
            ),
            Reason::Injected => f.write_str("fault injected by the checked driver (tests)"),
            Reason::Unavailable => f.write_str("this backend does not offer the operation"),
            Reason::HostAccessToDeviceMemory => f.write_str(
                "device memory cannot be mapped for the CPU; create the handle at Location::Host for CPU access",
            ),
            Reason::NotShareable => f.write_str(
                "the handle was not created shareable; create it with create_shareable to export it",
            ),
            Reason::BadSharedHandle => f.write_str(
                "the descriptor is not an exported handle of that size (or its file can shrink); pass what export produced, with its size",
            ),
        }
    }
}

/// A driver call failed: backend, call, raw code and its meaning.
///
/// `Copy` and allocation-free; the code's name is looked up when printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DriverError {
    /// The backend that failed.
    pub backend: Backend,
    /// The call that failed.
    pub call: Call,
    /// The raw code (CUresult, hipError_t, or the CUDA-equivalent code for host and checked).
    pub code: i32,
    /// What the code means.
    pub kind: ErrorKind,
    /// Why, when gpu-arena knows (host backend, `checked` layer).
    pub reason: Option<Reason>,
    /// True when the `checked` layer refused the call before it reached the driver.
    pub checked: bool,
}

impl DriverError {
    /// An error for `call` on `backend` with the CUDA-equivalent code of `kind`.
    pub const fn new(backend: Backend, call: Call, kind: ErrorKind, reason: Reason) -> Self {
        DriverError {
            backend,
            call,
            code: kind_to_cuda_code(kind),
            kind,
            reason: Some(reason),
            checked: false,
        }
    }

    /// The code's symbolic name (`CUDA_ERROR_INVALID_VALUE`,
    /// `hipErrorInvalidValue`, …): the runtime's own (`cuGetErrorName`,
    /// `hipGetErrorName`) where it is loaded, else the name of a code
    /// gpu-arena reports itself ([`cuda_code_name`], [`hip_code_name`]).
    pub fn code_name(&self) -> &'static str {
        match self.backend {
            Backend::Hip => {
                runtime_name(self.backend, self.code).unwrap_or_else(|| hip_code_name(self.code))
            }
            Backend::Cuda => {
                runtime_name(self.backend, self.code).unwrap_or_else(|| cuda_code_name(self.code))
            }
            Backend::Host => cuda_code_name(self.code),
        }
    }

    /// The runtime's description of the code (`cuGetErrorString`,
    /// `hipGetErrorString`), where that runtime is loaded.
    pub fn description(&self) -> Option<&'static str> {
        runtime_texts(self.backend).and_then(|t| (t.string)(self.code))
    }
}

/// How a loaded runtime names and describes its codes (`cuGetErrorName` /
/// `cuGetErrorString`, `hipGetErrorName` / `hipGetErrorString`). The driver
/// layer registers them when it loads a runtime ([`set_runtime_texts`]);
/// the messages here read them, so the error type never calls into a
/// driver.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RuntimeTexts {
    /// The code's symbolic name, where the runtime gives one.
    pub(crate) name: fn(i32) -> Option<&'static str>,
    /// The code's description, where the runtime gives one.
    pub(crate) string: fn(i32) -> Option<&'static str>,
}

static CUDA_TEXTS: std::sync::OnceLock<RuntimeTexts> = std::sync::OnceLock::new();
static HIP_TEXTS: std::sync::OnceLock<RuntimeTexts> = std::sync::OnceLock::new();

/// Registers how `backend`'s runtime names its codes (the first
/// registration stays; the host backend has no runtime).
#[cfg_attr(not(any(feature = "cuda", feature = "hip")), allow(dead_code))]
pub(crate) fn set_runtime_texts(backend: Backend, texts: RuntimeTexts) {
    match backend {
        Backend::Cuda => {
            let _ = CUDA_TEXTS.set(texts);
        }
        Backend::Hip => {
            let _ = HIP_TEXTS.set(texts);
        }
        Backend::Host => {}
    }
}

fn runtime_texts(backend: Backend) -> Option<&'static RuntimeTexts> {
    match backend {
        Backend::Cuda => CUDA_TEXTS.get(),
        Backend::Hip => HIP_TEXTS.get(),
        Backend::Host => None,
    }
}

/// The runtime's own name for `code`, where its runtime was loaded.
fn runtime_name(backend: Backend, code: i32) -> Option<&'static str> {
    runtime_texts(backend).and_then(|t| (t.name)(code))
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed{}: {} ({}, {}",
            self.call.name(self.backend),
            if self.checked {
                " (refused by the checked driver)"
            } else {
                ""
            },
            self.kind.describe(),
            self.code_name(),
            self.code
        )?;
        match self.description() {
            Some(d) => write!(f, ": {d})")?,
            None => f.write_str(")")?,
        }
        if let Some(reason) = self.reason {
            f.write_str(": ")?;
            reason.write(f)?;
        } else {
            match self.kind {
                ErrorKind::NoDevice => f.write_str(
                    ": no usable device or runtime library; the host backend works everywhere",
                )?,
                ErrorKind::OutOfMemory => {
                    f.write_str(": the device is out of memory; free or trim memory")?
                }
                _ => f.write_str(": check the arguments against the driver rules (gpu_arena::driver::rules, docs/conformance.md)")?,
            }
        }
        Ok(())
    }
}

/// The CUDA code that stands for `kind` (used by the host backend and the
/// checked layer so that all backends report the same codes).
pub const fn kind_to_cuda_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::InvalidValue => 1,
        ErrorKind::OutOfMemory => 2,
        ErrorKind::NoDevice => 100,
        ErrorKind::InvalidHandle => 400,
        ErrorKind::NotPermitted => 800,
        ErrorKind::NotSupported => 801,
        ErrorKind::Other => 999,
    }
}

/// The [`ErrorKind`] of a CUDA driver code.
pub const fn cuda_code_kind(code: i32) -> ErrorKind {
    match code {
        1 | 101 => ErrorKind::InvalidValue,
        2 => ErrorKind::OutOfMemory,
        3 | 4 | 34 | 100 => ErrorKind::NoDevice,
        400 | 201 => ErrorKind::InvalidHandle,
        800 => ErrorKind::NotPermitted,
        801 => ErrorKind::NotSupported,
        _ => ErrorKind::Other,
    }
}

/// Symbolic name of a CUDA code that gpu-arena reports itself: the codes of
/// [`kind_to_cuda_code`] (host backend, checked layer, and a CUDA backend
/// that found no driver library). Codes from the driver are named by the
/// driver (see [`DriverError::code_name`]).
pub const fn cuda_code_name(code: i32) -> &'static str {
    match code {
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        100 => "CUDA_ERROR_NO_DEVICE",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        800 => "CUDA_ERROR_NOT_PERMITTED",
        801 => "CUDA_ERROR_NOT_SUPPORTED",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "CUresult",
    }
}

/// The [`ErrorKind`] of a HIP code. Both `hipErrorInvalidValue` and
/// `hipErrorMemoryAllocation` for bad reservation sizes map so that the layers
/// above see the same kinds as on CUDA (see DESIGN.md, HIP specifics).
pub const fn hip_code_kind(code: i32) -> ErrorKind {
    match code {
        1 | 101 => ErrorKind::InvalidValue,
        2 => ErrorKind::OutOfMemory,
        3 | 100 | 35 => ErrorKind::NoDevice,
        400 | 201 => ErrorKind::InvalidHandle,
        800 => ErrorKind::NotPermitted,
        801 => ErrorKind::NotSupported,
        _ => ErrorKind::Other,
    }
}

/// Symbolic name of a HIP code that gpu-arena reports itself (the codes of
/// [`kind_to_cuda_code`], which HIP numbers alike). Codes from the runtime
/// are named by the runtime (see [`DriverError::code_name`]).
pub const fn hip_code_name(code: i32) -> &'static str {
    match code {
        1 => "hipErrorInvalidValue",
        2 => "hipErrorOutOfMemory",
        100 => "hipErrorNoDevice",
        400 => "hipErrorInvalidHandle",
        800 => "hipErrorNotPermitted",
        801 => "hipErrorNotSupported",
        999 => "hipErrorUnknown",
        _ => "hipError_t",
    }
}

/// Which bad pointer was passed to a free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BadPointer {
    /// The pointer does not belong to this allocator.
    Foreign,
    /// The pointer points inside a live block, not at its start.
    Interior,
    /// The block was already freed.
    DoubleFree,
    /// The size or alignment passed with the free differs from the allocation's.
    LayoutMismatch,
    /// The pointer lies in a scratch arena, whose memory is given back all
    /// at once by its `reset()` (or by dropping it), never one block at a time.
    Scratch,
}

/// An out-of-memory report as [`Error::OutOfMemory`] carries it: boxed, so
/// that an `Error`, and every `Result` of the allocator, stays small (with
/// the report inline a `Result` was 296 bytes, copied whenever one was
/// moved, on every call), and from the system allocator, never from an
/// arena (an arena may serve the program's own heap: see
/// `ArenaGlobalAlloc` in `api`).
pub type OomBox = MetaBox<OomReport>;

/// A driver error as [`Error::Driver`] carries it: boxed from the system
/// allocator, as [`OomBox`] and for the same reasons.
pub type DriverBox = MetaBox<DriverError>;

/// Out-of-memory figures (plain numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct OomReport {
    /// Bytes requested.
    pub requested: u64,
    /// Bytes live in blocks.
    pub live: u64,
    /// Bytes of physical memory committed.
    pub committed: u64,
    /// The configured limit on committed bytes (`u64::MAX` when none).
    pub limit: u64,
    /// Bytes that could be given back at once (completed decommit candidates).
    pub reclaimable: u64,
    /// Bytes waiting behind fences that had not completed.
    pub pending: u64,
    /// Fences still pending.
    pub pending_fences: u64,
    /// Live bytes and blocks per policy: slab, large, scratch, grow.
    pub policies: [PolicyUsage; 4],
    /// The tags with the most committed memory (the requesting one first).
    pub tags: [TagUsage; 4],
    /// How many entries of `tags` are filled.
    pub tag_count: u8,
}

/// One policy's share in an out-of-memory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct PolicyUsage {
    /// Live blocks.
    pub blocks: u64,
    /// Live bytes.
    pub live: u64,
}

/// One tag's share in an out-of-memory report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct TagUsage {
    /// Tag name (truncated to 23 bytes).
    #[serde(serialize_with = "ser_name")]
    pub name: [u8; 23],
    /// Live bytes.
    pub live: u64,
    /// Committed bytes.
    pub committed: u64,
}

fn ser_name<S: serde::Serializer>(name: &[u8; 23], s: S) -> core::result::Result<S::Ok, S::Error> {
    s.serialize_str(tag_name(name))
}

fn tag_name(name: &[u8; 23]) -> &str {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    core::str::from_utf8(&name[..end]).unwrap_or("?")
}

impl TagUsage {
    /// A tag's figures.
    pub fn new(name: &str, live: u64, committed: u64) -> Self {
        let mut n = [0u8; 23];
        let mut end = name.len().min(23);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        n[..end].copy_from_slice(&name.as_bytes()[..end]);
        TagUsage {
            name: n,
            live,
            committed,
        }
    }
    /// The tag's name.
    pub fn name(&self) -> &str {
        tag_name(&self.name)
    }
}

const POLICY_NAMES: [&str; 4] = ["slab", "large", "scratch", "grow"];

impl OomReport {
    /// Committed bytes not holding live data.
    pub const fn fragmentation(&self) -> u64 {
        self.committed.saturating_sub(self.live)
    }

    /// One line saying what to change.
    pub fn hint(&self) -> &'static str {
        if self.limit != u64::MAX && self.committed.saturating_add(self.requested) > self.limit {
            "raise the limit (GPU_ARENA_CONF=limit:...) or free memory"
        } else if self.reclaimable > 0 {
            "call trim() to give back completed empty pages before retrying"
        } else if self.pending > 0 {
            "empty pages still wait on queued work: let the streams finish, or free earlier"
        } else if self.fragmentation() > self.requested {
            "memory is fragmented: free long-lived small blocks or lower keep_alive_fraction"
        } else {
            "the device is full: free memory, lower the request, or sleep a tag"
        }
    }
}

impl fmt::Display for OomReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "out of memory: requested {} bytes; live {}, committed {}, fragmentation {}, limit {}, reclaimable {}, pending behind {} fence(s) {}",
            self.requested,
            self.live,
            self.committed,
            self.fragmentation(),
            fmt_limit(self.limit),
            self.reclaimable,
            self.pending_fences,
            self.pending
        )?;
        f.write_str("; by policy:")?;
        for (name, p) in POLICY_NAMES.iter().zip(self.policies.iter()) {
            write!(f, " {name} {} in {} block(s)", p.live, p.blocks)?;
        }
        if self.tag_count > 0 {
            f.write_str("; by tag:")?;
            for t in &self.tags[..self.tag_count as usize] {
                write!(f, " {} live {} committed {}", t.name(), t.live, t.committed)?;
            }
        }
        write!(f, ". Hint: {}", self.hint())
    }
}

/// Every error gpu-arena returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A driver call failed or was refused.
    #[error("{0}")]
    Driver(DriverBox),
    /// The arena could not find or commit memory for a request.
    #[error("{0}")]
    OutOfMemory(OomBox),
    /// A request of zero bytes where one is not allowed.
    #[error("zero-size request: ask for at least one byte")]
    ZeroSize,
    /// An alignment that is not a power of two, or larger than the arena supports.
    #[error("alignment {align} is not supported: use a power of two no larger than {max}")]
    BadAlignment {
        /// Requested alignment.
        align: u64,
        /// Largest supported alignment.
        max: u64,
    },
    /// The size, once rounded, overflows or exceeds what the arena can ever hold.
    #[error("size {size} is too large: this arena holds at most {max} bytes in one block")]
    TooLarge {
        /// Requested size.
        size: u64,
        /// Largest possible block.
        max: u64,
    },
    /// A size computed as a count times an element size overflows 64 bits.
    #[error(
        "size overflow: {count} elements of {elem_size} bytes do not fit in 64 bits; ask for fewer elements"
    )]
    SizeOverflow {
        /// Number of elements requested.
        count: u64,
        /// Bytes per element.
        elem_size: u64,
    },
    /// A free or resize got a pointer it cannot accept; nothing was changed.
    #[error("bad pointer {addr:#x} ({}): nothing was freed; pass exactly what alloc returned, once", describe_bad(*.kind))]
    BadPointer {
        /// The pointer.
        addr: DevicePtr,
        /// What is wrong with it.
        kind: BadPointer,
    },
    /// A scratch arena handle was used after a reset invalidated it.
    #[error(
        "scratch arena used after reset: generation {used} is stale (now {current}); allocate again after reset()"
    )]
    StaleScratch {
        /// Generation the caller held.
        used: u64,
        /// Current generation.
        current: u64,
    },
    /// A scratch arena allocation would pass the arena's allocation limit
    /// (`Scratch::set_allocation_limit`); nothing was allocated.
    #[error(
        "scratch allocation of {requested} bytes refused: it would pass the allocation limit of {limit} bytes ({allocated} allocated since the last reset); raise the limit or reset()"
    )]
    ScratchLimit {
        /// Bytes requested.
        requested: u64,
        /// Bytes allocated since the last reset (padding included).
        allocated: u64,
        /// The allocation limit.
        limit: u64,
    },
    /// A scratch arena allocation does not fit the address space the
    /// scratch arena reserved; nothing was allocated.
    #[error(
        "scratch allocation of {requested} bytes does not fit: {allocated} of the {max} bytes the scratch arena reserved are allocated; reset() or create it with a larger ScratchConfig::max"
    )]
    ScratchFull {
        /// Bytes requested.
        requested: u64,
        /// Bytes allocated since the last reset (padding included).
        allocated: u64,
        /// Bytes the scratch arena reserved.
        max: u64,
    },
    /// A growable buffer cannot grow past the maximum it reserved.
    #[error(
        "cannot grow to {requested} bytes: the buffer reserved at most {max}; create it with a larger maximum"
    )]
    GrowBeyondMax {
        /// Requested length.
        requested: u64,
        /// Reserved maximum.
        max: u64,
    },
    /// A configuration string or value was rejected.
    #[error("bad configuration: {0}")]
    Config(&'static str),
    /// A configuration entry was rejected (the text names it).
    #[error("bad configuration `{text}`: {what}")]
    BadConfig {
        /// What is wrong.
        what: &'static str,
        /// The offending text (truncated to 47 bytes).
        text: ConfigText,
    },
    /// A scratch arena or growable buffer asked for more address space than
    /// the arena's whole buffers region: no free or trim can make it fit.
    #[error(
        "cannot reserve {requested} bytes: the arena keeps only {capacity} bytes of its reservation for scratch arenas and growable buffers; configure a larger reservation (`ArenaConfig::reservation`, `GPU_ARENA_CONF=reservation:SIZE`) or ask for less"
    )]
    ExceedsReservation {
        /// Requested bytes.
        requested: u64,
        /// Bytes of the arena's buffers region (its share of the reservation).
        capacity: u64,
    },
    /// A copy to or from device memory that does not lie in one live block.
    #[error(
        "cannot copy {len} bytes at {addr}: the live block there holds {block} bytes (0: no live block of this arena starts there); copy within one block that alloc returned"
    )]
    BadCopy {
        /// The device address given.
        addr: DevicePtr,
        /// Bytes asked for.
        len: u64,
        /// Bytes of the live block starting at `addr` (0: none).
        block: u64,
    },
    /// The arena's address space (its reservation) is full.
    #[error(
        "the arena's reservation of {reserved} bytes is full (requested {requested}); configure a larger reservation"
    )]
    AddressSpace {
        /// Requested bytes.
        requested: u64,
        /// Reserved bytes.
        reserved: u64,
    },
    /// Allocation (or resize, copy, export) on a tag that is asleep; frees
    /// are served.
    #[error("tag {tag} is asleep: wake it before allocating, resizing or copying in it")]
    Asleep {
        /// The tag's index.
        tag: u32,
    },
    /// This operation does not apply to this memory kind or backend.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Sleep or wake named a tag that does not exist on this device.
    #[error(
        "no tag named `{name}` on this device: a tag exists once something was allocated under it (or a limit was set for it); check the name"
    )]
    UnknownTag {
        /// The name given (truncated to 47 bytes).
        name: ConfigText,
    },
}

/// A short piece of configuration text, behind one pointer from the system
/// allocator (as [`OomBox`], so that an `Error` stays small).
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigText(MetaBox<TextBuf>);

#[derive(Clone, PartialEq, Eq)]
struct TextBuf {
    buf: [u8; 47],
    len: u8,
}

impl ConfigText {
    /// Keeps up to 47 bytes of `s` (cut at a character boundary).
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(47);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; 47];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        let text = TextBuf {
            buf,
            len: end as u8,
        };
        ConfigText(meta_box(text))
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0.buf[..self.0.len as usize]).unwrap_or("")
    }
}

impl fmt::Display for ConfigText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ConfigText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

fn describe_bad(kind: BadPointer) -> &'static str {
    match kind {
        BadPointer::Foreign => "not allocated by this arena",
        BadPointer::Interior => "points inside a block, not at its start",
        BadPointer::DoubleFree => "already freed (or never allocated at this address)",
        BadPointer::LayoutMismatch => "size or alignment differs from the allocation",
        BadPointer::Scratch => {
            "belongs to a scratch arena, whose memory goes back all at once on its reset() or drop"
        }
    }
}

struct Limit(u64);
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u64::MAX {
            f.write_str("none")
        } else {
            write!(f, "{}", self.0)
        }
    }
}
fn fmt_limit(limit: u64) -> Limit {
    Limit(limit)
}

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        Error::Driver(meta_box(e))
    }
}

impl Error {
    /// An out-of-memory error with `report` (boxed, see [`OomBox`]).
    pub fn oom(report: OomReport) -> Self {
        Error::OutOfMemory(meta_box(report))
    }

    /// The driver error kind, where this is a driver error.
    pub fn driver_kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Driver(d) => Some(d.kind),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_stay_small() {
        // Every allocator call returns one, and a move copies it whole.
        assert!(core::mem::size_of::<Error>() <= 32);
        assert!(core::mem::size_of::<Result<DevicePtr>>() <= 32);
        // The boxed payloads read as before.
        let e = Error::oom(OomReport {
            requested: 3,
            ..Default::default()
        });
        let Error::OutOfMemory(r) = &e else {
            panic!("{e}")
        };
        assert_eq!(r.requested, 3);
        assert_eq!(e.clone(), e);
        let t = ConfigText::new("shards:x");
        assert_eq!(t.as_str(), "shards:x");
        assert_eq!(t.clone(), t);
    }

    #[test]
    fn messages_say_what_and_what_to_do() {
        let e = Error::from(DriverError::new(
            Backend::Host,
            Call::Map,
            ErrorKind::NotSupported,
            Reason::NonzeroOffset,
        ));
        let s = e.to_string();
        assert!(s.contains("mmap(MAP_FIXED)"), "{s}");
        assert!(s.contains("CUDA_ERROR_NOT_SUPPORTED"), "{s}");
        assert!(s.contains("map from offset 0"), "{s}");
        let oom = Error::oom(OomReport {
            requested: 10,
            limit: u64::MAX,
            ..Default::default()
        });
        assert!(oom.to_string().contains("limit none"));
    }

    #[test]
    fn every_code_gpu_arena_reports_itself_has_a_name() {
        for kind in [
            ErrorKind::InvalidValue,
            ErrorKind::NotSupported,
            ErrorKind::OutOfMemory,
            ErrorKind::InvalidHandle,
            ErrorKind::NotPermitted,
            ErrorKind::NoDevice,
            ErrorKind::Other,
        ] {
            let code = kind_to_cuda_code(kind);
            assert!(cuda_code_name(code).starts_with("CUDA_ERROR_"), "{kind:?}");
            assert!(hip_code_name(code).starts_with("hipError"), "{kind:?}");
            assert_eq!(cuda_code_kind(code), kind);
        }
        // The host backend never asks a runtime: no description.
        let e = DriverError::new(
            Backend::Host,
            Call::Map,
            ErrorKind::InvalidValue,
            Reason::NotMapped,
        );
        assert_eq!(e.code_name(), "CUDA_ERROR_INVALID_VALUE");
        assert_eq!(e.description(), None);
    }
}
