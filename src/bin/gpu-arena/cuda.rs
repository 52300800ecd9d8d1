//! The CUDA anchors the benchmarks compare against: `cuMemAlloc_v2` /
//! `cuMemFree_v2`, and the stream-ordered pool (`cuMemAllocAsync` /
//! `cuMemFreeAsync` on the device's default pool with its release threshold
//! at `u64::MAX`, so the pool keeps what it has); and what the soak and the
//! two-process pressure test need besides the allocator: the device's free
//! memory (`cuMemGetInfo`), events that order one stream after another
//! (`cuStreamWaitEvent`, as PyTorch's `record_stream` does) and a plain
//! `cuMemsetD8`. Raw calls through `gpu_arena::driver::cuda::sys`, made only
//! on a [`CudaDriver`]'s context, which proves the driver library was found
//! and loaded.

use core::ffi::{c_char, c_int, c_void};

use gpu_arena::driver::Stream;
use gpu_arena::driver::cuda::{CudaDriver, sys};

use crate::AnyResult;

fn check(call: &str, r: sys::CUresult) -> AnyResult<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{call} failed: {r:?}").into())
    }
}

fn cu_stream(s: Stream) -> sys::CUstream {
    core::ptr::with_exposed_provenance_mut(s.0 as usize)
}

/// `cuDeviceGet` for `ordinal`. `_loaded` proves the driver library was
/// loaded and initialized (a live [`CudaDriver`] of any device).
fn device_handle(_loaded: &CudaDriver, ordinal: u32) -> AnyResult<sys::CUdevice> {
    let mut dev: sys::CUdevice = 0;
    // SAFETY: a CudaDriver exists, so libcuda is loaded and cuInit ran;
    // `dev` is a valid out-pointer.
    check("cuDeviceGet", unsafe {
        sys::cuDeviceGet(&mut dev, ordinal as c_int)
    })?;
    Ok(dev)
}

