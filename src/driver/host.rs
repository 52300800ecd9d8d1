//! The host backend: the VMM rules on Linux memfd + mmap.
//!
//! - reservation = `mmap(PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)`;
//! - physical handle = a range of one sparse memfd (handle ids are never
//!   reused; the ranges of handles given back are, by later creates);
//! - map = `mmap(MAP_SHARED | MAP_FIXED)` of that range, with no access until
//!   `set_access` (as on CUDA);
//! - unmap = the range goes back to `PROT_NONE` anonymous reservation;
//! - release = `fallocate(PUNCH_HOLE)` (at the last unmap if still mapped).
//!
//! Shareable handles ([`Driver::create_shareable`]) are the exception: each
//! gets a memfd of its own (sealed against shrinking and growing), so that
//! exporting it hands out exactly that memory and never the memfd every other
//! handle lives in. Their release is `close` (at the last unmap), never a
//! hole punch: an importer's descriptor or mapping keeps the pages alive, and
//! the kernel frees them when the last process lets go. Imported handles are
//! the same kind (a duplicate of the received descriptor). Device numbers
//! beyond 0 (`HostConfig::device_count`) emulate peers: access lists and
//! `get_access` track them per accessor, as CUDA does.
//!
//! Every call is validated by [`VmState`] first, so the host backend returns
//! the same [`ErrorKind`]s as the CUDA driver and never touches memory outside
//! its own reservations. Physical memory is capped by
//! [`HostConfig::capacity`] to emulate a device's memory.
//!
//! Fences complete at once, unless a test holds a stream
//! ([`HostDriver::hold`]) to emulate a long-running kernel.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use crate::driver::rules::{Refusal, Rights, VmState};
use crate::driver::{Access, AccessMode, Capabilities, Driver, Location, Stream};
use crate::error::{Backend, Call, DriverError, Error, ErrorKind, Reason, Result};
use crate::lock::lock;
use crate::meta::{Holes, MetaMap, MetaVec};

/// Settings of the host backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Mapping granularity (a power of two, at least the OS page size).
    /// Default 2 MiB, as on an H100.
    pub granularity: usize,
    /// Emulated physical memory: creates beyond it fail with out-of-memory.
    pub capacity: u64,
    /// Number of emulated devices (for access lists and peer tests).
    pub device_count: u32,
    /// Largest reservation accepted (64 TiB, as on an H100).
    pub max_reservation: u64,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            granularity: 2 << 20,
            capacity: default_capacity(),
            device_count: 1,
            max_reservation: 64 << 40,
        }
    }
}

/// Half of the machine's RAM, the host backend's default emulated capacity.
fn default_capacity() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages > 0 && page > 0 {
        (pages as u64 * page as u64) / 2
    } else {
        8 << 30
    }
}

/// A physical handle of the host backend: an id (never reused) naming a
/// range of the common backing memfd, or (shareable and imported handles) a
/// memfd of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostHandle(pub u64);

/// A fence of the host backend: a position in an emulated stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostFence {
    stream: u64,
    seq: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamState {
    live: bool,
    recorded: u64,
    completed: u64,
    held: bool,
}

struct State {
    vm: VmState<HostHandle>,
    /// Handle ids: never reused (a stale handle stays unknown).
    next_id: u64,
    /// End of the part of the common memfd ever handed out.
    next_offset: u64,
    /// Common-memfd handles: their offset, by handle id.
    offsets: MetaMap<u64, u64>,
    /// Ranges of the common memfd given back (punched), sorted by offset,
    /// coalesced: reused by later creates, so the 4 PiB file never runs out
    /// while little is held.
    holes: Holes,
    streams: MetaVec<StreamState>,
    /// Shareable and imported handles: their own memfd, by handle id (ids
    /// from the same counter as the common memfd's handles).
    shared: MetaMap<u64, OwnedFd>,
}

/// The host backend (see the module docs).
pub struct HostDriver {
    caps: Capabilities,
    config: HostConfig,
    fd: libc::c_int,
    state: Mutex<State>,
}

impl core::fmt::Debug for HostDriver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostDriver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Size of the sparse backing file: offsets are handed out once and never reused.
const FILE_SIZE: u64 = 1 << 52;

