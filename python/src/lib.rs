//! `gpu_arena._native`: the Python extension module of gpu-arena.
//!
//! One shared object is both this module and the library PyTorch's
//! `CUDAPluggableAllocator` loads: it links the gpu-arena crate, whose C ABI
//! (`gpu_arena_torch_alloc`, `gpu_arena_torch_free`, `gpu_arena_set_tag`, …)
//! it exports unchanged (see [`c_abi`]). The Python package `gpu_arena`
//! is a thin layer over the functions here; the allocator's logic (tags,
//! sleep, stats, CUDA-graph holds) lives in the crate.
//!
//! Every function works on the process-wide arenas of
//! [`gpu_arena::global`]; errors become exceptions of the hierarchy below,
//! with the crate's message as their text.

use core::ffi::{c_char, c_int, c_void};

use gpu_arena::driver::{DevicePtr, Stream};
use gpu_arena::global::{self, GlobalConfig};
use gpu_arena::{Error, SleepMode, SleepReport};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::create_exception!(
    _native,
    GpuArenaError,
    PyRuntimeError,
    "An error reported by gpu-arena (the message is the allocator's)."
);
pyo3::create_exception!(
    _native,
    ConfigError,
    GpuArenaError,
    "A configuration string or value was refused, or the arenas are already configured differently."
);
pyo3::create_exception!(
    _native,
    UnknownTagError,
    GpuArenaError,
    "A tag name that does not exist on this device."
);
pyo3::create_exception!(
    _native,
    AsleepError,
    GpuArenaError,
    "Allocation in a tag that is asleep (frees are served)."
);
pyo3::create_exception!(
    _native,
    OutOfMemoryError,
    GpuArenaError,
    "No memory for the request; the message shows where the memory is (per policy and tag)."
);
pyo3::create_exception!(
    _native,
    BadPointerError,
    GpuArenaError,
    "A free of a pointer gpu-arena did not hand out, or already freed; nothing changed."
);
pyo3::create_exception!(
    _native,
    DriverError,
    GpuArenaError,
    "A driver call failed (the message names the call and its code)."
);

/// The exception for a crate error, with its message.
fn py_err(e: Error) -> PyErr {
    let msg = match e {
        // The arena knows the tag's index; say its name.
        Error::Asleep { tag } => match global::arena(0)
            .ok()
            .and_then(|a| a.tag_arenas(tag))
            .map(|t| t.name().to_string())
        {
            Some(name) => format!("{e} (tag `{name}`)"),
            None => e.to_string(),
        },
        _ => e.to_string(),
    };
    match e {
        Error::Config(_) | Error::BadConfig { .. } => ConfigError::new_err(msg),
        Error::UnknownTag { .. } => UnknownTagError::new_err(msg),
        Error::Asleep { .. } => AsleepError::new_err(msg),
        Error::OutOfMemory(_) | Error::AddressSpace { .. } => OutOfMemoryError::new_err(msg),
        Error::BadPointer { .. } => BadPointerError::new_err(msg),
        Error::Driver(d) if d.kind == gpu_arena::ErrorKind::OutOfMemory => {
            OutOfMemoryError::new_err(msg)
        }
        Error::Driver(_) => DriverError::new_err(msg),
        _ => GpuArenaError::new_err(msg),
    }
}

type R<T> = PyResult<T>;

fn arena(device: u32) -> R<&'static global::GlobalArena> {
    global::arena(device).map_err(py_err)
}

/// Checks a `GPU_ARENA_CONF`-style string without applying it.
#[pyfunction]
fn parse_config(conf: &str) -> R<()> {
    GlobalConfig::parse(conf).map(|_| ()).map_err(py_err)
}

/// Configures the process-wide arenas (`None`: `GPU_ARENA_CONF` or the
/// defaults) and creates device 0's arena, so that a bad configuration or
/// an unusable backend is reported here. A second call must name the same
/// configuration.
#[pyfunction]
#[pyo3(signature = (conf=None))]
fn configure(conf: Option<&str>) -> R<()> {
    let c = match conf {
        Some(s) => GlobalConfig::parse(s),
        None => GlobalConfig::from_env(),
    }
    .map_err(py_err)?;
    global::configure(c).map_err(py_err)?;
    arena(0)?;
    Ok(())
}

