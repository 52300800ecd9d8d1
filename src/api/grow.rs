//! Growable buffers: the maximum is reserved once, pages are committed at
//! the end as the buffer grows. No copy, and the base pointer never moves.
//!
//! ```
//! use gpu_arena::{SharedArena, GrowBuffer, Kind, ArenaConfig};
//! use gpu_arena::driver::HostDriver;
//! let arena = SharedArena::new(HostDriver::new()?, Kind::Device(0), ArenaConfig::default())?;
//! let mut buf = GrowBuffer::with_max(&arena, 1 << 30)?;
//! buf.resize(4 << 20)?;
//! let base = buf.as_ptr();
//! buf.resize(64 << 20)?;
//! assert_eq!(buf.as_ptr(), base);
//! assert_eq!(arena.stats().committed, 64 << 20);
//! # Ok::<(), gpu_arena::Error>(())
//! ```

use crate::api::SharedArena;
use crate::arena::GrowRange;
use crate::driver::{DevicePtr, Driver, Stream};
use crate::error::{Error, Result};

/// A buffer that grows in place up to a reserved maximum.
pub struct GrowBuffer<'a, D: Driver> {
    arena: &'a SharedArena<D>,
    range: GrowRange,
    /// The stream the memory was last used on, as the last
    /// [`GrowBuffer::resize_on`] named it: dropped, the buffer gives its
    /// pages back once that stream's work on them completed.
    stream: Stream,
    /// Whether this buffer pins its arena awake (`Arena::pin_host`): from
    /// a slice taken until the next resize (`&mut self`: no slice lives
    /// then) or the drop.
    /// (Atomic, not a `Cell`: the buffer stays `Sync`.)
    host_pinned: core::sync::atomic::AtomicBool,
}

impl<D: Driver> core::fmt::Debug for GrowBuffer<'_, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GrowBuffer")
            .field("base", &format_args!("{:#x}", self.range.base()))
            .field("len", &self.range.len())
            .field("committed", &self.range.committed())
            .field("max", &self.range.max())
            .finish()
    }
}

