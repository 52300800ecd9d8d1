//! The C ABI (`include/gpu_arena.h`) and the PyTorch `CUDAPluggableAllocator`
//! entry points, over the process-wide arenas of [`crate::global`].
//!
//! No function panics or unwinds across the boundary (`catch_unwind`);
//! failures return null or a negative status and set a thread-local last
//! error, read with [`gpu_arena_last_error`].

use core::cell::RefCell;
use core::ffi::{c_char, c_int, c_void};
use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::driver::{DevicePtr, Stream};
use crate::error::{Error, Result};
use crate::global::graph::Deferral;
use crate::global::{self, GlobalConfig, timing};

/// Bytes kept of the last error message (including the NUL).
const ERR_LEN: usize = 512;

thread_local! {
    static LAST_ERROR: RefCell<[u8; ERR_LEN]> = const { RefCell::new([0; ERR_LEN]) };
    /// Whether LAST_ERROR holds a message (so that a successful call clears
    /// it with one flag test, not a buffer write).
    static HAS_ERROR: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

struct Buf<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl core::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len().saturating_sub(1 + self.len);
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn set_error(e: &dyn core::fmt::Display) {
    let _ = LAST_ERROR.try_with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            let mut w = Buf {
                buf: &mut b[..],
                len: 0,
            };
            let _ = core::fmt::write(&mut w, format_args!("{e}"));
            let end = w.len;
            b[end] = 0;
        }
    });
    let _ = HAS_ERROR.try_with(|h| h.set(true));
}

#[inline]
fn clear_error() {
    if HAS_ERROR.try_with(|h| h.replace(false)).unwrap_or(false) {
        let _ = LAST_ERROR.try_with(|b| {
            if let Ok(mut b) = b.try_borrow_mut() {
                b[0] = 0;
            }
        });
    }
}

/// Runs `f`, turning errors and panics into `fail` and a last error.
#[inline]
fn guard<T>(fail: T, f: impl FnOnce() -> Result<T>) -> T {
    // The error is recorded inside, so that only an `Option<T>` crosses
    // `catch_unwind`, which copies what it hands out (a whole `Result` was
    // 296 bytes before `Error` boxed its large payloads, and this copy ran
    // on every call).
    let r = catch_unwind(AssertUnwindSafe(|| match f() {
        Ok(v) => {
            clear_error();
            Some(v)
        }
        Err(e) => {
            set_error(&e);
            None
        }
    }));
    match r {
        Ok(Some(v)) => v,
        Ok(None) => fail,
        Err(_) => {
            set_error(&"internal panic in gpu-arena (a bug; please report it)");
            fail
        }
    }
}

fn device(d: c_int) -> Result<u32> {
    u32::try_from(d).map_err(|_| Error::Config("device ordinal must not be negative"))
}

/// Configures the global arenas from a `GPU_ARENA_CONF`-style string (NULL:
/// the environment / defaults). Call before the first allocation.
/// Returns 0, or -1 with the last error set.
///
/// Opens no device: each device's arena is created at its first use, so a
/// process that works on one GPU of several (a data-parallel rank) never
/// makes a context on the others. Errors of opening a device come with
/// that device's first call.
///
/// # Safety
/// `conf` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_init(conf: *const c_char) -> c_int {
    guard(-1, || {
        let c = if conf.is_null() {
            GlobalConfig::from_env()?
        } else {
            // SAFETY: the caller passes a NUL-terminated string.
            let s = unsafe { CStr::from_ptr(conf) };
            GlobalConfig::parse(
                s.to_str()
                    .map_err(|_| Error::Config("configuration is not UTF-8"))?,
            )?
        };
        global::configure(c)?;
        Ok(0)
    })
}

/// Allocates `size` bytes (aligned to 512) on `device` for `stream`.
/// Returns NULL with the last error set on failure (zero size included).
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_alloc(size: usize, dev: c_int, stream: *mut c_void) -> *mut c_void {
    guard(core::ptr::null_mut(), || {
        let d = device(dev)?;
        let a = global::arena(d)?;
        // After the arena: its creation turns measuring on (report:1).
        let t = timing::enabled().then(timing::ticks);
        let p = a.alloc(size as u64, 512, Stream(stream as u64))?;
        if let Some(t) = t {
            timing::record_alloc(t);
            timing::handed(size as u64);
        }
        global::graph::note_alloc(d, Stream(stream as u64), p, size as u64);
        Ok(p.as_mut_ptr::<c_void>())
    })
}

