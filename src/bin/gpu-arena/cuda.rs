//! The CUDA anchors the benchmarks compare against: `cuMemAlloc_v2` /
//! `cuMemFree_v2`, and the stream-ordered pool (`cuMemAllocAsync` /
//! `cuMemFreeAsync` on the device's default pool with its release threshold
//! at `u64::MAX`, so the pool keeps what it has). Raw calls through
//! `gpu_arena::driver::cuda::sys`, made only on a [`CudaDriver`]'s context,
//! which proves the driver library was found and loaded.

use core::ffi::{c_char, c_int, c_void};

use gpu_arena::driver::cuda::{CudaDriver, sys};
use gpu_arena::driver::{DevicePtr, Stream};

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
    pub fn mem_alloc(&self, size: usize) -> AnyResult<DevicePtr> {
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: a context is current (callers call `make_current` per
        // thread); `p` is a valid out-pointer.
        check("cuMemAlloc_v2", unsafe { sys::cuMemAlloc_v2(&mut p, size) })?;
        Ok(p)
    }

    /// `cuMemFree_v2`.
    pub fn mem_free(&self, p: DevicePtr) -> AnyResult<()> {
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
    pub fn alloc_async(&self, size: usize, stream: Stream) -> AnyResult<DevicePtr> {
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: a context is current; the stream is live (made by the
        // driver, or the null stream); `p` is a valid out-pointer.
        check("cuMemAllocAsync", unsafe {
            sys::cuMemAllocAsync(&mut p, size, cu_stream(stream))
        })?;
        Ok(p)
    }

    /// `cuMemFreeAsync` on `stream`.
    pub fn free_async(&self, p: DevicePtr, stream: Stream) -> AnyResult<()> {
        // SAFETY: `p` came from `alloc_async` and is freed once, in the
        // order of a live stream; nothing uses it afterwards.
        check("cuMemFreeAsync", unsafe {
            sys::cuMemFreeAsync(p, cu_stream(stream))
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