impl<'a, D: Driver> GrowBuffer<'a, D> {
    /// An empty buffer that can grow to `max` bytes (reserves address space only).
    pub fn with_max(arena: &'a SharedArena<D>, max: u64) -> Result<Self> {
        let range = arena.lock().reserve_grow(max)?;
        Ok(GrowBuffer {
            arena,
            range,
            stream: Stream::DEFAULT,
            host_pinned: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The base address; stable for the buffer's life.
    pub fn as_ptr(&self) -> DevicePtr {
        self.range.base()
    }
    /// Current length.
    pub fn len(&self) -> u64 {
        self.range.len()
    }
    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
    /// Bytes committed (the length rounded up to pages).
    pub fn committed(&self) -> u64 {
        self.range.committed()
    }
    /// The reserved maximum.
    pub fn max(&self) -> u64 {
        self.range.max()
    }

    /// Grows or shrinks to `len` bytes: commits pages at the end, or gives
    /// back whole runs past the end. Contents below `min(old, new)` length
    /// are kept; new bytes are unspecified. May call the driver.
    pub fn resize(&mut self, len: u64) -> Result<()> {
        self.resize_on(len, Stream::DEFAULT)
    }

    /// [`GrowBuffer::resize`], with the memory last used on `stream`; the
    /// buffer's memory is taken to be used on `stream` from then on (see
    /// [`GrowBuffer::free_on`]).
    pub fn resize_on(&mut self, len: u64, stream: Stream) -> Result<()> {
        self.stream = stream;
        let mut a = self.arena.lock();
        // `&mut self`: no slice taken before lives now, so the arena may
        // sleep again.
        if core::mem::take(self.host_pinned.get_mut()) {
            a.unpin_host();
        }
        a.resize_grow(&mut self.range, len, stream)
    }

    /// Gives the buffer back, its memory last used on `stream`: its pages
    /// go once that stream's work on them completed (no device
    /// synchronization), never before. Dropping the buffer does the same
    /// with the stream of the last [`GrowBuffer::resize_on`] (the default
    /// stream if none).
    pub fn free_on(mut self, stream: Stream) {
        self.stream = stream;
    }

    /// The contents as a byte slice (host-visible kinds only). Until the
    /// next resize (or the drop) the arena refuses to sleep: a sleep would
    /// unmap the slice's bytes.
    pub fn as_slice(&self) -> Result<&[u8]> {
        self.host()?;
        // SAFETY: the first `len` bytes are committed and host-accessible
        // (`host` pinned the arena awake: no sleep unmaps them); they live
        // as long as `self`, and `&self` forbids a resize meanwhile.
        Ok(unsafe {
            core::slice::from_raw_parts(self.as_ptr().as_ptr::<u8>(), self.len() as usize)
        })
    }

    /// The contents as a mutable byte slice (host-visible kinds only).
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        self.host()?;
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        Ok(unsafe {
            core::slice::from_raw_parts_mut(self.as_ptr().as_mut_ptr::<u8>(), self.len() as usize)
        })
    }

    fn host(&self) -> Result<()> {
        if !self.arena.host_visible() {
            return Err(Error::Unsupported(
                "device memory: copy through the driver instead",
            ));
        }
        // A slice may outlive this call: the arena stays awake (its pages
        // mapped) until the next resize or the drop.
        use core::sync::atomic::Ordering::Relaxed;
        if !self.host_pinned.load(Relaxed) {
            // Checked again under the arena's lock: one pin per buffer.
            let mut a = self.arena.lock();
            if !self.host_pinned.load(Relaxed) {
                a.pin_host()?;
                self.host_pinned.store(true, Relaxed);
            }
        }
        Ok(())
    }
}

impl<D: Driver> Drop for GrowBuffer<'_, D> {
    fn drop(&mut self) {
        let mut a = self.arena.lock();
        a.free_grow(&mut self.range, self.stream);
        if *self.host_pinned.get_mut() {
            a.unpin_host();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::api::testing::{host_arena, readable};
    use crate::arena::SleepMode;

    /// "Allocating in an asleep arena (or resizing, copying, exporting) is
    /// refused" (`Arena::sleep`), and a slice of a growable buffer must be
    /// readable memory: a resize within the committed page was served
    /// while asleep, and `as_slice` handed out a slice of unmapped pages.
    #[test]
    fn grow_buffer_refuses_resizes_and_slices_while_asleep() {
        let arena = host_arena();
        let mut g = GrowBuffer::with_max(&arena, 64 << 20).unwrap();
        g.resize(4096).unwrap();
        arena
            .lock()
            .sleep(SleepMode::Offload, Stream::DEFAULT)
            .unwrap();
        let resized = g.resize(8192);
        let slice = g.as_slice().map(|s| (s.as_ptr(), s.len()));
        if let Ok((p, len)) = slice {
            assert!(readable(p, len), "as_slice while asleep: unmapped bytes");
        }
        assert!(matches!(resized, Err(Error::Asleep { .. })), "{resized:?}");
        arena.lock().wake(Stream::DEFAULT).unwrap();
    }

    /// A slice taken keeps the arena awake only while it may live: the
    /// next resize (`&mut self`) lets the arena sleep again, so a
    /// long-lived buffer read once does not block every later sleep.
    #[test]
    fn a_resize_after_a_slice_lets_the_arena_sleep_again() {
        let arena = host_arena();
        let mut g = GrowBuffer::with_max(&arena, 64 << 20).unwrap();
        g.resize(4096).unwrap();
        assert_eq!(g.as_slice().unwrap().len(), 4096);
        let sleep = || arena.lock().sleep(SleepMode::Offload, Stream::DEFAULT);
        assert!(sleep().is_err(), "a slice may still live");
        g.resize(8192).unwrap();
        sleep().unwrap();
        arena.lock().wake(Stream::DEFAULT).unwrap();
        assert_eq!(g.as_slice().unwrap().len(), 8192);
    }
}
