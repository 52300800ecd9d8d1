//! The `checked` layer: wraps any [`Driver`], refuses rule violations before
//! they reach it, counts every call, reports leaks and injects faults.
//!
//! ```
//! use gpu_arena::driver::{Checked, Driver, HostDriver, Location, Op, Fault, FaultKind};
//! let d = Checked::new(HostDriver::new()?);
//! let g = d.capabilities().granularity;
//! let va = d.reserve(4 * g, 0)?;
//! let h = d.create(2 * g, Location::Device(0))?;
//! // Partial unmap is refused by the checked layer, as CUDA refuses it.
//! // SAFETY: the range is ours and unused.
//! unsafe { d.map(va, 2 * g, 0, h)? };
//! assert!(unsafe { d.unmap(va, g) }.is_err());
//! // Fail the next create with out-of-memory.
//! d.inject(Fault { op: Op::Create, nth: 1, kind: FaultKind::OutOfMemory });
//! assert!(d.create(g, Location::Device(0)).is_err());
//! unsafe { d.unmap(va, 2 * g)? };
//! d.release(h)?;
//! unsafe { d.free_reservation(va, 4 * g)? };
//! assert!(d.leaks().is_none());
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::driver::rules::{Refusal, VmState};
use crate::driver::{Access, AccessMode, Capabilities, Driver, Location, Stream};
use crate::error::{Call, DriverError, Error, ErrorKind, Reason, Result};
use crate::lock::lock;
use crate::meta::MetaVec;

/// The driver operations the checked layer counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `reserve`
    Reserve,
    /// `free_reservation`
    FreeReservation,
    /// `create`
    Create,
    /// `release`
    Release,
    /// `map`
    Map,
    /// `unmap`
    Unmap,
    /// `set_access`
    SetAccess,
    /// `record`
    Record,
    /// `is_complete`
    IsComplete,
    /// `wait`
    Wait,
    /// `copy` and `fill`
    Copy,
}

impl Op {
    /// Every op, in counter order.
    pub const ALL: [Op; 11] = [
        Op::Reserve,
        Op::FreeReservation,
        Op::Create,
        Op::Release,
        Op::Map,
        Op::Unmap,
        Op::SetAccess,
        Op::Record,
        Op::IsComplete,
        Op::Wait,
        Op::Copy,
    ];
    const fn call(self) -> Call {
        match self {
            Op::Reserve => Call::Reserve,
            Op::FreeReservation => Call::FreeReservation,
            Op::Create => Call::Create,
            Op::Release => Call::Release,
            Op::Map => Call::Map,
            Op::Unmap => Call::Unmap,
            Op::SetAccess => Call::SetAccess,
            Op::Record => Call::Record,
            Op::IsComplete => Call::QueryFence,
            Op::Wait => Call::Wait,
            Op::Copy => Call::Copy,
        }
    }
}

/// How an injected fault fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// As if the device were out of memory.
    OutOfMemory,
    /// As if the driver returned an unexpected error.
    DriverError,
}

/// Fail the `nth` (1 = next) call of `op` from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which operation.
    pub op: Op,
    /// Which call of it, counted from the moment of injection (1 = next).
    pub nth: u64,
    /// How it fails.
    pub kind: FaultKind,
}

/// Calls made through the checked layer (successful ones; refusals and
/// injected faults are counted separately).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    /// Successful `reserve` calls.
    pub reserve: u64,
    /// Successful `free_reservation` calls.
    pub free_reservation: u64,
    /// Successful `create` calls.
    pub create: u64,
    /// Successful `release` calls.
    pub release: u64,
    /// Successful `map` calls.
    pub map: u64,
    /// Successful `unmap` calls.
    pub unmap: u64,
    /// Successful `set_access` calls.
    pub set_access: u64,
    /// Successful `record` calls.
    pub record: u64,
    /// `is_complete` calls.
    pub is_complete: u64,
    /// `wait` calls.
    pub wait: u64,
    /// `copy`/`fill` calls.
    pub copy: u64,
    /// Calls refused by the rules.
    pub refused: u64,
    /// Faults injected.
    pub injected: u64,
    /// Calls the inner driver failed.
    pub failed: u64,
    /// Bytes created.
    pub bytes_created: u64,
    /// Bytes mapped.
    pub bytes_mapped: u64,
    /// Bytes of the mappings removed (one `unmap` may remove several).
    pub bytes_unmapped: u64,
}

