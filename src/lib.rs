#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod align;
pub mod driver;
pub mod error;
pub mod ptr;
pub mod sync;

pub use driver::Stream;
pub use error::{
    Backend, BadPointer, Call, DriverBox, DriverError, Error, ErrorKind, OomBox, OomReport, Reason,
    Result,
};
pub use ptr::DevicePtr;

/// A `Vec` for allocator metadata: always on the system allocator, never on
/// the global one (gpu-arena may itself be the global allocator).
pub(crate) type MetaVec<T> = allocator_api2::vec::Vec<T, std::alloc::System>;
/// A `Box` on the system allocator, as [`MetaVec`] (what an error carries).
pub(crate) type MetaBox<T> = allocator_api2::boxed::Box<T, std::alloc::System>;
/// `value` in a [`MetaBox`].
pub(crate) fn meta_box<T>(value: T) -> MetaBox<T> {
    MetaBox::new_in(value, std::alloc::System)
}
/// A hash map for allocator metadata, on the system allocator, hashed with a
/// fixed seed (its keys are the allocator's own offsets and handles).
pub(crate) type MetaMap<K, V> =
    hashbrown::HashMap<K, V, foldhash::fast::FixedState, std::alloc::System>;

pub mod arena;
pub mod commit;
pub mod policy;
pub mod stats;

pub use arena::{Accounting, Arena, ArenaConfig, Kind, SleepMode, SleepReport};
pub use commit::CommitConfig;
pub use policy::Policy;
pub use stats::{Snapshot, Stats};
pub mod api;
pub use api::global_alloc::ArenaGlobalAlloc;
pub use api::{
    DeviceBox, DeviceVec, ExportedBuffer, GrowBuffer, ImportedBuffer, Scratch, ScratchConfig,
    ScratchPtr, SharedArena, SharedBuffer,
};
pub mod global;
pub use global::{GlobalArena, GlobalConfig};
#[cfg(feature = "trace")]
pub mod replay;