/// The name of device `ordinal` (`cuDeviceGetName`; needs no context).
pub fn device_name(loaded: &CudaDriver, ordinal: u32) -> String {
    let Ok(dev) = device_handle(loaded, ordinal) else {
        return "unknown CUDA device".into();
    };
    let mut buf = [0 as c_char; 256];
    // SAFETY: the buffer is writable for its length; the device is valid.
    let r = unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as c_int, dev) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return "unknown CUDA device".into();
    }
    // SAFETY: the driver wrote a NUL-terminated string into `buf`.
    unsafe { core::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Whether device `from` can read and write memory of device `to`
/// (`cuDeviceCanAccessPeer`; needs no context). `None` where the driver
/// does not say.
pub fn can_access_peer(loaded: &CudaDriver, from: u32, to: u32) -> Option<bool> {
    let a = device_handle(loaded, from).ok()?;
    let b = device_handle(loaded, to).ok()?;
    let mut can: c_int = 0;
    // SAFETY: both devices are valid; `can` is a valid out-pointer.
    let r = unsafe { sys::cuDeviceCanAccessPeer(&mut can, a, b) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(can != 0)
}

/// Raw driver calls on one [`CudaDriver`]'s device and primary context.
#[derive(Clone, Copy, Debug)]
pub struct Cu {
    ctx: usize,
    dev: sys::CUdevice,
}

impl Cu {
    /// The device and context of `driver`; makes the context current here.
    pub fn new(driver: &CudaDriver) -> AnyResult<Self> {
        let cu = Cu {
            ctx: driver.context() as usize,
            dev: 0,
        };
        cu.make_current()?;
        let mut dev: sys::CUdevice = 0;
        // SAFETY: the driver's construction loaded libcuda and ran cuInit;
        // `dev` is a valid out-pointer.
        check("cuDeviceGet", unsafe {
            sys::cuDeviceGet(&mut dev, driver.device() as c_int)
        })?;
        Ok(Cu { dev, ..cu })
    }

    /// Makes the driver's primary context current on the calling thread
    /// (each benchmark thread calls this first).
    pub fn make_current(&self) -> AnyResult<()> {
        // SAFETY: the context is the retained primary context of a live
        // CudaDriver (the caller keeps it alive while using `self`).
        check("cuCtxSetCurrent", unsafe {
            sys::cuCtxSetCurrent(self.ctx as sys::CUcontext)
        })
    }

    /// The device's name (`cuDeviceGetName`).
    pub fn device_name(&self) -> String {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the buffer is writable for its length; the device is valid.
        let r = unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as c_int, self.dev) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return "unknown CUDA device".into();
        }
        // SAFETY: the driver wrote a NUL-terminated string into `buf`.
        unsafe { core::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// `cuMemAlloc_v2`.
    pub fn mem_alloc(&self, size: usize) -> AnyResult<u64> {
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: a context is current (callers call `make_current` per
        // thread); `p` is a valid out-pointer.
        check("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut p, size) })?;
        Ok(p)
    }

    /// `cuMemFree_v2`.
    pub fn mem_free(&self, p: u64) -> AnyResult<()> {
        // SAFETY: `p` came from `mem_alloc` and is freed once; nothing uses
        // it afterwards.
        check("cuMemFree_v2", unsafe { sys::cuMemFree_v2(p) })
    }

    /// Sets the device's default memory pool to keep everything it gets
    /// (`CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = u64::MAX`), as engines do.
    pub fn keep_default_pool(&self) -> AnyResult<()> {
        let mut pool: sys::CUmemoryPool = core::ptr::null_mut();
        // SAFETY: the device is valid; `pool` is a valid out-pointer.
        check("cuDeviceGetDefaultMemPool", unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.dev)
        })?;
        let mut threshold: u64 = u64::MAX;
        // SAFETY: the pool is the device's default pool; the attribute takes
        // a pointer to a u64 that lives across the call.
        check("cuMemPoolSetAttribute", unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&raw mut threshold).cast::<c_void>(),
            )
        })
    }

    /// `cuMemAllocAsync` on `stream` (the device's current pool: the default one).
    pub fn alloc_async(&self, size: usize, stream: Stream) -> AnyResult<u64> {
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: a context is current; the stream is live (made by the
        // driver, or the null stream); `p` is a valid out-pointer.
        check("cuMemAllocAsync", unsafe {
            sys::cuMemAllocAsync(&mut p, size, cu_stream(stream))
        })?;
        Ok(p)
    }

    /// `cuMemFreeAsync` on `stream`.
    pub fn free_async(&self, p: u64, stream: Stream) -> AnyResult<()> {
        // SAFETY: `p` came from `alloc_async` and is freed once, in the
        // order of a live stream; nothing uses it afterwards.
        check("cuMemFreeAsync", unsafe {
            sys::cuMemFreeAsync(p, cu_stream(stream))
        })
    }

    /// `cuMemGetInfo_v2`: the device's (free, total) bytes, as every
    /// process on it sees them.
    pub fn mem_info(&self) -> AnyResult<(u64, u64)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: a context is current; both are valid out-pointers.
        check("cuMemGetInfo_v2", unsafe {
            sys::cuMemGetInfo_v2(&mut free, &mut total)
        })?;
        Ok((free as u64, total as u64))
    }

    /// `cuMemsetD8_v2` of `len` bytes at `p` on the legacy default stream,
    /// then a wait on that stream's work only (an event recorded after it).
    pub fn memset_sync(&self, p: u64, byte: u8, len: usize) -> AnyResult<()> {
        // SAFETY: a context is current; the caller passes memory it owns
        // (from `mem_alloc`) of at least `len` bytes.
        check("cuMemsetD8_v2", unsafe { sys::cuMemsetD8_v2(p, byte, len) })?;
        self.record(Stream::DEFAULT)?.wait()
    }

    /// An event recorded now on `stream`: work on other streams made to wait
    /// for it ([`Cu::wait_event`]) runs after everything queued on `stream`
    /// so far.
    pub fn record(&self, stream: Stream) -> AnyResult<Event> {
        let mut ev: sys::CUevent = core::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as core::ffi::c_uint;
        // SAFETY: a context is current; `ev` is a valid out-pointer.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(&mut ev, flags)
        })?;
        let ev = Event(ev.expose_provenance());
        // SAFETY: the event was just made in the current context; the stream
        // is live (made by the driver, or the null stream).
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(ev.raw(), cu_stream(stream))
        })?;
        Ok(ev)
    }

    /// `cuStreamWaitEvent`: work queued on `stream` from now on starts
    /// after the work before `event`. Never blocks the calling thread.
    pub fn wait_event(&self, stream: Stream, event: &Event) -> AnyResult<()> {
        // SAFETY: a context is current; the stream is live; the event was
        // recorded by `record` and is alive.
        check("cuStreamWaitEvent", unsafe {
            sys::cuStreamWaitEvent(cu_stream(stream), event.raw(), 0)
        })
    }

    /// `cuStreamSynchronize` (benchmarks only: ends a timed batch of
    /// stream-ordered calls).
    pub fn sync(&self, stream: Stream) -> AnyResult<()> {
        // SAFETY: the stream is live (made by the driver, or the null stream).
        check("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(cu_stream(stream))
        })
    }
}

/// A CUDA event made by [`Cu::record`]; destroyed when dropped (the driver
/// keeps it alive for waits already queued on it).
#[derive(Debug)]
pub struct Event(usize);

impl Event {
    fn raw(&self) -> sys::CUevent {
        core::ptr::with_exposed_provenance_mut(self.0)
    }

    /// Blocks until the work before the event has completed (this event
    /// only: `cuEventSynchronize`).
    pub fn wait(&self) -> AnyResult<()> {
        // SAFETY: the event is alive (made by `record`, destroyed in Drop).
        check("cuEventSynchronize", unsafe {
            sys::cuEventSynchronize(self.raw())
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: made by `record` and destroyed once; `cuEventDestroy`
        // returns at once and the driver frees the event once the waits
        // queued on it no longer need it.
        let _ = unsafe { sys::cuEventDestroy_v2(self.raw()) };
    }
}
