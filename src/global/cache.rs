//! Per-thread caches of small blocks (magazines), for the global arenas.
//!
//! A thread caches blocks of one arena and one stream at a time: blocks
//! allocated for stream S and not yet handed out. Allocation pops from the
//! magazine of its size class without a lock; an empty magazine is refilled
//! with a batch under one lock acquisition. The cache is bounded by
//! [`GlobalConfig::thread_cache`](super::GlobalConfig) bytes and
//! [`MAG`] blocks per class, and is given back when the thread exits, when
//! it switches arena or stream, and on `trim`.

use core::cell::RefCell;

use super::GlobalArena;
use crate::driver::{DevicePtr, Stream};
use crate::error::Result;
use crate::policy::classes::{COUNT, SIZES};

/// Blocks per size class a thread may cache.
pub const MAG: usize = 32;

#[derive(Clone, Copy)]
struct Mag {
    len: usize,
    ptrs: [DevicePtr; MAG],
}

struct Cache {
    owner: Option<&'static GlobalArena>,
    tag: u32,
    stream: Stream,
    bytes: u64,
    mags: [Mag; COUNT],
}

impl Cache {
    const fn new() -> Self {
        Cache {
            owner: None,
            tag: 0,
            stream: Stream::DEFAULT,
            bytes: 0,
            mags: [Mag {
                len: 0,
                ptrs: [DevicePtr::NULL; MAG],
            }; COUNT],
        }
    }

    fn is(&self, arena: &'static GlobalArena, tag: u32, stream: Stream) -> bool {
        self.owner.is_some_and(|o| core::ptr::eq(o, arena))
            && self.tag == tag
            && self.stream == stream
    }

    /// Gives every cached block back to its arena.
    fn flush(&mut self) {
        if let Some(owner) = self.owner {
            for m in self.mags.iter_mut() {
                for &p in &m.ptrs[..m.len] {
                    let r = owner.free(p, None, self.stream);
                    debug_assert!(r.is_ok(), "cached block refused on flush: {r:?}");
                }
                m.len = 0;
            }
        }
        self.bytes = 0;
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = const { RefCell::new(Cache::new()) };
}

/// Pops a cached block of `class` for `stream` (no lock).
#[inline(always)]
pub(super) fn pop(
    arena: &'static GlobalArena,
    tag: u32,
    class: usize,
    stream: Stream,
) -> Option<DevicePtr> {
    CACHE
        .try_with(|c| {
            let mut c = c.try_borrow_mut().ok()?;
            if !c.is(arena, tag, stream) || arena.tag_arenas(tag).is_none_or(|t| t.is_asleep()) {
                return None;
            }
            let m = &mut c.mags[class];
            if m.len == 0 {
                return None;
            }
            m.len -= 1;
            let p = m.ptrs[m.len];
            c.bytes -= SIZES[class] as u64;
            Some(p)
        })
        .ok()
        .flatten()
}

/// Refills the magazine of `class` with a batch and returns one block.
#[cold]
pub(super) fn refill(
    arena: &'static GlobalArena,
    tag: u32,
    class: usize,
    stream: Stream,
) -> Result<DevicePtr> {
    let size = SIZES[class] as u64;
    let cached = CACHE.try_with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return None;
        };
        if !c.is(arena, tag, stream) {
            c.flush();
            c.owner = Some(arena);
            c.tag = tag;
            c.stream = stream;
        }
        let room = arena.config.thread_cache.saturating_sub(c.bytes) / size;
        let batch = (room as usize).min(MAG / 2);
        let shard = match arena.my_shard(tag) {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let mut a = shard.lock();
        let first = match a.alloc_on(size, 16, stream) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        for _ in 0..batch {
            let m = &c.mags[class];
            if m.len >= MAG {
                break;
            }
            match a.alloc_on(size, 16, stream) {
                Ok(p) => {
                    let m = &mut c.mags[class];
                    m.ptrs[m.len] = p;
                    m.len += 1;
                    c.bytes += size;
                }
                Err(_) => break,
            }
        }
        Some(Ok(first))
    });
    match cached {
        Ok(Some(r)) => r,
        // The thread is exiting (cache gone) or re-entered: no caching.
        _ => arena.alloc_uncached(size, 16, stream),
    }
}

/// Gives the calling thread's cache back if it holds blocks of `arena`.
pub(super) fn flush_current(arena: &'static GlobalArena) {
    let _ = CACHE.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if c.owner.is_some_and(|o| core::ptr::eq(o, arena)) {
                c.flush();
                c.owner = None;
            }
        }
    });
}