fn host_err(call: Call, (kind, reason): Refusal) -> DriverError {
    DriverError::new(Backend::Host, call, kind, reason)
}

fn os_err(call: Call, kind: ErrorKind) -> DriverError {
    DriverError {
        backend: Backend::Host,
        call,
        code: crate::error::kind_to_cuda_code(kind),
        kind,
        reason: if kind == ErrorKind::OutOfMemory {
            Some(Reason::Exhausted)
        } else {
            None
        },
        checked: false,
    }
}

impl HostDriver {
    /// A host backend with default settings (2 MiB granularity, half the RAM).
    pub fn new() -> Result<Self> {
        Self::with_config(HostConfig::default())
    }

    /// A host backend with these settings.
    pub fn with_config(config: HostConfig) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        if !config.granularity.is_power_of_two() || config.granularity < page {
            return Err(Error::Config(
                "host granularity must be a power of two of at least the OS page size",
            ));
        }
        if config.device_count == 0 || config.device_count > 62 {
            return Err(Error::Config("host device_count must be 1..=62"));
        }
        // SAFETY: the name is a NUL-terminated string literal.
        let fd = unsafe { libc::memfd_create(c"gpu-arena".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(os_err(Call::Init, ErrorKind::Other).into());
        }
        // SAFETY: fd is the memfd we just created.
        if unsafe { libc::ftruncate(fd, FILE_SIZE as libc::off_t) } != 0 {
            // SAFETY: fd is ours and closed once.
            unsafe { libc::close(fd) };
            return Err(os_err(Call::Init, ErrorKind::Other).into());
        }
        let caps = Capabilities {
            backend: Backend::Host,
            granularity: config.granularity,
            recommended_granularity: config.granularity,
            device_count: config.device_count,
            device_memory: config.capacity,
            max_reservation: config.max_reservation,
            cpu_reads_device_memory: true,
            host_memory: true,
            peer_access: true,
            shareable_handles: true,
        };
        let mut streams = MetaVec::new_in(std::alloc::System);
        streams.push(StreamState {
            live: true,
            ..Default::default()
        });
        Ok(HostDriver {
            caps,
            config,
            fd,
            state: Mutex::new(State {
                vm: VmState::new(
                    config.granularity as u64,
                    config.device_count,
                    true,
                    config.max_reservation,
                ),
                next_id: 0,
                next_offset: 0,
                offsets: MetaMap::with_hasher_in(Default::default(), std::alloc::System),
                holes: Holes::new(),
                streams,
                shared: MetaMap::with_hasher_in(Default::default(), std::alloc::System),
            }),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Bytes of physical memory held by live handles.
    pub fn physical_bytes(&self) -> u64 {
        self.lock().vm.physical_bytes()
    }

    /// Whether no reservation, mapping or handle is left.
    pub fn is_clean(&self) -> bool {
        self.lock().vm.is_empty()
    }

    /// Emulates a long-running kernel on `stream`: fences recorded from now on
    /// stay pending until [`HostDriver::complete`] (or a `wait` on them).
    pub fn hold(&self, stream: Stream) {
        let mut st = self.lock();
        if let Some(s) = st.streams.get_mut(stream.0 as usize) {
            s.held = true;
        }
    }

    /// Completes all work recorded on `stream` and stops holding it.
    pub fn complete(&self, stream: Stream) {
        let mut st = self.lock();
        if let Some(s) = st.streams.get_mut(stream.0 as usize) {
            s.held = false;
            s.completed = s.recorded;
        }
    }

    /// Host-located memory is the CPU's only with a host descriptor (as on
    /// CUDA); device-located memory is the CPU's whenever a device has rights
    /// (the host backend's devices are the CPU).
    fn protect(
        &self,
        va: u64,
        size: u64,
        rights: Rights,
        host_located: bool,
    ) -> core::result::Result<(), ErrorKind> {
        let (r, w) = if host_located {
            match rights.mode(Location::Host) {
                AccessMode::None => (false, false),
                AccessMode::Read => (true, false),
                AccessMode::ReadWrite => (true, true),
            }
        } else {
            rights.any()
        };
        let prot = match (r, w) {
            (_, true) => libc::PROT_READ | libc::PROT_WRITE,
            (true, false) => libc::PROT_READ,
            _ => libc::PROT_NONE,
        };
        // SAFETY: the range is a whole mapping inside one of our reservations
        // (validated by VmState), so changing its protection touches no other
        // memory of the process.
        if unsafe { libc::mprotect(va as *mut libc::c_void, size as usize, prot) } != 0 {
            return Err(ErrorKind::Other);
        }
        Ok(())
    }
}

impl Drop for HostDriver {
    fn drop(&mut self) {
        // SAFETY: the fd is ours; mappings made from it stay valid after close.
        unsafe { libc::close(self.fd) };
    }
}

// SAFETY: (1) reservations come from mmap with a null hint, so the kernel
// returns fresh address space; (2) ranges are mapped from the memfd and only
// unmapped by `unmap`; (3) two mappings of one memfd range share pages
// (MAP_SHARED); (4) VmState validates before any syscall and syscall failures
// are rolled back; (5) nothing blocks except `wait`, which returns at once.
unsafe impl Driver for HostDriver {
    type Handle = HostHandle;
    type Fence = HostFence;

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn granularity(&self, location: Location) -> Result<usize> {
        match location {
            Location::Device(d) if d >= self.config.device_count => Err(host_err(
                Call::Granularity,
                (ErrorKind::InvalidValue, Reason::NoSuchDevice),
            )
            .into()),
            _ => Ok(self.config.granularity),
        }
    }

    fn reserve(&self, size: usize, align: usize) -> Result<u64> {
        let mut st = self.lock();
        st.vm
            .check_reserve(size as u64, align as u64)
            .map_err(|r| host_err(Call::Reserve, r))?;
        let align = align.max(self.config.granularity);
        let Some(total) = size.checked_add(align) else {
            return Err(host_err(Call::Reserve, (ErrorKind::OutOfMemory, Reason::Overflow)).into());
        };
        // SAFETY: a fresh anonymous PROT_NONE mapping with a null hint touches
        // no existing memory.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_err(Call::Reserve, ErrorKind::OutOfMemory).into());
        }
        let start = p as usize;
        let base = (start + align - 1) & !(align - 1);
        let head = base - start;
        let tail = total - head - size;
        // SAFETY: head and tail are the parts of our own fresh mapping
        // outside [base, base + size).
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((base + size) as *mut libc::c_void, tail);
            }
        }
        st.vm.add_reservation(base as u64, size as u64);
        Ok(base as u64)
    }

