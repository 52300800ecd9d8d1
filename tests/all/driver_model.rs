//! Random programs of driver calls, checked step by step against a model.
//!
//! A program is a list of [`Op`]s — reserve, create (device- or host-located),
//! map, unmap, set_access, get_access, release, free_reservation, and a byte
//! check — many of them deliberately bad, each with one [flaw](MapFlaw). Ops
//! name things by index into what the model holds at that moment ("the 3rd
//! mapping", modulo the count), so every list of ops is a program that can
//! run, and shrinking keeps it meaningful.
//!
//! Before each call the [`Model`] — a few `Vec`s and a `BTreeMap` written
//! here, independent of `src/driver/rules.rs` — lists the rules the call
//! breaks; the first one's [`expected_kind`] (ONE table, from the H100 probe)
//! is the prediction, `Ok` when none is broken. After the call, `Ok` or
//! `err.driver_kind()` must equal it. Bytes written through one mapping must
//! read back through every other mapping of the same handle, and no write
//! may show through another handle's mappings. At the end the program gives
//! back everything the model says is live, and the driver must be clean.
//!
//! [`run_program`] is generic over [`Driver`] and runs on the raw host
//! backend, on `Checked<HostDriver>` and, with feature `cuda` and a GPU, on
//! the CUDA driver. On a real GPU it skips the few calls whose outcome the
//! H100 leaves undefined (see [`Model::hazard`]).
//!
//! `GPU_ARENA_PROPTEST_CASES` overrides the number of programs per driver;
//! `GPU_ARENA_PROPTEST_SEED` (a `u64`) the fixed seed (failure persistence is
//! off: a failure prints its shrunk program, paste it into a test to keep it).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use gpu_arena::driver::{Access, AccessMode, Checked, Driver, HostDriver, Location, Stream};
use gpu_arena::{Backend, ErrorKind};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

// ---------------------------------------------------------------------------
// The expected error of each rule violation: THE table to adjust.
// ---------------------------------------------------------------------------

/// A rule a call breaks, in the model's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A size of zero (reserve, create, map, unmap, set_access).
    ZeroSize,
    /// A size or address that is not a multiple of the granularity.
    NotGranular,
    /// A reservation alignment that is not a power of two.
    BadAlignment,
    /// A reservation larger than the driver's largest.
    TooLarge,
    /// More physical memory than the device has.
    Exhausted,
    /// A device ordinal that does not exist (create, set_access, get_access).
    NoSuchDevice,
    /// A handle released already (double release, map after release).
    StaleHandle,
    /// A `map`/`unmap` range not inside one live reservation.
    OutsideReservation,
    /// `map` at a nonzero offset into the handle.
    NonzeroOffset,
    /// `map` with a size other than the handle's.
    SizeMismatch,
    /// `map` over a range that is (partly) mapped.
    AlreadyMapped,
    /// `unmap`/`set_access` that would cut a mapping in two.
    PartialMapping,
    /// `set_access`/`get_access` on an address that is not mapped.
    NotMapped,
    /// `set_access` with an empty access list.
    EmptyAccessList,
    /// `set_access` with a host (CPU) accessor on device-located memory.
    HostAccessToDeviceMemory,
    /// `free_reservation` of an address that is not a live reservation's base.
    NotAReservation,
    /// `free_reservation` with a size other than the reservation's.
    WrongSize,
    /// `free_reservation` of a reservation that still has mappings.
    MappingsRemain,
}

/// What a driver returns for each violation, as probed on an H100 (CUDA 13.0,
/// driver 580; `research/vmm-probe-h100.md`, case names in the comments).
/// The host backend and the checked layer must return the same.
pub const fn expected_kind(v: Violation) -> ErrorKind {
    use ErrorKind::*;
    match v {
        // reserve/create/map/unmap/set_access "size0": INVALID_VALUE (1).
        Violation::ZeroSize => InvalidValue,
        // reserve/create "size G/2", map/unmap "unaligned_va", unmap
        // "unaligned_size": INVALID_VALUE.
        Violation::NotGranular => InvalidValue,
        // reserve "alignment 3G": INVALID_VALUE.
        Violation::BadAlignment => InvalidValue,
        // reserve "128 TiB": OUT_OF_MEMORY (2).
        Violation::TooLarge => OutOfMemory,
        // create "size 1<<50": OUT_OF_MEMORY.
        Violation::Exhausted => OutOfMemory,
        // create "DEVICE id 1" and get_access "location_device1":
        // INVALID_DEVICE (101); set_access "device_id_1": INVALID_VALUE.
        // Both are the InvalidValue kind.
        Violation::NoSuchDevice => InvalidValue,
        // release "twice", "handle_0": INVALID_VALUE (a stale or bogus
        // handle crashes the H100 driver: the backends keep the set of live
        // handles and refuse the others themselves).
        Violation::StaleHandle => InvalidValue,
        // map "va_at_res_end", "va_never_reserved", "starts G before":
        // INVALID_VALUE; unmap "never_reserved": INVALID_VALUE.
        Violation::OutsideReservation => InvalidValue,
        // map "handle_offset_G", "handle_offset_4096": NOT_SUPPORTED (801).
        Violation::NonzeroOffset => NotSupported,
        // map "size_G_of_2G_handle", "size_2G_of_G_handle",
        // "unaligned_size(G+4096)": NOT_SUPPORTED.
        Violation::SizeMismatch => NotSupported,
        // map "over_mapped_*", "partial_overlap": INVALID_VALUE.
        Violation::AlreadyMapped => InvalidValue,
        // unmap/set_access "first_G_of_2G", "last_G_of_2G": INVALID_VALUE.
        Violation::PartialMapping => InvalidValue,
        // set_access "unmapped_range", "mapping_plus_unmapped_tail",
        // get_access "unmapped_addr_in_res": INVALID_VALUE. (unmap of an
        // unmapped range SUCCEEDS on the H100: no violation.)
        Violation::NotMapped => InvalidValue,
        // set_access "count0": INVALID_VALUE.
        Violation::EmptyAccessList => InvalidValue,
        // set_access "HOST_loc_on_device_mem": NOT_SUPPORTED.
        Violation::HostAccessToDeviceMemory => NotSupported,
        // free "never_reserved", "twice", "sub_range_middle": INVALID_VALUE.
        Violation::NotAReservation => InvalidValue,
        // free "size_larger", "size_smaller", "size0": INVALID_VALUE.
        Violation::WrongSize => InvalidValue,
        // free "with_mappings": INVALID_VALUE.
        Violation::MappingsRemain => InvalidValue,
    }
}

// ---------------------------------------------------------------------------
// Programs
// ---------------------------------------------------------------------------

/// One step of a program. Indices pick among what the model holds (modulo
/// the count); `flaw` breaks one rule on purpose (`None`: a valid call, as
/// far as the state allows).
#[derive(Clone, Debug)]
pub enum Op {
    /// Reserve `granules` granules.
    Reserve {
        granules: u64,
        align: Align,
        flaw: Option<ReserveFlaw>,
    },
    /// Create a handle of `granules` granules, host-located if `host`.
    Create {
        granules: u64,
        host: bool,
        flaw: Option<CreateFlaw>,
    },
    /// Map a live handle into a free slot of a reservation.
    Map {
        handle: usize,
        res: usize,
        slot: usize,
        flaw: Option<MapFlaw>,
    },
    /// Unmap a mapping.
    Unmap {
        pick: usize,
        flaw: Option<RangeFlaw>,
    },
    /// Set access on a mapping.
    SetAccess {
        pick: usize,
        grant: Grant,
        flaw: Option<AccessFlaw>,
    },
    /// Ask the access of an address inside a mapping.
    GetAccess {
        pick: usize,
        offset: u64,
        flaw: Option<GetFlaw>,
    },
    /// Release a live handle (`stale`: one already released).
    Release { pick: usize, stale: bool },
    /// Free a reservation.
    FreeReservation { pick: usize, flaw: Option<FreeFlaw> },
    /// Write `byte` at block `block` through a writable mapping, then check
    /// every known block through every readable mapping.
    Bytes { pick: usize, block: u8, byte: u8 },
}