/// The devices whose arena exists.
#[pyfunction]
fn devices() -> Vec<u32> {
    global::arenas().map(|a| a.device()).collect()
}

/// The backend of `device`'s arena (`cuda`, `hip`, `host`).
#[pyfunction]
#[pyo3(signature = (device=0))]
fn backend(device: u32) -> R<String> {
    use gpu_arena::driver::Driver;
    Ok(arena(device)?
        .driver()
        .capabilities()
        .backend
        .name()
        .to_string())
}

/// `(name, asleep)` of every tag of `device`, in creation order.
#[pyfunction]
#[pyo3(signature = (device=0))]
fn tags(device: u32) -> R<Vec<(String, bool)>> {
    Ok(arena(device)?
        .tags()
        .map(|t| (t.name().to_string(), t.is_asleep()))
        .collect())
}

/// The calling thread's current tag's name.
#[pyfunction]
fn current_tag() -> R<String> {
    let a = arena(0)?;
    let t = global::current_tag();
    Ok(a.tag_arenas(t)
        .map_or_else(|| format!("#{t}"), |t| t.name().to_string()))
}

/// Makes `name` the calling thread's tag (created on first use on every
/// device with an arena; opens no device) and, with `process`, the
/// process-wide tag of threads that chose none. Returns what [`exit_tag`]
/// restores.
#[pyfunction]
fn enter_tag(name: &str, process: bool) -> R<(Option<u32>, Option<u32>)> {
    let t = global::tag_index(name).map_err(py_err)?;
    for a in global::arenas() {
        a.tag(name).map_err(py_err)?;
    }
    let thread = global::set_thread_tag(Some(t));
    let proc = process.then(|| global::set_process_tag(t));
    Ok((thread, proc))
}

/// Restores the tags [`enter_tag`] replaced.
#[pyfunction]
fn exit_tag(token: (Option<u32>, Option<u32>)) {
    global::set_thread_tag(token.0);
    if let Some(p) = token.1 {
        global::set_process_tag(p);
    }
}

fn report<'py>(py: Python<'py>, r: SleepReport) -> R<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("bytes", r.bytes)?;
    d.set_item("copied", r.copied)?;
    d.set_item("copy_seconds", r.copy_seconds)?;
    d.set_item("stage_seconds", r.stage_seconds)?;
    d.set_item("vmm_seconds", r.vmm_seconds)?;
    Ok(d)
}

/// Puts `tags` of `device` to sleep (contents offloaded to pinned host
/// memory, or discarded); waits on the tags' own streams and `stream`.
#[pyfunction]
fn sleep<'py>(
    py: Python<'py>,
    device: u32,
    tags: Vec<String>,
    offload: bool,
    stream: u64,
) -> R<Bound<'py, PyDict>> {
    let a = arena(device)?;
    let names: Vec<&str> = tags.iter().map(String::as_str).collect();
    let mode = if offload {
        SleepMode::Offload
    } else {
        SleepMode::Discard
    };
    let r = py
        .detach(|| a.sleep(&names, mode, Stream(stream)))
        .map_err(py_err)?;
    report(py, r)
}

/// Wakes `tags` of `device` at the same addresses.
#[pyfunction]
fn wake<'py>(
    py: Python<'py>,
    device: u32,
    tags: Vec<String>,
    stream: u64,
) -> R<Bound<'py, PyDict>> {
    let a = arena(device)?;
    let names: Vec<&str> = tags.iter().map(String::as_str).collect();
    let r = py
        .detach(|| a.wake(&names, Stream(stream)))
        .map_err(py_err)?;
    report(py, r)
}