    unsafe fn free_reservation(&self, va: u64, size: usize) -> Result<()> {
        let mut st = self.lock();
        st.vm
            .free_reservation(va, size as u64)
            .map_err(|r| host_err(Call::FreeReservation, r))?;
        // SAFETY: VmState confirmed this is exactly one of our reservations
        // with no mappings left.
        unsafe { libc::munmap(va as *mut libc::c_void, size) };
        Ok(())
    }

    fn create(&self, size: usize, location: Location) -> Result<HostHandle> {
        let mut st = self.lock();
        self.may_create(&st, size as u64, location)?;
        let offset = Self::take_offset(&mut st, size as u64)?;
        let h = Self::next_id(&mut st);
        st.offsets.insert(h.0, offset);
        st.vm.add_handle(h, size as u64, location);
        Ok(h)
    }

    fn release(&self, handle: HostHandle) -> Result<()> {
        let mut st = self.lock();
        let size = st.vm.handle(handle).map(|s| s.size);
        let now = st
            .vm
            .release(handle)
            .map_err(|r| host_err(Call::Release, r))?;
        if let (true, Some(size)) = (now, size) {
            let st = &mut *st;
            Self::give_back(
                self.fd,
                &mut st.shared,
                &mut st.offsets,
                &mut st.holes,
                handle.0,
                size,
            );
        }
        Ok(())
    }