/// Valid reservation alignments.
#[derive(Clone, Copy, Debug)]
pub enum Align {
    /// 0: the granularity.
    Default,
    /// 4096, below the granularity (accepted, rounded up).
    Page,
    /// Four granules.
    FourGranules,
}

#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum ReserveFlaw {
    ZeroSize,
    NotGranular,
    AlignNotPowerOfTwo,
    TooLarge,
}

#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum CreateFlaw {
    ZeroSize,
    NotGranular,
    NoSuchDevice,
    TooLarge,
}

#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum MapFlaw {
    ZeroSize,
    SizeNotGranular,
    Smaller,
    Larger,
    Misaligned,
    NonzeroOffset,
    OverMapped,
    /// Starts in the last granule of the reservation (runs past it if larger).
    PastEnd,
    /// Starts right after the reservation.
    AfterEnd,
    Unreserved,
    StaleHandle,
}

/// Ranges for unmap and set_access, around a picked mapping.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum RangeFlaw {
    /// The first granule of the mapping.
    Head,
    /// The last granule of the mapping.
    Tail,
    /// The mapping and the granule after it.
    PlusNext,
    /// Two adjacent whole mappings.
    SpanTwo,
    /// An unmapped granule of a reservation.
    Hole,
    /// A granule that is not reserved.
    Unreserved,
    Misaligned,
    ZeroSize,
    SizeNotGranular,
    /// The last granule of the mapping's reservation and one past its end.
    PastEnd,
}

/// Access lists for a valid set_access.
#[derive(Clone, Copy, Debug)]
pub enum Grant {
    /// Device 0 read-write.
    DeviceRw,
    /// Device 0 read-only.
    DeviceRead,
    /// Device 0 revoked.
    DeviceNone,
    /// Device 0 and the CPU read-write (where every mapping is host-located).
    WithHost,
}

#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum AccessFlaw {
    Range(RangeFlaw),
    EmptyList,
    NoSuchDevice,
    /// `[host rw, device 0 rw]` on device-located memory.
    HostOnDevice,
}

#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum GetFlaw {
    Hole,
    Unreserved,
    NoSuchDevice,
}

#[allow(missing_docs)]
#[derive(Clone, Copy, Debug)]
pub enum FreeFlaw {
    Smaller,
    Bigger,
    Interior,
    ZeroSize,
    Twice,
    Unreserved,
    WithMappings,
}

