#![doc = include_str!("../README.md")]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod align;
pub mod driver;
pub mod error;
mod lock;
mod meta;
pub mod ptr;
pub mod sync;

pub use driver::Stream;
pub use error::{
    Backend, BadPointer, Call, DriverBox, DriverError, Error, ErrorKind, OomBox, OomReport, Reason,
    Result,
};
pub use ptr::DevicePtr;

pub mod arena;
pub mod commit;
pub mod policy;
pub mod stats;

pub use arena::{Accounting, Arena, ArenaConfig, Kind, SleepMode, SleepReport, TailUse};
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
