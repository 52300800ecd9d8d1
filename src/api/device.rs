//! Device memory the CPU cannot touch: [`DeviceBox`] and [`DeviceVec`] own a
//! block and copy to and from the host through the driver. No host deref.
//!
//! ```
//! use gpu_arena::{SharedArena, DeviceVec, Kind, ArenaConfig};
//! use gpu_arena::driver::HostDriver;
//! let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let v = DeviceVec::from_slice(&arena, &[1.0f32, 2.0, 3.0])?;
//! assert_eq!(v.to_vec()?, vec![1.0, 2.0, 3.0]);
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use core::marker::PhantomData;

use crate::api::SharedArena;
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};

/// Plain data that may be copied bytewise to and from a device: every bit
/// pattern is a valid value, with no padding, pointers or drop glue
/// (`bytemuck`'s trait; derive it with `bytemuck`'s `derive` feature).
pub use bytemuck::Pod;

/// Bytes of `len` elements of `T`, refused where that overflows 64 bits.
fn bytes_of<T>(len: usize) -> Result<u64> {
    let elem_size = core::mem::size_of::<T>() as u64;
    (len as u64)
        .checked_mul(elem_size)
        .ok_or(Error::SizeOverflow {
            count: len as u64,
            elem_size,
        })
}

/// A device array of `T`.
pub struct DeviceVec<'a, T: Pod, D: Driver> {
    arena: &'a SharedArena<D>,
    ptr: DevicePtr,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod, D: Driver> core::fmt::Debug for DeviceVec<'_, T, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceVec")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl<'a, T: Pod, D: Driver> DeviceVec<'a, T, D> {
    /// `len` uninitialized-on-device elements (contents unspecified, zero
    /// on a fresh commit).
    ///
    /// A `len` whose size in bytes overflows 64 bits is refused with
    /// [`Error::SizeOverflow`]; one larger than the arena can hold, with
    /// [`Error::TooLarge`]. May call the driver (commit).
    pub fn with_len(arena: &'a SharedArena<D>, len: usize) -> Result<Self> {
        let bytes = bytes_of::<T>(len)?.max(1);
        let align = core::mem::align_of::<T>().max(512) as u64;
        let ptr = arena.alloc(bytes, align, Stream::DEFAULT)?;
        Ok(DeviceVec {
            arena,
            ptr,
            len,
            _t: PhantomData,
        })
    }

    /// A device copy of `src`.
    pub fn from_slice(arena: &'a SharedArena<D>, src: &[T]) -> Result<Self> {
        let v = Self::with_len(arena, src.len())?;
        v.copy_from_host(src)?;
        Ok(v)
    }

    /// Device address of element 0.
    pub fn as_device_ptr(&self) -> DevicePtr {
        self.ptr
    }
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` (exactly `len` elements) to the device; done on return.
    /// Another length is refused with [`Error::BadCopy`].
    pub fn copy_from_host(&self, src: &[T]) -> Result<()> {
        if src.len() != self.len {
            return Err(Error::BadCopy {
                addr: self.ptr,
                len: core::mem::size_of_val(src) as u64,
                block: bytes_of::<T>(self.len)?,
            });
        }
        // SAFETY: the vector owns its block; the device work that used it
        // was synchronized by the caller (copies are on the default stream).
        unsafe { self.arena.lock().write(self.ptr, bytemuck::cast_slice(src)) }
    }

    /// Copies the device contents back to the host.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let mut out: Vec<T> = vec![<T as bytemuck::Zeroable>::zeroed(); self.len];
        // SAFETY: the vector owns its block (see `copy_from_host`).
        unsafe {
            self.arena
                .lock()
                .read(self.ptr, bytemuck::cast_slice_mut(&mut out))?;
        }
        Ok(out)
    }
}

impl<T: Pod, D: Driver> Drop for DeviceVec<'_, T, D> {
    fn drop(&mut self) {
        let _ = self.arena.free(self.ptr, Stream::DEFAULT);
    }
}

/// One `T` in device memory.
pub struct DeviceBox<'a, T: Pod, D: Driver>(DeviceVec<'a, T, D>);

impl<T: Pod, D: Driver> core::fmt::Debug for DeviceBox<'_, T, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("DeviceBox").field(&self.0).finish()
    }
}

impl<'a, T: Pod, D: Driver> DeviceBox<'a, T, D> {
    /// A device copy of `val`.
    pub fn new(arena: &'a SharedArena<D>, val: T) -> Result<Self> {
        DeviceVec::from_slice(arena, core::slice::from_ref(&val)).map(DeviceBox)
    }
    /// Device address.
    pub fn as_device_ptr(&self) -> DevicePtr {
        self.0.as_device_ptr()
    }
    /// Copies the value back.
    pub fn get(&self) -> Result<T> {
        Ok(self.0.to_vec()?[0])
    }
    /// Overwrites the value on the device.
    pub fn set(&self, val: T) -> Result<()> {
        self.0.copy_from_host(core::slice::from_ref(&val))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::testing::host_arena;

    /// Bad input is an error, not a panic ("Errors and bad input", DESIGN):
    /// `copy_from_host` returns a `Result`, and a slice of the wrong length
    /// is bad input.
    #[test]
    fn device_vec_refuses_a_copy_of_the_wrong_length() {
        let arena = host_arena();
        let v = DeviceVec::from_slice(&arena, &[1u32, 2, 3]).unwrap();
        let r =
            std::panic::catch_unwind(core::panic::AssertUnwindSafe(|| v.copy_from_host(&[9u32])));
        assert!(
            matches!(r, Ok(Err(Error::BadCopy { .. }))),
            "panicked: {}",
            r.is_err()
        );
        assert_eq!(v.to_vec().unwrap(), [1, 2, 3], "nothing copied");
    }
}
