//! [`SharedArena`]: an [`Arena`](crate::arena::Arena) behind a lock, usable from many threads and
//! as an `allocator_api2::Allocator` for the kinds the CPU may touch.
//!
//! ```
//! use allocator_api2::vec::Vec;
//! use gpu_arena::{SharedArena, Kind, ArenaConfig};
//! use gpu_arena::driver::HostDriver;
//! let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let mut v: Vec<u64, _> = Vec::new_in(&arena);
//! v.extend(0..1000);
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! assert!(arena.stats().live >= 8000);
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

use crate::driver::{DevicePtr, Driver};

// Defined in the arena layer (so that `global` can hold shards without
// reaching up into `api`); re-exported here, where its `Allocator` impl is.
pub use crate::arena::SharedArena;

// SAFETY: (1) blocks returned are valid for `layout.size()` bytes, aligned,
// and host-accessible: allocation is refused unless the arena's memory is
// host-visible; (2) a block stays valid until deallocated through the same
// arena, since the arena only decommits pages without live bytes and each
// live block pins the arena awake (`Arena::pin_host`: a sleep, which unmaps
// every page, is refused meanwhile); (3) the arena outlives the reference.
unsafe impl<D: Driver> Allocator for &SharedArena<D> {
    fn allocate(&self, layout: Layout) -> core::result::Result<NonNull<[u8]>, AllocError> {
        if !self.host_visible() {
            return Err(AllocError);
        }
        if layout.size() == 0 {
            let dangling = layout.align() as *mut u8;
            // SAFETY: the alignment is nonzero, so the pointer is non-null.
            let p = unsafe { NonNull::new_unchecked(dangling) };
            return Ok(NonNull::slice_from_raw_parts(p, 0));
        }
        let mut a = self.lock();
        let ptr = a
            .alloc(layout.size() as u64, layout.align() as u64)
            .map_err(|_| AllocError)?;
        if a.pin_host().is_err() {
            let _ = a.free(ptr);
            return Err(AllocError);
        }
        drop(a);
        let p = NonNull::new(ptr.as_mut_ptr::<u8>()).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        let mut a = self.lock();
        let r = a.free(DevicePtr::from_ptr(ptr.as_ptr()));
        if r.is_ok() {
            a.unpin_host();
        }
        debug_assert!(
            r.is_ok(),
            "deallocate of a pointer this arena refused: {r:?}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use allocator_api2::vec::Vec as AVec;

    use crate::api::testing::{host_arena, readable};
    use crate::arena::SleepMode;
    use crate::driver::Stream;

    /// A collection in a host-visible arena is safe code's to read at any
    /// moment: a (safe) sleep must either be refused while it lives, or
    /// leave its memory readable.
    #[test]
    fn a_live_allocator_api2_collection_survives_a_sleep() {
        let arena = host_arena();
        let mut v: AVec<u64, _> = AVec::new_in(&arena);
        v.extend(0..1024u64);
        let slept = arena.lock().sleep(SleepMode::Offload, Stream::DEFAULT);
        let ok = slept.is_err() || readable(v.as_ptr().cast(), 8);
        if slept.is_ok() {
            arena.lock().wake(Stream::DEFAULT).unwrap();
        }
        assert!(
            ok,
            "sleep {slept:?} unmapped the buffer of a live Vec: `v[0]` (safe) faults"
        );
        assert_eq!(v[1023], 1023);
    }
}
