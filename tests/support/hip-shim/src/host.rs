//! Host mode: the HIP calls over gpu-arena's host backend (memfd + mmap).
//!
//! One emulated device whose memory the CPU can reach (copies and fills are
//! `memcpy`/`memset`), with the host backend's rules, capacity and fences.
//! Settings, read once at the first HIP call:
//!
//! - `GPU_ARENA_HIP_SHIM_GRANULARITY` (bytes, default 2 MiB, as on an H100);
//! - `GPU_ARENA_HIP_SHIM_DEVICES` (default 1): more emulate peers.
//!
//! Copies and fills check the access rights of every granule they touch
//! inside a reservation (as a GPU would fault) and refuse with
//! `hipErrorIllegalAddress` instead of crashing the process. They run at
//! once; a device-to-device `hipMemcpy`, which ROCm returns from before the
//! copy ran, leaves the null stream busy (its events pending) until the
//! host waits on one of them or makes a host-synchronizing copy.

use core::ffi::{CStr, c_int, c_uint};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
use std::sync::Mutex;

use gpu_arena::driver::{
    Access, AccessMode, Driver, HostConfig, HostDriver, HostFence, HostHandle, Location, Stream,
};
use gpu_arena::{Error, ErrorKind};

use crate::abi::*;
use crate::{Loc, R, Runtime};

/// The HIP code for a gpu-arena error.
fn code(e: Error) -> hipError_t {
    match e.driver_kind() {
        Some(ErrorKind::InvalidValue) => hipErrorInvalidValue,
        Some(ErrorKind::OutOfMemory) => hipErrorOutOfMemory,
        Some(ErrorKind::NoDevice) => hipErrorNoDevice,
        Some(ErrorKind::InvalidHandle) => hipErrorInvalidHandle,
        Some(ErrorKind::NotPermitted) => hipErrorNotPermitted,
        Some(ErrorKind::NotSupported) => hipErrorNotSupported,
        Some(ErrorKind::Other) | None => hipErrorUnknown,
    }
}

fn location(l: Loc) -> Location {
    match l {
        Loc::Device(d) => Location::Device(d as u32),
        Loc::Host => Location::Host,
    }
}

