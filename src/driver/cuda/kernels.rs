//! Test and benchmark kernels: hand-written PTX, JIT-compiled by the driver
//! (`cuModuleLoadData`, no nvrtc), launched with `cuLaunchKernel`.
//!
//! The allocator itself never launches anything; these exist so that tests
//! and benchmarks can keep a stream busy ([`Kernels::spin`], to show that a
//! free does not wait for unrelated work) and touch memory from the device
//! ([`Kernels::add_one`], [`Kernels::check_and_write`], [`Kernels::add_f32`],
//! for pinned-host and stream-ordered reuse tests).
//!
//! The PTX targets `sm_52` (`.address_size 64`) so that any VMM-capable GPU
//! JIT-compiles it; where a driver refuses that target, `sm_75` and then
//! `sm_90` variants of the same code are tried.

use core::ffi::{CStr, c_void};

use super::result;
use super::{Context, Raw, cu_stream, sys};
use crate::driver::Stream;
use crate::error::Result;

/// Threads per block of the element-wise kernels.
const BLOCK: u32 = 256;
/// Upper bound on blocks of the element-wise kernels (they loop over the rest).
const MAX_GRID: u64 = 4096;

macro_rules! ptx_body {
    () => {
        r#"
// spin(nanos: u64, flag: u64 ptr or 0, value: u32): busy-waits until
// %globaltimer has advanced by `nanos` (or, should the timer not tick, after
// `nanos` iterations), then stores `value` at `flag`.
.visible .entry gpu_arena_spin(
    .param .u64 gpu_arena_spin_nanos,
    .param .u64 gpu_arena_spin_flag,
    .param .u32 gpu_arena_spin_value
)
{
    .reg .pred %p<4>;
    .reg .b32 %r<2>;
    .reg .b64 %rd<7>;

    ld.param.u64 %rd1, [gpu_arena_spin_nanos];
    ld.param.u64 %rd2, [gpu_arena_spin_flag];
    ld.param.u32 %r1, [gpu_arena_spin_value];
    mov.u64 %rd6, 0;
    mov.u64 %rd3, %globaltimer;
SPIN_LOOP:
    add.u64 %rd6, %rd6, 1;
    mov.u64 %rd4, %globaltimer;
    sub.u64 %rd5, %rd4, %rd3;
    setp.lt.u64 %p1, %rd5, %rd1;
    setp.lt.u64 %p3, %rd6, %rd1;
    and.pred %p1, %p1, %p3;
    @%p1 bra SPIN_LOOP;
    setp.eq.u64 %p2, %rd2, 0;
    @%p2 bra SPIN_DONE;
    st.volatile.u32 [%rd2], %r1;
    membar.sys;
SPIN_DONE:
    ret;
}

// add_one_u32(ptr: u32*, n: u64): ptr[i] += 1 for i < n (grid-stride loop).
.visible .entry gpu_arena_add_one_u32(
    .param .u64 gpu_arena_add_one_ptr,
    .param .u64 gpu_arena_add_one_n
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [gpu_arena_add_one_ptr];
    ld.param.u64 %rd2, [gpu_arena_add_one_n];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd3, %r1, %r2;
    cvt.u64.u32 %rd4, %r3;
    add.u64 %rd3, %rd3, %rd4;
    mul.wide.u32 %rd5, %r4, %r2;
ADD_LOOP:
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra ADD_DONE;
    shl.b64 %rd6, %rd3, 2;
    add.u64 %rd7, %rd1, %rd6;
    ld.u32 %r5, [%rd7];
    add.u32 %r5, %r5, 1;
    st.u32 [%rd7], %r5;
    add.u64 %rd3, %rd3, %rd5;
    bra.uni ADD_LOOP;
ADD_DONE:
    ret;
}

// check_and_write_u32(ptr: u32*, n: u64, expect: u32, write: u32, errors: u32*):
// for i < n: if ptr[i] != expect { atomically errors += 1 }; ptr[i] = write.
.visible .entry gpu_arena_check_and_write_u32(
    .param .u64 gpu_arena_cw_ptr,
    .param .u64 gpu_arena_cw_n,
    .param .u32 gpu_arena_cw_expect,
    .param .u32 gpu_arena_cw_write,
    .param .u64 gpu_arena_cw_errors
)
{
    .reg .pred %p<3>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<10>;

    ld.param.u64 %rd1, [gpu_arena_cw_ptr];
    ld.param.u64 %rd2, [gpu_arena_cw_n];
    ld.param.u32 %r6, [gpu_arena_cw_expect];
    ld.param.u32 %r7, [gpu_arena_cw_write];
    ld.param.u64 %rd8, [gpu_arena_cw_errors];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd3, %r1, %r2;
    cvt.u64.u32 %rd4, %r3;
    add.u64 %rd3, %rd3, %rd4;
    mul.wide.u32 %rd5, %r4, %r2;
CW_LOOP:
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra CW_DONE;
    shl.b64 %rd6, %rd3, 2;
    add.u64 %rd7, %rd1, %rd6;
    ld.u32 %r5, [%rd7];
    setp.eq.u32 %p2, %r5, %r6;
    @%p2 bra CW_OK;
    atom.add.u32 %r8, [%rd8], 1;
CW_OK:
    st.u32 [%rd7], %r7;
    add.u64 %rd3, %rd3, %rd5;
    bra.uni CW_LOOP;
CW_DONE:
    ret;
}
// add_f32(ptr: f32*, n: u64, value: f32): ptr[i] += value for i < n
// (grid-stride loop, round-to-nearest-even).
.visible .entry gpu_arena_add_f32(
    .param .u64 gpu_arena_add_f32_ptr,
    .param .u64 gpu_arena_add_f32_n,
    .param .f32 gpu_arena_add_f32_value
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<5>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [gpu_arena_add_f32_ptr];
    ld.param.u64 %rd2, [gpu_arena_add_f32_n];
    ld.param.f32 %f1, [gpu_arena_add_f32_value];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd3, %r1, %r2;
    cvt.u64.u32 %rd4, %r3;
    add.u64 %rd3, %rd3, %rd4;
    mul.wide.u32 %rd5, %r4, %r2;
ADDF_LOOP:
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra ADDF_DONE;
    shl.b64 %rd6, %rd3, 2;
    add.u64 %rd7, %rd1, %rd6;
    ld.f32 %f2, [%rd7];
    add.rn.f32 %f2, %f2, %f1;
    st.f32 [%rd7], %f2;
    add.u64 %rd3, %rd3, %rd5;
    bra.uni ADDF_LOOP;
ADDF_DONE:
    ret;
}

// fill_pattern_u32(ptr: u32*, n: u64, seed: u32): ptr[i] = (u32)i * 0x9E3779B1 ^ seed
// for i < n (grid-stride loop): every word of a block differs from its
// neighbours' and from other blocks' (other seeds).
.visible .entry gpu_arena_fill_pattern_u32(
    .param .u64 gpu_arena_fp_ptr,
    .param .u64 gpu_arena_fp_n,
    .param .u32 gpu_arena_fp_seed
)
{
    .reg .pred %p<2>;
    .reg .b32 %r<8>;
    .reg .b64 %rd<8>;

    ld.param.u64 %rd1, [gpu_arena_fp_ptr];
    ld.param.u64 %rd2, [gpu_arena_fp_n];
    ld.param.u32 %r6, [gpu_arena_fp_seed];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd3, %r1, %r2;
    cvt.u64.u32 %rd4, %r3;
    add.u64 %rd3, %rd3, %rd4;
    mul.wide.u32 %rd5, %r4, %r2;
FP_LOOP:
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra FP_DONE;
    cvt.u32.u64 %r5, %rd3;
    mul.lo.s32 %r5, %r5, -1640531535;
    xor.b32 %r5, %r5, %r6;
    shl.b64 %rd6, %rd3, 2;
    add.u64 %rd7, %rd1, %rd6;
    st.u32 [%rd7], %r5;
    add.u64 %rd3, %rd3, %rd5;
    bra.uni FP_LOOP;
FP_DONE:
    ret;
}

// check_pattern_u32(ptr: u32*, n: u64, seed: u32, errors: u32*): for i < n,
// if ptr[i] != (u32)i * 0x9E3779B1 ^ seed { atomically errors += 1 }.
.visible .entry gpu_arena_check_pattern_u32(
    .param .u64 gpu_arena_cp_ptr,
    .param .u64 gpu_arena_cp_n,
    .param .u32 gpu_arena_cp_seed,
    .param .u64 gpu_arena_cp_errors
)
{
    .reg .pred %p<3>;
    .reg .b32 %r<10>;
    .reg .b64 %rd<10>;

    ld.param.u64 %rd1, [gpu_arena_cp_ptr];
    ld.param.u64 %rd2, [gpu_arena_cp_n];
    ld.param.u32 %r6, [gpu_arena_cp_seed];
    ld.param.u64 %rd8, [gpu_arena_cp_errors];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mov.u32 %r4, %nctaid.x;
    mul.wide.u32 %rd3, %r1, %r2;
    cvt.u64.u32 %rd4, %r3;
    add.u64 %rd3, %rd3, %rd4;
    mul.wide.u32 %rd5, %r4, %r2;
CP_LOOP:
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra CP_DONE;
    cvt.u32.u64 %r5, %rd3;
    mul.lo.s32 %r5, %r5, -1640531535;
    xor.b32 %r5, %r5, %r6;
    shl.b64 %rd6, %rd3, 2;
    add.u64 %rd7, %rd1, %rd6;
    ld.u32 %r7, [%rd7];
    setp.eq.u32 %p2, %r7, %r5;
    @%p2 bra CP_OK;
    atom.add.u32 %r8, [%rd8], 1;
CP_OK:
    add.u64 %rd3, %rd3, %rd5;
    bra.uni CP_LOOP;
CP_DONE:
    ret;
}
"#
    };
}

