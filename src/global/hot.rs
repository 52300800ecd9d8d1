//! The process-wide flags that every allocator call reads, kept in one
//! cache line.
//!
//! Between two of PyTorch's calls its own work evicts the allocator's data
//! from the first-level cache, so each distinct line a call touches costs a
//! miss. The flags below (whether a CUDA graph hold is capturing or alive,
//! whether the C ABI measures its time, the process-wide tag) were each a
//! static of its own module, wherever the linker put them; here one line
//! holds them all, with the first devices' process-wide arenas: a call finds
//! its arena here without reading the arena table's entry, whose once-flag
//! and result lie on lines apart from each other and from the arena's hot
//! fields (about 4 lines fewer per call with cold caches,
//! `docs/pytorch/experiments/hot-arenas-lines-20261129.log`). Each module
//! still owns the meaning of its flag.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize};

use super::GlobalArena;

/// Devices whose process-wide arena the line holds (the rest are found in
/// the arena table).
pub(crate) const HOT_DEVICES: usize = 4;

/// The flags (see the module documentation).
#[repr(C, align(64))]
pub(crate) struct Hot {
    /// Holds capturing ([`graph`](super::graph)).
    pub capturing: AtomicUsize,
    /// Holds alive, capturing or captured ([`graph`](super::graph)).
    pub alive: AtomicUsize,
    /// The process-wide tag ([`tags`](super::tags)).
    pub process_tag: AtomicU32,
    /// Measuring the C ABI's time ([`timing`](super::timing)).
    pub timing: AtomicBool,
    /// Bit `d` set, for devices from [`HOT_DEVICES`] on: device `d`'s
    /// process-wide arena is ready, that is it exists and its background
    /// reclaimer was started (or found not wanted, or failed to start), so
    /// [`arena`](super::arena) may hand it out at once.
    pub ready: AtomicU32,
    /// Device `d`'s process-wide arena once it is ready, for `d` below
    /// [`HOT_DEVICES`] (which `ready` leaves out); null before. Set once, to
    /// an arena of the arena table, a static that never moves or drops.
    pub arenas: [AtomicPtr<GlobalArena>; HOT_DEVICES],
}

// One cache line, as the module says.
const _: () = assert!(core::mem::size_of::<Hot>() == 64);

/// The one instance.
pub(crate) static HOT: Hot = Hot {
    capturing: AtomicUsize::new(0),
    alive: AtomicUsize::new(0),
    process_tag: AtomicU32::new(0),
    timing: AtomicBool::new(false),
    ready: AtomicU32::new(0),
    arenas: [const { AtomicPtr::new(core::ptr::null_mut()) }; HOT_DEVICES],
};