impl CallCounts {
    /// The count for one op.
    pub const fn get(&self, op: Op) -> u64 {
        match op {
            Op::Reserve => self.reserve,
            Op::FreeReservation => self.free_reservation,
            Op::Create => self.create,
            Op::Release => self.release,
            Op::Map => self.map,
            Op::Unmap => self.unmap,
            Op::SetAccess => self.set_access,
            Op::Record => self.record,
            Op::IsComplete => self.is_complete,
            Op::Wait => self.wait,
            Op::Copy => self.copy,
        }
    }
    /// All driver calls counted (successful, refused, injected and failed).
    pub const fn total(&self) -> u64 {
        self.reserve
            + self.free_reservation
            + self.create
            + self.release
            + self.map
            + self.unmap
            + self.set_access
            + self.record
            + self.is_complete
            + self.wait
            + self.copy
            + self.refused
            + self.injected
            + self.failed
    }
}

/// What was left behind: unbalanced reservations, handles and mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaks {
    /// Reservations never freed.
    pub reservations: usize,
    /// Handles never released (or released but still mapped).
    pub handles: usize,
    /// Mappings never unmapped.
    pub mappings: usize,
    /// Physical bytes still held.
    pub physical_bytes: u64,
}

/// One entry of the call log (see [`Checked::enable_log`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The operation.
    pub op: Op,
    /// Address (or 0).
    pub va: u64,
    /// Size (or 0).
    pub size: u64,
    /// Whether it succeeded.
    pub ok: bool,
}

struct State<H: Copy + Eq + core::hash::Hash> {
    vm: VmState<H>,
    faults: MetaVec<(Op, u64, FaultKind)>,
    log: Option<MetaVec<LogEntry>>,
}

/// A rule-enforcing, counting, fault-injecting wrapper around a driver.
pub struct Checked<D: Driver> {
    inner: D,
    state: Mutex<State<D::Handle>>,
    counts: [AtomicU64; 17],
}

const REFUSED: usize = 11;
const INJECTED: usize = 12;
const FAILED: usize = 13;
const BYTES_CREATED: usize = 14;
const BYTES_MAPPED: usize = 15;
const BYTES_UNMAPPED: usize = 16;

impl<D: Driver> core::fmt::Debug for Checked<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Checked")
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

impl<D: Driver> Checked<D> {
    /// Wraps `inner`.
    pub fn new(inner: D) -> Self {
        let caps = *inner.capabilities();
        Checked {
            state: Mutex::new(State {
                vm: VmState::new(
                    caps.granularity as u64,
                    caps.device_count,
                    caps.host_memory,
                    caps.max_reservation,
                ),
                faults: MetaVec::new_in(std::alloc::System),
                log: None,
            }),
            inner,
            counts: Default::default(),
        }
    }