/// A NUL-terminated PTX module for one target, checked at compile time.
macro_rules! ptx {
    ($header:literal) => {
        match CStr::from_bytes_with_nul(concat!($header, ptx_body!(), "\0").as_bytes()) {
            Ok(s) => s,
            Err(_) => panic!("PTX image must be NUL-terminated with no interior NUL"),
        }
    };
}

/// The PTX variants tried in order: (target name, image).
const IMAGES: [(&str, &CStr); 3] = [
    (
        "sm_52",
        ptx!(".version 6.0\n.target sm_52\n.address_size 64\n"),
    ),
    (
        "sm_75",
        ptx!(".version 6.3\n.target sm_75\n.address_size 64\n"),
    ),
    (
        "sm_90",
        ptx!(".version 7.8\n.target sm_90\n.address_size 64\n"),
    ),
];

/// The loaded test kernels of one [`CudaDriver`](super::CudaDriver)
/// (see [`CudaDriver::kernels`](super::CudaDriver::kernels)).
///
/// Launches are asynchronous in stream order: record a fence on the same
/// stream and `wait` on it to see their effects. Every launch makes the
/// driver's primary context current on the calling thread if no context is.
#[derive(Debug)]
pub struct Kernels {
    ctx: Context,
    module: Raw<sys::CUmod_st>,
    spin: Raw<sys::CUfunc_st>,
    add_one: Raw<sys::CUfunc_st>,
    check_and_write: Raw<sys::CUfunc_st>,
    add_f32: Raw<sys::CUfunc_st>,
    fill_pattern: Raw<sys::CUfunc_st>,
    check_pattern: Raw<sys::CUfunc_st>,
    target: &'static str,
}