/// Obtains the pinned host memory that offloading `tags` of `device` will
/// need: now (returns the seconds it took), or on a thread of its own
/// (`background`; returns 0 at once, and an offloading sleep waits for it).
#[pyfunction]
#[pyo3(signature = (device, tags, background=false))]
fn prepare_offload(py: Python<'_>, device: u32, tags: Vec<String>, background: bool) -> R<f64> {
    let a = arena(device)?;
    let names: Vec<&str> = tags.iter().map(String::as_str).collect();
    if background {
        a.prepare_offload_in_background(&names).map_err(py_err)?;
        return Ok(0.0);
    }
    py.detach(|| a.prepare_offload(&names)).map_err(py_err)
}

/// Gives back every empty page of `device` whose work completed; returns
/// the bytes given back.
#[pyfunction]
#[pyo3(signature = (device=0))]
fn trim(py: Python<'_>, device: u32) -> R<u64> {
    let a = arena(device)?;
    Ok(py.detach(|| a.trim()))
}

/// Sets the commit limit of `tag` on `device` (`None`: no limit).
#[pyfunction]
#[pyo3(signature = (tag, limit, device=0))]
fn set_tag_limit(tag: &str, limit: Option<u64>, device: u32) -> R<()> {
    arena(device)?
        .set_tag_limit(tag, limit.unwrap_or(u64::MAX))
        .map_err(py_err)
}

/// Stats of `device` as JSON (totals and per tag).
#[pyfunction]
#[pyo3(signature = (device=0))]
fn stats_json(device: u32) -> R<String> {
    Ok(arena(device)?.stats_json())
}

/// Accounting of `device` as JSON (totals and per tag).
#[pyfunction]
#[pyo3(signature = (device=0))]
fn accounting_json(device: u32) -> R<String> {
    Ok(arena(device)?.accounting_json())
}

/// Every shard of every tag of `device`: regions, committed pages and live
/// blocks, as JSON (the Python layer turns it into PyTorch's format).
#[pyfunction]
#[pyo3(signature = (device=0))]
fn snapshot_json(py: Python<'_>, device: u32) -> R<String> {
    let a = arena(device)?;
    let tags: Vec<serde_json::Value> = py.detach(|| {
        a.tags()
            .enumerate()
            .map(|(i, t)| {
                let shards: Vec<_> = t.shards().iter().map(|s| s.lock().snapshot()).collect();
                serde_json::json!({
                    "name": t.name(),
                    "index": i,
                    "asleep": t.is_asleep(),
                    "shards": shards,
                })
            })
            .collect()
    });
    Ok(serde_json::json!({
        "device": device,
        "backend": backend(device)?,
        "tags": tags,
    })
    .to_string())
}

/// Allocates `size` bytes (512-aligned) on `device` for `stream` in the
/// calling thread's tag; returns the address.
#[pyfunction]
#[pyo3(signature = (size, device=0, stream=0))]
fn alloc(size: u64, device: u32, stream: u64) -> R<u64> {
    let p = arena(device)?
        .alloc(size, 512, Stream(stream))
        .map_err(py_err)?;
    global::graph::note_alloc(device, Stream(stream), p, size);
    Ok(p.addr())
}

/// Frees `ptr` (`size`: as allocated, or 0 if unknown), last used on `stream`.
#[pyfunction]
#[pyo3(signature = (ptr, size=0, device=0, stream=0))]
fn free(ptr: u64, size: u64, device: u32, stream: u64) -> R<()> {
    use global::graph::Deferral;
    let ptr = DevicePtr::new(ptr);
    match global::graph::defer_free(ptr, device, (size > 0).then_some(size)) {
        Deferral::Deferred => return Ok(()),
        Deferral::Refused(kind) => {
            return Err(py_err(Error::BadPointer { addr: ptr, kind }));
        }
        Deferral::NotHeld => {}
    }
    arena(device)?
        .free(ptr, (size > 0).then_some(size), Stream(stream))
        .map_err(py_err)
}