    unsafe fn map(&self, va: u64, size: usize, offset: usize, handle: HostHandle) -> Result<()> {
        let mut st = self.lock();
        st.vm
            .map(va, size as u64, offset as u64, handle)
            .map_err(|r| host_err(Call::Map, r))?;
        let (fd, file_offset) = match st.shared.get(&handle.0) {
            Some(own) => (own.as_raw_fd(), 0),
            None => match st.offsets.get(&handle.0) {
                Some(&offset) => (self.fd, offset as libc::off_t),
                None => {
                    // Unreachable: a live handle has a memfd or a range.
                    let _ = st.vm.unmap(va, size as u64, |_, _| {});
                    return Err(host_err(
                        Call::Map,
                        (ErrorKind::InvalidValue, Reason::UnknownHandle),
                    )
                    .into());
                }
            },
        };
        // SAFETY: VmState confirmed va..va+size is an unmapped range inside
        // one of our reservations, so MAP_FIXED replaces only our PROT_NONE
        // placeholder; the file range belongs to this live handle (a memfd
        // of its own, sealed against shrinking, for shareable handles).
        let p = unsafe {
            libc::mmap(
                va as *mut libc::c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                file_offset,
            )
        };
        if p == libc::MAP_FAILED {
            // Roll the bookkeeping back: nothing changed in the address space.
            let _ = st.vm.unmap(va, size as u64, |_, _| {});
            return Err(os_err(Call::Map, ErrorKind::OutOfMemory).into());
        }
        Ok(())
    }