    /// The wrapped driver.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<D::Handle>> {
        lock(&self.state)
    }

    /// Counts so far.
    pub fn counts(&self) -> CallCounts {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        CallCounts {
            reserve: c(0),
            free_reservation: c(1),
            create: c(2),
            release: c(3),
            map: c(4),
            unmap: c(5),
            set_access: c(6),
            record: c(7),
            is_complete: c(8),
            wait: c(9),
            copy: c(10),
            refused: c(REFUSED),
            injected: c(INJECTED),
            failed: c(FAILED),
            bytes_created: c(BYTES_CREATED),
            bytes_mapped: c(BYTES_MAPPED),
            bytes_unmapped: c(BYTES_UNMAPPED),
        }
    }

    /// Schedules a fault.
    pub fn inject(&self, fault: Fault) {
        let mut st = self.lock();
        st.faults.push((fault.op, fault.nth.max(1), fault.kind));
    }

    /// Drops all scheduled faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Starts (or restarts) logging every call.
    pub fn enable_log(&self) {
        self.lock().log = Some(MetaVec::new_in(std::alloc::System));
    }

    /// Takes the call log so far (empty if logging is off).
    pub fn take_log(&self) -> std::vec::Vec<LogEntry> {
        let mut st = self.lock();
        match st.log.as_mut() {
            Some(l) => {
                let v = l.iter().copied().collect();
                l.clear();
                v
            }
            None => std::vec::Vec::new(),
        }
    }

    /// Physical bytes held by live handles, as the checked layer sees them.
    pub fn physical_bytes(&self) -> u64 {
        self.lock().vm.physical_bytes()
    }

    /// What is still held, or `None` when everything was given back.
    pub fn leaks(&self) -> Option<Leaks> {
        let st = self.lock();
        if st.vm.is_empty() {
            None
        } else {
            Some(Leaks {
                reservations: st.vm.reservation_count(),
                handles: st.vm.handle_count(),
                mappings: st.vm.mapping_count(),
                physical_bytes: st.vm.physical_bytes(),
            })
        }
    }

    /// Decrements the scheduled faults of `op`; returns the one that fires.
    fn fault(st: &mut State<D::Handle>, op: Op) -> Option<FaultKind> {
        let mut fired = None;
        st.faults.retain_mut(|(o, n, k)| {
            if *o != op {
                return true;
            }
            *n -= 1;
            if *n == 0 && fired.is_none() {
                fired = Some(*k);
                false
            } else {
                *n != 0
            }
        });
        fired
    }

    /// Common prologue: injected fault?
    fn pre(&self, st: &mut State<D::Handle>, op: Op, va: u64, size: u64) -> Result<()> {
        if let Some(kind) = Self::fault(st, op) {
            self.counts[INJECTED].fetch_add(1, Ordering::Relaxed);
            Self::log(st, op, va, size, false);
            let kind = match kind {
                FaultKind::OutOfMemory => ErrorKind::OutOfMemory,
                FaultKind::DriverError => ErrorKind::Other,
            };
            let mut e = DriverError::new(
                self.inner.capabilities().backend,
                op.call(),
                kind,
                Reason::Injected,
            );
            e.checked = true;
            return Err(e.into());
        }
        Ok(())
    }

    /// Refuses (and counts) a copy or fill through a range of one of this
    /// driver's reservations that is not mapped with access: `ranges` are
    /// (start, written) pairs of `len` bytes each, checked under one lock.
    fn check_transfer(&self, ranges: &[(u64, bool)], len: usize) -> Result<()> {
        let mut st = self.lock();
        for &(va, write) in ranges {
            if let Err(r) = st.vm.check_transfer(va, len as u64, write) {
                return Err(self.refuse(&mut st, Op::Copy, va, len as u64, r));
            }
        }
        Ok(())
    }

    fn refuse(&self, st: &mut State<D::Handle>, op: Op, va: u64, size: u64, r: Refusal) -> Error {
        self.counts[REFUSED].fetch_add(1, Ordering::Relaxed);
        Self::log(st, op, va, size, false);
        let mut e = DriverError::new(self.inner.capabilities().backend, op.call(), r.0, r.1);
        e.checked = true;
        e.into()
    }

    fn done<T>(&self, st: &mut State<D::Handle>, op: Op, va: u64, size: u64, r: &Result<T>) {
        Self::log(st, op, va, size, r.is_ok());
        let i = if r.is_ok() { op as usize } else { FAILED };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    fn log(st: &mut State<D::Handle>, op: Op, va: u64, size: u64, ok: bool) {
        if let Some(l) = st.log.as_mut() {
            l.push(LogEntry { op, va, size, ok });
        }
    }
}

// SAFETY: every call is forwarded to `inner` (which upholds the contract) only
// after the rules were checked; refusals and injected faults change nothing.
unsafe impl<D: Driver> Driver for Checked<D> {
    type Handle = D::Handle;
    type Fence = D::Fence;

    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    fn granularity(&self, location: Location) -> Result<usize> {
        self.inner.granularity(location)
    }