/// Starts a hold for a CUDA graph captured on `stream` of `device` (see
/// `gpu_arena::global::graph`); returns its id.
#[pyfunction]
fn graph_begin(device: u32, stream: u64) -> u64 {
    global::graph::begin(device, Stream(stream))
}

/// Ends the capture of hold `id` (its blocks stay held).
#[pyfunction]
fn graph_end(id: u64) {
    global::graph::end(id)
}

/// Releases hold `id`: frees the blocks whose free it deferred; returns
/// their bytes.
#[pyfunction]
fn graph_release(id: u64) -> R<u64> {
    global::graph::release_and_free(id).map_err(py_err)
}

/// `(blocks, bytes, deferred blocks, deferred bytes)` of hold `id`, or
/// `None` once released.
#[pyfunction]
fn graph_stats(id: u64) -> Option<(u64, u64, u64, u64)> {
    global::graph::hold_stats(id)
}

unsafe extern "C-unwind" {
    /// Throws `std::runtime_error(message)` (csrc/throw.cpp).
    fn gpu_arena_throw_alloc_error(message: *const c_char) -> !;
}

/// Writes `parts` into `buf` as one NUL-terminated string (cut to fit).
fn join_into(buf: &mut [u8], parts: &[&[u8]]) {
    let mut n = 0;
    for p in parts {
        let k = p.len().min(buf.len() - 1 - n);
        buf[n..n + k].copy_from_slice(&p[..k]);
        n += k;
    }
    buf[n] = 0;
}

/// The allocation entry point the package gives PyTorch's
/// `CUDAPluggableAllocator` (`gpu_arena.torch.enable()`): the C ABI's
/// `gpu_arena_torch_alloc`, except that a failure throws a C++
/// `std::runtime_error` with gpu-arena's message instead of returning NULL.
/// PyTorch does not check the pointer it gets (a NULL would become a tensor
/// at address 0); the exception reaches Python as a `RuntimeError` (from
/// PyTorch's own threads too: autograd rethrows it in the caller).
///
/// # Safety
/// Called by PyTorch (C++), whose frames the exception unwinds through;
/// no Rust value with a destructor is alive when it is thrown.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn gpu_arena_torch_malloc(
    size: isize,
    device: c_int,
    stream: *mut c_void,
) -> *mut c_void {
    let p = gpu_arena::api::ffi::gpu_arena_torch_alloc(size, device, stream);
    if p.is_null() && size > 0 {
        let mut buf = [0u8; 768];
        // SAFETY: gpu_arena_last_error returns a NUL-terminated string.
        let why = unsafe { core::ffi::CStr::from_ptr(gpu_arena::api::ffi::gpu_arena_last_error()) };
        let mut num = [0u8; 24];
        let digits = format_u64(&mut num, size as u64);
        join_into(
            &mut buf,
            &[
                b"gpu-arena: cannot allocate ",
                digits,
                b" bytes: ",
                why.to_bytes(),
            ],
        );
        // SAFETY: `buf` is NUL-terminated; the function copies the message
        // into the exception before unwinding; nothing here needs dropping.
        unsafe { gpu_arena_throw_alloc_error(buf.as_ptr() as *const c_char) }
    }
    p
}

