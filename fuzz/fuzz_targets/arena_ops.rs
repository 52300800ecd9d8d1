//! Fuzz target: programs of arena operations on the checked host driver
//! (64 KiB pages), as talc's `Actions`. Fresh memory is filled with a
//! pattern derived from the block's id and checked when the block is freed
//! and at the end (overlaps, lost pages); a block freed on a stream whose
//! emulated kernel is held must keep its pattern until that stream's fence
//! (no other stream gets its memory, it is not unmapped); the arena's
//! invariants are checked after every action; the driver must see everything given back. Two
//! programs in three also place blocks in stitched ranges (from 2 pages);
//! the arena sleeps and wakes at times; one program in four runs under a
//! commit limit of 48 pages, one in eight under one of 6.
#![no_main]

use arbitrary::Arbitrary;
use gpu_arena::driver::{Checked, Driver, HostConfig, HostDriver, Stream};
use gpu_arena::{
    ArenaConfig, DevicePtr, Error, GrowBuffer, Kind, Scratch, ScratchConfig, ScratchPtr,
    SharedArena, SleepMode, TailUse,
};
use libfuzzer_sys::fuzz_target;

const PAGE: u64 = 64 << 10;
const STREAMS: usize = 3;

#[derive(Arbitrary, Debug)]
enum Action {
    /// `size` scaled: up to 4 pages; alignment `1 << (align_log % 18)`.
    Alloc {
        size: u32,
        align_log: u8,
        stream: u8,
    },
    /// Frees a live block (index modulo the live count), on its own stream
    /// or on another one.
    Free {
        index: u16,
        other_stream: bool,
    },
    /// Frees a live block with the size it was allocated with.
    FreeSized {
        index: u16,
    },
    /// A pointer inside a live block, or just freed: must be refused.
    BadFree {
        index: u16,
        delta: u32,
    },
    ScratchAlloc {
        size: u16,
        align_log: u8,
    },
    ScratchReset {
        stream: u8,
    },
    /// Resizes the growable buffer to `len` bytes (scaled, up to 16 pages;
    /// beyond its maximum must be refused).
    GrowResize {
        len: u32,
        stream: u8,
    },
    Trim,
    Collect,
    Hold {
        stream: u8,
    },
    Complete {
        stream: u8,
    },
    /// Completes every stream, sleeps (contents offloaded or discarded),
    /// frees `frees` blocks while asleep (served, exactly accounted), wakes:
    /// every block still live, scratch allocation and the buffer at its
    /// address again, with its contents (offload) or zeroed (discard).
    SleepWake {
        offload: bool,
        stream: u8,
        frees: u8,
    },
}

fn tag(id: u64) -> u8 {
    (id % 251) as u8 + 1
}

/// # Safety
/// `p..p + len` is live, host-visible memory of the caller.
unsafe fn fill(p: DevicePtr, len: u64, id: u64) {
    // SAFETY: the caller's range.
    unsafe { std::ptr::write_bytes(p.as_mut_ptr::<u8>(), tag(id), len as usize) };
}

/// # Safety
/// As for [`fill`].
unsafe fn intact(p: DevicePtr, len: u64, id: u64) -> bool {
    // SAFETY: the caller's range.
    let s = unsafe { std::slice::from_raw_parts(p.as_ptr::<u8>(), len as usize) };
    s.iter().all(|&b| b == tag(id))
}

struct Block {
    ptr: DevicePtr,
    size: u64,
    given: u64,
    stream: usize,
    id: u64,
}