/// Frees `ptr` (allocated with `size` bytes on `device`), last used on
/// `stream`. Foreign, interior and double frees are refused: returns -1 with
/// the last error set and changes nothing. Returns 0 on success; NULL is a no-op.
/// A block that a CUDA graph's hold keeps ([`gpu_arena_graph_begin`]) stays
/// allocated until the hold is released.
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_free(
    ptr: *mut c_void,
    size: usize,
    dev: c_int,
    stream: *mut c_void,
) -> c_int {
    if ptr.is_null() {
        return 0;
    }
    let ptr = DevicePtr::from_ptr(ptr);
    guard(-1, || {
        let d = device(dev)?;
        match global::graph::defer_free(ptr, d, (size > 0).then_some(size as u64)) {
            Deferral::NotHeld => {}
            Deferral::Deferred => return Ok(0),
            Deferral::Refused(kind) => return Err(Error::BadPointer { addr: ptr, kind }),
        }
        let a = global::arena(d)?;
        let t = timing::enabled().then(timing::ticks);
        a.free(
            ptr,
            (size > 0).then_some(size as u64),
            Stream(stream as u64),
        )?;
        if let Some(t) = t {
            timing::record_free(t);
            timing::taken_back(size as u64);
        }
        Ok(0)
    })
}

/// Gives back every empty page of `device` whose fences completed. Returns
/// the bytes given back (0 on error, with the last error set).
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_trim(dev: c_int) -> u64 {
    guard(0, || Ok(global::arena(device(dev)?)?.trim()))
}

/// Copies `json` into `buf` (at most `cap` bytes, NUL-terminated when
/// `cap > 0`); returns the whole text's length.
///
/// # Safety
/// `buf` is NULL (with `cap == 0`) or valid for `cap` bytes.
unsafe fn write_json(json: &str, buf: *mut c_char, cap: usize) -> isize {
    if !buf.is_null() && cap > 0 {
        let n = json.len().min(cap - 1);
        // SAFETY: the caller guarantees buf is valid for cap bytes; n < cap.
        unsafe {
            core::ptr::copy_nonoverlapping(json.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    json.len() as isize
}

/// Writes the stats of `device` as JSON into `buf` (at most `cap` bytes,
/// NUL-terminated when `cap > 0`). Returns the length of the whole JSON text
/// (excluding the NUL), so a caller can retry with a larger buffer; -1 on
/// error.
///
/// # Safety
/// `buf` is NULL (with `cap == 0`) or valid for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_stats_json(dev: c_int, buf: *mut c_char, cap: usize) -> isize {
    guard(-1, || {
        let json = global::arena(device(dev)?)?.stats_json();
        // SAFETY: forwarded from the caller.
        Ok(unsafe { write_json(&json, buf, cap) })
    })
}

/// Ends the current epoch of `device` (a repetition, a step, a batch) and
/// writes what happened since the last call as JSON into `buf` (as
/// [`gpu_arena_stats_json`]): peak live and peak committed bytes and their
/// ratio, driver calls (VMM calls apart), allocations, frees, and the time
/// inside the C ABI's calls (with `report:1`). Then the peaks restart from
/// the current values. Returns the JSON's length, or -1 on error.
///
/// Call it with `cap == 0` only to size the buffer when the epoch may end
/// anyway: every call ends one.
///
/// # Safety
/// `buf` is NULL (with `cap == 0`) or valid for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_epoch_json(dev: c_int, buf: *mut c_char, cap: usize) -> isize {
    guard(-1, || {
        let e = global::arena(device(dev)?)?.epoch();
        let json = serde_json::to_string(&e).map_err(|_| Error::Config("epoch JSON"))?;
        // SAFETY: forwarded from the caller.
        Ok(unsafe { write_json(&json, buf, cap) })
    })
}

/// Peak live and peak committed bytes of `device` (either pointer may be
/// NULL). Returns 0, or -1 with the last error set.
///
/// # Safety
/// Non-NULL pointers are valid for one write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_peaks(
    dev: c_int,
    peak_live: *mut u64,
    peak_committed: *mut u64,
) -> c_int {
    guard(-1, || {
        let s = global::arena(device(dev)?)?.stats();
        // SAFETY: the caller guarantees non-null pointers are writable.
        unsafe {
            if !peak_live.is_null() {
                *peak_live = s.peak_live;
            }
            if !peak_committed.is_null() {
                *peak_committed = s.peak_committed;
            }
        }
        Ok(0)
    })
}