fn mode(flags: u32) -> AccessMode {
    match flags {
        hipMemAccessFlagsProtReadWrite => AccessMode::ReadWrite,
        hipMemAccessFlagsProtRead => AccessMode::Read,
        _ => AccessMode::None,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// An event: the fence of its last record, if any, and whether that
/// record was on the null stream.
#[derive(Default)]
struct Event {
    fence: Option<HostFence>,
    null_stream: bool,
}

#[derive(Default)]
struct Objects {
    /// Events by the address of their token box.
    events: HashMap<usize, (Box<u8>, Event)>,
    /// Streams by the address of their token box: the host backend's stream.
    streams: HashMap<usize, (Box<u8>, Stream)>,
    /// Reservations: base -> size (to check the ranges copies touch).
    reservations: HashMap<u64, u64>,
    /// A device-to-device `hipMemcpy` returned before its copy "ran": the
    /// null stream is held until the host waits for it.
    null_pending: bool,
}

pub(crate) struct HostRt {
    d: HostDriver,
    objects: Mutex<Objects>,
}

impl HostRt {
    pub(crate) fn new() -> R<Self> {
        let mut config = HostConfig::default();
        if let Some(g) = env_u64("GPU_ARENA_HIP_SHIM_GRANULARITY") {
            config.granularity = g as usize;
        }
        if let Some(n) = env_u64("GPU_ARENA_HIP_SHIM_DEVICES") {
            config.device_count = n as u32;
        }
        let d = HostDriver::with_config(config).map_err(|e| {
            eprintln!("gpu-arena HIP shim: the host backend did not start: {e}");
            hipErrorNoDevice
        })?;
        Ok(HostRt {
            d,
            objects: Mutex::new(Objects::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stream(&self, stream: usize) -> R<Stream> {
        if stream == 0 {
            return Ok(Stream::DEFAULT);
        }
        self.lock()
            .streams
            .get(&stream)
            .map(|(_, s)| *s)
            .ok_or(hipErrorInvalidHandle)
    }

    /// Whether device 0 may read (or write) every byte of `va..va + len`
    /// that lies in a reservation; bytes outside reservations are plain
    /// host memory the caller owns.
    fn reachable(&self, va: u64, len: usize, write: bool) -> R<()> {
        let g = self.d.capabilities().granularity as u64;
        let end = va.checked_add(len as u64).ok_or(hipErrorInvalidValue)?;
        let reservations: Vec<(u64, u64)> = self
            .lock()
            .reservations
            .iter()
            .map(|(b, s)| (*b, *s))
            .collect();
        for (base, size) in reservations {
            let (lo, hi) = (va.max(base), end.min(base + size));
            let mut at = lo & !(g - 1);
            while at < hi {
                let m = self
                    .d
                    .get_access(at, Location::Device(0))
                    .map_err(|_| hipErrorIllegalAddress)?;
                let ok = match m {
                    AccessMode::ReadWrite => true,
                    AccessMode::Read => !write,
                    AccessMode::None => false,
                };
                if !ok {
                    return Err(hipErrorIllegalAddress);
                }
                at += g;
            }
        }
        Ok(())
    }
}

impl Runtime for HostRt {
    fn describe(&self) -> &'static CStr {
        c"gpu-arena HIP shim, host mode (gpu-arena's host backend: memfd + mmap)"
    }

    fn device_count(&self) -> R<c_int> {
        Ok(self.d.capabilities().device_count as c_int)
    }

    fn set_device(&self, _device: c_int) -> R<()> {
        Ok(())
    }

    fn vmm_supported(&self, _device: c_int) -> R<c_int> {
        Ok(1)
    }

    fn total_mem(&self, _device: c_int) -> R<usize> {
        Ok(self.d.capabilities().device_memory as usize)
    }

    fn mem_info(&self) -> R<(usize, usize)> {
        let total = self.d.capabilities().device_memory;
        let used = self.d.physical_bytes();
        Ok((total.saturating_sub(used) as usize, total as usize))
    }

    fn granularity(&self, location: Loc, _recommended: bool) -> R<usize> {
        self.d.granularity(self::location(location)).map_err(code)
    }

    fn reserve(&self, size: usize, align: usize) -> R<u64> {
        let va = self.d.reserve(size, align).map_err(code)?;
        self.lock().reservations.insert(va, size as u64);
        Ok(va)
    }

    fn free_reservation(&self, va: u64, size: usize) -> R<()> {
        // SAFETY: the host backend refuses anything but one of its own
        // whole reservations with no mapping left; the caller (HIP's
        // contract) no longer touches the range.
        unsafe { self.d.free_reservation(va, size) }.map_err(code)?;
        self.lock().reservations.remove(&va);
        Ok(())
    }

    fn create(&self, size: usize, location: Loc, shareable: bool) -> R<u64> {
        let l = self::location(location);
        let h = if shareable {
            self.d.create_shareable(size, l)
        } else {
            self.d.create(size, l)
        };
        h.map(|h| h.0).map_err(code)
    }

    fn release(&self, handle: u64) -> R<()> {
        self.d.release(HostHandle(handle)).map_err(code)
    }

    fn map(&self, va: u64, size: usize, handle: u64) -> R<()> {
        // SAFETY: the host backend checks that the range is an unmapped
        // part of one of its reservations before mapping anything.
        unsafe { self.d.map(va, size, 0, HostHandle(handle)) }.map_err(code)
    }

    fn unmap(&self, va: u64, size: usize) -> R<()> {
        // SAFETY: HIP's contract: nothing uses the range any more.
        unsafe { self.d.unmap(va, size) }.map_err(code)
    }

    fn set_access(&self, va: u64, size: usize, access: &[(Loc, u32)]) -> R<()> {
        let list: Vec<Access> = access
            .iter()
            .map(|(l, f)| Access {
                location: location(*l),
                mode: mode(*f),
            })
            .collect();
        // SAFETY: HIP's contract: an accessor losing rights no longer uses
        // the range; the host backend checks the range is one mapping.
        unsafe { self.d.set_access(va, size, &list) }.map_err(code)
    }

    fn get_access(&self, va: u64, device: c_int) -> R<u64> {
        let m = self
            .d
            .get_access(va, Location::Device(device as u32))
            .map_err(code)?;
        Ok(u64::from(match m {
            AccessMode::None => hipMemAccessFlagsProtNone,
            AccessMode::Read => hipMemAccessFlagsProtRead,
            AccessMode::ReadWrite => hipMemAccessFlagsProtReadWrite,
        }))
    }

    fn export(&self, handle: u64) -> R<c_int> {
        Ok(self
            .d
            .export(HostHandle(handle))
            .map_err(code)?
            .into_raw_fd())
    }

    fn import(&self, fd: c_int) -> R<u64> {
        if fd < 0 {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: the caller passes an open descriptor and keeps it; it is
        // only borrowed for the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut st = core::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is a valid out-pointer for one stat structure.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: fstat succeeded and filled the structure.
        let size = unsafe { st.assume_init() }.st_size as usize;
        // SAFETY: the host backend checks the descriptor's size and seals.
        let h = unsafe { self.d.import(fd, size, Location::Device(0)) }.map_err(code)?;
        Ok(h.0)
    }

    fn event_create(&self, _flags: c_uint) -> R<usize> {
        let token = Box::new(0u8);
        let key = &*token as *const u8 as usize;
        self.lock().events.insert(key, (token, Event::default()));
        Ok(key)
    }

    fn event_record(&self, event: usize, stream: usize) -> R<()> {
        let s = self.stream(stream)?;
        let fence = self.d.record(s).map_err(code)?;
        let mut o = self.lock();
        let (_, e) = o.events.get_mut(&event).ok_or(hipErrorInvalidHandle)?;
        e.fence = Some(fence);
        e.null_stream = stream == 0;
        Ok(())
    }

    fn event_query(&self, event: usize) -> R<bool> {
        let fence = {
            let o = self.lock();
            let (_, e) = o.events.get(&event).ok_or(hipErrorInvalidHandle)?;
            e.fence
        };
        match fence {
            // Never recorded: nothing to wait for.
            None => Ok(true),
            Some(f) => self.d.is_complete(&f).map_err(code),
        }
    }

    fn event_synchronize(&self, event: usize) -> R<()> {
        let (fence, null_stream) = {
            let o = self.lock();
            let (_, e) = o.events.get(&event).ok_or(hipErrorInvalidHandle)?;
            (e.fence, e.null_stream)
        };
        let Some(f) = fence else { return Ok(()) };
        self.d.wait(&f).map_err(code)?;
        let mut o = self.lock();
        if null_stream && o.null_pending {
            // Everything queued on the null stream before it has run.
            self.d.complete(Stream::DEFAULT);
            o.null_pending = false;
        }
        Ok(())
    }

    fn event_destroy(&self, event: usize) -> R<()> {
        self.lock()
            .events
            .remove(&event)
            .map(|_| ())
            .ok_or(hipErrorInvalidHandle)
    }

    fn stream_create(&self, _flags: c_uint) -> R<usize> {
        let s = self.d.create_stream().map_err(code)?;
        let token = Box::new(0u8);
        let key = &*token as *const u8 as usize;
        self.lock().streams.insert(key, (token, s));
        Ok(key)
    }

    fn stream_destroy(&self, stream: usize) -> R<()> {
        let (_, s) = self
            .lock()
            .streams
            .remove(&stream)
            .ok_or(hipErrorInvalidHandle)?;
        // SAFETY: HIP's contract: the stream is not used again.
        unsafe { self.d.destroy_stream(s) }.map_err(code)
    }

    fn copy(
        &self,
        dst: u64,
        src: u64,
        len: usize,
        stream: Option<usize>,
        device_to_device: bool,
    ) -> R<()> {
        if let Some(s) = stream {
            self.stream(s)?;
        }
        self.reachable(src, len, false)?;
        self.reachable(dst, len, true)?;
        if src < dst.saturating_add(len as u64) && dst < src.saturating_add(len as u64) {
            return Err(hipErrorInvalidValue);
        }
        // SAFETY: both ranges are either the caller's own host memory or
        // mapped with the rights checked above; they do not overlap.
        unsafe { self.d.copy(dst, src, len, Stream::DEFAULT) }.map_err(code)?;
        if stream.is_none() {
            let mut o = self.lock();
            if device_to_device {
                // ROCm returns before such a copy ran: the null stream now
                // has work the host did not wait for.
                self.d.hold(Stream::DEFAULT);
                o.null_pending = true;
            } else if o.null_pending {
                // Any other hipMemcpy waits for the null stream's work.
                self.d.complete(Stream::DEFAULT);
                o.null_pending = false;
            }
        }
        Ok(())
    }

    fn fill(&self, dst: u64, byte: u8, len: usize, stream: usize) -> R<()> {
        self.stream(stream)?;
        self.reachable(dst, len, true)?;
        // SAFETY: the range is the caller's host memory or mapped writable.
        unsafe { self.d.fill(dst, byte, len, Stream::DEFAULT) }.map_err(code)
    }

    fn hold(&self, stream: usize, hold: bool) -> R<()> {
        let s = self.stream(stream)?;
        if hold {
            self.d.hold(s);
        } else {
            self.d.complete(s);
        }
        Ok(())
    }
}