    fn reserve(&self, size: usize, align: usize) -> Result<u64> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Reserve, 0, size as u64)?;
        if let Err(r) = st.vm.check_reserve(size as u64, align as u64) {
            return Err(self.refuse(&mut st, Op::Reserve, 0, size as u64, r));
        }
        let r = self.inner.reserve(size, align);
        self.done(
            &mut st,
            Op::Reserve,
            *r.as_ref().unwrap_or(&0),
            size as u64,
            &r,
        );
        if let Ok(va) = r {
            st.vm.add_reservation(va, size as u64);
        }
        r
    }

    unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()> {
        let mut st = self.lock();
        self.pre(&mut st, Op::FreeReservation, va, size as u64)?;
        // Validate on a copy of the decision: VmState mutates on success only.
        if let Err(r) = st.vm.free_reservation(va, size as u64) {
            return Err(self.refuse(&mut st, Op::FreeReservation, va, size as u64, r));
        }
        // SAFETY: forwarded under the caller's guarantees.
        let r = unsafe { self.inner.free_reservation(va, size) };
        self.done(&mut st, Op::FreeReservation, va, size as u64, &r);
        if r.is_err() {
            st.vm.add_reservation(va, size as u64);
        }
        r
    }

    fn create(&self, size: usize, location: Location) -> Result<D::Handle> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Create, 0, size as u64)?;
        if let Err(r) = st.vm.check_create(size as u64, location) {
            return Err(self.refuse(&mut st, Op::Create, 0, size as u64, r));
        }
        let r = self.inner.create(size, location);
        self.done(&mut st, Op::Create, 0, size as u64, &r);
        if let Ok(h) = r {
            st.vm.add_handle(h, size as u64, location);
            self.counts[BYTES_CREATED].fetch_add(size as u64, Ordering::Relaxed);
        }
        r
    }

    fn release(&self, handle: D::Handle) -> Result<()> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Release, 0, 0)?;
        let size = st.vm.handle(handle).map_or(0, |s| s.size);
        if let Err(r) = st.vm.check_release(handle) {
            return Err(self.refuse(&mut st, Op::Release, 0, size, r));
        }
        let r = self.inner.release(handle);
        self.done(&mut st, Op::Release, 0, size, &r);
        // Recorded only once the driver agreed: a failed release leaves the
        // handle live (and releasable again), mapped or not.
        if r.is_ok() {
            let _ = st.vm.release(handle);
        }
        r
    }

    unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: D::Handle) -> Result<()> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Map, va, size as u64)?;
        if let Err(r) = st.vm.map(va, size as u64, offset as u64, handle) {
            return Err(self.refuse(&mut st, Op::Map, va, size as u64, r));
        }
        // SAFETY: forwarded under the caller's guarantees, checked above.
        let r = unsafe { self.inner.map(va, size, offset, handle) };
        self.done(&mut st, Op::Map, va, size as u64, &r);
        if r.is_err() {
            let _ = st.vm.unmap(va, size as u64, |_, _| {});
        } else {
            self.counts[BYTES_MAPPED].fetch_add(size as u64, Ordering::Relaxed);
        }
        r
    }

    unsafe fn unmap(&self, va: u64, size: usize) -> Result<()> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Unmap, va, size as u64)?;
        if let Err(r) = st.vm.check_unmap(va, size as u64) {
            return Err(self.refuse(&mut st, Op::Unmap, va, size as u64, r));
        }
        // SAFETY: forwarded under the caller's guarantees, checked above.
        let r = unsafe { self.inner.unmap(va, size) };
        self.done(&mut st, Op::Unmap, va, size as u64, &r);
        // Recorded only once the driver agreed: after a failed unmap the
        // mappings (and the handles they keep alive) are still there.
        if r.is_ok() {
            if let Ok(bytes) = st.vm.unmap(va, size as u64, |_, _| {}) {
                self.counts[BYTES_UNMAPPED].fetch_add(bytes, Ordering::Relaxed);
            }
        }
        r
    }

    unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()> {
        let mut st = self.lock();
        self.pre(&mut st, Op::SetAccess, va, size as u64)?;
        if let Err(r) = st.vm.check_set_access(va, size as u64, access) {
            return Err(self.refuse(&mut st, Op::SetAccess, va, size as u64, r));
        }
        // SAFETY: forwarded under the caller's guarantees, checked above.
        let r = unsafe { self.inner.set_access(va, size, access) };
        self.done(&mut st, Op::SetAccess, va, size as u64, &r);
        if r.is_ok() {
            let _ = st.vm.set_access(va, size as u64, access, |_| {});
        }
        r
    }

    fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode> {
        self.inner.get_access(va, accessor)
    }

    fn record(&self, stream: Stream) -> Result<D::Fence> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Record, 0, 0)?;
        let r = self.inner.record(stream);
        self.done(&mut st, Op::Record, stream.0, 0, &r);
        r
    }

    fn is_complete(&self, fence: &D::Fence) -> Result<bool> {
        self.counts[Op::IsComplete as usize].fetch_add(1, Ordering::Relaxed);
        self.inner.is_complete(fence)
    }

    fn wait(&self, fence: &D::Fence) -> Result<()> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Wait, 0, 0)?;
        drop(st);
        let r = self.inner.wait(fence);
        let mut st = self.lock();
        self.done(&mut st, Op::Wait, 0, 0, &r);
        r
    }

    fn drop_fence(&self, fence: D::Fence) {
        self.inner.drop_fence(fence)
    }

    fn create_stream(&self) -> Result<Stream> {
        self.inner.create_stream()
    }

    unsafe fn destroy_stream(&self, stream: Stream) -> Result<()> {
        // SAFETY: forwarded under the caller's guarantees.
        unsafe { self.inner.destroy_stream(stream) }
    }

    unsafe fn copy(&self, dst: u64, src: u64, len: usize, stream: Stream) -> Result<()> {
        self.counts[Op::Copy as usize].fetch_add(1, Ordering::Relaxed);
        self.check_transfer(&[(dst, true), (src, false)], len)?;
        // SAFETY: forwarded under the caller's guarantees.
        unsafe { self.inner.copy(dst, src, len, stream) }
    }

    unsafe fn fill(&self, dst: u64, byte: u8, len: usize, stream: Stream) -> Result<()> {
        self.counts[Op::Copy as usize].fetch_add(1, Ordering::Relaxed);
        self.check_transfer(&[(dst, true)], len)?;
        // SAFETY: forwarded under the caller's guarantees.
        unsafe { self.inner.fill(dst, byte, len, stream) }
    }

    /// Counted and fault-injected as a `create`.
    fn create_shareable(&self, size: usize, location: Location) -> Result<D::Handle> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Create, 0, size as u64)?;
        if let Err(r) = st.vm.check_create(size as u64, location) {
            return Err(self.refuse(&mut st, Op::Create, 0, size as u64, r));
        }
        let r = self.inner.create_shareable(size, location);
        self.done(&mut st, Op::Create, 0, size as u64, &r);
        if let Ok(h) = r {
            st.vm.add_handle(h, size as u64, location);
            self.counts[BYTES_CREATED].fetch_add(size as u64, Ordering::Relaxed);
        }
        r
    }

    /// Not counted; refused for handles that are not live.
    fn export(&self, handle: D::Handle) -> Result<OwnedFd> {
        let st = self.lock();
        if let Err(r) = st.vm.check_release(handle) {
            self.counts[REFUSED].fetch_add(1, Ordering::Relaxed);
            let mut e = DriverError::new(self.inner.capabilities().backend, Call::Share, r.0, r.1);
            e.checked = true;
            return Err(e.into());
        }
        self.inner.export(handle)
    }

    /// Counted and fault-injected as a `create`: the handle must be released
    /// like any other (the leak check counts it).
    unsafe fn import(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        location: Location,
    ) -> Result<D::Handle> {
        let mut st = self.lock();
        self.pre(&mut st, Op::Create, 0, size as u64)?;
        if let Err(r) = st.vm.check_create(size as u64, location) {
            return Err(self.refuse(&mut st, Op::Create, 0, size as u64, r));
        }
        // SAFETY: forwarded under the caller's guarantees.
        let r = unsafe { self.inner.import(fd, size, location) };
        self.done(&mut st, Op::Create, 0, size as u64, &r);
        if let Ok(h) = r {
            st.vm.add_handle(h, size as u64, location);
        }
        r
    }
}