/// The calling thread's last error message ("" if the last call succeeded).
/// Valid until the next gpu-arena call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|b| b.as_ptr() as *const c_char)
        .unwrap_or(c"gpu-arena: thread is exiting".as_ptr())
}

/// PyTorch `CUDAPluggableAllocator` allocation entry point:
/// `void* alloc(ssize_t size, int device, cudaStream_t stream)`.
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_torch_alloc(
    size: isize,
    dev: c_int,
    stream: *mut c_void,
) -> *mut c_void {
    if size <= 0 {
        set_error(&Error::ZeroSize);
        return core::ptr::null_mut();
    }
    gpu_arena_alloc(size as usize, dev, stream)
}

/// PyTorch `CUDAPluggableAllocator` free entry point:
/// `void free(void* ptr, ssize_t size, int device, cudaStream_t stream)`.
/// A refused pointer is reported on stderr (PyTorch ignores return values).
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_torch_free(
    ptr: *mut c_void,
    size: isize,
    dev: c_int,
    stream: *mut c_void,
) {
    if gpu_arena_free(ptr, size.max(0) as usize, dev, stream) != 0 {
        let _ = catch_unwind(|| {
            // SAFETY: gpu_arena_last_error returns a NUL-terminated buffer.
            let msg = unsafe { CStr::from_ptr(gpu_arena_last_error()) };
            eprintln!("gpu-arena: free refused: {}", msg.to_string_lossy());
        });
    }
}

/// The string at `p` (refused with `what` where NULL), borrowed for the
/// entry point's call.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string that stays valid and unchanged
/// while the borrow `'a` is used: within the call that passed it.
unsafe fn cstr<'a>(p: *const c_char, what: &'static str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::Config(what));
    }
    // SAFETY: the caller guarantees a NUL-terminated string valid for 'a.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::Config("string argument is not UTF-8"))
}

/// Makes `tag` the calling thread's current tag on every device (created on
/// first use; a tag's index is the same on every device). Later allocations
/// of this thread go to it. Opens no device: devices whose arena does not
/// exist yet create the tag at their first allocation in it. Returns the
/// previous tag's index, or -1 with the last error set.
///
/// # Safety
/// `tag` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_set_tag(tag: *const c_char) -> c_int {
    guard(-1, || {
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let name = unsafe { cstr(tag, "tag must not be NULL") }?;
        let t = global::tag_index(name)?;
        for a in global::arenas() {
            a.tag(name)?;
        }
        Ok(global::set_current_tag(t) as c_int)
    })
}

/// Makes `tag` the tag of every thread that has not chosen one with
/// [`gpu_arena_set_tag`] (threads a framework starts on its own, such as
/// PyTorch's autograd threads); created on first use. Opens no device, as
/// [`gpu_arena_set_tag`]. Returns the previous process-wide tag's index, or
/// -1 with the last error set.
///
/// # Safety
/// `tag` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_set_process_tag(tag: *const c_char) -> c_int {
    guard(-1, || {
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let name = unsafe { cstr(tag, "tag must not be NULL") }?;
        let t = global::tag_index(name)?;
        for a in global::arenas() {
            a.tag(name)?;
        }
        Ok(global::set_process_tag(t) as c_int)
    })
}

/// Starts keeping the memory of a CUDA graph captured on `stream` of
/// `device` (see [`global::graph`]): blocks allocated there until
/// [`gpu_arena_graph_end`] stay allocated, even once freed, until
/// [`gpu_arena_graph_release`]. Returns the hold's id (never 0).
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_graph_begin(dev: c_int, stream: *mut c_void) -> u64 {
    guard(0, || {
        Ok(global::graph::begin(device(dev)?, Stream(stream as u64)))
    })
}

/// Ends the capture of hold `id` (the blocks stay held).
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_graph_end(id: u64) {
    global::graph::end(id);
}

/// Releases hold `id` once the graph is destroyed and its last replay
/// completed: frees the blocks whose free was deferred. Returns the bytes
/// freed, or -1 with the last error set (every block is still tried).
#[unsafe(no_mangle)]
pub extern "C" fn gpu_arena_graph_release(id: u64) -> i64 {
    guard(-1, || global::graph::release_and_free(id).map(|b| b as i64))
}