/// Decimal digits of `v` in `buf` (no allocation).
fn format_u64(buf: &mut [u8; 24], mut v: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The C ABI this shared object exports (PyTorch and `ctypes` look the
/// entry points up by name), with their addresses.
///
/// rustc exports the `#[no_mangle] extern "C"` functions of the gpu-arena
/// rlib from this cdylib by itself (`nm -D` lists them even when nothing
/// here names them); this table names them all anyway, so that a test can
/// compare it with what the dynamic loader finds.
fn c_abi() -> [(&'static str, usize); 19] {
    use gpu_arena::api::ffi::*;
    [
        ("gpu_arena_init", gpu_arena_init as *const () as usize),
        ("gpu_arena_alloc", gpu_arena_alloc as *const () as usize),
        ("gpu_arena_free", gpu_arena_free as *const () as usize),
        ("gpu_arena_trim", gpu_arena_trim as *const () as usize),
        (
            "gpu_arena_stats_json",
            gpu_arena_stats_json as *const () as usize,
        ),
        ("gpu_arena_peaks", gpu_arena_peaks as *const () as usize),
        (
            "gpu_arena_last_error",
            gpu_arena_last_error as *const () as usize,
        ),
        (
            "gpu_arena_torch_alloc",
            gpu_arena_torch_alloc as *const () as usize,
        ),
        (
            "gpu_arena_torch_free",
            gpu_arena_torch_free as *const () as usize,
        ),
        (
            "gpu_arena_torch_malloc",
            crate::gpu_arena_torch_malloc as *const () as usize,
        ),
        ("gpu_arena_set_tag", gpu_arena_set_tag as *const () as usize),
        (
            "gpu_arena_set_process_tag",
            gpu_arena_set_process_tag as *const () as usize,
        ),
        ("gpu_arena_sleep", gpu_arena_sleep as *const () as usize),
        ("gpu_arena_wake", gpu_arena_wake as *const () as usize),
        (
            "gpu_arena_set_tag_limit",
            gpu_arena_set_tag_limit as *const () as usize,
        ),
        (
            "gpu_arena_accounting_json",
            gpu_arena_accounting_json as *const () as usize,
        ),
        (
            "gpu_arena_graph_begin",
            gpu_arena_graph_begin as *const () as usize,
        ),
        (
            "gpu_arena_graph_end",
            gpu_arena_graph_end as *const () as usize,
        ),
        (
            "gpu_arena_graph_release",
            gpu_arena_graph_release as *const () as usize,
        ),
    ]
}

/// `{name: address}` of the C ABI entry points this module exports.
#[pyfunction]
fn c_abi_symbols() -> Vec<(&'static str, usize)> {
    c_abi().to_vec()
}

/// The Python module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("GpuArenaError", py.get_type::<GpuArenaError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("UnknownTagError", py.get_type::<UnknownTagError>())?;
    m.add("AsleepError", py.get_type::<AsleepError>())?;
    m.add("OutOfMemoryError", py.get_type::<OutOfMemoryError>())?;
    m.add("BadPointerError", py.get_type::<BadPointerError>())?;
    m.add("DriverError", py.get_type::<DriverError>())?;
    m.add("TORCH_ALLOC", "gpu_arena_torch_malloc")?;
    m.add("TORCH_FREE", "gpu_arena_torch_free")?;
    m.add_function(wrap_pyfunction!(parse_config, m)?)?;
    m.add_function(wrap_pyfunction!(configure, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_function(wrap_pyfunction!(backend, m)?)?;
    m.add_function(wrap_pyfunction!(tags, m)?)?;
    m.add_function(wrap_pyfunction!(current_tag, m)?)?;
    m.add_function(wrap_pyfunction!(enter_tag, m)?)?;
    m.add_function(wrap_pyfunction!(exit_tag, m)?)?;
    m.add_function(wrap_pyfunction!(sleep, m)?)?;
    m.add_function(wrap_pyfunction!(wake, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_offload, m)?)?;
    m.add_function(wrap_pyfunction!(trim, m)?)?;
    m.add_function(wrap_pyfunction!(set_tag_limit, m)?)?;
    m.add_function(wrap_pyfunction!(stats_json, m)?)?;
    m.add_function(wrap_pyfunction!(accounting_json, m)?)?;
    m.add_function(wrap_pyfunction!(snapshot_json, m)?)?;
    m.add_function(wrap_pyfunction!(alloc, m)?)?;
    m.add_function(wrap_pyfunction!(free, m)?)?;
    m.add_function(wrap_pyfunction!(graph_begin, m)?)?;
    m.add_function(wrap_pyfunction!(graph_end, m)?)?;
    m.add_function(wrap_pyfunction!(graph_release, m)?)?;
    m.add_function(wrap_pyfunction!(graph_stats, m)?)?;
    m.add_function(wrap_pyfunction!(c_abi_symbols, m)?)?;
    Ok(())
}
