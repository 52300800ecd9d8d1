//! The VMM rules measured on an H100, as bookkeeping.
//!
//! [`VmState`] records reservations, mappings and handles and decides, for
//! each call, whether a GPU driver would accept it and with which
//! [`ErrorKind`] it would refuse. The host backend uses it to behave like
//! CUDA; the `checked` layer uses it to refuse violations before they reach a
//! real driver. It changes nothing when it refuses.
//!
//! Order of checks (first failing wins), as observed on CUDA 13 / driver 580:
//! see `docs/conformance.md` for each rule and the code seen. The codes were
//! probed on an H100 (`research/vmm-probe-h100.md`):
//!
//! - `map` with a nonzero offset, or a size other than the handle's (smaller,
//!   larger or not even granular), is NOT_SUPPORTED; everything else it refuses
//!   (size 0, unaligned address, outside a reservation, over a mapping, a
//!   stale handle) is INVALID_VALUE;
//! - `unmap` is lenient: any granular range of one reservation that cuts no
//!   mapping in two succeeds, holes and already-unmapped ranges included;
//! - `set_access` is strict (whole mappings only, INVALID_VALUE otherwise),
//!   and a host accessor on device-located memory is NOT_SUPPORTED;
//! - `reserve` accepts any power-of-two alignment (below the granularity it
//!   is the granularity);
//! - `get_access` for a device that does not exist is an invalid device
//!   (INVALID_VALUE kind).
//!
//! Where the H100 is looser than this (a `map` or `unmap` that starts inside
//! a reservation and runs past its end succeeds there, and a stale handle
//! crashes the process), the rules here refuse with INVALID_VALUE: callers
//! must never rely on either.
#![deny(unsafe_code, clippy::unwrap_used)]

use core::hash::Hash;

use crate::driver::{Access, AccessMode, Location};
use crate::error::{ErrorKind, Reason};
use crate::meta::{MetaMap, MetaVec};

/// A refusal: what a driver returns, and why.
pub type Refusal = (ErrorKind, Reason);

/// Rights of every accessor on one mapping: bit `d` is device `d`, bit 63 the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights {
    /// Accessors that may read.
    pub read: u64,
    /// Accessors that may write.
    pub write: u64,
}

const CPU_BIT: u32 = 63;

fn accessor_bit(location: Location) -> u64 {
    match location {
        Location::Device(d) => 1u64 << d.min(62),
        Location::Host => 1u64 << CPU_BIT,
    }
}