/// The comma-separated names of `tags`, borrowed for the call that passed
/// them (nothing keeps them past it).
///
/// # Safety
/// As [`cstr`].
unsafe fn tag_list<'a>(tags: *const c_char) -> Result<Vec<&'a str>> {
    // SAFETY: the caller's guarantee, passed on.
    let s: &'a str = unsafe { cstr(tags, "tags must not be NULL") }?;
    Ok(s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect())
}

/// Puts the comma-separated `tags` of `device` to sleep: `mode` 0 discards
/// contents, 1 offloads them to pinned host memory. Addresses stay valid;
/// allocations in the tags fail until they wake, frees are served.
/// Returns 0, or -1 with the last error set.
///
/// # Safety
/// `tags` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_sleep(
    dev: c_int,
    tags: *const c_char,
    mode: c_int,
    stream: *mut c_void,
) -> c_int {
    guard(-1, || {
        let mode = match mode {
            0 => crate::arena::SleepMode::Discard,
            1 => crate::arena::SleepMode::Offload,
            _ => return Err(Error::Config("mode must be 0 (discard) or 1 (offload)")),
        };
        let a = global::arena(device(dev)?)?;
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let names = unsafe { tag_list(tags) }?;
        a.sleep(&names, mode, Stream(stream as u64))?;
        Ok(0)
    })
}

/// Obtains now the pinned host memory that offloading the comma-separated
/// `tags` of `device` will need, so that their first offload runs at copy
/// speed (pinning host memory is its slow part). Kept until `trim`.
/// Returns 0, or -1 with the last error set.
///
/// # Safety
/// `tags` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_prepare_offload(dev: c_int, tags: *const c_char) -> c_int {
    guard(-1, || {
        let a = global::arena(device(dev)?)?;
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let names = unsafe { tag_list(tags) }?;
        a.prepare_offload(&names)?;
        Ok(0)
    })
}

/// [`gpu_arena_prepare_offload`] on a thread of its own: returns at once
/// (the names checked), and a sleep that offloads waits for that thread
/// first. Call it once the tags hold what they will offload (after a
/// model's weights are loaded). Returns 0, or -1 with the last error set.
///
/// # Safety
/// `tags` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_prepare_offload_background(
    dev: c_int,
    tags: *const c_char,
) -> c_int {
    guard(-1, || {
        let a = global::arena(device(dev)?)?;
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let names = unsafe { tag_list(tags) }?;
        a.prepare_offload_in_background(&names)?;
        Ok(0)
    })
}

/// Wakes the comma-separated `tags` of `device` at the same addresses,
/// restoring offloaded contents. Returns 0, or -1 with the last error set
/// (the failing tag stays asleep).
///
/// # Safety
/// `tags` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_wake(
    dev: c_int,
    tags: *const c_char,
    stream: *mut c_void,
) -> c_int {
    guard(-1, || {
        let a = global::arena(device(dev)?)?;
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let names = unsafe { tag_list(tags) }?;
        a.wake(&names, Stream(stream as u64))?;
        Ok(0)
    })
}

/// Sets the commit limit of `tag` on `device` (bytes; `UINT64_MAX`: none).
///
/// # Safety
/// `tag` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_set_tag_limit(
    dev: c_int,
    tag: *const c_char,
    limit: u64,
) -> c_int {
    guard(-1, || {
        let a = global::arena(device(dev)?)?;
        // SAFETY: this entry point's caller passes a NUL-terminated string
        // (its `# Safety`), read only during this call.
        let name = unsafe { cstr(tag, "tag must not be NULL") }?;
        a.set_tag_limit(name, limit)?;
        Ok(0)
    })
}

/// Writes the accounting of `device` (total and per tag: live, committed,
/// reclaimable, pending, limit, largest allocation without new physical
/// memory) as JSON, like [`gpu_arena_stats_json`].
///
/// # Safety
/// `buf` is NULL (with `cap == 0`) or valid for `cap` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gpu_arena_accounting_json(
    dev: c_int,
    buf: *mut c_char,
    cap: usize,
) -> isize {
    guard(-1, || {
        let json = global::arena(device(dev)?)?.accounting_json();
        if !buf.is_null() && cap > 0 {
            let n = json.len().min(cap - 1);
            // SAFETY: the caller guarantees buf is valid for cap bytes; n < cap.
            unsafe {
                core::ptr::copy_nonoverlapping(json.as_ptr(), buf as *mut u8, n);
                *buf.add(n) = 0;
            }
        }
        Ok(json.len() as isize)
    })
}