/// The word the pattern kernels write at index `i` of a block filled with
/// `seed` ([`Kernels::fill_pattern`]); the CPU side of the same pattern.
#[inline]
pub const fn pattern_word(seed: u32, i: u64) -> u32 {
    (i as u32).wrapping_mul(0x9E37_79B1) ^ seed
}

/// The test kernels' functions, in [`Kernels::functions`] order.
struct Functions {
    spin: sys::CUfunction,
    add_one: sys::CUfunction,
    check_and_write: sys::CUfunction,
    add_f32: sys::CUfunction,
    fill_pattern: sys::CUfunction,
    check_pattern: sys::CUfunction,
}

/// The parameter array of a launch: a pointer to each local, in order.
macro_rules! params {
    ($($arg:ident),+) => {
        [$((&raw mut $arg).cast::<c_void>()),+]
    };
}

impl Kernels {
    /// Loads the module into `ctx` (which the caller made current).
    ///
    /// # Safety
    /// The presence probe passed and `ctx` is a live, current context that
    /// outlives the returned value (its owner calls [`Kernels::unload`]).
    pub(super) unsafe fn load(ctx: Context) -> Result<Self> {
        let mut first_err = None;
        for (target, image) in IMAGES {
            // SAFETY: the probe passed and `ctx` is current (caller).
            match unsafe { result::module_load_data(image) } {
                Ok(module) => {
                    // SAFETY: `module` was just loaded; on failure it is
                    // unloaded before returning.
                    return match unsafe { Self::functions(module) } {
                        Ok(f) => Ok(Kernels {
                            ctx,
                            module: Raw(module),
                            spin: Raw(f.spin),
                            add_one: Raw(f.add_one),
                            check_and_write: Raw(f.check_and_write),
                            add_f32: Raw(f.add_f32),
                            fill_pattern: Raw(f.fill_pattern),
                            check_pattern: Raw(f.check_pattern),
                            target,
                        }),
                        Err(e) => {
                            // SAFETY: no function of the module escaped.
                            let _ = unsafe { result::module_unload(module) };
                            Err(e.into())
                        }
                    };
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err
            .unwrap_or(result::error(crate::error::Call::Kernel, 999))
            .into())
    }

    /// # Safety
    /// `module` is a live module loaded from one of [`IMAGES`].
    unsafe fn functions(module: sys::CUmodule) -> result::CuResult<Functions> {
        // SAFETY: (every call) `module` is live and the names are
        // NUL-terminated.
        unsafe {
            Ok(Functions {
                spin: result::module_get_function(module, c"gpu_arena_spin")?,
                add_one: result::module_get_function(module, c"gpu_arena_add_one_u32")?,
                check_and_write: result::module_get_function(
                    module,
                    c"gpu_arena_check_and_write_u32",
                )?,
                add_f32: result::module_get_function(module, c"gpu_arena_add_f32")?,
                fill_pattern: result::module_get_function(module, c"gpu_arena_fill_pattern_u32")?,
                check_pattern: result::module_get_function(module, c"gpu_arena_check_pattern_u32")?,
            })
        }
    }

    /// Unloads the module. Called by the owning driver before it releases
    /// its context.
    ///
    /// # Safety
    /// The context is still live; no launch of these kernels is used after.
    pub(super) unsafe fn unload(self) {
        // SAFETY: the caller guarantees the module is no longer used.
        let _ = unsafe { result::module_unload(self.module.0) };
    }

    /// The PTX target the driver accepted (`sm_52`, `sm_75` or `sm_90`).
    pub fn target(&self) -> &'static str {
        self.target
    }

    /// Launches `f` on `grid` blocks of `block` threads in `stream` order,
    /// with this context current.
    ///
    /// # Safety
    /// `f` is one of this module's functions; `params` points to its
    /// parameters, in order and of its types, alive for the call (the
    /// driver copies them); the memory they name and `stream` are as the
    /// kernel's launcher requires.
    unsafe fn launch(
        &self,
        f: sys::CUfunction,
        grid: u32,
        block: u32,
        stream: Stream,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let _cur = self.ctx.make_current()?;
        // SAFETY: the probe passed (a `Kernels` exists only after it); the
        // caller guarantees the rest.
        unsafe { result::launch_kernel(f, grid, block, cu_stream(stream), params) }?;
        Ok(())
    }

    /// Launches one thread that busy-waits `nanos` nanoseconds of GPU time
    /// (`%globaltimer`; at most `nanos` loop iterations, should the timer
    /// not tick), then writes `value` to the `u32` at `flag` (skipped
    /// where `flag` is 0): emulates a long-running kernel on `stream`.
    ///
    /// # Safety
    /// `stream` is live (or [`Stream::DEFAULT`]); `flag` is 0 or a 4-byte
    /// aligned address mapped with read-write access for this device (device
    /// memory, or host-located VMM memory) that stays mapped until the
    /// kernel has completed.
    pub unsafe fn spin(&self, stream: Stream, nanos: u64, flag: u64, value: u32) -> Result<()> {
        let (mut nanos, mut flag, mut value) = (nanos, flag, value);
        // SAFETY: a u64, a u64 and a u32, the kernel's parameters in order;
        // the caller guarantees `flag` and `stream`.
        unsafe { self.launch(self.spin.0, 1, 1, stream, &mut params![nanos, flag, value]) }
    }

    /// Adds 1 to each of the `n` `u32`s at `ptr`, in `stream` order.
    ///
    /// # Safety
    /// `stream` is live (or [`Stream::DEFAULT`]); `ptr..ptr + 4 n` is 4-byte
    /// aligned and mapped read-write for this device until the kernel has
    /// completed, and nothing else writes it meanwhile.
    pub unsafe fn add_one(&self, stream: Stream, ptr: u64, n: u64) -> Result<()> {
        let (mut ptr, mut len) = (ptr, n);
        // SAFETY: two u64s, the kernel's parameters in order; the caller
        // guarantees the range and the stream.
        unsafe {
            self.launch(
                self.add_one.0,
                grid(n),
                BLOCK,
                stream,
                &mut params![ptr, len],
            )
        }
    }

    /// For each of the `n` `u32`s at `ptr`: if it is not `expect`, atomically
    /// adds 1 to the `u32` at `errors`; then writes `write` there. Shows
    /// whether memory reused in stream order still held what this stream
    /// last wrote.
    ///
    /// # Safety
    /// As for [`Kernels::add_one`]; `errors` is a 4-byte aligned `u32`
    /// mapped read-write for this device (device memory: atomics to host
    /// memory need platform support) until the kernel has completed.
    pub unsafe fn check_and_write(
        &self,
        stream: Stream,
        ptr: u64,
        n: u64,
        expect: u32,
        write: u32,
        errors: u64,
    ) -> Result<()> {
        let (mut ptr, mut len, mut expect, mut write, mut errors) = (ptr, n, expect, write, errors);
        let mut params = params![ptr, len, expect, write, errors];
        // SAFETY: u64, u64, u32, u32, u64: the kernel's parameters in order;
        // the caller guarantees the ranges and the stream.
        unsafe { self.launch(self.check_and_write.0, grid(n), BLOCK, stream, &mut params) }
    }

    /// Adds `value` to each of the `n` `f32`s at `ptr` (IEEE round to
    /// nearest even), in `stream` order.
    ///
    /// # Safety
    /// As for [`Kernels::add_one`].
    pub unsafe fn add_f32(&self, stream: Stream, ptr: u64, n: u64, value: f32) -> Result<()> {
        let (mut ptr, mut len, mut value) = (ptr, n, value);
        let mut params = params![ptr, len, value];
        // SAFETY: u64, u64, f32: the kernel's parameters in order; the
        // caller guarantees the range and the stream.
        unsafe { self.launch(self.add_f32.0, grid(n), BLOCK, stream, &mut params) }
    }

    /// Writes [`pattern_word`]`(seed, i)` to each of the `n` `u32`s at
    /// `ptr`, in `stream` order.
    ///
    /// # Safety
    /// As for [`Kernels::add_one`].
    pub unsafe fn fill_pattern(&self, stream: Stream, ptr: u64, n: u64, seed: u32) -> Result<()> {
        let (mut ptr, mut len, mut seed) = (ptr, n, seed);
        let mut params = params![ptr, len, seed];
        // SAFETY: u64, u64, u32: the kernel's parameters in order; the
        // caller guarantees the range and the stream.
        unsafe { self.launch(self.fill_pattern.0, grid(n), BLOCK, stream, &mut params) }
    }

    /// Adds to the `u32` at `errors` (atomically) the number of the `n`
    /// `u32`s at `ptr` that differ from [`pattern_word`]`(seed, i)`, in
    /// `stream` order. Reads only.
    ///
    /// # Safety
    /// As for [`Kernels::check_and_write`] (the block may also be mapped
    /// read-only).
    pub unsafe fn check_pattern(
        &self,
        stream: Stream,
        ptr: u64,
        n: u64,
        seed: u32,
        errors: u64,
    ) -> Result<()> {
        let (mut ptr, mut len, mut seed, mut errors) = (ptr, n, seed, errors);
        let mut params = params![ptr, len, seed, errors];
        // SAFETY: u64, u64, u32, u64: the kernel's parameters in order; the
        // caller guarantees the ranges and the stream.
        unsafe { self.launch(self.check_pattern.0, grid(n), BLOCK, stream, &mut params) }
    }
}

/// Blocks for `n` elements: enough for one element per thread, at most
/// [`MAX_GRID`] (the kernels loop over the rest), at least one.
fn grid(n: u64) -> u32 {
    n.div_ceil(u64::from(BLOCK)).clamp(1, MAX_GRID) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_complete_modules() {
        for (target, image) in IMAGES {
            let s = image.to_str().unwrap();
            assert!(s.contains(&format!(".target {target}")), "{s}");
            assert!(s.contains(".address_size 64"));
            for entry in [
                "gpu_arena_spin(",
                "gpu_arena_add_one_u32(",
                "gpu_arena_check_and_write_u32(",
                "gpu_arena_add_f32(",
                "gpu_arena_fill_pattern_u32(",
                "gpu_arena_check_pattern_u32(",
            ] {
                assert!(s.contains(entry), "{entry} missing");
            }
        }
        assert_eq!(grid(0), 1);
        assert_eq!(grid(256), 1);
        assert_eq!(grid(257), 2);
        assert_eq!(grid(u64::MAX), MAX_GRID as u32);
    }

    #[test]
    fn the_pattern_differs_at_every_word_and_from_seed_to_seed() {
        // The constant the PTX multiplies by, as the signed immediate it spells.
        assert_eq!(0x9E37_79B1_u32 as i32, -1_640_531_535);
        assert_eq!(pattern_word(0, 0), 0);
        assert_eq!(pattern_word(7, 1), 0x9E37_79B1 ^ 7);
        let words: std::collections::HashSet<u32> =
            (0..1 << 16).map(|i| pattern_word(5, i)).collect();
        assert_eq!(
            words.len(),
            1 << 16,
            "a multiplication by an odd constant is a bijection"
        );
        assert!((0..1 << 10).all(|i| pattern_word(5, i) != pattern_word(6, i)));
    }
}