/// A concrete driver call, resolved from an [`Op`] against the model.
#[derive(Clone, Debug)]
pub enum Call {
    Reserve {
        size: u64,
        align: u64,
    },
    Create {
        size: u64,
        location: Location,
    },
    /// `handle` is the model's index.
    Map {
        va: u64,
        size: u64,
        offset: u64,
        handle: usize,
    },
    Unmap {
        va: u64,
        size: u64,
    },
    SetAccess {
        va: u64,
        size: u64,
        access: Vec<Access>,
    },
    GetAccess {
        va: u64,
        accessor: Location,
    },
    /// `handle` is the model's index.
    Release {
        handle: usize,
    },
    FreeReservation {
        va: u64,
        size: u64,
    },
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// Below this, nothing is ever reserved: addresses there are "unreserved" on
/// every backend (other unreserved addresses may belong to a real driver).
const LOW: u64 = 1 << 30;

/// Bytes written per block by [`Op::Bytes`].
const BLOCK: u64 = 64;

/// The VMM state as the rules describe it: what is reserved, mapped and
/// created, and which bytes are known.
#[derive(Debug)]
pub struct Model {
    g: u64,
    devices: u32,
    host_memory: bool,
    max_reservation: u64,
    capacity: u64,
    /// Every reservation ever made, in order (freed ones kept, `live` false).
    reservations: Vec<Reservation>,
    /// Mappings by start address.
    mappings: BTreeMap<u64, Mapping>,
    /// Every handle ever created, in order; the index names it.
    handles: Vec<Handle>,
}

#[derive(Clone, Copy, Debug)]
struct Reservation {
    base: u64,
    size: u64,
    live: bool,
}

#[derive(Clone, Debug)]
struct Mapping {
    size: u64,
    handle: usize,
    /// Rights by accessor; absent = none (a fresh mapping has none).
    rights: Vec<(Location, AccessMode)>,
}

impl Mapping {
    fn mode(&self, who: Location) -> AccessMode {
        self.rights
            .iter()
            .find(|(l, _)| *l == who)
            .map_or(AccessMode::None, |(_, m)| *m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HandleState {
    Live,
    /// Released by its owner while mapped: the memory stays until the last unmap.
    Released,
    /// Its memory went back.
    Gone,
}

#[derive(Clone, Debug)]
struct Handle {
    size: u64,
    location: Location,
    state: HandleState,
    mappings: usize,
    /// Block offset -> the byte written there last.
    known: BTreeMap<u64, u8>,
}

impl Model {
    fn new(caps: &gpu_arena::driver::Capabilities, host_memory: bool) -> Self {
        Model {
            g: caps.granularity as u64,
            devices: caps.device_count,
            host_memory,
            max_reservation: caps.max_reservation,
            capacity: caps.device_memory,
            reservations: Vec::new(),
            mappings: BTreeMap::new(),
            handles: Vec::new(),
        }
    }

    // ---- queries

    fn live_reservations(&self) -> Vec<Reservation> {
        self.reservations
            .iter()
            .copied()
            .filter(|r| r.live)
            .collect()
    }

    /// The live reservation that holds all of `va..va + size`.
    fn reservation_holding(&self, va: u64, size: u64) -> Option<Reservation> {
        let end = va.checked_add(size)?;
        self.reservations
            .iter()
            .copied()
            .find(|r| r.live && r.base <= va && end <= r.base + r.size)
    }

    /// Whether any byte of `va..va + size` lies outside every live reservation.
    fn touches_unreserved(&self, va: u64, size: u64) -> bool {
        let end = va.saturating_add(size.max(1));
        let mut at = va;
        while at < end {
            match self
                .reservations
                .iter()
                .find(|r| r.live && r.base <= at && at < r.base + r.size)
            {
                Some(r) => at = r.base + r.size,
                None => return true,
            }
        }
        false
    }

    fn mapping_list(&self) -> Vec<(u64, Mapping)> {
        self.mappings
            .iter()
            .map(|(va, m)| (*va, m.clone()))
            .collect()
    }

    fn mapping_containing(&self, va: u64) -> Option<(u64, &Mapping)> {
        self.mappings
            .range(..=va)
            .next_back()
            .filter(|(start, m)| va < **start + m.size)
            .map(|(start, m)| (*start, m))
    }

    fn overlapping(&self, va: u64, size: u64) -> Vec<(u64, Mapping)> {
        let end = va.saturating_add(size);
        self.mappings
            .iter()
            .filter(|(start, m)| **start < end && va < **start + m.size)
            .map(|(start, m)| (*start, m.clone()))
            .collect()
    }

    fn handles_in(&self, pred: impl Fn(&Handle) -> bool) -> Vec<usize> {
        (0..self.handles.len())
            .filter(|&i| pred(&self.handles[i]))
            .collect()
    }

    /// Granule-aligned starts in `r` where `size` bytes are unmapped.
    fn free_slots(&self, r: Reservation, size: u64) -> Vec<u64> {
        let mut slots = Vec::new();
        let mut va = r.base;
        while va + size <= r.base + r.size {
            if self.overlapping(va, size).is_empty() {
                slots.push(va);
            }
            va += self.g;
        }
        slots
    }

    /// Unmapped granules of live reservations.
    fn holes(&self) -> Vec<u64> {
        let mut holes = Vec::new();
        for r in self.live_reservations() {
            let mut va = r.base;
            while va < r.base + r.size {
                if self.mapping_containing(va).is_none() {
                    holes.push(va);
                }
                va += self.g;
            }
        }
        holes
    }

    /// Pairs of mappings where the second starts where the first ends:
    /// `(start, total size)`.
    fn adjacent_pairs(&self) -> Vec<(u64, u64)> {
        self.mappings
            .iter()
            .filter_map(|(va, m)| {
                self.mappings
                    .get(&(va + m.size))
                    .map(|next| (*va, m.size + next.size))
            })
            .collect()
    }

    fn physical(&self) -> u64 {
        self.handles
            .iter()
            .filter(|h| h.state != HandleState::Gone)
            .map(|h| h.size)
            .sum()
    }

    /// The address that no backend ever reserves.
    fn unreserved(&self) -> u64 {
        self.g.max(2 << 20)
    }

    // ---- the rules: every violation of a call, in the emulation's order

    /// The rules `call` breaks, the one the emulation reports first.
    pub fn violations(&self, call: &Call) -> Vec<Violation> {
        let g = self.g;
        let mut v = Vec::new();
        match call {
            Call::Reserve { size, align } => {
                if *size == 0 {
                    v.push(Violation::ZeroSize);
                }
                if size % g != 0 {
                    v.push(Violation::NotGranular);
                }
                if *align != 0 && !align.is_power_of_two() {
                    v.push(Violation::BadAlignment);
                }
                if *size > self.max_reservation {
                    v.push(Violation::TooLarge);
                }
            }
            Call::Create { size, location } => {
                let device_ok = match location {
                    Location::Device(d) => *d < self.devices,
                    Location::Host => self.host_memory,
                };
                if !device_ok {
                    v.push(Violation::NoSuchDevice);
                }
                if *size == 0 {
                    v.push(Violation::ZeroSize);
                }
                if size % g != 0 {
                    v.push(Violation::NotGranular);
                }
                if self.physical() + size > self.capacity {
                    v.push(Violation::Exhausted);
                }
            }
            Call::Release { handle } => {
                if self.handles[*handle].state != HandleState::Live {
                    v.push(Violation::StaleHandle);
                }
            }
            Call::Map {
                va,
                size,
                offset,
                handle,
            } => {
                let h = &self.handles[*handle];
                if *size == 0 {
                    v.push(Violation::ZeroSize);
                }
                if va % g != 0 {
                    v.push(Violation::NotGranular);
                }
                if self.reservation_holding(*va, *size).is_none() {
                    v.push(Violation::OutsideReservation);
                }
                if h.state != HandleState::Live {
                    v.push(Violation::StaleHandle);
                }
                if *offset != 0 {
                    v.push(Violation::NonzeroOffset);
                }
                if *size != 0 && *size != h.size {
                    v.push(Violation::SizeMismatch);
                }
                if !self.overlapping(*va, *size).is_empty() {
                    v.push(Violation::AlreadyMapped);
                }
            }
            Call::Unmap { va, size } => {
                // Lenient (H100): holes are fine, only cutting a mapping is not.
                if *size == 0 {
                    v.push(Violation::ZeroSize);
                }
                if size % g != 0 || va % g != 0 {
                    v.push(Violation::NotGranular);
                }
                if self.reservation_holding(*va, *size).is_none() {
                    v.push(Violation::OutsideReservation);
                }
                if self.cuts_a_mapping(*va, *size) {
                    v.push(Violation::PartialMapping);
                }
            }
            Call::SetAccess { va, size, access } => {
                // Strict (H100): whole mappings, no holes.
                if access.is_empty() {
                    v.push(Violation::EmptyAccessList);
                }
                if access
                    .iter()
                    .any(|a| matches!(a.location, Location::Device(d) if d >= self.devices))
                {
                    v.push(Violation::NoSuchDevice);
                }
                if *size == 0 {
                    v.push(Violation::ZeroSize);
                }
                if size % g != 0 || va % g != 0 {
                    v.push(Violation::NotGranular);
                }
                let inside = self.overlapping(*va, *size);
                if self.cuts_a_mapping(*va, *size) {
                    v.push(Violation::PartialMapping);
                }
                if inside.iter().map(|(_, m)| m.size).sum::<u64>() < *size {
                    v.push(Violation::NotMapped);
                }
                if access.iter().any(|a| a.location == Location::Host)
                    && inside
                        .iter()
                        .any(|(_, m)| self.handles[m.handle].location != Location::Host)
                {
                    v.push(Violation::HostAccessToDeviceMemory);
                }
            }
            Call::GetAccess { va, accessor } => {
                if matches!(accessor, Location::Device(d) if *d >= self.devices) {
                    v.push(Violation::NoSuchDevice);
                }
                if self.mapping_containing(*va).is_none() {
                    v.push(Violation::NotMapped);
                }
            }
            Call::FreeReservation { va, size } => {
                match self.reservations.iter().find(|r| r.live && r.base == *va) {
                    None => v.push(Violation::NotAReservation),
                    Some(r) if r.size != *size => v.push(Violation::WrongSize),
                    Some(_) => {}
                }
                if !self.overlapping(*va, *size).is_empty() {
                    v.push(Violation::MappingsRemain);
                }
            }
        }
        v
    }

    fn cuts_a_mapping(&self, va: u64, size: u64) -> bool {
        let end = va.saturating_add(size);
        self.overlapping(va, size)
            .iter()
            .any(|(start, m)| *start < va || start + m.size > end)
    }

    /// Why a real GPU driver must not get this call, if it must not: what the
    /// H100 answers there is a success the contract forbids, or not the
    /// rights asked for. (Stale handles crash the H100, but the backends keep
    /// the set of live handles and refuse them, so they are not skipped.)
    pub fn hazard(&self, call: &Call) -> Option<&'static str> {
        let range = match call {
            Call::Map { va, size, .. } | Call::Unmap { va, size } => Some((*va, *size)),
            Call::SetAccess { va, size, .. } | Call::FreeReservation { va, size } => {
                Some((*va, *size))
            }
            Call::GetAccess { va, .. } => Some((*va, 1)),
            _ => None,
        };
        match call {
            Call::GetAccess {
                va,
                accessor: Location::Host,
            } if self
                .mapping_containing(*va)
                .is_some_and(|(_, m)| self.handles[m.handle].location != Location::Host) =>
            {
                return Some("CUDA answers device 0's rights for a host accessor");
            }
            _ => {}
        }
        match range {
            // The driver may own unreserved VA (its own allocations); only
            // the low probe address is surely nobody's.
            Some((va, size)) if va >= LOW && self.touches_unreserved(va, size) => {
                Some("the range leaves our reservations (CUDA is lenient past the end)")
            }
            _ => None,
        }
    }

    // ---- effects of a successful call

    fn add_reservation(&mut self, base: u64, size: u64) {
        self.reservations.push(Reservation {
            base,
            size,
            live: true,
        });
    }

    fn add_handle(&mut self, size: u64, location: Location) {
        self.handles.push(Handle {
            size,
            location,
            state: HandleState::Live,
            mappings: 0,
            known: BTreeMap::new(),
        });
    }

    /// Applies a call the driver accepted.
    fn apply(&mut self, call: &Call) -> usize {
        let mut unmapped = 0;
        match call {
            Call::Reserve { .. } | Call::Create { .. } | Call::GetAccess { .. } => {}
            Call::Release { handle } => {
                let h = &mut self.handles[*handle];
                h.state = if h.mappings == 0 {
                    h.known.clear();
                    HandleState::Gone
                } else {
                    HandleState::Released
                };
            }
            Call::Map {
                va, size, handle, ..
            } => {
                self.mappings.insert(
                    *va,
                    Mapping {
                        size: *size,
                        handle: *handle,
                        rights: Vec::new(),
                    },
                );
                self.handles[*handle].mappings += 1;
            }
            Call::Unmap { va, size } => {
                for (start, m) in self.overlapping(*va, *size) {
                    self.mappings.remove(&start);
                    unmapped += 1;
                    let h = &mut self.handles[m.handle];
                    h.mappings -= 1;
                    if h.mappings == 0 && h.state == HandleState::Released {
                        h.state = HandleState::Gone;
                        h.known.clear();
                    }
                }
            }
            Call::SetAccess { va, size, access } => {
                let end = va + size;
                for (_, m) in self.mappings.range_mut(*va..end) {
                    for a in access {
                        m.rights.retain(|(l, _)| *l != a.location);
                        m.rights.push((a.location, a.mode));
                    }
                }
            }
            Call::FreeReservation { va, .. } => {
                if let Some(r) = self
                    .reservations
                    .iter_mut()
                    .find(|r| r.live && r.base == *va)
                {
                    r.live = false;
                }
            }
        }
        unmapped
    }

    // ---- resolving ops into calls

    /// The range an unmap or set_access aims at, around mapping `pick`.
    fn range(&self, pick: usize, flaw: Option<RangeFlaw>) -> (u64, u64) {
        let g = self.g;
        let maps = self.mapping_list();
        let holes = self.holes();
        let hole = || {
            holes
                .get(pick % holes.len().max(1))
                .map_or((self.unreserved(), g), |va| (*va, g))
        };
        if maps.is_empty() {
            return match flaw {
                Some(RangeFlaw::Unreserved) => (self.unreserved(), g),
                _ => hole(),
            };
        }
        let (va, m) = &maps[pick % maps.len()];
        let (va, size) = (*va, m.size);
        match flaw {
            None => (va, size),
            Some(RangeFlaw::Head) => (va, g),
            Some(RangeFlaw::Tail) => (va + size - g, g),
            Some(RangeFlaw::PlusNext) => (va, size + g),
            Some(RangeFlaw::SpanTwo) => {
                let pairs = self.adjacent_pairs();
                pairs
                    .get(pick % pairs.len().max(1))
                    .copied()
                    .unwrap_or((va, size))
            }
            Some(RangeFlaw::Hole) => hole(),
            Some(RangeFlaw::Unreserved) => (self.unreserved(), g),
            Some(RangeFlaw::Misaligned) => (va + g / 2, g),
            Some(RangeFlaw::ZeroSize) => (va, 0),
            Some(RangeFlaw::SizeNotGranular) => (va, size - g / 2),
            Some(RangeFlaw::PastEnd) => match self.reservation_holding(va, size) {
                Some(r) => (r.base + r.size - g, 2 * g),
                None => (va, size),
            },
        }
    }

    /// The concrete call for `op`, or `None` when there is nothing to name
    /// (no handle at all for a map or release, no mapping for a byte check).
    pub fn resolve(&self, op: &Op) -> Option<Call> {
        let g = self.g;
        Some(match *op {
            Op::Reserve {
                granules,
                align,
                flaw,
            } => {
                let mut size = granules * g;
                let mut align = match align {
                    Align::Default => 0,
                    Align::Page => 4096,
                    Align::FourGranules => 4 * g,
                };
                match flaw {
                    None => {}
                    Some(ReserveFlaw::ZeroSize) => size = 0,
                    Some(ReserveFlaw::NotGranular) => size += g / 2,
                    Some(ReserveFlaw::AlignNotPowerOfTwo) => align = 3 * g,
                    Some(ReserveFlaw::TooLarge) => size = self.max_reservation.saturating_mul(2),
                }
                Call::Reserve { size, align }
            }
            Op::Create {
                granules,
                host,
                flaw,
            } => {
                let mut size = granules * g;
                let mut location = if host {
                    Location::Host
                } else {
                    Location::Device(0)
                };
                match flaw {
                    None => {}
                    Some(CreateFlaw::ZeroSize) => size = 0,
                    Some(CreateFlaw::NotGranular) => size += g / 2,
                    Some(CreateFlaw::NoSuchDevice) => location = Location::Device(self.devices),
                    Some(CreateFlaw::TooLarge) => size = 1 << 50,
                }
                Call::Create { size, location }
            }
            Op::Map {
                handle,
                res,
                slot,
                flaw,
            } => {
                let live = self.handles_in(|h| h.state == HandleState::Live);
                let stale = self.handles_in(|h| h.state != HandleState::Live);
                let pool = match flaw {
                    Some(MapFlaw::StaleHandle) if !stale.is_empty() => stale,
                    _ if live.is_empty() => stale,
                    _ => live,
                };
                let h = *pool.get(handle % pool.len().max(1))?;
                let mut size = self.handles[h].size;
                let reservations = self.live_reservations();
                let r = reservations.get(res % reservations.len().max(1)).copied();
                let mut va = match r {
                    None => self.unreserved(),
                    Some(r) => {
                        let slots = self.free_slots(r, size);
                        slots
                            .get(slot % slots.len().max(1))
                            .copied()
                            .unwrap_or(r.base)
                    }
                };
                let mut offset = 0;
                match flaw {
                    None | Some(MapFlaw::StaleHandle) => {}
                    Some(MapFlaw::ZeroSize) => size = 0,
                    Some(MapFlaw::SizeNotGranular) => size -= g / 2,
                    Some(MapFlaw::Smaller) if size > g => size -= g,
                    Some(MapFlaw::Smaller | MapFlaw::Larger) => size += g,
                    Some(MapFlaw::Misaligned) => va += g / 2,
                    Some(MapFlaw::NonzeroOffset) => offset = g,
                    Some(MapFlaw::OverMapped) => {
                        let maps = self.mapping_list();
                        if let Some((mva, m)) = maps.get(slot % maps.len().max(1)) {
                            // Half the time the same start, half inside it.
                            va = if slot % 2 == 1 && m.size > g {
                                mva + g
                            } else {
                                *mva
                            };
                        }
                    }
                    Some(MapFlaw::PastEnd) => {
                        if let Some(r) = r {
                            va = r.base + r.size - g;
                        }
                    }
                    Some(MapFlaw::AfterEnd) => {
                        if let Some(r) = r {
                            va = r.base + r.size;
                        }
                    }
                    Some(MapFlaw::Unreserved) => va = self.unreserved(),
                }
                Call::Map {
                    va,
                    size,
                    offset,
                    handle: h,
                }
            }
            Op::Unmap { pick, flaw } => {
                let (va, size) = self.range(pick, flaw);
                Call::Unmap { va, size }
            }
            Op::SetAccess { pick, grant, flaw } => {
                let device = |mode| Access {
                    location: Location::Device(0),
                    mode,
                };
                let (va, size) = match flaw {
                    Some(AccessFlaw::Range(f)) => self.range(pick, Some(f)),
                    Some(AccessFlaw::HostOnDevice) => {
                        // Prefer a device-located mapping.
                        let on_device: Vec<_> = self
                            .mapping_list()
                            .into_iter()
                            .filter(|(_, m)| self.handles[m.handle].location != Location::Host)
                            .collect();
                        match on_device.get(pick % on_device.len().max(1)) {
                            Some((va, m)) => (*va, m.size),
                            None => self.range(pick, None),
                        }
                    }
                    _ => self.range(pick, None),
                };
                let all_host = self
                    .overlapping(va, size)
                    .iter()
                    .all(|(_, m)| self.handles[m.handle].location == Location::Host);
                let access = match flaw {
                    Some(AccessFlaw::EmptyList) => vec![],
                    Some(AccessFlaw::NoSuchDevice) => {
                        vec![Access::read_write(Location::Device(self.devices))]
                    }
                    // Host first: CUDA refuses before applying anything.
                    Some(AccessFlaw::HostOnDevice) => vec![
                        Access::read_write(Location::Host),
                        Access::read_write(Location::Device(0)),
                    ],
                    _ => match grant {
                        Grant::DeviceRw => vec![device(AccessMode::ReadWrite)],
                        Grant::DeviceRead => vec![device(AccessMode::Read)],
                        Grant::DeviceNone => vec![device(AccessMode::None)],
                        Grant::WithHost if all_host => vec![
                            device(AccessMode::ReadWrite),
                            Access::read_write(Location::Host),
                        ],
                        Grant::WithHost => vec![device(AccessMode::ReadWrite)],
                    },
                };
                Call::SetAccess { va, size, access }
            }
            Op::GetAccess { pick, offset, flaw } => {
                let maps = self.mapping_list();
                let (va, accessor) = match maps.get(pick % maps.len().max(1)) {
                    Some((va, m)) => {
                        // The CPU's rights only where CUDA answers them
                        // faithfully: host-located memory.
                        let accessor = if offset % 2 == 1
                            && self.handles[m.handle].location == Location::Host
                        {
                            Location::Host
                        } else {
                            Location::Device(0)
                        };
                        (va + offset % m.size, accessor)
                    }
                    None => (self.unreserved(), Location::Device(0)),
                };
                match flaw {
                    None => Call::GetAccess { va, accessor },
                    Some(GetFlaw::Hole) => Call::GetAccess {
                        va: self.range(pick, Some(RangeFlaw::Hole)).0,
                        accessor,
                    },
                    Some(GetFlaw::Unreserved) => Call::GetAccess {
                        va: self.unreserved(),
                        accessor,
                    },
                    Some(GetFlaw::NoSuchDevice) => Call::GetAccess {
                        va,
                        accessor: Location::Device(self.devices),
                    },
                }
            }
            Op::Release { pick, stale } => {
                let live = self.handles_in(|h| h.state == HandleState::Live);
                let gone = self.handles_in(|h| h.state != HandleState::Live);
                let pool = if (stale && !gone.is_empty()) || live.is_empty() {
                    gone
                } else {
                    live
                };
                Call::Release {
                    handle: *pool.get(pick % pool.len().max(1))?,
                }
            }
            Op::FreeReservation { pick, flaw } => {
                let live = self.live_reservations();
                let (with, without): (Vec<_>, Vec<_>) = live
                    .iter()
                    .partition(|r| !self.overlapping(r.base, r.size).is_empty());
                let pool = match flaw {
                    Some(FreeFlaw::WithMappings) if !with.is_empty() => with,
                    _ if without.is_empty() => live,
                    _ => without,
                };
                let Some(r) = pool.get(pick % pool.len().max(1)).copied() else {
                    return Some(Call::FreeReservation {
                        va: self.unreserved(),
                        size: g,
                    });
                };
                let (va, size) = match flaw {
                    None | Some(FreeFlaw::WithMappings) => (r.base, r.size),
                    Some(FreeFlaw::Smaller) => (r.base, r.size - g),
                    Some(FreeFlaw::Bigger) => (r.base, r.size + g),
                    Some(FreeFlaw::Interior) => (r.base + g, r.size - g),
                    Some(FreeFlaw::ZeroSize) => (r.base, 0),
                    Some(FreeFlaw::Unreserved) => (self.unreserved(), g),
                    Some(FreeFlaw::Twice) => {
                        let freed: Vec<_> = self.reservations.iter().filter(|r| !r.live).collect();
                        match freed.get(pick % freed.len().max(1)) {
                            Some(f) => (f.base, f.size),
                            None => (r.base, r.size),
                        }
                    }
                };
                Call::FreeReservation { va, size }
            }
            Op::Bytes { .. } => return None,
        })
    }
}

// ---------------------------------------------------------------------------
// Running a program
// ---------------------------------------------------------------------------

/// What a program did, summed over programs.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Outcomes by call and result ("map Ok", "map AlreadyMapped", ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Creates refused for lack of physical memory (the backend's answer,
    /// not a rule the checked layer enforces).
    pub exhausted: u64,
    /// Programs run.
    pub programs: u64,
    /// Driver calls made (VMM calls; fills and copies not counted).
    pub calls: u64,
    /// Calls refused as predicted, get_access excluded.
    pub refused: u64,
    /// get_access calls refused as predicted.
    pub get_access_refused: u64,
    /// Calls skipped because a real driver must not get them.
    pub skipped: u64,
    /// Of those, calls naming a released handle whose value the driver has
    /// handed out again (these depend on the driver's handle values).
    pub reused: u64,
    /// Successful reserve / free_reservation / create / release / map / unmap calls.
    pub reserves: u64,
    pub frees: u64,
    pub creates: u64,
    pub releases: u64,
    pub maps: u64,
    pub unmaps: u64,
    /// Mappings removed by successful unmaps (one unmap may remove several).
    pub unmapped: u64,
    /// Blocks read back and compared.
    pub blocks_checked: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        for (k, n) in &o.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += n;
        }
        self.exhausted += o.exhausted;
        self.programs += o.programs;
        self.calls += o.calls;
        self.refused += o.refused;
        self.get_access_refused += o.get_access_refused;
        self.skipped += o.skipped;
        self.reused += o.reused;
        self.reserves += o.reserves;
        self.frees += o.frees;
        self.creates += o.creates;
        self.releases += o.releases;
        self.maps += o.maps;
        self.unmaps += o.unmaps;
        self.unmapped += o.unmapped;
        self.blocks_checked += o.blocks_checked;
    }
}