impl Rights {
    /// The mode `accessor` has.
    pub fn mode(&self, accessor: Location) -> AccessMode {
        let bit = accessor_bit(accessor);
        if self.write & bit != 0 {
            AccessMode::ReadWrite
        } else if self.read & bit != 0 {
            AccessMode::Read
        } else {
            AccessMode::None
        }
    }
    /// Whether anybody may read / write (the host backend's page protection).
    pub fn any(&self) -> (bool, bool) {
        (self.read != 0, self.write != 0)
    }
    fn apply(&mut self, access: &Access) {
        let bit = accessor_bit(access.location);
        self.read &= !bit;
        self.write &= !bit;
        match access.mode {
            AccessMode::None => {}
            AccessMode::Read => self.read |= bit,
            AccessMode::ReadWrite => {
                self.read |= bit;
                self.write |= bit;
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Reservation {
    base: u64,
    size: u64,
}

/// One mapping of a whole handle.
#[derive(Clone, Copy, Debug)]
pub struct Mapping<H> {
    /// Start address.
    pub va: u64,
    /// Length (the handle's size).
    pub size: u64,
    /// The handle mapped there.
    pub handle: H,
    /// Who may access it.
    pub rights: Rights,
}

/// A live (created, maybe released-but-mapped) physical handle.
#[derive(Clone, Copy, Debug)]
pub struct HandleState {
    /// Size in bytes.
    pub size: u64,
    /// Where its memory lives.
    pub location: Location,
    /// How many mappings use it.
    pub mappings: u32,
    /// Released by its owner; its memory goes back at the last unmap.
    pub released: bool,
}

/// Reservations, mappings and handles of one driver instance.
#[derive(Debug)]
pub struct VmState<H: Copy + Eq + Hash> {
    granularity: u64,
    device_count: u32,
    host_memory: bool,
    max_reservation: u64,
    reservations: MetaVec<Reservation>,
    mappings: MetaVec<Mapping<H>>,
    handles: MetaMap<H, HandleState>,
    physical: u64,
}

impl<H: Copy + Eq + Hash> VmState<H> {
    /// Empty state for a driver of this granularity and device count.
    pub fn new(
        granularity: u64,
        device_count: u32,
        host_memory: bool,
        max_reservation: u64,
    ) -> Self {
        VmState {
            granularity,
            device_count,
            host_memory,
            max_reservation,
            reservations: MetaVec::new_in(std::alloc::System),
            mappings: MetaVec::new_in(std::alloc::System),
            handles: MetaMap::with_hasher_in(Default::default(), std::alloc::System),
            physical: 0,
        }
    }

    /// Bytes of live physical handles (created, not yet given back).
    pub fn physical_bytes(&self) -> u64 {
        self.physical
    }
    /// Number of live handles.
    pub fn handle_count(&self) -> usize {
        self.handles.len()
    }
    /// Number of mappings.
    pub fn mapping_count(&self) -> usize {
        self.mappings.len()
    }
    /// Number of reservations.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }
    /// The state of a live handle.
    pub fn handle(&self, h: H) -> Option<&HandleState> {
        self.handles.get(&h)
    }

    fn granular(&self, v: u64) -> core::result::Result<(), Refusal> {
        if v % self.granularity != 0 {
            Err((
                ErrorKind::InvalidValue,
                Reason::NotGranular {
                    value: v,
                    granularity: self.granularity,
                },
            ))
        } else {
            Ok(())
        }
    }

    fn sized(&self, size: u64) -> core::result::Result<(), Refusal> {
        if size == 0 {
            return Err((ErrorKind::InvalidValue, Reason::ZeroSize));
        }
        self.granular(size)
    }

    /// Checks a reservation request.
    pub fn check_reserve(&self, size: u64, align: u64) -> core::result::Result<(), Refusal> {
        self.sized(size)?;
        // Any power of two is accepted (CUDA: 4096 < granularity succeeds and
        // is rounded up); 3 granules is refused.
        if align != 0 && !align.is_power_of_two() {
            return Err((
                ErrorKind::InvalidValue,
                Reason::NotGranular {
                    value: align,
                    granularity: self.granularity,
                },
            ));
        }
        if size > self.max_reservation {
            return Err((ErrorKind::OutOfMemory, Reason::Exhausted));
        }
        Ok(())
    }

    /// Records a reservation the backend obtained.
    pub fn add_reservation(&mut self, base: u64, size: u64) {
        let at = self.reservations.partition_point(|r| r.base < base);
        self.reservations.insert(at, Reservation { base, size });
    }

    /// Checks and records freeing a reservation.
    pub fn free_reservation(&mut self, va: u64, size: u64) -> core::result::Result<(), Refusal> {
        let Some(i) = self.reservations.iter().position(|r| r.base == va) else {
            return Err((ErrorKind::InvalidValue, Reason::NotAReservation));
        };
        if self.reservations[i].size != size {
            return Err((ErrorKind::InvalidValue, Reason::NotAReservation));
        }
        let end = va + size;
        if self
            .mappings
            .iter()
            .any(|m| m.va < end && m.va + m.size > va)
        {
            return Err((ErrorKind::InvalidValue, Reason::MappingsRemain));
        }
        self.reservations.remove(i);
        Ok(())
    }

    fn device_ok(&self, location: Location) -> bool {
        match location {
            Location::Device(d) => d < self.device_count,
            Location::Host => self.host_memory,
        }
    }

    /// Checks a create request.
    pub fn check_create(&self, size: u64, location: Location) -> core::result::Result<(), Refusal> {
        if !self.device_ok(location) {
            return Err((ErrorKind::InvalidValue, Reason::NoSuchDevice));
        }
        self.sized(size)
    }

    /// Records a created handle.
    pub fn add_handle(&mut self, h: H, size: u64, location: Location) {
        self.physical += size;
        self.handles.insert(
            h,
            HandleState {
                size,
                location,
                mappings: 0,
                released: false,
            },
        );
    }

    /// Checks a release without recording it.
    pub fn check_release(&self, h: H) -> core::result::Result<(), Refusal> {
        match self.handles.get(&h) {
            Some(s) if !s.released => Ok(()),
            _ => Err((ErrorKind::InvalidValue, Reason::UnknownHandle)),
        }
    }

    /// Checks and records a release. `Ok(true)`: the memory goes back now.
    pub fn release(&mut self, h: H) -> core::result::Result<bool, Refusal> {
        match self.handles.get_mut(&h) {
            Some(s) if !s.released => {
                if s.mappings == 0 {
                    self.physical -= s.size;
                    self.handles.remove(&h);
                    Ok(true)
                } else {
                    s.released = true;
                    Ok(false)
                }
            }
            _ => Err((ErrorKind::InvalidValue, Reason::UnknownHandle)),
        }
    }

    fn reservation_of(&self, va: u64, size: u64) -> Option<&Reservation> {
        let end = va.checked_add(size)?;
        self.reservations
            .iter()
            .find(|r| va >= r.base && end <= r.base + r.size)
    }

    /// Checks and records a map.
    pub fn map(
        &mut self,
        va: u64,
        size: u64,
        offset: u64,
        h: H,
    ) -> core::result::Result<(), Refusal> {
        // A nonzero size that is not granular cannot equal the handle's size:
        // CUDA calls that NOT_SUPPORTED (size mismatch below), not INVALID_VALUE.
        if size == 0 {
            return Err((ErrorKind::InvalidValue, Reason::ZeroSize));
        }
        self.granular(va)?;
        if self.reservation_of(va, size).is_none() {
            return Err((ErrorKind::InvalidValue, Reason::OutsideReservation));
        }
        let Some(state) = self.handles.get(&h).filter(|s| !s.released) else {
            return Err((ErrorKind::InvalidValue, Reason::UnknownHandle));
        };
        if offset != 0 {
            return Err((ErrorKind::NotSupported, Reason::NonzeroOffset));
        }
        if size != state.size {
            return Err((ErrorKind::NotSupported, Reason::SizeMismatch));
        }
        let end = va + size;
        if self
            .mappings
            .iter()
            .any(|m| m.va < end && m.va + m.size > va)
        {
            return Err((ErrorKind::InvalidValue, Reason::AlreadyMapped));
        }
        let at = self.mappings.partition_point(|m| m.va < va);
        self.mappings.insert(
            at,
            Mapping {
                va,
                size,
                handle: h,
                rights: Rights::default(),
            },
        );
        if let Some(s) = self.handles.get_mut(&h) {
            s.mappings += 1;
        }
        Ok(())
    }

    /// Checks that `va..va+size` is a nonzero, granular range that does not
    /// overflow; returns its end.
    fn granular_range(&self, va: u64, size: u64) -> core::result::Result<u64, Refusal> {
        self.sized(size)?;
        self.granular(va)?;
        va.checked_add(size)
            .ok_or((ErrorKind::InvalidValue, Reason::Overflow))
    }

    /// The indices of the mappings inside `va..va+size`, a granular range of
    /// one reservation that cuts no mapping in two (holes allowed).
    fn mappings_within(
        &self,
        va: u64,
        size: u64,
    ) -> core::result::Result<core::ops::Range<usize>, Refusal> {
        let end = self.granular_range(va, size)?;
        if self.reservation_of(va, size).is_none() {
            return Err((ErrorKind::InvalidValue, Reason::OutsideReservation));
        }
        let first = self.mappings.partition_point(|m| m.va + m.size <= va);
        let last = self.mappings.partition_point(|m| m.va < end);
        if self.mappings[first..last]
            .iter()
            .any(|m| m.va < va || m.va + m.size > end)
        {
            return Err((ErrorKind::InvalidValue, Reason::PartialMapping));
        }
        Ok(first..last)
    }

    /// The indices of the mappings that exactly tile `va..va+size`.
    fn whole_mappings(
        &self,
        va: u64,
        size: u64,
    ) -> core::result::Result<core::ops::Range<usize>, Refusal> {
        let end = self.granular_range(va, size)?;
        let first = self.mappings.partition_point(|m| m.va + m.size <= va);
        let mut at = va;
        let mut i = first;
        while at < end {
            match self.mappings.get(i) {
                Some(m) if m.va == at => {
                    if m.va + m.size > end {
                        return Err((ErrorKind::InvalidValue, Reason::PartialMapping));
                    }
                    at = m.va + m.size;
                    i += 1;
                }
                Some(m) if m.va < at => {
                    return Err((ErrorKind::InvalidValue, Reason::PartialMapping));
                }
                _ => return Err((ErrorKind::InvalidValue, Reason::NotMapped)),
            }
        }
        Ok(first..i)
    }

    /// Checks an unmap without recording it.
    pub fn check_unmap(&self, va: u64, size: u64) -> core::result::Result<(), Refusal> {
        self.mappings_within(va, size).map(|_| ())
    }

    /// Checks and records an unmap; `on_freed` is called for each handle whose
    /// memory goes back now (released and no mapping left).
    ///
    /// Lenient, as on CUDA: the range must lie in one reservation and cut no
    /// mapping in two; it may hold holes or no mapping at all (a no-op).
    pub fn unmap(
        &mut self,
        va: u64,
        size: u64,
        mut on_freed: impl FnMut(H, &HandleState),
    ) -> core::result::Result<u64, Refusal> {
        let range = self.mappings_within(va, size)?;
        let mut bytes = 0;
        for m in self.mappings.drain(range) {
            bytes += m.size;
            if let Some(s) = self.handles.get_mut(&m.handle) {
                s.mappings -= 1;
                if s.released && s.mappings == 0 {
                    let s = *s;
                    self.physical -= s.size;
                    self.handles.remove(&m.handle);
                    on_freed(m.handle, &s);
                }
            }
        }
        Ok(bytes)
    }

    /// Checks and records an access change; `on_changed` sees each mapping's new rights.
    pub fn set_access(
        &mut self,
        va: u64,
        size: u64,
        access: &[Access],
        mut on_changed: impl FnMut(&Mapping<H>),
    ) -> core::result::Result<(), Refusal> {
        let range = self.check_set_access(va, size, access)?;
        for m in &mut self.mappings[range] {
            for a in access {
                m.rights.apply(a);
            }
            on_changed(m);
        }
        Ok(())
    }

    /// Checks an access change without recording it; the indices of the
    /// mappings it covers.
    pub fn check_set_access(
        &self,
        va: u64,
        size: u64,
        access: &[Access],
    ) -> core::result::Result<core::ops::Range<usize>, Refusal> {
        if access.is_empty() {
            return Err((ErrorKind::InvalidValue, Reason::ZeroSize));
        }
        if access
            .iter()
            .any(|a| !self.device_ok(a.location) && a.location != Location::Host)
        {
            return Err((ErrorKind::InvalidValue, Reason::NoSuchDevice));
        }
        let range = self.whole_mappings(va, size)?;
        // CUDA: device memory can never be mapped for the CPU.
        if access.iter().any(|a| a.location == Location::Host)
            && self.mappings[range.clone()].iter().any(|m| {
                self.handles
                    .get(&m.handle)
                    .is_some_and(|s| s.location != Location::Host)
            })
        {
            return Err((ErrorKind::NotSupported, Reason::HostAccessToDeviceMemory));
        }
        Ok(range)
    }

    /// The rights of `accessor` on the mapping containing `va`.
    pub fn get_access(
        &self,
        va: u64,
        accessor: Location,
    ) -> core::result::Result<AccessMode, Refusal> {
        if matches!(accessor, Location::Device(d) if d >= self.device_count) {
            return Err((ErrorKind::InvalidValue, Reason::NoSuchDevice));
        }
        self.mapping_at(va)
            .map(|m| m.rights.mode(accessor))
            .ok_or((ErrorKind::InvalidValue, Reason::NotMapped))
    }

    /// Checks the range of a copy or fill: where it overlaps a reservation
    /// of this driver, every byte of it from there on must be mapped, with
    /// some accessor allowed to read it (a source) or write it (a target).
    /// Memory outside the reservations (host buffers, other allocators'
    /// memory) is not this state's to judge. A copy through an unmapped
    /// range is what the driver may try to serve as pageable host memory,
    /// touching the address on the CPU.
    pub fn check_transfer(
        &self,
        va: u64,
        len: u64,
        write: bool,
    ) -> core::result::Result<(), Refusal> {
        if len == 0 {
            return Ok(());
        }
        let end = va
            .checked_add(len)
            .ok_or((ErrorKind::InvalidValue, Reason::Overflow))?;
        // The part that lies in a reservation (a range may also start
        // outside one and run into it).
        let Some(r) = self
            .reservations
            .iter()
            .find(|r| va < r.base + r.size && r.base < end)
        else {
            return Ok(());
        };
        let mut at = va.max(r.base);
        while at < end {
            let m = self
                .mapping_at(at)
                .ok_or((ErrorKind::InvalidValue, Reason::NotMapped))?;
            let (read, written) = m.rights.any();
            if !(if write { written } else { read }) {
                return Err((ErrorKind::InvalidValue, Reason::NotMapped));
            }
            at = m.va + m.size;
        }
        Ok(())
    }

    /// The mappings overlapping `va..va + len`, by address.
    pub fn mappings_overlapping(&self, va: u64, len: u64) -> &[Mapping<H>] {
        let end = va.saturating_add(len);
        let first = self.mappings.partition_point(|m| m.va + m.size <= va);
        let last = self.mappings.partition_point(|m| m.va < end).max(first);
        &self.mappings[first..last]
    }

    /// The mapping containing `va`.
    pub fn mapping_at(&self, va: u64) -> Option<&Mapping<H>> {
        let i = self.mappings.partition_point(|m| m.va + m.size <= va);
        self.mappings.get(i).filter(|m| m.va <= va)
    }

    /// Whether everything has been given back (no leak).
    pub fn is_empty(&self) -> bool {
        self.reservations.is_empty() && self.mappings.is_empty() && self.handles.is_empty()
    }
}
