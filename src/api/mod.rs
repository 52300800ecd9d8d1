//! What users hold: a shared arena implementing `allocator_api2::Allocator`,
//! scratch arenas, growable buffers, buffers shared between processes, and
//! device boxes and vectors.

pub mod allocator;
pub mod device;
pub mod ffi;
pub mod global_alloc;
pub mod grow;
pub mod ipc;
pub mod scratch;
#[cfg(test)]
mod testing;

pub use allocator::SharedArena;
pub use device::{DeviceBox, DeviceVec};
pub use grow::GrowBuffer;
pub use ipc::{ExportedBuffer, ImportedBuffer, SharedBuffer};
pub use scratch::{Scratch, ScratchConfig, ScratchPtr};