/// What a driver call returned, where it matters.
enum Returned<H> {
    Nothing,
    Address(u64),
    Handle(H),
    Mode(AccessMode),
}

/// Makes `call` on `d`. `handles[i]` is the driver's handle for model index `i`.
fn make_call<D: Driver>(
    d: &D,
    call: &Call,
    handles: &[D::Handle],
) -> gpu_arena::Result<Returned<D::Handle>> {
    // SAFETY (every unsafe call below): the ranges are either inside this
    // driver's reservations and (by the model) in the state the call needs,
    // or deliberately bad; bad calls are what the test is about: every
    // backend under test refuses them before touching memory (the host
    // backend and the checked layer validate first; on a real GPU, calls the
    // H100 does not refuse cleanly are skipped, see `Model::hazard`). Nothing
    // holds a reference into a range that is unmapped or whose access is
    // revoked.
    Ok(match call {
        Call::Reserve { size, align } => {
            Returned::Address(d.reserve(*size as usize, *align as usize)?)
        }
        Call::Create { size, location } => Returned::Handle(d.create(*size as usize, *location)?),
        Call::Map {
            va,
            size,
            offset,
            handle,
        } => {
            // SAFETY: see above.
            unsafe { d.map(*va, *size as usize, *offset as usize, handles[*handle])? };
            Returned::Nothing
        }
        Call::Unmap { va, size } => {
            // SAFETY: see above.
            unsafe { d.unmap(*va, *size as usize)? };
            Returned::Nothing
        }
        Call::SetAccess { va, size, access } => {
            // SAFETY: see above.
            unsafe { d.set_access(*va, *size as usize, access)? };
            Returned::Nothing
        }
        Call::GetAccess { va, accessor } => Returned::Mode(d.get_access(*va, *accessor)?),
        Call::Release { handle } => {
            d.release(handles[*handle])?;
            Returned::Nothing
        }
        Call::FreeReservation { va, size } => {
            // SAFETY: see above.
            unsafe { d.free_reservation(*va, *size as usize)? };
            Returned::Nothing
        }
    })
}