    unsafe fn unmap(&self, va: u64, size: usize) -> Result<()> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let (shared, offsets, holes) = (&mut st.shared, &mut st.offsets, &mut st.holes);
        let fd = self.fd;
        let give_back = |h: HostHandle, s: &crate::driver::rules::HandleState| {
            Self::give_back(fd, shared, offsets, holes, h.0, s.size);
        };
        st.vm
            .unmap(va, size as u64, give_back)
            .map_err(|r| host_err(Call::Unmap, r))?;
        // SAFETY: VmState confirmed va..va+size is exactly a set of whole
        // mappings inside our reservation; replacing them with a PROT_NONE
        // anonymous placeholder keeps the range reserved.
        unsafe {
            libc::mmap(
                va as *mut libc::c_void,
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        Ok(())
    }

    unsafe fn set_access(&self, va: u64, size: usize, access: &[Access]) -> Result<()> {
        let mut st = self.lock();
        st.vm
            .set_access(va, size as u64, access, |_| {})
            .map_err(|r| host_err(Call::SetAccess, r))?;
        // Validated: whole mappings tile va..va+size (no overflow).
        let end = va + size as u64;
        let mut at = va;
        let mut failed = false;
        while let Some(m) = st.vm.mapping_at(at).copied().filter(|_| at < end) {
            let host_located = st
                .vm
                .handle(m.handle)
                .is_some_and(|s| s.location == Location::Host);
            failed |= self.protect(m.va, m.size, m.rights, host_located).is_err();
            at = m.va + m.size;
        }
        if failed {
            return Err(os_err(Call::SetAccess, ErrorKind::Other).into());
        }
        Ok(())
    }

    fn get_access(&self, va: u64, accessor: Location) -> Result<AccessMode> {
        self.lock()
            .vm
            .get_access(va, accessor)
            .map_err(|r| host_err(Call::GetAccess, r).into())
    }

    fn record(&self, stream: Stream) -> Result<HostFence> {
        let mut st = self.lock();
        let Some(s) = st.streams.get_mut(stream.0 as usize).filter(|s| s.live) else {
            return Err(host_err(
                Call::Record,
                (ErrorKind::InvalidHandle, Reason::UnknownHandle),
            )
            .into());
        };
        s.recorded += 1;
        if !s.held {
            s.completed = s.recorded;
        }
        Ok(HostFence {
            stream: stream.0,
            seq: s.recorded,
        })
    }

    fn is_complete(&self, fence: &HostFence) -> Result<bool> {
        let st = self.lock();
        Ok(st
            .streams
            .get(fence.stream as usize)
            .is_none_or(|s| s.completed >= fence.seq))
    }

    fn wait(&self, fence: &HostFence) -> Result<()> {
        // The emulated kernel finishes when someone waits on it.
        let mut st = self.lock();
        if let Some(s) = st.streams.get_mut(fence.stream as usize) {
            s.completed = s.completed.max(fence.seq);
        }
        Ok(())
    }

    fn drop_fence(&self, _fence: HostFence) {}

    fn create_stream(&self) -> Result<Stream> {
        let mut st = self.lock();
        if let Some(i) = st.streams.iter().skip(1).position(|s| !s.live) {
            // Keep the sequence numbers growing: fences of the destroyed
            // stream (its work done) stay complete and never equal new ones.
            let s = &mut st.streams[i + 1];
            *s = StreamState {
                live: true,
                held: false,
                recorded: s.recorded,
                completed: s.recorded,
            };
            return Ok(Stream(i as u64 + 1));
        }
        st.streams.push(StreamState {
            live: true,
            ..Default::default()
        });
        Ok(Stream(st.streams.len() as u64 - 1))
    }

    unsafe fn destroy_stream(&self, stream: Stream) -> Result<()> {
        let mut st = self.lock();
        match st.streams.get_mut(stream.0 as usize) {
            Some(s) if s.live && stream.0 != 0 => {
                s.live = false;
                Ok(())
            }
            _ => Err(host_err(
                Call::Stream,
                (ErrorKind::InvalidHandle, Reason::UnknownHandle),
            )
            .into()),
        }
    }

    unsafe fn copy(&self, dst: u64, src: u64, len: usize, _stream: Stream) -> Result<()> {
        self.as_device(&[(dst, len), (src, len)], || {
            // SAFETY: the caller guarantees both ranges are valid, mapped with
            // access, and do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, len) };
        });
        Ok(())
    }

    unsafe fn fill(&self, dst: u64, byte: u8, len: usize, _stream: Stream) -> Result<()> {
        self.as_device(&[(dst, len)], || {
            // SAFETY: the caller guarantees the range is mapped and writable.
            unsafe { core::ptr::write_bytes(dst as *mut u8, byte, len) };
        });
        Ok(())
    }

    fn create_shareable(&self, size: usize, location: Location) -> Result<HostHandle> {
        let mut st = self.lock();
        self.may_create(&st, size as u64, location)?;
        let Some(fd) = sealed_memfd(size) else {
            return Err(os_err(Call::Create, ErrorKind::OutOfMemory).into());
        };
        let h = Self::next_id(&mut st);
        st.shared.insert(h.0, fd);
        st.vm.add_handle(h, size as u64, location);
        Ok(h)
    }

    fn export(&self, handle: HostHandle) -> Result<OwnedFd> {
        let st = self.lock();
        st.vm
            .check_release(handle)
            .map_err(|r| host_err(Call::Share, r))?;
        let Some(fd) = st.shared.get(&handle.0) else {
            return Err(
                host_err(Call::Share, (ErrorKind::NotSupported, Reason::NotShareable)).into(),
            );
        };
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(|_| os_err(Call::Share, ErrorKind::Other).into())
    }

    unsafe fn import(
        &self,
        fd: BorrowedFd<'_>,
        size: usize,
        location: Location,
    ) -> Result<HostHandle> {
        let mut st = self.lock();
        st.vm
            .check_create(size as u64, location)
            .map_err(|r| host_err(Call::Share, r))?;
        if !check_shared_file(fd, size) {
            return Err(host_err(
                Call::Share,
                (ErrorKind::InvalidValue, Reason::BadSharedHandle),
            )
            .into());
        }
        let own = fd
            .try_clone_to_owned()
            .map_err(|_| os_err(Call::Share, ErrorKind::Other))?;
        let h = Self::next_id(&mut st);
        st.shared.insert(h.0, own);
        st.vm.add_handle(h, size as u64, location);
        Ok(h)
    }
}

impl HostDriver {
    /// Runs `work` (an emulated device copy or fill over `ranges`) with the
    /// host-located mappings there opened to what their devices may do, then
    /// gives them back the CPU's own rights. Under the lock, so no
    /// `set_access` runs meanwhile; where no mapping there is closed to the
    /// CPU (device-located memory, host memory with host rights: the usual
    /// case), `work` runs without it.
    fn as_device(&self, ranges: &[(u64, usize)], work: impl FnOnce()) {
        let st = self.lock();
        if !Self::closed_to_cpu(&st.vm, ranges) {
            // No lock held through a copy of gigabytes: other driver calls
            // go on meanwhile.
            drop(st);
            work();
            return;
        }
        let reopen = |as_device: bool| {
            for &(va, len) in ranges {
                for m in st.vm.mappings_overlapping(va, len as u64) {
                    if st
                        .vm
                        .handle(m.handle)
                        .is_some_and(|s| s.location == Location::Host)
                    {
                        let _ = self.protect(m.va, m.size, m.rights, !as_device);
                    }
                }
            }
        };
        reopen(true);
        work();
        reopen(false);
    }

