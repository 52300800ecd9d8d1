//! Helpers shared by the test modules.

use std::sync::Arc;

use gpu_arena::DevicePtr;
use gpu_arena::driver::SystemDriver;
use gpu_arena::driver::system::Select;
use gpu_arena::global::{GlobalArena, GlobalConfig};

/// Writes `len` bytes of pattern `seed` at `p`: a live block of at least
/// `len` bytes, awake, on the host backend (host-visible).
pub fn fill(p: DevicePtr, len: usize, seed: u8) {
    // SAFETY: as the caller promises, `p..p+len` is a live block mapped
    // read-write in this process's address space, used by nothing else.
    let s = unsafe { std::slice::from_raw_parts_mut(p.as_mut_ptr::<u8>(), len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = seed ^ (i % 251) as u8;
    }
}

/// Whether `len` bytes at `p` hold pattern `seed` (see [`fill`]).
pub fn check(p: DevicePtr, len: usize, seed: u8) -> bool {
    // SAFETY: as in `fill`, read only.
    let s = unsafe { std::slice::from_raw_parts(p.as_ptr::<u8>(), len) };
    s.iter()
        .enumerate()
        .all(|(i, b)| *b == seed ^ (i % 251) as u8)
}

/// A leaked global arena of device 0 over the `select` backend behind the
/// checked layer (whose counts stay readable after
/// [`GlobalArena::destroy`]), and that driver.
pub fn checked_global(
    select: Select,
    conf: GlobalConfig,
) -> (&'static GlobalArena, Arc<SystemDriver>) {
    let driver = Arc::new(SystemDriver::checked(
        SystemDriver::open(select, 0, |_| {}).unwrap(),
    ));
    (
        GlobalArena::leak_with(0, conf, driver.clone()).unwrap(),
        driver,
    )
}

/// After [`GlobalArena::destroy`] of a [`checked_global`] arena: nothing
/// leaked and every handle made, the offload stages' too, went back.
pub fn assert_all_given_back(driver: &SystemDriver) {
    let checked = driver.as_checked().expect("a checked driver");
    assert_eq!(checked.leaks(), None, "{:?}", checked.counts());
    let c = checked.counts();
    assert_eq!(c.create, c.release, "every handle went back: {c:?}");
}

/// The CUDA driver of device 0, or `None` after printing why the calling
/// GPU test is skipped (no GPU here or in CI).
#[cfg(feature = "cuda")]
pub fn cuda() -> Option<gpu_arena::driver::cuda::CudaDriver> {
    match gpu_arena::driver::cuda::CudaDriver::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: no usable CUDA device ({e})");
            None
        }
    }
}

/// The HIP driver of device 0, or `None` after printing why the calling
/// test is skipped.
///
/// With `GPU_ARENA_REQUIRE_HIP=1` a HIP driver that does not open fails the
/// test instead: CI runs the HIP tests against the stand-in `libamdhip64`
/// of `tests/support/hip-shim` and must never skip them.
#[cfg(feature = "hip")]
pub fn hip() -> Option<gpu_arena::driver::hip::HipDriver> {
    match gpu_arena::driver::hip::HipDriver::new(0) {
        Ok(d) => Some(d),
        Err(e) if hip_required() => {
            panic!("GPU_ARENA_REQUIRE_HIP is set, but HIP did not open: {e}")
        }
        Err(e) => {
            println!("skipped: no usable HIP device ({e})");
            None
        }
    }
}

/// Whether `GPU_ARENA_REQUIRE_HIP=1`: HIP tests must run, not skip.
#[cfg(feature = "hip")]
pub fn hip_required() -> bool {
    std::env::var("GPU_ARENA_REQUIRE_HIP").is_ok_and(|v| v == "1")
}

/// The loaded `libamdhip64`: HIP calls the backend does not make, and the
/// test hooks of the stand-in library (`tests/support/hip-shim`), found with
/// `dlsym` so that the same tests run on a real ROCm (without the hooks).
#[cfg(feature = "hip")]
pub mod hip_rt {
    use core::ffi::{CStr, c_char, c_int, c_uint, c_void};

    #[link(name = "amdhip64")]
    unsafe extern "C" {
        fn hipMemGetInfo(free: *mut usize, total: *mut usize) -> c_int;
    }

    /// Device memory in use (total − free from `hipMemGetInfo`).
    pub fn used() -> u64 {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; HIP initialized (a driver opened).
        let r = unsafe { hipMemGetInfo(&mut free, &mut total) };
        assert_eq!(r, 0, "hipMemGetInfo");
        (total - free) as u64
    }

    fn symbol(name: &CStr) -> Option<*mut c_void> {
        // SAFETY: a lookup in the symbols already loaded; nothing is called.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// The stand-in library's description, or `None` on a real ROCm.
    pub fn shim() -> Option<String> {
        let f = symbol(c"hipShimDescribe")?;
        // SAFETY: the shim's `const char* hipShimDescribe(void)`.
        let f: extern "C" fn() -> *const c_char = unsafe { core::mem::transmute(f) };
        // SAFETY: it returns a static NUL-terminated string.
        Some(
            unsafe { CStr::from_ptr(f()) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// Whether the stand-in runs in host mode (over the host backend).
    pub fn host_shim() -> bool {
        shim().is_some_and(|s| s.contains("host mode"))
    }

    /// Whether the stand-in forwards to the CUDA driver.
    pub fn cuda_shim() -> bool {
        shim().is_some_and(|s| s.contains("cuda mode"))
    }

    fn stream_hook(name: &CStr, stream: u64) -> bool {
        let Some(f) = symbol(name) else { return false };
        // SAFETY: the shim's `hipError_t hook(hipStream_t)`.
        let f: extern "C" fn(*mut c_void) -> c_int = unsafe { core::mem::transmute(f) };
        f(stream as *mut c_void) == 0
    }

    /// Host mode: keeps work recorded on `stream` pending (a long kernel).
    /// False where the loaded library cannot.
    pub fn hold(stream: u64) -> bool {
        stream_hook(c"hipShimHoldStream", stream)
    }

    /// Host mode: completes `stream`'s pending work and stops holding it.
    pub fn complete(stream: u64) -> bool {
        stream_hook(c"hipShimCompleteStream", stream)
    }

    /// Makes the next `count` calls of the entry point `call` fail with
    /// `code`. False where the loaded library cannot.
    pub fn fail_next(call: &CStr, count: u32, code: i32) -> bool {
        let Some(f) = symbol(c"hipShimFailNext") else {
            return false;
        };
        // SAFETY: the shim's `hipError_t hipShimFailNext(const char*, unsigned, hipError_t)`.
        let f: extern "C" fn(*const c_char, c_uint, c_int) -> c_int =
            unsafe { core::mem::transmute(f) };
        f(call.as_ptr(), count, code) == 0
    }
}