/// Runs `call` on the driver and on the model and compares the outcomes.
fn step<D: Driver>(
    d: &D,
    model: &mut Model,
    handles: &mut Vec<D::Handle>,
    call: &Call,
    real: bool,
    tally: &mut Tally,
    context: &dyn Fn() -> String,
) -> Result<(), TestCaseError> {
    if real && model.hazard(call).is_some() {
        tally.skipped += 1;
        return Ok(());
    }
    // A driver may hand a released handle's value out again (CUDA's are
    // pointers): a stale handle that now names a live one is no longer stale.
    // (The H100 crashes on a truly stale handle; the backends refuse it.)
    if let Call::Release { handle } | Call::Map { handle, .. } = call {
        let reused = model.handles[*handle].state != HandleState::Live
            && (0..handles.len()).any(|j| {
                j != *handle
                    && handles[j] == handles[*handle]
                    && model.handles[j].state != HandleState::Gone
            });
        if reused {
            tally.skipped += 1;
            tally.reused += 1;
            return Ok(());
        }
    }
    let violations = model.violations(call);
    let kinds: Vec<ErrorKind> = violations.iter().map(|v| expected_kind(*v)).collect();
    // A real driver's order of checks is only known for single violations:
    // when several rules with different kinds are broken, skip the call.
    if real && kinds.iter().any(|k| *k != kinds[0]) {
        tally.skipped += 1;
        return Ok(());
    }
    let predicted = kinds.first().copied();
    tally.calls += 1;
    let name = format!("{call:?}");
    let name = name.split([' ', '{']).next().unwrap_or("?");
    let outcome = match violations.first() {
        None => format!("{name} Ok"),
        Some(v) => format!("{name} {v:?}"),
    };
    *tally.outcomes.entry(outcome).or_default() += 1;
    if violations.first() == Some(&Violation::Exhausted) {
        tally.exhausted += 1;
    }
    let got = make_call(d, call, handles);
    match (predicted, got) {
        (None, Ok(returned)) => {
            match (call, returned) {
                (Call::Reserve { size, .. }, Returned::Address(va)) => {
                    prop_assert!(
                        va % model.g == 0 && model.overlapping(va, *size).is_empty(),
                        "reserve returned {va:#x}, unaligned or overlapping a mapping\n{}",
                        context()
                    );
                    prop_assert!(
                        model
                            .live_reservations()
                            .iter()
                            .all(|r| va + size <= r.base || r.base + r.size <= va),
                        "reserve returned {va:#x}, overlapping a live reservation\n{}",
                        context()
                    );
                    model.add_reservation(va, *size);
                    tally.reserves += 1;
                }
                (Call::Create { size, location }, Returned::Handle(h)) => {
                    model.add_handle(*size, *location);
                    handles.push(h);
                    tally.creates += 1;
                }
                (Call::GetAccess { va, accessor }, Returned::Mode(mode)) => {
                    let want = model
                        .mapping_containing(*va)
                        .map(|(_, m)| m.mode(*accessor))
                        .unwrap_or(AccessMode::None);
                    prop_assert_eq!(
                        mode,
                        want,
                        "get_access({:#x}, {:?}) disagrees with the model\n{}",
                        va,
                        accessor,
                        context()
                    );
                }
                _ => {}
            }
            match call {
                Call::FreeReservation { .. } => tally.frees += 1,
                Call::Release { .. } => tally.releases += 1,
                Call::Map { .. } => tally.maps += 1,
                Call::Unmap { .. } => tally.unmaps += 1,
                _ => {}
            }
            tally.unmapped += model.apply(call) as u64;
            Ok(())
        }
        (Some(kind), Err(e)) if e.driver_kind() == Some(kind) => {
            if matches!(call, Call::GetAccess { .. }) {
                tally.get_access_refused += 1;
            } else {
                tally.refused += 1;
            }
            Ok(())
        }
        (predicted, got) => {
            let got = match got {
                Ok(_) => "Ok".to_string(),
                Err(e) => format!("Err({:?}): {e}", e.driver_kind()),
            };
            Err(TestCaseError::fail(format!(
                "{call:?}: the model predicts {}, the driver returned {got}\n{}",
                match predicted {
                    None => "Ok".to_string(),
                    Some(k) => format!("{k:?} (violations {violations:?})"),
                },
                context()
            )))
        }
    }
}

