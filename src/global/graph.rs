//! Keeping the memory of captured CUDA graphs.
//!
//! A CUDA graph records the addresses its kernels touch when it is
//! captured, and every replay touches them again. PyTorch's own allocator
//! keeps the blocks a capture used in a private pool for the graph's life.
//! An allocator plugged into PyTorch gets no such signal: blocks allocated
//! and freed during the capture come back to it like any other, and if
//! their memory were reused by another tensor, or given back to the device,
//! a replay would write over that tensor or fault.
//!
//! A *hold* closes that gap. Between [`begin`] and [`end`], every block
//! allocated through the C ABI on the captured stream of that device is
//! noted. A free of a noted block — during the capture or afterwards — is
//! deferred: the block stays allocated, so its memory is neither reused nor
//! given back. [`release`] (when the graph is destroyed) frees the deferred
//! blocks and forgets the others, whose frees then take the ordinary path.
//!
//! The cost of safety: memory freed inside a capture is not reused inside
//! the same capture (PyTorch's pools do reuse it), so a graph holds the sum
//! of the blocks its capture allocated. Outside captures, the C ABI pays
//! two relaxed atomic loads per call.
//!
//! ```
//! use gpu_arena::global::graph;
//! use gpu_arena::driver::Stream;
//! use gpu_arena::DevicePtr;
//! let id = graph::begin(0, Stream(7));
//! let p = DevicePtr::new(0x1000);
//! graph::note_alloc(0, Stream(7), p, 512);
//! assert_eq!(
//!     graph::defer_free(p, 0, Some(1024)),
//!     graph::Deferral::Refused(gpu_arena::error::BadPointer::LayoutMismatch),
//!     "not the size it was allocated with"
//! );
//! assert_eq!(graph::defer_free(p, 0, Some(512)), graph::Deferral::Deferred, "freed during the capture");
//! graph::end(id);
//! let held = graph::release(id);
//! assert_eq!(held.len(), 1, "the deferred block is handed back to be freed");
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::driver::{DevicePtr, Stream};
use crate::error::{BadPointer, Result};
use crate::lock::lock;

// How many holds are capturing (noting allocations) and alive (capturing
// or captured, not yet released): `hot::HOT.capturing` and `.alive`, read
// by every allocation and free.

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static HOLDS: Mutex<Vec<Hold>> = Mutex::new(Vec::new());

/// A block a hold keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldBlock {
    /// Device ordinal.
    pub device: u32,
    /// Address.
    pub ptr: DevicePtr,
    /// Size it was allocated with.
    pub size: u64,
    /// The stream it was allocated on (the captured stream).
    pub stream: Stream,
}

struct Hold {
    id: u64,
    device: u32,
    stream: Stream,
    capturing: bool,
    /// Noted blocks, and whether their free was deferred.
    blocks: HashMap<DevicePtr, (u64, bool)>,
}

fn holds() -> std::sync::MutexGuard<'static, Vec<Hold>> {
    lock(&HOLDS)
}

/// Starts a hold for the capture of `stream` on `device`; returns its id.
pub fn begin(device: u32, stream: Stream) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    holds().push(Hold {
        id,
        device,
        stream,
        capturing: true,
        blocks: HashMap::new(),
    });
    super::hot::HOT.alive.fetch_add(1, Ordering::AcqRel);
    super::hot::HOT.capturing.fetch_add(1, Ordering::AcqRel);
    id
}

/// Ends the capture of hold `id`: later allocations are not noted. The
/// blocks noted so far stay held until [`release`]. Unknown ids are ignored.
pub fn end(id: u64) {
    let mut h = holds();
    if let Some(x) = h.iter_mut().find(|x| x.id == id && x.capturing) {
        x.capturing = false;
        super::hot::HOT.capturing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ends hold `id` and returns the blocks whose free was deferred: the
/// caller frees them (after the graph's last replay completed). Blocks not
/// freed yet are forgotten: their frees take the ordinary path. Unknown ids
/// return nothing.
pub fn release(id: u64) -> Vec<HeldBlock> {
    let hold = {
        let mut h = holds();
        let Some(i) = h.iter().position(|x| x.id == id) else {
            return Vec::new();
        };
        h.swap_remove(i)
    };
    if hold.capturing {
        super::hot::HOT.capturing.fetch_sub(1, Ordering::AcqRel);
    }
    super::hot::HOT.alive.fetch_sub(1, Ordering::AcqRel);
    hold.blocks
        .into_iter()
        .filter(|(_, (_, freed))| *freed)
        .map(|(ptr, (size, _))| HeldBlock {
            device: hold.device,
            ptr,
            size,
            stream: hold.stream,
        })
        .collect()
}

/// Releases hold `id` and frees the blocks whose free it deferred, each on
/// the captured stream. Call it once the graph's last replay completed.
/// Returns the bytes freed, or the first error after trying every block.
pub fn release_and_free(id: u64) -> Result<u64> {
    let mut first = None;
    let mut bytes = 0;
    for b in release(id) {
        match super::arena(b.device).and_then(|a| a.free(b.ptr, Some(b.size), b.stream)) {
            Ok(()) => bytes += b.size,
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(bytes), Err)
}

/// Notes a block allocated on `stream` of `device` if a hold captures that
/// stream. Two relaxed loads when none does.
#[inline]
pub fn note_alloc(device: u32, stream: Stream, ptr: DevicePtr, size: u64) {
    if super::hot::HOT.capturing.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut h = holds();
    if let Some(x) = h
        .iter_mut()
        .find(|x| x.capturing && x.device == device && x.stream == stream)
    {
        x.blocks.insert(ptr, (size, false));
    }
}

/// What [`defer_free`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deferral {
    /// No hold keeps the block: free it now.
    NotHeld,
    /// A hold keeps the block: it stays allocated until the hold's release.
    Deferred,
    /// A hold keeps the block and the free is wrong, as the ordinary path
    /// would refuse it: its free was already deferred (a double free), the
    /// device is not the block's (foreign), or the size is not the one it
    /// was allocated with. Nothing changed.
    Refused(BadPointer),
}

/// Defers the free of `ptr`, allocated on `device` with `size` bytes
/// (`None`: not given), if a hold keeps it (see [`Deferral`]). One relaxed
/// load when no hold is alive.
#[inline]
pub fn defer_free(ptr: DevicePtr, device: u32, size: Option<u64>) -> Deferral {
    if super::hot::HOT.alive.load(Ordering::Relaxed) == 0 {
        return Deferral::NotHeld;
    }
    let mut h = holds();
    for x in h.iter_mut() {
        if let Some(b) = x.blocks.get_mut(&ptr) {
            let refused = if b.1 {
                Some(BadPointer::DoubleFree)
            } else if x.device != device {
                Some(BadPointer::Foreign)
            } else if size.is_some_and(|s| s != b.0) {
                Some(BadPointer::LayoutMismatch)
            } else {
                None
            };
            if let Some(kind) = refused {
                return Deferral::Refused(kind);
            }
            b.1 = true;
            return Deferral::Deferred;
        }
    }
    Deferral::NotHeld
}

/// Figures of hold `id`: (blocks noted, their bytes, blocks whose free was
/// deferred, their bytes); `None` for an unknown id.
pub fn hold_stats(id: u64) -> Option<(u64, u64, u64, u64)> {
    let h = holds();
    let x = h.iter().find(|x| x.id == id)?;
    let mut s = (0, 0, 0, 0);
    for &(size, freed) in x.blocks.values() {
        s.0 += 1;
        s.1 += size;
        if freed {
            s.2 += 1;
            s.3 += size;
        }
    }
    Some(s)
}