    /// Whether a host-located mapping over `ranges` is closed to the CPU's
    /// writes (only then must a copy or fill open it, under the lock).
    #[inline(never)]
    fn closed_to_cpu(vm: &VmState<HostHandle>, ranges: &[(u64, usize)]) -> bool {
        ranges.iter().any(|&(va, len)| {
            vm.mappings_overlapping(va, len as u64).iter().any(|m| {
                vm.handle(m.handle)
                    .is_some_and(|s| s.location == Location::Host)
                    && m.rights.mode(Location::Host) != AccessMode::ReadWrite
            })
        })
    }

    /// Gives a released, unmapped handle's memory back: closes its own memfd
    /// (shareable and imported handles: the pages go when the last process
    /// lets go of them), or punches its range out of the common memfd.
    fn give_back(
        fd: libc::c_int,
        shared: &mut MetaMap<u64, OwnedFd>,
        offsets: &mut MetaMap<u64, u64>,
        holes: &mut Holes,
        id: u64,
        size: u64,
    ) {
        if shared.remove(&id).is_some() {
            // Dropping the OwnedFd closed it; never punch a shared file.
            return;
        }
        let Some(offset) = offsets.remove(&id) else {
            return;
        };
        // SAFETY: the range belongs to a handle whose last mapping is gone and
        // which was released; punching frees its pages and touches nothing else.
        unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                size as libc::off_t,
            )
        };
        // The range is free for later creates.
        holes.give(offset, size);
    }

    /// Whether a handle of `size` bytes at `location` may be created: the
    /// driver's rules (a size of whole granules, a valid location) and the
    /// backend's capacity.
    fn may_create(&self, st: &State, size: u64, location: Location) -> Result<()> {
        st.vm
            .check_create(size, location)
            .map_err(|r| host_err(Call::Create, r))?;
        if st
            .vm
            .physical_bytes()
            .checked_add(size)
            .is_none_or(|total| total > self.config.capacity)
        {
            return Err(host_err(Call::Create, (ErrorKind::OutOfMemory, Reason::Exhausted)).into());
        }
        Ok(())
    }

    /// A fresh handle id (never reused).
    fn next_id(st: &mut State) -> HostHandle {
        let id = st.next_id;
        st.next_id += 1;
        HostHandle(id)
    }

    /// `size` bytes of the common memfd: the first given-back range that
    /// fits, else fresh space at its end.
    fn take_offset(st: &mut State, size: u64) -> Result<u64> {
        if let Some(offset) = st.holes.take(size) {
            return Ok(offset);
        }
        let offset = st.next_offset;
        match offset.checked_add(size) {
            Some(end) if end <= FILE_SIZE => {
                st.next_offset = end;
                Ok(offset)
            }
            _ => Err(host_err(Call::Create, (ErrorKind::OutOfMemory, Reason::Exhausted)).into()),
        }
    }

    /// Whether `handle` has a memfd of its own (created shareable or imported).
    pub fn is_shareable(&self, handle: HostHandle) -> bool {
        self.lock().shared.contains_key(&handle.0)
    }
}

/// A new memfd of `size` bytes, sealed so that nobody (this process or an
/// importer) can shrink or grow it, nor change the seals.
fn sealed_memfd(size: usize) -> Option<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string literal.
    let raw = unsafe {
        libc::memfd_create(
            c"gpu-arena-shared".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: fd is our own memfd.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
        return None;
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: as above; F_ADD_SEALS takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return None;
    }
    Some(fd)
}

/// Whether `fd` is a file of exactly `size` bytes that cannot shrink (so a
/// mapping of it can never fault with SIGBUS).
fn check_shared_file(fd: BorrowedFd<'_>, size: usize) -> bool {
    // SAFETY: F_GET_SEALS takes no argument and only reads the file's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return false;
    }
    let mut st = core::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one stat structure.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstat succeeded and filled the structure.
    let st = unsafe { st.assume_init() };
    st.st_size as u64 == size as u64
}
