//! PyTorch's caching allocator as an anchor of sections a and b, measured in
//! the same run: a small library built against torch on the GPU machine
//! (`scripts/torch_anchor.cpp`: `raw_alloc_with_stream` / `raw_delete` of
//! `c10::cuda::CUDACachingAllocator`, what a tensor's allocation calls),
//! loaded at run time with `--torch-anchor PATH`. The bench links no torch;
//! without the flag the column is left out and a note says how to add it.
//!
//! ```text
//! python3 scripts/alloc_anchor.py build libtorch_anchor.so --src scripts/torch_anchor.cpp
//! gpu-arena --backend cuda bench --torch-anchor ./libtorch_anchor.so
//! ```
//!
//! `tests/c/torch_anchor_standin.c` has the same entry points over `malloc`,
//! so the loading and the columns are tested where there is no torch.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::Path;

use crate::AnyResult;

type NameFn = unsafe extern "C" fn() -> *const c_char;
type EnterFn = unsafe extern "C" fn(c_int) -> c_int;
type AllocFn = unsafe extern "C" fn(usize, *mut c_void) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// How to build the library, for error messages and notes.
pub const HOW: &str = "build it on the GPU machine with `python3 scripts/alloc_anchor.py build \
    libtorch_anchor.so --src scripts/torch_anchor.cpp` and pass `--torch-anchor ./libtorch_anchor.so`";

/// The loaded library and its entry points.
pub struct TorchAnchor {
    name: String,
    path: std::path::PathBuf,
    device: c_int,
    enter: EnterFn,
    alloc: AllocFn,
    free: FreeFn,
    /// Keeps the entry points above valid. Never unloaded, not even when
    /// this value drops: unloading torch while its statics and the memory
    /// its allocator caches are alive is a known cause of crashes at exit.
    _lib: core::mem::ManuallyDrop<libloading::Library>,
}

/// `e` and what caused it (libloading keeps `dlerror`'s text as the source).
fn with_source(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// Entry point `name` of `lib`, as a function pointer of type `T`.
///
/// # Safety
///
/// `T` must be the type of that entry point in `scripts/torch_anchor.cpp`,
/// and the pointer must not be used after `lib` is dropped.
unsafe fn entry<T: Copy>(lib: &libloading::Library, name: &str, path: &Path) -> AnyResult<T> {
    let symbol = format!("{name}\0");
    // SAFETY: the caller guarantees `T` is the entry point's type; the
    // symbol's value is copied out and the caller keeps `lib` loaded while
    // using it.
    let f = unsafe { lib.get::<T>(symbol.as_bytes()) }.map_err(|e| {
        format!(
            "--torch-anchor {}: no entry point {name} ({}); {HOW}",
            path.display(),
            with_source(&e)
        )
    })?;
    Ok(*f)
}

impl TorchAnchor {
    /// Loads the library at `path` and enters `device` on this thread
    /// (which also initializes PyTorch's allocator).
    pub fn load(path: &Path, device: u32) -> AnyResult<Self> {
        // SAFETY: loading runs the library's initializers; the library is
        // one the user built from scripts/torch_anchor.cpp (or the test's
        // stand-in), whose initializers only set up torch's own statics.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
            format!(
                "--torch-anchor {}: {}; {HOW}",
                path.display(),
                with_source(&e)
            )
        })?;
        // SAFETY: each type below is that of the entry point of the same
        // name in scripts/torch_anchor.cpp (and the stand-in), and `lib` is
        // kept in the returned value and never unloaded (`ManuallyDrop`),
        // so the pointers stay valid as long as the value lives.
        let (name, enter, alloc, free) = unsafe {
            (
                entry::<NameFn>(&lib, "gpu_arena_torch_anchor_name", path)?,
                entry::<EnterFn>(&lib, "gpu_arena_torch_anchor_enter", path)?,
                entry::<AllocFn>(&lib, "gpu_arena_torch_anchor_alloc", path)?,
                entry::<FreeFn>(&lib, "gpu_arena_torch_anchor_free", path)?,
            )
        };
        // SAFETY: the entry point takes nothing and returns a pointer to a
        // static NUL-terminated string (or NULL, checked).
        let name = unsafe {
            let p = name();
            if p.is_null() {
                return Err(
                    format!("--torch-anchor {}: the library has no name", path.display()).into(),
                );
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        let device = c_int::try_from(device)?;
        let anchor = TorchAnchor {
            name,
            path: path.to_path_buf(),
            device,
            enter,
            alloc,
            free,
            _lib: core::mem::ManuallyDrop::new(lib),
        };
        anchor.enter()?;
        Ok(anchor)
    }

    /// The column's name, as the library gives it (torch's version in it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The library's path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the device current on the calling thread: every thread calls
    /// it once before its first pair.
    pub fn enter(&self) -> AnyResult<()> {
        // SAFETY: `enter` is the library's entry point of that type, loaded
        // while `self` lives; it takes a device ordinal.
        let r = unsafe { (self.enter)(self.device) };
        if r == 0 {
            Ok(())
        } else {
            Err(format!(
                "{}: device {} could not be entered (no CUDA device, or torch refused it)",
                self.name, self.device
            )
            .into())
        }
    }

    /// One allocation of `size` bytes for the legacy default stream and its
    /// free.
    pub fn pair(&self, size: usize) -> AnyResult<()> {
        // SAFETY: `alloc` is the library's entry point of that type; a null
        // stream means the legacy default stream.
        let p = unsafe { (self.alloc)(size, core::ptr::null_mut()) };
        if p.is_null() {
            return Err(format!("{}: an allocation of {size} bytes failed", self.name).into());
        }
        // SAFETY: `p` came from `alloc` just above and is freed once.
        let r = unsafe { (self.free)(std::hint::black_box(p)) };
        if r == 0 {
            Ok(())
        } else {
            Err(format!("{}: a free was refused", self.name).into())
        }
    }
}