fuzz_target!(|actions: Vec<Action>| {
    let driver = Checked::new(
        HostDriver::with_config(HostConfig {
            granularity: PAGE as usize,
            capacity: 64 << 20,
            ..Default::default()
        })
        .expect("host driver"),
    );
    let streams: Vec<Stream> = (0..STREAMS)
        .map(|_| driver.create_stream().expect("stream"))
        .collect();
    let mut config = ArenaConfig {
        reservation: 64 << 20,
        min_reservation: 1 << 20,
        ..Default::default()
    };
    // Two programs in three place blocks of 2 pages or more in stitched
    // ranges when the blocks region has no ready place (every block here
    // is below the default 1 MiB); one of those repairs cached ranges
    // (from 2 pages: by default from 64 MiB).
    match actions.len() % 3 {
        0 => {}
        n => {
            config.commit.stitch_min = 2 * PAGE;
            config.commit.stitch_repair = n == 2;
            config.commit.stitch_repair_min = 2 * PAGE;
        }
    }
    // One program in four commits at most 48 pages, one in eight at most 6
    // (allocations of up to 4 pages then meet the limit often, on every
    // path): allocations and resizes may run out of memory (after the
    // out-of-memory ladder), and then change nothing.
    let limit_pages = match (actions.len() / 3) % 8 {
        0 | 4 => Some(48),
        2 => Some(6),
        _ => None,
    };
    let limited = limit_pages.is_some();
    if let Some(pages) = limit_pages {
        config.commit.limit = pages * PAGE;
    }
    // One program in two gives every emptied slab back, the last of its
    // class too (`keep_empty_slabs` off): slabs come and go with their
    // objects.
    config.keep_empty_slabs = (actions.len() / 12).is_multiple_of(2);
    // One program in three puts every block a tail holds in the end of a
    // live stitched block's last page (`tails` always), one in three none.
    config.tails = match (actions.len() / 24) % 3 {
        0 => TailUse::Always,
        1 => TailUse::Off,
        _ => TailUse::Costly,
    };
    {
        let arena = SharedArena::new(&driver, Kind::Device(0), config).expect("arena");
        let mut scratch = Scratch::with_config(
            &arena,
            ScratchConfig {
                max: 8 * PAGE,
                retain: PAGE,
                ..ScratchConfig::default()
            },
        )
        .expect("scratch");
        let mut scratch_live: Vec<(ScratchPtr, u64, u64)> = Vec::new();
        let mut stale: Option<ScratchPtr> = None;
        let mut grow = GrowBuffer::with_max(&arena, 16 * PAGE).expect("grow buffer");
        // Whether a slice of `grow` was taken since its last resize: the
        // arena then refuses to sleep (the slice may still be read).
        let mut grow_sliced = false;
        let grow_id = 0;
        let mut blocks: Vec<Block> = Vec::new();
        let mut freed: Vec<DevicePtr> = Vec::new();
        let mut next_id = 1u64;
        // Streams whose emulated kernel runs, and the blocks freed on them
        // since: other streams must not get that memory before the fence.
        let mut held = [false; STREAMS];
        let mut in_flight: Vec<(usize, Block)> = Vec::new();
        let mut waits = driver.counts().wait;
        for action in actions.iter().take(512) {
            match *action {
                Action::Alloc {
                    size,
                    align_log,
                    stream,
                } => {
                    let size = 1 + u64::from(size) % (4 * PAGE);
                    let align = 1u64 << (align_log % 18);
                    let stream = usize::from(stream) % STREAMS;
                    let live = arena.stats().live;
                    let p = match arena.alloc(size, align, streams[stream]) {
                        Ok(p) => p,
                        Err(Error::OutOfMemory(_)) if limited => {
                            assert_eq!(arena.stats().live, live, "a refused alloc");
                            continue;
                        }
                        Err(e) => panic!("alloc({size}, {align}): {e}"),
                    };
                    assert!(p.is_aligned_to(align));
                    let given = arena.lock().block_size(p).expect("live");
                    assert!(given >= size);
                    for b in &blocks {
                        assert!(
                            p.byte_add(given) <= b.ptr || b.ptr.byte_add(b.given) <= p,
                            "overlap"
                        );
                    }
                    // A stream may reuse what it freed itself at once, here
                    // or through a stitched range's alias of the same pages:
                    // what it freed is no longer checked once it allocated.
                    // A refused allocation takes nothing back, so what it
                    // freed stays kept from other streams.
                    in_flight.retain(|(s, _)| *s != stream);
                    next_id += 1;
                    // SAFETY: a fresh block of `given` bytes.
                    unsafe { fill(p, given, next_id) };
                    freed.retain(|&f| f != p);
                    blocks.push(Block {
                        ptr: p,
                        size,
                        given,
                        stream,
                        id: next_id,
                    });
                }
                Action::Free {
                    index,
                    other_stream,
                } => {
                    if blocks.is_empty() {
                        continue;
                    }
                    let b = blocks.swap_remove(usize::from(index) % blocks.len());
                    // SAFETY: the block is live.
                    assert!(unsafe { intact(b.ptr, b.given, b.id) }, "contents kept");
                    let s = if other_stream {
                        (b.stream + 1) % STREAMS
                    } else {
                        b.stream
                    };
                    arena.free(b.ptr, streams[s]).expect("free");
                    freed.push(b.ptr);
                    if held[s] {
                        in_flight.push((s, b));
                    }
                }
                Action::FreeSized { index } => {
                    if blocks.is_empty() {
                        continue;
                    }
                    let b = blocks.swap_remove(usize::from(index) % blocks.len());
                    // SAFETY: the block is live.
                    assert!(unsafe { intact(b.ptr, b.given, b.id) }, "contents kept");
                    arena
                        .lock()
                        .free_sized(b.ptr, b.size, streams[b.stream])
                        .expect("free_sized with the allocated size");
                    freed.push(b.ptr);
                    if held[b.stream] {
                        in_flight.push((b.stream, b));
                    }
                }
                Action::BadFree { index, delta } => {
                    let before = arena.stats();
                    let p = if !blocks.is_empty() && delta % 2 == 0 {
                        let b = &blocks[usize::from(index) % blocks.len()];
                        if b.given < 2 {
                            continue;
                        }
                        b.ptr.byte_add(1 + u64::from(delta) % (b.given - 1))
                    } else if let Some(&f) = freed.last() {
                        if blocks.iter().any(|b| b.ptr == f) {
                            continue;
                        }
                        f
                    } else {
                        continue;
                    };
                    let r = arena.free(p, streams[0]);
                    assert!(matches!(r, Err(Error::BadPointer { .. })), "{r:?}");
                    assert_eq!(arena.stats(), before, "a refused free changes nothing");
                }
                Action::ScratchAlloc { size, align_log } => {
                    let size = 1 + u64::from(size);
                    let align = 1u64 << (align_log % 24);
                    match scratch.alloc_raw(size, align) {
                        Ok(sp) => {
                            let p = sp.get(&scratch).expect("current");
                            assert!(p.is_aligned_to(align));
                            next_id += 1;
                            // SAFETY: fresh scratch memory of `size` bytes.
                            unsafe { fill(p, size, next_id) };
                            scratch_live.push((sp, size, next_id));
                        }
                        Err(Error::ScratchFull { .. }) => {}
                        Err(Error::OutOfMemory(_)) if limited => {}
                        Err(e) => panic!("scratch alloc: {e}"),
                    }
                }
                Action::ScratchReset { stream } => {
                    for &(sp, size, id) in &scratch_live {
                        let p = sp.get(&scratch).expect("current");
                        // SAFETY: live scratch memory.
                        assert!(unsafe { intact(p, size, id) }, "scratch contents kept");
                    }
                    scratch.reset_on(streams[usize::from(stream) % STREAMS]);
                    assert!(scratch.committed_bytes() <= PAGE);
                    stale = scratch_live.drain(..).next().map(|(sp, _, _)| sp).or(stale);
                    if let Some(sp) = stale {
                        assert!(matches!(sp.get(&scratch), Err(Error::StaleScratch { .. })));
                    }
                }
                Action::GrowResize { len, stream } => {
                    let len = u64::from(len) % (17 * PAGE);
                    let old = grow.len();
                    let r = grow.resize_on(len, streams[usize::from(stream) % STREAMS]);
                    grow_sliced = false;
                    if len > grow.max() {
                        assert!(matches!(r, Err(Error::GrowBeyondMax { .. })), "{r:?}");
                        continue;
                    }
                    match r {
                        Ok(()) => {}
                        Err(Error::OutOfMemory(_)) if limited => {
                            assert_eq!(grow.len(), old, "a refused resize");
                            continue;
                        }
                        Err(e) => panic!("resize: {e}"),
                    }
                    assert_eq!(grow.committed(), len.div_ceil(PAGE) * PAGE);
                    let s = grow.as_mut_slice().expect("host-visible");
                    grow_sliced = true;
                    let keep = old.min(len) as usize;
                    assert!(
                        s[..keep].iter().all(|&b| b == tag(grow_id)),
                        "grow contents kept"
                    );
                    s[keep..].fill(tag(grow_id));
                }
                Action::Trim => {
                    arena.trim();
                }
                Action::Collect => {
                    arena.lock().collect();
                }
                Action::Hold { stream } => {
                    let i = usize::from(stream) % STREAMS;
                    driver.inner().hold(streams[i]);
                    held[i] = true;
                }
                Action::Complete { stream } => {
                    let i = usize::from(stream) % STREAMS;
                    driver.inner().complete(streams[i]);
                    held[i] = false;
                    in_flight.retain(|(s, _)| *s != i);
                }
                Action::SleepWake {
                    offload,
                    stream,
                    frees,
                } => {
                    for &s in &streams {
                        driver.inner().complete(s);
                    }
                    held = [false; STREAMS];
                    in_flight.clear();
                    let stream = streams[usize::from(stream) % STREAMS];
                    let mode = if offload {
                        SleepMode::Offload
                    } else {
                        SleepMode::Discard
                    };
                    let live = arena.stats().live;
                    if grow_sliced {
                        // A slice may live: refused, nothing changed; a
                        // resize (no slice can live through it) lifts it.
                        let before = arena.stats();
                        let r = arena.lock().sleep(mode, stream);
                        assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
                        assert_eq!(arena.stats(), before, "a refused sleep");
                        grow.resize_on(grow.len(), stream).expect("same length");
                        grow_sliced = false;
                    }
                    arena.lock().sleep(mode, stream).expect("sleep");
                    assert_eq!(arena.stats().committed, 0);
                    assert!(matches!(
                        arena.alloc(64, 8, stream),
                        Err(Error::Asleep { .. })
                    ));
                    // Frees are served asleep (nothing mapped: no contents
                    // to check) and leave the stats at once.
                    let mut live = live;
                    for k in 0..usize::from(frees % 4).min(blocks.len()) {
                        let b = blocks.swap_remove((k * 7 + usize::from(frees)) % blocks.len());
                        let given = arena.lock().block_size(b.ptr).expect("live");
                        arena.free(b.ptr, streams[b.stream]).expect("free asleep");
                        freed.push(b.ptr);
                        live -= given;
                        assert_eq!(arena.stats().live, live);
                        assert_eq!(arena.stats().committed, 0);
                    }
                    arena.lock().wake(stream).expect("wake");
                    assert_eq!(arena.stats().live, live);
                    if !offload {
                        // Discarded contents read zero: fill the patterns again.
                        for b in &blocks {
                            // SAFETY: the block is live.
                            unsafe { fill(b.ptr, b.given, b.id) };
                        }
                        for &(sp, size, id) in &scratch_live {
                            let p = sp.get(&scratch).expect("current");
                            // SAFETY: live scratch memory.
                            unsafe { fill(p, size, id) };
                        }
                        let s = grow.as_mut_slice().expect("host-visible");
                        s.fill(tag(grow_id));
                        grow_sliced = true;
                    }
                }
            }
            // A wait (the out-of-memory ladder's last resort) completes held
            // fences: what was in flight may be reused now.
            if driver.counts().wait != waits {
                waits = driver.counts().wait;
                in_flight.clear();
            }
            for (s, b) in &in_flight {
                // SAFETY: freed on a stream still held, so the arena may
                // neither unmap it nor hand it to another stream (a fault
                // here is a finding too).
                assert!(
                    unsafe { intact(b.ptr, b.given, b.id) },
                    "block {:#x}+{} freed on held stream {s} reused by another stream before its fence",
                    b.ptr,
                    b.given
                );
            }
            let a = arena.lock();
            a.check_invariants();
            let s = a.stats();
            assert!(s.committed >= s.live);
            // Pinned host memory kept for the next offload counts as staged.
            assert_eq!(driver.physical_bytes(), s.committed + s.staged);
        }
        for b in blocks.drain(..) {
            // SAFETY: the block is live.
            assert!(unsafe { intact(b.ptr, b.given, b.id) }, "contents kept");
            arena.free(b.ptr, streams[b.stream]).expect("free");
        }
        drop(scratch);
        drop(grow);
        for &s in &streams {
            driver.inner().complete(s);
        }
        arena.trim();
        let s = arena.stats();
        assert_eq!((s.live, s.committed), (0, 0), "{s:?}");
        arena.lock().check_invariants();
    }
    assert!(driver.leaks().is_none(), "{:?}", driver.leaks());
    let c = driver.counts();
    // One unmap may remove several adjacent mappings (a stitched range's
    // pages): compare bytes.
    assert_eq!(
        (c.create, c.bytes_mapped),
        (c.release, c.bytes_unmapped),
        "{c:?}"
    );
});