/// Writes a block through a writable mapping, then reads every known block
/// of every handle back through each of its readable mappings.
fn check_bytes<D: Driver>(
    d: &D,
    model: &mut Model,
    pick: usize,
    block: u8,
    byte: u8,
    tally: &mut Tally,
    context: &dyn Fn() -> String,
) -> Result<(), TestCaseError> {
    let dev = Location::Device(0);
    let writable: Vec<(u64, Mapping)> = model
        .mapping_list()
        .into_iter()
        .filter(|(_, m)| m.mode(dev) == AccessMode::ReadWrite)
        .collect();
    let Some((va, m)) = writable.get(pick % writable.len().max(1)).cloned() else {
        return Ok(());
    };
    // Eight possible blocks per handle, so that handles which wrongly shared
    // memory would soon overwrite each other's known blocks.
    let offset = (u64::from(block) % 8) * (m.size / 8) / BLOCK * BLOCK;
    // SAFETY: `va..va + size` is mapped with read-write access for device 0
    // (the model says so, and the driver agreed with every step so far).
    unsafe { d.fill(va + offset, byte, BLOCK as usize, Stream::DEFAULT) }
        .map_err(|e| TestCaseError::fail(format!("fill failed: {e}\n{}", context())))?;
    model.handles[m.handle].known.insert(offset, byte);

    let cpu_reads = d.capabilities().cpu_reads_device_memory;
    let mut buf = [0u8; BLOCK as usize];
    for (mva, mm) in model.mapping_list() {
        if mm.mode(dev) == AccessMode::None {
            continue;
        }
        for (&off, &want) in &model.handles[mm.handle].known {
            buf.fill(!want);
            // SAFETY: the source is mapped and readable by device 0; the
            // destination is our own buffer of BLOCK bytes.
            unsafe {
                d.copy(
                    buf.as_mut_ptr() as u64,
                    mva + off,
                    BLOCK as usize,
                    Stream::DEFAULT,
                )
            }
            .map_err(|e| TestCaseError::fail(format!("copy failed: {e}\n{}", context())))?;
            prop_assert!(
                buf.iter().all(|b| *b == want),
                "handle {} read through {mva:#x}+{off:#x}: {:02x?}, want {want:02x}\n{}",
                mm.handle,
                &buf[..8],
                context()
            );
            // Host-located memory is the CPU's only with a host descriptor.
            let host_located = model.handles[mm.handle].location == Location::Host;
            if cpu_reads && (!host_located || mm.mode(Location::Host) != AccessMode::None) {
                // SAFETY: on a backend whose CPU reads device memory, a
                // range readable by device 0 is readable by the CPU.
                let direct = unsafe { ((mva + off) as *const [u8; BLOCK as usize]).read() };
                prop_assert!(direct.iter().all(|b| *b == want), "direct read differs");
            }
            tally.blocks_checked += 1;
        }
    }
    Ok(())
}

/// Runs `ops` on `d`, checking every step against a fresh model, then gives
/// back everything the model says is live. The driver starts with nothing of
/// this program's.
pub fn run_program<D: Driver>(d: &D, ops: &[Op]) -> Result<Tally, TestCaseError> {
    run_program_as(d, ops, d.capabilities().backend != Backend::Host)
}

/// [`run_program`], treating the driver as a real GPU (`real`: skip what the
/// H100 leaves undefined) or as an emulation.
fn run_program_as<D: Driver>(d: &D, ops: &[Op], real: bool) -> Result<Tally, TestCaseError> {
    let caps = *d.capabilities();
    let host_memory = caps.host_memory
        && d.granularity(Location::Host)
            .is_ok_and(|g| g == caps.granularity);
    let mut model = Model::new(&caps, host_memory);
    let mut handles: Vec<D::Handle> = Vec::new();
    let mut tally = Tally {
        programs: 1,
        ..Tally::default()
    };
    let trace = RefCell::new(String::new());
    let context = || format!("program so far:\n{}", trace.borrow());

    for (i, op) in ops.iter().enumerate() {
        let op = match op {
            // Where host-located memory is not offered (or has another
            // granularity), ask for device memory instead.
            Op::Create {
                granules,
                host: true,
                flaw,
            } if !host_memory => Op::Create {
                granules: *granules,
                host: false,
                flaw: *flaw,
            },
            op => op.clone(),
        };
        if let Op::Bytes { pick, block, byte } = op {
            let _ = writeln!(trace.borrow_mut(), "  {i:>3}: {op:?}");
            check_bytes(d, &mut model, pick, block, byte, &mut tally, &context)?;
            continue;
        }
        let Some(call) = model.resolve(&op) else {
            continue;
        };
        let _ = writeln!(trace.borrow_mut(), "  {i:>3}: {op:?}\n       -> {call:?}");
        step(
            d,
            &mut model,
            &mut handles,
            &call,
            real,
            &mut tally,
            &context,
        )?;
    }

    // Give everything back; every call must succeed.
    let _ = writeln!(trace.borrow_mut(), "  cleanup:");
    let mut cleanup: Vec<Call> = model
        .mapping_list()
        .into_iter()
        .map(|(va, m)| Call::Unmap { va, size: m.size })
        .collect();
    cleanup.extend(
        model
            .handles_in(|h| h.state == HandleState::Live)
            .into_iter()
            .map(|handle| Call::Release { handle }),
    );
    cleanup.extend(
        model
            .live_reservations()
            .into_iter()
            .map(|r| Call::FreeReservation {
                va: r.base,
                size: r.size,
            }),
    );
    for call in &cleanup {
        let _ = writeln!(trace.borrow_mut(), "       -> {call:?}");
        prop_assert!(
            model.violations(call).is_empty(),
            "cleanup {call:?} breaks a rule\n{}",
            context()
        );
        step(
            d,
            &mut model,
            &mut handles,
            call,
            real,
            &mut tally,
            &context,
        )?;
    }
    prop_assert!(model.mappings.is_empty() && model.live_reservations().is_empty());
    prop_assert!(
        model.handles.iter().all(|h| h.state == HandleState::Gone),
        "handles left after cleanup\n{}",
        context()
    );
    Ok(tally)
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn range_flaw() -> impl Strategy<Value = RangeFlaw> {
    use RangeFlaw::*;
    select(vec![
        Head,
        Tail,
        PlusNext,
        SpanTwo,
        Hole,
        Unreserved,
        Misaligned,
        ZeroSize,
        SizeNotGranular,
        PastEnd,
    ])
}

/// One op; about a third of them carry a flaw.
pub fn op() -> impl Strategy<Value = Op> {
    let pick = 0..64usize;
    prop_oneof![
        2 => (
            2..=16u64,
            select(vec![Align::Default, Align::Default, Align::Page, Align::FourGranules]),
            prop::option::weighted(
                0.2,
                select(vec![
                    ReserveFlaw::ZeroSize,
                    ReserveFlaw::NotGranular,
                    ReserveFlaw::AlignNotPowerOfTwo,
                    ReserveFlaw::TooLarge,
                ]),
            ),
        )
            .prop_map(|(granules, align, flaw)| Op::Reserve { granules, align, flaw }),
        4 => (
            1..=4u64,
            prop::bool::weighted(0.25),
            prop::option::weighted(
                0.2,
                select(vec![
                    CreateFlaw::ZeroSize,
                    CreateFlaw::NotGranular,
                    CreateFlaw::NoSuchDevice,
                    CreateFlaw::TooLarge,
                ]),
            ),
        )
            .prop_map(|(granules, host, flaw)| Op::Create { granules, host, flaw }),
        10 => (
            pick.clone(),
            pick.clone(),
            pick.clone(),
            prop::option::weighted(
                0.35,
                select(vec![
                    MapFlaw::ZeroSize,
                    MapFlaw::SizeNotGranular,
                    MapFlaw::Smaller,
                    MapFlaw::Larger,
                    MapFlaw::Misaligned,
                    MapFlaw::NonzeroOffset,
                    MapFlaw::OverMapped,
                    MapFlaw::PastEnd,
                    MapFlaw::AfterEnd,
                    MapFlaw::Unreserved,
                    MapFlaw::StaleHandle,
                ]),
            ),
        )
            .prop_map(|(handle, res, slot, flaw)| Op::Map { handle, res, slot, flaw }),
        4 => (pick.clone(), prop::option::weighted(0.4, range_flaw()))
            .prop_map(|(pick, flaw)| Op::Unmap { pick, flaw }),
        6 => (
            pick.clone(),
            select(vec![Grant::DeviceRw, Grant::DeviceRw, Grant::DeviceRead, Grant::DeviceNone, Grant::WithHost]),
            prop::option::weighted(
                0.3,
                prop_oneof![
                    3 => range_flaw().prop_map(AccessFlaw::Range),
                    1 => Just(AccessFlaw::EmptyList),
                    1 => Just(AccessFlaw::NoSuchDevice),
                    1 => Just(AccessFlaw::HostOnDevice),
                ],
            ),
        )
            .prop_map(|(pick, grant, flaw)| Op::SetAccess { pick, grant, flaw }),
        2 => (
            pick.clone(),
            any::<u64>(),
            prop::option::weighted(
                0.3,
                select(vec![GetFlaw::Hole, GetFlaw::Unreserved, GetFlaw::NoSuchDevice]),
            ),
        )
            .prop_map(|(pick, offset, flaw)| Op::GetAccess { pick, offset, flaw }),
        2 => (pick.clone(), prop::bool::weighted(0.2))
            .prop_map(|(pick, stale)| Op::Release { pick, stale }),
        2 => (
            pick.clone(),
            prop::option::weighted(
                0.4,
                select(vec![
                    FreeFlaw::Smaller,
                    FreeFlaw::Bigger,
                    FreeFlaw::Interior,
                    FreeFlaw::ZeroSize,
                    FreeFlaw::Twice,
                    FreeFlaw::Unreserved,
                    FreeFlaw::WithMappings,
                ]),
            ),
        )
            .prop_map(|(pick, flaw)| Op::FreeReservation { pick, flaw }),
        5 => (pick, any::<u8>(), any::<u8>())
            .prop_map(|(pick, block, byte)| Op::Bytes { pick, block, byte }),
    ]
}

/// A program: a reservation of 16 granules and two handles, then `len` ops.
pub fn program(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<Op>> {
    (
        1..=4u64,
        1..=4u64,
        prop::bool::weighted(0.25),
        prop::collection::vec(op(), len),
    )
        .prop_map(|(a, b, host, ops)| {
            let mut program = vec![
                Op::Reserve {
                    granules: 16,
                    align: Align::Default,
                    flaw: None,
                },
                Op::Create {
                    granules: a,
                    host: false,
                    flaw: None,
                },
                Op::Create {
                    granules: b,
                    host,
                    flaw: None,
                },
            ];
            program.extend(ops);
            program
        })
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `cases` random programs through `body`; panics with the shrunk
/// program on failure. Returns the summed tally and the wall time.
fn check(
    name: &str,
    cases: u32,
    len: std::ops::RangeInclusive<usize>,
    body: impl Fn(&[Op]) -> Result<Tally, TestCaseError>,
) -> (Tally, Duration) {
    let cases = env_or("GPU_ARENA_PROPTEST_CASES", cases);
    let seed = env_or("GPU_ARENA_PROPTEST_SEED", 0x6770_752d_6172_656e_u64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        ..Config::default()
    });
    let total = RefCell::new(Tally::default());
    let start = Instant::now();
    let result = runner.run(&program(len), |ops| {
        let t = body(&ops)?;
        total.borrow_mut().add(&t);
        Ok(())
    });
    let elapsed = start.elapsed();
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    let t = total.into_inner();
    eprintln!(
        "{name}: {} programs (seed {seed:#x}) in {elapsed:.2?}: {} calls, {} refused as predicted \
         (+{} get_access), {} skipped; {} maps, {} unmaps ({} mappings), {} blocks read back",
        t.programs,
        t.calls,
        t.refused,
        t.get_access_refused,
        t.skipped,
        t.maps,
        t.unmaps,
        t.unmapped,
        t.blocks_checked
    );
    if std::env::var_os("GPU_ARENA_PROPTEST_VERBOSE").is_some() {
        for (k, n) in &t.outcomes {
            eprintln!("  {n:>6} {k}");
        }
    }
    (t, elapsed)
}

// ---------------------------------------------------------------------------
// The drivers
// ---------------------------------------------------------------------------

fn host() -> Result<HostDriver, TestCaseError> {
    HostDriver::new().map_err(|e| TestCaseError::fail(format!("HostDriver::new: {e}")))
}

#[test]
fn host_driver_follows_the_model() {
    let (t, _) = check("host", 512, 10..=40, |ops| {
        let d = host()?;
        let t = run_program(&d, ops)?;
        prop_assert!(
            d.is_clean(),
            "the host backend holds something after cleanup"
        );
        prop_assert_eq!(d.physical_bytes(), 0);
        Ok(t)
    });
    assert!(t.refused > 0 && t.maps > 0 && t.blocks_checked > 0, "{t:?}");
}

#[test]
fn checked_host_driver_follows_the_model_and_counts() {
    let (t, _) = check("checked", 512, 10..=40, |ops| {
        let d = Checked::new(host()?);
        let t = run_program(&d, ops)?;
        let c = d.counts();
        prop_assert!(d.leaks().is_none(), "leaks: {:?}", d.leaks());
        prop_assert!(d.inner().is_clean());
        // Every refusal the model predicted was counted as one (get_access is
        // forwarded unchecked), and the inner driver never failed.
        // Physical exhaustion is the inner driver's answer (counted failed).
        prop_assert_eq!(c.refused, t.refused - t.exhausted, "refusals");
        prop_assert_eq!((c.injected, c.failed), (0, t.exhausted));
        // Balanced: every handle created was released, every reservation
        // freed, every mapping unmapped (one unmap may cover several).
        prop_assert_eq!(c.create, t.creates);
        prop_assert_eq!(c.create, c.release, "create/release");
        prop_assert_eq!(c.reserve, c.free_reservation, "reserve/free_reservation");
        prop_assert_eq!((c.map, c.unmap), (t.maps, t.unmaps));
        prop_assert_eq!(c.map, t.unmapped, "mappings made/unmapped");
        Ok(t)
    });
    assert!(t.refused > 0, "no refusal in {} programs", t.programs);
}

/// The host backend driven the way a real GPU is (calls the H100 leaves
/// undefined are skipped): exercises the CUDA run's skipping on any machine.
#[test]
fn host_driver_follows_the_model_as_a_gpu_would_be_driven() {
    let (t, _) = check("host-as-gpu", 64, 10..=40, |ops| {
        let d = host()?;
        let t = run_program_as(&d, ops, true)?;
        prop_assert!(d.is_clean());
        Ok(t)
    });
    assert!(t.skipped > 0 && t.refused > 0, "{t:?}");
}

/// The same programs on the CUDA driver, where a GPU is found.
#[cfg(feature = "cuda")]
#[test]
fn cuda_driver_follows_the_model() {
    use gpu_arena::driver::{Select, SystemDriver};
    let d = match SystemDriver::open(Select::Cuda, 0, |_| {}) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let (t, _) = check("cuda", 24, 8..=20, |ops| run_program(&d, ops));
    assert!(t.calls > 0, "{t:?}");
}

/// The HIP backend on the full programs of the emulations: through the
/// host-mode stand-in `libamdhip64` (CI), where nothing is undefined, every
/// call is made; on a GPU (the CUDA stand-in, or an AMD GPU) the programs
/// and skips are those of the CUDA run.
#[cfg(feature = "hip")]
#[test]
fn hip_driver_follows_the_model() {
    use gpu_arena::driver::hip::HipDriver;
    if crate::common::hip().is_none() {
        return;
    }
    // A driver per program, so that a failing program leaves nothing behind
    // for the shrinking ones.
    let open =
        || HipDriver::new(0).map_err(|e| TestCaseError::fail(format!("HipDriver::new: {e}")));
    let (t, _) = if crate::common::hip_rt::host_shim() {
        check("hip", 256, 10..=40, |ops| {
            let d = open()?;
            let t = run_program_as(&d, ops, false)?;
            prop_assert!(
                d.is_clean(),
                "the HIP backend holds something after cleanup"
            );
            Ok(t)
        })
    } else {
        check("hip", 24, 8..=20, |ops| {
            let d = open()?;
            let t = run_program(&d, ops)?;
            prop_assert!(
                d.is_clean(),
                "the HIP backend holds something after cleanup"
            );
            Ok(t)
        })
    };
    assert!(t.calls > 0 && t.refused > 0 && t.maps > 0, "{t:?}");
}

/// The CUDA run's programs (same generator, seed and sizes) on the HIP
/// backend and on a reference driver, compared program by program: the
/// CUDA backend where the HIP backend runs through the CUDA stand-in (both
/// then drive the same GPU), else the host backend driven as a GPU is.
#[cfg(feature = "hip")]
#[test]
fn hip_and_reference_drivers_agree_program_by_program() {
    let Some(hip) = crate::common::hip() else {
        return;
    };
    #[cfg(feature = "cuda")]
    if crate::common::hip_rt::cuda_shim() {
        use gpu_arena::driver::{Select, SystemDriver};
        let cuda = SystemDriver::open(Select::Cuda, 0, |_| {}).expect("the CUDA backend");
        paired("hip-vs-cuda", &hip, &cuda);
        return;
    }
    let reference = HostDriver::new().expect("host driver");
    paired("hip-vs-host", &hip, &reference);
}

/// Runs each program on `a`, then on `b` (both driven as GPUs are), and
/// requires the same outcome for every call: where neither driver handed a
/// released handle's value out again (a skip that depends on handle values),
/// the two tallies must be equal.
#[cfg(feature = "hip")]
fn paired<A: Driver, B: Driver>(name: &str, a: &A, b: &B) {
    let compared = core::cell::Cell::new(0u64);
    let reference = RefCell::new(Tally::default());
    let (t, _) = check(name, 24, 8..=20, |ops| {
        let ta = run_program_as(a, ops, true)?;
        let tb = run_program_as(b, ops, true)?;
        if ta.reused == 0 && tb.reused == 0 {
            prop_assert_eq!(&ta.outcomes, &tb.outcomes, "outcomes differ");
            let sum = |t: &Tally| {
                (
                    t.calls,
                    t.refused,
                    t.get_access_refused,
                    t.skipped,
                    t.maps,
                    t.unmaps,
                    t.unmapped,
                    t.blocks_checked,
                )
            };
            prop_assert_eq!(sum(&ta), sum(&tb), "tallies differ");
            compared.set(compared.get() + 1);
        }
        reference.borrow_mut().add(&tb);
        Ok(ta)
    });
    let r = reference.into_inner();
    eprintln!(
        "{name}: reference driver: {} calls, {} refused as predicted (+{} get_access), {} skipped; \
         {} maps, {} unmaps, {} blocks read back",
        r.calls, r.refused, r.get_access_refused, r.skipped, r.maps, r.unmaps, r.blocks_checked
    );
    eprintln!(
        "{name}: {} of {} programs compared call by call (the others named a reused handle value): identical",
        compared.get(),
        t.programs
    );
    assert!(compared.get() > 0, "no program could be compared");
}
