//! The arena against a shadow model: random programs of operations (alloc,
//! free, free_sized, scratch alloc / reset, grow-buffer resize, trim,
//! collect, hold / complete a stream, sleep / wake, bad input) run on a checked host
//! driver, with the model (plain maps of what is live) checked after every op.
//! Half the programs place blocks of 2 pages or more in stitched ranges
//! (mostly such blocks then), with and without their repair; a quarter run
//! under a commit limit, where running out of memory must change nothing.
//!
//! The idea of rlsf's `ShadowAllocator` and talc's fuzz `Actions`, as a
//! proptest strategy over `Vec<Op>`: indices are taken modulo what is live,
//! so every generated program is meaningful and shrinks well.
//!
//! Cases: 256 by default; `GPU_ARENA_PROPTEST_CASES` overrides.

use std::collections::{BTreeMap, BTreeSet};

use gpu_arena::driver::{Checked, Driver, HostConfig, HostDriver, Op as Call, Stream};
use gpu_arena::policy::classes;
use gpu_arena::{
    Arena, ArenaConfig, BadPointer, DevicePtr, Error, GrowBuffer, Kind, Scratch, ScratchConfig,
    ScratchPtr, SharedArena, SleepMode, Stats, TailUse,
};
use proptest::prelude::*;
use proptest::sample::Index;

// ----- shared helpers (also used by `arena_api`) -----

/// The page (granularity) of the small host driver: fast to commit.
pub(crate) const PAGE: u64 = 64 << 10;

/// A checked host driver with 64 KiB pages and `capacity` bytes of memory.
pub(crate) fn host(capacity: u64) -> Checked<HostDriver> {
    Checked::new(
        HostDriver::with_config(HostConfig {
            granularity: PAGE as usize,
            capacity,
            ..Default::default()
        })
        .expect("host driver"),
    )
}

/// A 64 MiB arena: 32 MiB of blocks, 32 MiB of scratch arenas and buffers.
pub(crate) fn config() -> ArenaConfig {
    ArenaConfig {
        reservation: 64 << 20,
        min_reservation: 1 << 20,
        ..Default::default()
    }
}

/// Scratch settings of the tests: `max` reserved, `retain` kept on reset.
pub(crate) fn scratch_config(max: u64, retain: u64) -> ScratchConfig {
    ScratchConfig {
        max,
        retain,
        ..ScratchConfig::default()
    }
}

/// The arena of the tests: shared (scratch arenas and grow buffers need it),
/// over a borrowed checked driver that the test inspects afterwards.
pub(crate) type TestArena<'d> = SharedArena<&'d Checked<HostDriver>>;

/// Byte `i` of the pattern of block `id`: the id (little endian) in bytes
/// 0..8, then a tag derived from the id.
fn tag(id: u64) -> u8 {
    (id % 251) as u8 + 1
}

/// Writes bytes `from..to` of block `id`'s pattern at `base + from..`.
///
/// # Safety
/// `base + from .. base + to` is live, host-visible memory of the caller.
pub(crate) unsafe fn fill(base: DevicePtr, from: u64, to: u64, id: u64) {
    let head = id.to_le_bytes();
    for i in from..to.min(8) {
        // SAFETY: inside the caller's range.
        unsafe { base.byte_add(i).as_mut_ptr::<u8>().write(head[i as usize]) };
    }
    let from = from.max(8);
    if to > from {
        let at = base.byte_add(from).as_mut_ptr::<u8>();
        // SAFETY: as above.
        unsafe { std::ptr::write_bytes(at, tag(id), (to - from) as usize) };
    }
}

/// Whether bytes `from..to` at `base` still hold block `id`'s pattern.
///
/// # Safety
/// As for [`fill`].
pub(crate) unsafe fn intact(base: DevicePtr, from: u64, to: u64, id: u64) -> bool {
    if to <= from {
        return true;
    }
    let at = base.byte_add(from).as_ptr::<u8>();
    // SAFETY: the caller's live range.
    let s = unsafe { std::slice::from_raw_parts(at, (to - from) as usize) };
    let head = id.to_le_bytes();
    let split = (8u64.saturating_sub(from) as usize).min(s.len());
    if s[..split] != head[from as usize..from as usize + split] {
        return false;
    }
    let reference = [tag(id); 4096];
    s[split..].chunks(4096).all(|c| c == &reference[..c.len()])
}

/// Whether `len` bytes at `base` all read zero.
///
/// # Safety
/// As for [`fill`].
unsafe fn intact_zero(base: DevicePtr, len: u64) -> bool {
    // SAFETY: the caller's live range.
    let s = unsafe { std::slice::from_raw_parts(base.as_ptr::<u8>(), len as usize) };
    s.iter().all(|&b| b == 0)
}

/// Asserts that everything the arena got from the driver went back.
pub(crate) fn assert_balanced(driver: &Checked<HostDriver>) {
    assert_eq!(driver.leaks(), None, "the driver saw leaks");
    let c = driver.counts();
    assert_eq!(c.create, c.release, "create == release: {c:?}");
    // One unmap may remove several adjacent mappings: compare bytes.
    assert_eq!(
        c.bytes_mapped, c.bytes_unmapped,
        "mapped == unmapped bytes: {c:?}"
    );
    assert_eq!(
        c.reserve, c.free_reservation,
        "reserve == free_reservation: {c:?}"
    );
    assert_eq!(c.refused, 0, "the arena broke a driver rule: {c:?}");
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

// ----- the program -----

/// One step of a generated program. Indices (`Index`) pick among what is
/// live when the step runs.
#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: u64,
        align: u64,
        stream: Index,
    },
    /// Frees a live block on its own stream or (`other`) on another one.
    Free {
        pick: Index,
        other: Option<Index>,
    },
    /// Frees a live block with the size it was allocated with.
    FreeSized {
        pick: Index,
    },
    ScratchNew {
        capacity: u64,
        retain: u64,
    },
    ScratchAlloc {
        pick: Index,
        size: u64,
        align: u64,
    },
    ScratchReset {
        pick: Index,
        stream: Index,
    },
    ScratchDrop {
        pick: Index,
    },
    GrowNew {
        max: u64,
    },
    GrowResize {
        pick: Index,
        len: Index,
        stream: Index,
    },
    GrowDrop {
        pick: Index,
    },
    Trim,
    Collect,
    /// Emulates a kernel running on a stream: its fences stay pending.
    Hold {
        stream: Index,
    },
    /// The kernel finishes.
    Complete {
        stream: Index,
    },
    /// Sleep (contents offloaded or discarded) and wake again, on a stream;
    /// asleep, free the blocks picked and, with `drop`, a grow buffer and a
    /// scratch arena.
    SleepWake {
        offload: bool,
        stream: Index,
        frees: Vec<Index>,
        drop: bool,
    },
    Bad(Bad),
}

/// Bad input: refused with the expected error, nothing changes.
#[derive(Clone, Debug)]
enum Bad {
    ZeroSize,
    Alignment(u64),
    TooLarge(u64),
    /// A pointer outside the blocks region (below it, in the buffers region, far away).
    Foreign(Index),
    /// A pointer inside a live block, `delta` bytes past its start.
    Interior {
        pick: Index,
        delta: Index,
    },
    /// A pointer that was freed (and not handed out again).
    DoubleFree(Index),
    /// `free_sized` with one byte more than the block holds.
    WrongSize(Index),
    /// A scratch pointer from before a reset.
    StaleScratch(Index),
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        5 => 1u64..=512,
        3 => 513u64..=(32 << 10),
        2 => (32u64 << 10)..=4 * PAGE,
        1 => (1u64..=4).prop_map(|n| n * PAGE),
    ]
}

/// Sizes for programs where stitched ranges start at 2 pages: mostly
/// blocks of 2 to 8 pages, whose ranges are made, cached, taken back and
/// dissolved, among small ones, and blocks past the slabs' sizes that the
/// ends of those ranges' last pages may hold (tails).
fn size_large() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 1u64..=512,
        1 => 513u64..=PAGE,
        2 => (classes::MAX_SMALL + 1)..=(PAGE / 2 + classes::MAX_SMALL / 2),
        4 => (PAGE + 1)..=8 * PAGE,
        3 => (2u64..=8).prop_map(|n| n * PAGE),
    ]
}

fn align() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u32..=12).prop_map(|k| 1u64 << k),
        1 => Just(PAGE),
        1 => Just(2 * PAGE),
    ]
}

/// Scratch alignments: up to 4 KiB, and sometimes above the page (served
/// from the address, with padding, where it fits).
fn scratch_align() -> impl Strategy<Value = u64> {
    prop_oneof![
        12 => (0u32..=12).prop_map(|k| 1u64 << k),
        1 => Just(2 * PAGE),
        1 => Just(16 * PAGE),
    ]
}

fn bad() -> impl Strategy<Value = Bad> {
    prop_oneof![
        Just(Bad::ZeroSize),
        prop_oneof![Just(3u64), Just(24), Just(PAGE * 1024), Just(1 << 63)]
            .prop_map(Bad::Alignment),
        prop_oneof![Just(u64::MAX), Just(u64::MAX - 4096), Just((32 << 20) + 1)]
            .prop_map(Bad::TooLarge),
        any::<Index>().prop_map(Bad::Foreign),
        (any::<Index>(), any::<Index>()).prop_map(|(pick, delta)| Bad::Interior { pick, delta }),
        any::<Index>().prop_map(Bad::DoubleFree),
        any::<Index>().prop_map(Bad::WrongSize),
        any::<Index>().prop_map(Bad::StaleScratch),
    ]
}

fn op(stitching: Stitching) -> impl Strategy<Value = Op> {
    // With stitching, mostly blocks: alloc and free three times as often.
    let (size, blocks) = match stitching {
        Stitching::Default => (size().boxed(), 1),
        _ => (size_large().boxed(), 3),
    };
    prop_oneof![
        12 * blocks => (size, align(), any::<Index>())
            .prop_map(|(size, align, stream)| Op::Alloc { size, align, stream }),
        8 * blocks => (any::<Index>(), proptest::option::weighted(0.25, any::<Index>()))
            .prop_map(|(pick, other)| Op::Free { pick, other }),
        2 => any::<Index>().prop_map(|pick| Op::FreeSized { pick }),
        1 => (1u64..=8 * PAGE, 0u64..=3 * PAGE)
            .prop_map(|(capacity, retain)| Op::ScratchNew { capacity, retain }),
        4 => (any::<Index>(), 0u64..=(PAGE + PAGE / 2), scratch_align())
            .prop_map(|(pick, size, align)| Op::ScratchAlloc { pick, size, align }),
        1 => (any::<Index>(), any::<Index>())
            .prop_map(|(pick, stream)| Op::ScratchReset { pick, stream }),
        1 => any::<Index>().prop_map(|pick| Op::ScratchDrop { pick }),
        1 => (1u64..=16 * PAGE).prop_map(|max| Op::GrowNew { max }),
        3 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(pick, len, stream)| Op::GrowResize { pick, len, stream }),
        1 => any::<Index>().prop_map(|pick| Op::GrowDrop { pick }),
        1 => Just(Op::Trim),
        1 => Just(Op::Collect),
        1 => any::<Index>().prop_map(|stream| Op::Hold { stream }),
        1 => any::<Index>().prop_map(|stream| Op::Complete { stream }),
        1 => (
            any::<bool>(),
            any::<Index>(),
            prop::collection::vec(any::<Index>(), 0..4),
            any::<bool>()
        )
            .prop_map(|(offload, stream, frees, drop)| Op::SleepWake {
                offload,
                stream,
                frees,
                drop
            }),
        2 => bad().prop_map(Op::Bad),
    ]
}

// ----- the model -----

/// A live block as the model knows it.
#[derive(Clone, Copy, Debug)]
struct Block {
    id: u64,
    /// Requested size and alignment.
    size: u64,
    align: u64,
    /// Size handed out (`block_size`): the slab class or the 512-byte quantum.
    given: u64,
    /// Index into the streams it was allocated on.
    stream: usize,
    slab: bool,
}

struct ScratchModel<'a, 'd> {
    scratch: Scratch<'a, &'d Checked<HostDriver>>,
    base: DevicePtr,
    capacity: u64,
    retain: u64,
    cursor: u64,
    used: u64,
    /// Live allocations since the last reset: (pointer, size, pattern id).
    live: Vec<(ScratchPtr, u64, u64)>,
    /// Pointers from earlier generations: (pointer, its generation).
    stale: Vec<(ScratchPtr, u64)>,
    /// A reset gave part of the committed range back (see `check_trimmed`).
    partial: bool,
}

/// A block freed on a stream whose kernel is held: until that stream's
/// fence completes, its memory belongs to the stream's queued work. No other
/// stream may get it (not at this address, not through an alias of its
/// handles) and it may not be unmapped, so its bytes must stay mapped and
/// keep the block's pattern; only the same stream may reuse it at once
/// (stream order covers that).
struct InFlight {
    /// Index of the stream the free was made on.
    stream: usize,
    p: DevicePtr,
    given: u64,
    id: u64,
}

struct GrowModel<'a, 'd> {
    buf: GrowBuffer<'a, &'d Checked<HostDriver>>,
    id: u64,
    base: DevicePtr,
    partial: bool,
}

struct Model<'a, 'd> {
    arena: &'a TestArena<'d>,
    driver: &'d Checked<HostDriver>,
    base: DevicePtr,
    blocks_size: u64,
    /// Bytes of the reservation.
    reserved: u64,
    /// Where the stitch region ends (blocks of stitched ranges lie between
    /// the blocks region and this).
    stitch_end: u64,
    /// Block starts ever handed out in the stitch region: freed, their
    /// range may stay cached, and a free there is a double free.
    stitched: BTreeSet<DevicePtr>,
    streams: Vec<Stream>,
    held: Vec<bool>,
    ever_held: bool,
    /// The arena woke from a sleep: live pages came back in large handles
    /// (see `check_trimmed`).
    woken: bool,
    /// Committing is limited ([`LIMIT`]): allocations may run out of memory.
    limited: bool,
    /// A tag's layout (`bulk_streak` 0): every block's fresh pages are one
    /// large handle (see `check_trimmed`).
    large_handles: bool,
    next_id: u64,
    blocks: BTreeMap<DevicePtr, Block>,
    /// Every live range of address space handed out: start -> end.
    ranges: BTreeMap<DevicePtr, DevicePtr>,
    /// Recently freed block starts (double-free candidates).
    freed: Vec<DevicePtr>,
    /// Blocks freed on held streams, whose memory other streams must not
    /// touch yet (see [`InFlight`]).
    in_flight: Vec<InFlight>,
    scratches: Vec<ScratchModel<'a, 'd>>,
    grows: Vec<GrowModel<'a, 'd>>,
    /// The arena's mappings as the driver log shows them: va -> size.
    mappings: BTreeMap<u64, u64>,
}

impl<'a, 'd> Model<'a, 'd> {
    fn new(
        arena: &'a TestArena<'d>,
        driver: &'d Checked<HostDriver>,
        streams: Vec<Stream>,
    ) -> Self {
        let (base, size) = arena.lock().reservation();
        let regions = arena.snapshot().regions;
        let blocks_size = regions[0].size;
        assert!(blocks_size < size);
        assert_eq!(regions[1].offset, blocks_size, "the stitch region");
        let stitch_end = blocks_size + regions[1].size;
        Model {
            arena,
            driver,
            base,
            blocks_size,
            reserved: size,
            stitch_end,
            stitched: BTreeSet::new(),
            held: vec![false; streams.len()],
            streams,
            ever_held: false,
            woken: false,
            large_handles: false,
            limited: false,
            next_id: 1,
            blocks: BTreeMap::new(),
            ranges: BTreeMap::new(),
            freed: Vec::new(),
            in_flight: Vec::new(),
            scratches: Vec::new(),
            grows: Vec::new(),
            mappings: BTreeMap::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records a live range; panics if it overlaps another.
    fn claim(&mut self, start: DevicePtr, end: DevicePtr, what: &str) {
        assert!(end > start);
        if let Some((&s, &e)) = self.ranges.range(..end).next_back() {
            assert!(
                e <= start,
                "{what} {start:#x}..{end:#x} overlaps live range {s:#x}..{e:#x}"
            );
        }
        self.ranges.insert(start, end);
    }

    fn unclaim(&mut self, start: DevicePtr) {
        self.ranges.remove(&start).expect("a live range");
    }

    fn nth_block(&self, pick: &Index) -> Option<(DevicePtr, Block)> {
        if self.blocks.is_empty() {
            return None;
        }
        let i = pick.index(self.blocks.len());
        self.blocks.iter().nth(i).map(|(&p, &b)| (p, b))
    }

    fn apply(&mut self, op: &Op) {
        match op {
            &Op::Alloc {
                size,
                align,
                ref stream,
            } => self.alloc(size, align, stream.index(self.streams.len())),
            Op::Free { pick, other } => {
                let Some((p, b)) = self.nth_block(pick) else {
                    return;
                };
                let s = match other {
                    Some(o) => (b.stream + 1 + o.index(self.streams.len())) % self.streams.len(),
                    None => b.stream,
                };
                let stream = self.streams[s];
                self.free(p, b, s, |arena, p, _| arena.free(p, stream));
            }
            Op::FreeSized { pick } => {
                let Some((p, b)) = self.nth_block(pick) else {
                    return;
                };
                let stream = self.streams[b.stream];
                self.free(p, b, b.stream, |arena, p, b| {
                    arena.lock().free_sized(p, b.size, stream)
                });
            }
            &Op::ScratchNew { capacity, retain } => {
                if self.scratches.len() >= 4 {
                    return;
                }
                let scratch =
                    match Scratch::with_config(self.arena, scratch_config(capacity, retain)) {
                        Ok(s) => s,
                        Err(Error::OutOfMemory(_)) if self.limited => return,
                        Err(e) => panic!("scratch arena: {e}"),
                    };
                let base = self.new_buffer(gpu_arena::Policy::Scratch);
                assert_eq!(scratch.committed_bytes(), 0, "nothing committed up front");
                let capacity = round_up(capacity, PAGE);
                assert_eq!(scratch.reserved_bytes(), capacity);
                assert!(base.is_aligned_to(PAGE), "scratch arenas start on a page");
                self.claim(base, base.byte_add(capacity), "scratch arena");
                self.scratches.push(ScratchModel {
                    scratch,
                    base,
                    capacity,
                    retain,
                    cursor: 0,
                    used: 0,
                    live: Vec::new(),
                    stale: Vec::new(),
                    partial: false,
                });
            }
            &Op::ScratchAlloc {
                ref pick,
                size,
                align,
            } => {
                if self.scratches.is_empty() {
                    return;
                }
                let i = pick.index(self.scratches.len());
                let id = self.id();
                let m = &mut self.scratches[i];
                // Alignment is of the address: the base is only page-aligned.
                let start = round_up(m.base.addr() + m.cursor, align) - m.base.addr();
                let before = (m.scratch.allocated_bytes(), m.scratch.committed_bytes());
                let r = m.scratch.alloc_raw(size, align);
                if size == 0 {
                    let sp = r.expect("a zero-size allocation");
                    assert_eq!(
                        sp.get(&m.scratch),
                        Ok(DevicePtr::new(align)),
                        "dangling, aligned"
                    );
                    let after = (m.scratch.allocated_bytes(), m.scratch.committed_bytes());
                    assert_eq!(after, before, "zero size takes no memory");
                    return;
                }
                if start + size > m.capacity {
                    assert!(
                        matches!(r, Err(Error::ScratchFull { .. })),
                        "a full scratch arena refuses: {r:?}"
                    );
                    let after = (m.scratch.allocated_bytes(), m.scratch.committed_bytes());
                    assert_eq!(after, before);
                    return;
                }
                let sp = match r {
                    Ok(sp) => sp,
                    Err(Error::OutOfMemory(_)) if self.limited => {
                        let after = (m.scratch.allocated_bytes(), m.scratch.committed_bytes());
                        assert_eq!(
                            after, before,
                            "a refused scratch allocation changes nothing"
                        );
                        return;
                    }
                    Err(e) => panic!("scratch allocation: {e}"),
                };
                let p = sp.get(&m.scratch).expect("current generation");
                assert_eq!(p, m.base.byte_add(start), "bump order");
                assert!(p.is_aligned_to(align));
                m.cursor = start + size;
                m.used += size;
                assert_eq!(
                    m.scratch.allocated_bytes() as u64,
                    m.cursor,
                    "bytes bumped, padding included"
                );
                assert!(m.scratch.committed_bytes() >= m.cursor);
                assert!(m.scratch.committed_bytes() <= m.capacity);
                // SAFETY: fresh scratch memory of `size` bytes, host-visible.
                unsafe { fill(p, 0, size, id) };
                m.live.push((sp, size, id));
            }
            Op::ScratchReset { pick, stream } => {
                if self.scratches.is_empty() {
                    return;
                }
                let i = pick.index(self.scratches.len());
                let s = self.streams[stream.index(self.streams.len())];
                let m = &mut self.scratches[i];
                Self::verify_scratch(m);
                let before = m.scratch.committed_bytes();
                let generation = m.scratch.generation();
                m.scratch.reset_on(s);
                let keep = round_up(m.retain, PAGE).min(before);
                assert_eq!(
                    m.scratch.committed_bytes(),
                    keep,
                    "reset keeps `retain` committed"
                );
                m.partial |= keep < before;
                assert_eq!(m.scratch.generation(), generation + 1);
                assert_eq!(m.scratch.allocated_bytes(), 0);
                for (sp, _, _) in m.live.drain(..) {
                    m.stale.push((sp, generation));
                }
                m.stale.truncate(8);
                m.cursor = 0;
                m.used = 0;
            }
            Op::ScratchDrop { pick } => {
                if self.scratches.is_empty() {
                    return;
                }
                let m = self.scratches.swap_remove(pick.index(self.scratches.len()));
                Self::verify_scratch(&m);
                self.unclaim(m.base);
            }
            &Op::GrowNew { max } => {
                if self.grows.len() >= 4 {
                    return;
                }
                let buf = match GrowBuffer::with_max(self.arena, max) {
                    Ok(b) => b,
                    Err(Error::OutOfMemory(_)) if self.limited => return,
                    Err(e) => panic!("grow buffer: {e}"),
                };
                let base = buf.as_ptr();
                assert_eq!(self.new_buffer(gpu_arena::Policy::Grow), base);
                assert_eq!(buf.max(), round_up(max, PAGE));
                assert_eq!((buf.len(), buf.committed()), (0, 0));
                self.claim(base, base.byte_add(buf.max()), "grow buffer");
                let id = self.id();
                self.grows.push(GrowModel {
                    buf,
                    id,
                    base,
                    partial: false,
                });
            }
            Op::GrowResize { pick, len, stream } => {
                if self.grows.is_empty() {
                    return;
                }
                let s = self.streams[stream.index(self.streams.len())];
                let i = pick.index(self.grows.len());
                let g = &mut self.grows[i];
                let (old, max, committed) = (g.buf.len(), g.buf.max(), g.buf.committed());
                let len = len.index((max + PAGE / 2) as usize + 1) as u64;
                let r = g.buf.resize_on(len, s);
                if len > max {
                    assert_eq!(
                        r,
                        Err(Error::GrowBeyondMax {
                            requested: len,
                            max
                        })
                    );
                    assert_eq!((g.buf.len(), g.buf.committed()), (old, committed));
                    return;
                }
                match r {
                    Ok(()) => {}
                    Err(Error::OutOfMemory(_)) if self.limited => {
                        assert_eq!(
                            (g.buf.len(), g.buf.committed()),
                            (old, committed),
                            "a refused resize changes nothing"
                        );
                        return;
                    }
                    Err(e) => panic!("resize within the maximum: {e}"),
                }
                assert_eq!(g.buf.as_ptr(), g.base, "the base never moves");
                assert_eq!(g.buf.len(), len);
                assert_eq!(g.buf.committed(), round_up(len, PAGE));
                g.partial |= g.buf.committed() < committed;
                // SAFETY: `0..len` of the buffer is committed, host-visible memory.
                unsafe {
                    assert!(
                        intact(g.base, 0, old.min(len), g.id),
                        "grow buffer contents kept across resize {old} -> {len}"
                    );
                    fill(g.base, old.min(len), len, g.id);
                }
            }
            Op::GrowDrop { pick } => {
                if self.grows.is_empty() {
                    return;
                }
                let g = self.grows.swap_remove(pick.index(self.grows.len()));
                // SAFETY: as above.
                assert!(unsafe { intact(g.base, 0, g.buf.len(), g.id) });
                self.unclaim(g.base);
            }
            Op::Trim => {
                self.arena.trim();
                self.sync_mappings();
                if !self.held.iter().any(|&h| h) {
                    self.check_trimmed();
                }
            }
            Op::Collect => {
                self.arena.lock().collect();
            }
            Op::SleepWake {
                offload,
                stream,
                frees,
                drop,
            } => self.sleep_wake(*offload, stream.index(self.streams.len()), frees, *drop),
            Op::Hold { stream } => {
                let i = stream.index(self.streams.len());
                self.driver.inner().hold(self.streams[i]);
                self.held[i] = true;
                self.ever_held = true;
            }
            Op::Complete { stream } => {
                let i = stream.index(self.streams.len());
                self.driver.inner().complete(self.streams[i]);
                self.held[i] = false;
                self.in_flight.retain(|f| f.stream != i);
            }
            Op::Bad(bad) => self.bad(bad),
        }
    }

    /// The base of the buffer of `policy` that the model does not know yet.
    fn new_buffer(&self, policy: gpu_arena::Policy) -> DevicePtr {
        let snap = self.arena.snapshot();
        let mut fresh = snap.blocks.iter().filter(|b| {
            b.policy == policy && !self.ranges.contains_key(&self.base.byte_add(b.offset))
        });
        let b = fresh.next().expect("the new buffer in the snapshot");
        assert!(fresh.next().is_none());
        self.base.byte_add(b.offset)
    }

    fn alloc(&mut self, size: u64, align: u64, stream: usize) {
        // The stream may reuse what it freed itself at once, through any
        // address: its own in-flight blocks are no longer checked.
        self.in_flight.retain(|f| f.stream != stream);
        let p = match self.arena.alloc(size, align, self.streams[stream]) {
            Ok(p) => p,
            // Programs of large blocks can fill the blocks region (16 MiB
            // here); a block that cannot go to a stitched range is then
            // refused, and nothing changes (checked after the op).
            Err(Error::AddressSpace { .. }) if self.blocks_region_live() > self.blocks_size / 4 => {
                return;
            }
            // Under the limit, after the out-of-memory ladder (idle memory
            // given back, fences waited on): refused, nothing live changed.
            Err(Error::OutOfMemory(_)) if self.limited => return,
            Err(e) => panic!("alloc({size}, {align}): {e}"),
        };
        assert!(p.is_aligned_to(align), "alignment {align} of {p:#x}");
        // In the blocks region, or (a large block) in a stitched range.
        let end = if p >= self.base.byte_add(self.blocks_size) {
            assert!(
                classes::class_for(size, align).is_none(),
                "a slab object in a stitched range"
            );
            if p.is_aligned_to(PAGE) {
                self.stitched.insert(p);
            } else {
                // A tail block: in the last page of a live stitched block
                // of its stream, past that block's end.
                let page = DevicePtr::new(p.addr() & !(PAGE - 1));
                let host = self
                    .blocks
                    .range(..page)
                    .next_back()
                    .or_else(|| self.blocks.get_key_value(&page))
                    .filter(|&(&s, b)| {
                        self.stitched.contains(&s)
                            && b.stream == stream
                            && s.byte_add(b.given) <= p
                            && (s.addr() + b.given - 1) & !(PAGE - 1) == page.addr()
                    });
                assert!(
                    host.is_some(),
                    "{p:#x}: a tail block past a live stitched block's end"
                );
                assert!(
                    (p.addr() + size - 1) & !(PAGE - 1) == page.addr(),
                    "a tail block lies in one page"
                );
            }
            self.stitch_end
        } else {
            self.blocks_size
        };
        assert!(p >= self.base && p.byte_add(size) <= self.base.byte_add(end));
        let given = self.arena.lock().block_size(p).expect("a live block");
        let slab = match classes::class_for(size, align) {
            Some(c) => {
                assert_eq!(
                    given,
                    classes::SIZES[c] as u64,
                    "slab class of {size}/{align}"
                );
                true
            }
            None => {
                assert_eq!(given, round_up(size, 512), "large span of {size}");
                false
            }
        };
        let id = self.id();
        // SAFETY: a fresh block of `given` bytes, host-visible.
        unsafe { fill(p, 0, given, id) };
        self.claim(p, p.byte_add(given), "block");
        self.freed.retain(|&f| f != p);
        self.blocks.insert(
            p,
            Block {
                id,
                size,
                align,
                given,
                stream,
                slab,
            },
        );
    }

    /// Sleeps and wakes the arena: asleep it holds no device memory (an
    /// offload keeps the contents in staged host memory), refuses
    /// allocations and serves frees (the blocks picked by `frees`, and with
    /// `drop` a grow buffer, a scratch arena and a reset of another),
    /// exactly accounted; awake, every block, scratch allocation and buffer
    /// still live is at its address again, with its contents (offload) or
    /// zeroed (discard, then filled again for the checks that follow), and
    /// what was freed asleep was not recommitted (the step's check: physical
    /// bytes = committed + staged).
    /// Sleep waits for the streams' work: skipped while a kernel is held.
    fn sleep_wake(&mut self, offload: bool, stream: usize, frees: &[Index], drop: bool) {
        if self.held.iter().any(|&h| h) {
            return;
        }
        let mode = if offload {
            SleepMode::Offload
        } else {
            SleepMode::Discard
        };
        let stream = self.streams[stream];
        let before = self.arena.stats();
        let r = self.arena.lock().sleep(mode, stream).expect("sleep");
        {
            let a = self.arena.lock();
            assert!(a.is_asleep());
            let s = a.stats();
            assert_eq!((s.committed, s.live), (0, before.live), "asleep: {s:?}");
        }
        assert_eq!(r.bytes, before.committed, "every committed byte goes back");
        assert_eq!(
            self.driver.physical_bytes(),
            self.arena.stats().staged,
            "asleep, only the staged contents are held"
        );
        assert!(self.arena.stats().staged >= r.copied);
        assert!(matches!(
            self.arena.alloc(64, 8, stream),
            Err(Error::Asleep { .. })
        ));
        let freed = self.free_asleep(frees, drop);
        let w = self.arena.lock().wake(stream).expect("wake");
        self.woken = true;
        if freed {
            assert!(w.copied <= r.copied, "only what stays live comes back");
        } else {
            assert_eq!(w.copied, r.copied, "the staged contents come back");
            assert_eq!(self.arena.stats().live, before.live);
        }
        self.sync_mappings();
        if offload {
            self.verify_all();
            return;
        }
        // Discarded: every live byte reads zero; fill the patterns again.
        for (&p, b) in &self.blocks {
            // SAFETY: a live block of `given` bytes, host-visible.
            unsafe {
                assert!(intact_zero(p, b.given), "discarded block {p:#x} reads zero");
                fill(p, 0, b.given, b.id);
            }
        }
        for m in &self.scratches {
            for &(sp, size, id) in &m.live {
                let p = sp.get(&m.scratch).expect("current generation");
                // SAFETY: a live scratch allocation of `size` bytes.
                unsafe { fill(p, 0, size, id) };
            }
        }
        for g in &self.grows {
            // SAFETY: `0..len` of the buffer is committed.
            unsafe { fill(g.base, 0, g.buf.len(), g.id) };
        }
    }

    /// The live bytes the model knows: blocks (as handed out), grow
    /// buffers' lengths, scratch arenas' bumped bytes (read from cursors).
    fn modelled_live(&self) -> (u64, u64, u64) {
        let given = self.blocks.values().map(|b| b.given).sum();
        let grown = self.grows.iter().map(|g| g.buf.len()).sum();
        let bumped = self
            .scratches
            .iter()
            .map(|m| m.scratch.allocated_bytes() as u64)
            .sum();
        (given, grown, bumped)
    }

    /// Frees, while asleep, the blocks `frees` picks (no contents to check:
    /// nothing is mapped) and with `drop` a grow buffer and a scratch arena
    /// (of two or more), and resets a scratch arena; the stats follow at
    /// once. Returns whether anything was freed.
    fn free_asleep(&mut self, frees: &[Index], drop: bool) -> bool {
        let mut any = false;
        for (k, pick) in frees.iter().enumerate() {
            let Some((p, b)) = self.nth_block(pick) else {
                break;
            };
            let stream = self.streams[b.stream];
            let r = if k % 2 == 0 {
                self.arena.free(p, stream)
            } else {
                self.arena.lock().free_sized(p, b.size, stream)
            };
            r.unwrap_or_else(|e| panic!("free of {p:#x} ({b:?}) while asleep: {e}"));
            self.blocks.remove(&p);
            self.unclaim(p);
            self.freed.push(p);
            any = true;
        }
        if drop {
            if let Some(g) = self.grows.pop() {
                self.unclaim(g.base);
                any = true;
            }
            if self.scratches.len() > 1 {
                let m = self.scratches.pop().expect("two or more");
                self.unclaim(m.base);
                any = true;
            }
            // A reset asleep forgets the allocations and keeps the pages as
            // they are (given back after the wake, once reset again).
            if let Some(m) = self.scratches.first_mut() {
                let (committed, generation) = (m.scratch.committed_bytes(), m.scratch.generation());
                m.scratch.reset();
                assert_eq!(
                    m.scratch.committed_bytes(),
                    committed,
                    "asleep, nothing changes"
                );
                assert_eq!(m.scratch.generation(), generation + 1);
                for (sp, _, _) in m.live.drain(..) {
                    m.stale.push((sp, generation));
                }
                m.stale.truncate(8);
                m.cursor = 0;
                m.used = 0;
                any = true;
            }
        }
        let s = self.arena.stats();
        let (given, grown, bumped) = self.modelled_live();
        assert_eq!(s.live, given + grown + bumped, "asleep: {s:?}");
        assert_eq!(s.committed, 0, "asleep, frees commit nothing");
        assert_eq!(self.driver.physical_bytes(), s.staged);
        self.arena.lock().check_invariants();
        any
    }

    /// Bytes of the live ranges the model knows in the blocks region.
    fn blocks_region_live(&self) -> u64 {
        let end = self.base.byte_add(self.blocks_size);
        self.ranges
            .range(..end)
            .map(|(&s, &e)| e.addr().min(end.addr()) - s.addr())
            .sum()
    }

    /// Frees block `b` at `p` on stream index `on` through `f`.
    fn free(
        &mut self,
        p: DevicePtr,
        b: Block,
        on: usize,
        f: impl FnOnce(&TestArena<'d>, DevicePtr, Block) -> gpu_arena::Result<()>,
    ) {
        // SAFETY: the block is live.
        let kept = unsafe { intact(p, 0, b.given, b.id) };
        assert!(
            kept,
            "block {p:#x} ({b:?}) kept its contents until its free"
        );
        f(self.arena, p, b).unwrap_or_else(|e| panic!("free of {p:#x} ({b:?}): {e}"));
        self.blocks.remove(&p);
        self.unclaim(p);
        self.freed.push(p);
        if self.freed.len() > 16 {
            self.freed.remove(0);
        }
        if self.held[on] {
            self.in_flight.push(InFlight {
                stream: on,
                p,
                given: b.given,
                id: b.id,
            });
        }
    }

    /// Every block freed on a stream still held is mapped and keeps its
    /// pattern: nothing else got its memory before the stream's fence.
    fn verify_in_flight(&self) {
        for f in &self.in_flight {
            let (lo, hi) = (f.p.addr(), f.p.addr() + f.given);
            // The mappings over `lo..hi`, which must cover it without a gap.
            let mut at = lo;
            if let Some((&va, &size)) = self.mappings.range(..=lo).next_back() {
                if va + size > lo {
                    at = va + size;
                }
            }
            for (&va, &size) in self.mappings.range(lo + 1..hi) {
                if va > at {
                    break;
                }
                at = at.max(va + size);
            }
            assert!(
                at >= hi,
                "block {lo:#x}+{} freed on held stream {} was unmapped before its fence",
                f.given,
                f.stream
            );
            // SAFETY: the range is mapped (above) and host-visible; the
            // arena may hand it only to the same stream, whose allocations
            // drop its entries first.
            let kept = unsafe { intact(f.p, 0, f.given, f.id) };
            assert!(
                kept,
                "block {lo:#x}+{} freed on held stream {} was reused by another stream before its fence",
                f.given, f.stream
            );
        }
    }

    fn verify_scratch(m: &ScratchModel<'_, '_>) {
        for &(sp, size, id) in &m.live {
            let p = sp.get(&m.scratch).expect("current generation");
            // SAFETY: a live scratch allocation of `size` bytes.
            assert!(unsafe { intact(p, 0, size, id) }, "scratch {p:#x} kept");
        }
    }

    fn verify_all(&self) {
        for (&p, b) in &self.blocks {
            // SAFETY: the block is live.
            let kept = unsafe { intact(p, 0, b.given, b.id) };
            assert!(kept, "block {p:#x} {b:?} kept");
        }
        for m in &self.scratches {
            Self::verify_scratch(m);
        }
        for g in &self.grows {
            // SAFETY: `0..len` of the buffer is committed.
            assert!(unsafe { intact(g.base, 0, g.buf.len(), g.id) });
        }
    }

    /// Bad input: the expected error, and nothing changes.
    fn bad(&mut self, bad: &Bad) {
        let stream = self.streams[0];
        let before = self.arena.stats();
        let (r, want): (gpu_arena::Result<()>, fn(&Error) -> bool) = match bad {
            Bad::ZeroSize => (self.arena.alloc(0, 8, stream).map(drop), |e| {
                *e == Error::ZeroSize
            }),
            &Bad::Alignment(align) => (self.arena.alloc(64, align, stream).map(drop), |e| {
                matches!(e, Error::BadAlignment { .. })
            }),
            &Bad::TooLarge(size) => (self.arena.alloc(size, 8, stream).map(drop), |e| {
                matches!(e, Error::TooLarge { .. })
            }),
            Bad::Foreign(which) => {
                let p = match which.index(5) {
                    0 => DevicePtr::new(self.base.addr().wrapping_sub(PAGE)),
                    // The stitch region's start, when no stitched range is there.
                    1 if self
                        .ranges
                        .contains_key(&self.base.byte_add(self.blocks_size)) =>
                    {
                        return;
                    }
                    1 => self.base.byte_add(self.blocks_size),
                    2 => DevicePtr::new(0x1000),
                    3 => DevicePtr::new(u64::MAX - 7),
                    // Inside a live scratch arena: refused as scratch memory.
                    i => match self.scratches.get(i % self.scratches.len().max(1)) {
                        Some(m) => m.base.byte_add(m.cursor / 2),
                        None => DevicePtr::new(0x1000),
                    },
                };
                let scratch = self
                    .scratches
                    .iter()
                    .any(|m| (m.base..m.base.byte_add(m.capacity)).contains(&p));
                let r = self.arena.free(p, stream);
                let kind = if scratch {
                    BadPointer::Scratch
                } else {
                    BadPointer::Foreign
                };
                // A freed stitched block's start: its range may be cached.
                let freed_here = self.stitched.contains(&p);
                assert!(
                    matches!(r, Err(Error::BadPointer { kind: k, .. })
                        if k == kind || (freed_here && k == BadPointer::DoubleFree)),
                    "free({p:#x}): {r:?}, expected {kind:?}"
                );
                (r, |_| true)
            }
            Bad::Interior { pick, delta } => {
                let Some((p, b)) = self.nth_block(pick) else {
                    return;
                };
                if b.given < 2 {
                    return;
                }
                let q = p.byte_add(1 + delta.index(b.given as usize - 1) as u64);
                (self.arena.free(q, stream), |e| {
                    matches!(
                        e,
                        Error::BadPointer {
                            kind: BadPointer::Interior,
                            ..
                        }
                    )
                })
            }
            Bad::DoubleFree(pick) => {
                if self.freed.is_empty() {
                    return;
                }
                let p = self.freed[pick.index(self.freed.len())];
                assert!(!self.blocks.contains_key(&p));
                let inside = self
                    .blocks
                    .range(..p)
                    .next_back()
                    .is_some_and(|(&s, b)| p < s.byte_add(b.given));
                let r = self.arena.free(p, stream);
                if inside {
                    (r, |e| {
                        matches!(
                            e,
                            Error::BadPointer {
                                kind: BadPointer::Interior,
                                ..
                            }
                        )
                    })
                } else if p >= self.base.byte_add(self.blocks_size) {
                    // A stitched block's start, in no live block: its range
                    // cached, dissolved since, or another range made over it
                    // (p past that range's block, or the block freed too);
                    // foreign once the region's top fell below it.
                    (r, |e| {
                        matches!(
                            e,
                            Error::BadPointer {
                                kind: BadPointer::DoubleFree | BadPointer::Foreign,
                                ..
                            }
                        )
                    })
                } else {
                    // In a slab span reused by another class, a freed start
                    // can fall between objects: that is reported as interior.
                    (r, |e| {
                        matches!(
                            e,
                            Error::BadPointer {
                                kind: BadPointer::DoubleFree | BadPointer::Interior,
                                ..
                            }
                        )
                    })
                }
            }
            Bad::WrongSize(pick) => {
                let Some((p, b)) = self.nth_block(pick) else {
                    return;
                };
                (self.arena.lock().free_sized(p, b.given + 1, stream), |e| {
                    matches!(
                        e,
                        Error::BadPointer {
                            kind: BadPointer::LayoutMismatch,
                            ..
                        }
                    )
                })
            }
            Bad::StaleScratch(pick) => {
                let Some(m) = self.scratches.iter().find(|m| !m.stale.is_empty()) else {
                    return;
                };
                let (sp, generation) = m.stale[pick.index(m.stale.len())];
                assert_eq!(
                    sp.get(&m.scratch),
                    Err(Error::StaleScratch {
                        used: generation,
                        current: m.scratch.generation()
                    })
                );
                return;
            }
        };
        match r {
            Err(ref e) if want(e) => {}
            other => panic!("{bad:?}: got {other:?}"),
        }
        assert_eq!(self.arena.stats(), before, "{bad:?} changed the stats");
    }

    /// Applies the driver log to the model of the arena's mappings.
    fn sync_mappings(&mut self) {
        // Only the reservation's: an offload's staged host memory is mapped
        // elsewhere (and counted in `Stats::staged`).
        let (lo, hi) = (self.base.addr(), self.base.addr() + self.reserved);
        for e in self.driver.take_log() {
            if matches!(e.op, Call::Map | Call::Unmap) && (e.va < lo || e.va >= hi) {
                continue;
            }
            match (e.op, e.ok) {
                (Call::Map, true) => {
                    assert!(self.mappings.insert(e.va, e.size).is_none());
                }
                // A wait (the out-of-memory ladder's last resort) completes
                // a held stream's fences: its in-flight blocks are free to go.
                (Call::Wait, true) => self.in_flight.clear(),
                (Call::Unmap, true) => {
                    // One unmap removes whole mappings, maybe several
                    // adjacent ones, never part of one.
                    let inside: Vec<(u64, u64)> = self
                        .mappings
                        .range(e.va..e.va + e.size)
                        .map(|(&va, &size)| (va, size))
                        .collect();
                    let covered: u64 = inside.iter().map(|m| m.1).sum();
                    assert_eq!(covered, e.size, "unmap of whole adjacent mappings");
                    for (va, _) in inside {
                        self.mappings.remove(&va);
                    }
                }
                _ => {}
            }
        }
    }

    /// Pages (indices from the reservation base) that hold live bytes
    /// according to the model.
    fn live_pages(&self) -> BTreeSet<u64> {
        let mut pages = BTreeSet::new();
        // `len` bytes at `at`, by their offsets from the base.
        let mut add = |at: DevicePtr, len: u64| {
            let from = at.offset_from(self.base);
            if len > 0 {
                for p in from / PAGE..=(from + len - 1) / PAGE {
                    pages.insert(p);
                }
            }
        };
        for (&p, b) in &self.blocks {
            if b.slab {
                let span = classes::slab_bytes(classes::class_of(b.given));
                let start = self.base.byte_add(p.offset_from(self.base) & !(span - 1));
                add(start, span);
            } else {
                add(p, b.given);
            }
        }
        for m in &self.scratches {
            add(m.base, m.scratch.committed_bytes());
        }
        for g in &self.grows {
            add(g.base, g.buf.committed());
        }
        pages
    }

    /// The bound on committed memory after `trim()` with no stream held.
    ///
    /// (A) Always: the physical memory the arena still holds is covered by
    ///     the mappings that hold live bytes (a handle may also stay mapped
    ///     at other, empty addresses while a live block uses it: aliases
    ///     hold no memory of their own). No idle handle survives a trim.
    /// (B) When no stream was ever held in this program, the arena never
    ///     woke from a sleep, blocks get one handle per page (not a tag's
    ///     layout), and no live scratch arena or grow buffer gave
    ///     back part of its committed range (a reset below the committed
    ///     size, a shrink): every committed page
    ///     holds live bytes, i.e.
    ///
    ///     committed <= PAGE * |live pages|,
    ///
    ///     where the live pages are the pages touched by
    ///     - a live large block: `ptr .. ptr + block_size(ptr)`;
    ///     - the slab span of a live slab object: the `slab_bytes(class)`
    ///       bytes aligned to their size (from the reservation base) around it;
    ///     - the committed prefix of a scratch arena or grow buffer.
    ///
    /// Why (B) has exceptions: a driver cannot unmap part of a mapping, so a
    /// handle that a shrink, a reset, or a same-stream reuse while its fence
    /// was pending left partly live keeps its empty pages until it empties
    /// completely; so does a handle a wake made (a wake recommits the live
    /// pages in large handles, since sleep and wake cost per handle), and
    /// in a tag's layout a block's handle that a smaller block took again
    /// in part, or one stretched past the top (`growth_ahead`). (A) still
    /// holds then.
    fn check_trimmed(&self) {
        let s = self.arena.stats();
        let pages = self.live_pages();
        let mut live_mapped = 0;
        for (&va, &size) in &self.mappings {
            let from = va - self.base.addr();
            let (a, b) = (from / PAGE, (from + size - 1) / PAGE);
            if pages.range(a..=b).next().is_some() {
                live_mapped += size;
            }
        }
        assert!(
            s.committed <= live_mapped,
            "(A) committed {} > {live_mapped} bytes of mappings holding live bytes after trim: {s:?}",
            s.committed
        );
        let partial =
            self.scratches.iter().any(|m| m.partial) || self.grows.iter().any(|g| g.partial);
        if !self.ever_held && !partial && !self.woken && !self.large_handles {
            assert!(
                s.committed <= PAGE * pages.len() as u64,
                "(B) committed {} > {} live pages of {PAGE} after trim: {s:?}",
                s.committed,
                pages.len()
            );
        }
        assert_eq!(
            s.pending_decommit, 0,
            "trim gave back every completed candidate"
        );
    }

    /// Checks after every op.
    fn check(&mut self, full: bool) {
        self.sync_mappings();
        let s: Stats = {
            let a = self.arena.lock();
            a.check_invariants();
            for (&p, b) in &self.blocks {
                assert_eq!(a.block_size(p), Some(b.given), "block {p:#x} size");
                assert!(p.is_aligned_to(b.align));
            }
            a.stats()
        };
        assert!(s.committed >= s.live, "committed >= live: {s:?}");
        let (given, grown, bumped) = self.modelled_live();
        let slab = self.blocks.values().filter(|b| b.slab).count() as u64;
        assert_eq!(s.slab.blocks, slab);
        assert_eq!(s.large.blocks, self.blocks.len() as u64 - slab);
        assert_eq!(s.slab.bytes + s.large.bytes, given, "blocks' live bytes");
        assert_eq!(
            s.grow.bytes, grown,
            "grow buffers' live bytes = their lengths"
        );
        // Scratch arenas' bytes are read from their cursors: exact.
        assert_eq!(s.scratch.bytes, bumped, "scratch live = bytes bumped");
        let modelled: u64 = self.scratches.iter().map(|m| m.cursor).sum();
        assert_eq!(bumped, modelled, "the model's cursors");
        assert_eq!(s.live, given + grown + bumped);
        assert_eq!(s.scratch.blocks, self.scratches.len() as u64);
        assert_eq!(s.grow.blocks, self.grows.len() as u64);
        // A handle may be mapped at several addresses, or at none while it
        // waits idle for reuse; its memory counts once.
        // Pinned host memory kept for the next offload counts as staged.
        assert_eq!(
            self.driver.physical_bytes(),
            s.committed + s.staged,
            "committed + staged = physical bytes"
        );
        assert_eq!(s.mappings, self.mappings.len() as u64, "mappings");
        self.verify_in_flight();
        if full {
            self.verify_all();
        }
    }

    /// Frees everything (checking contents), completes every stream, trims.
    fn finish(mut self) {
        if std::env::var_os("GA_DBG").is_some() {
            eprintln!("DBGSTITCH {:?}", self.arena.stats().stitch);
        }
        self.verify_all();
        for i in 0..self.streams.len() {
            self.driver.inner().complete(self.streams[i]);
            self.held[i] = false;
        }
        self.in_flight.clear();
        while let Some(m) = self.scratches.pop() {
            self.unclaim(m.base);
        }
        while let Some(g) = self.grows.pop() {
            self.unclaim(g.base);
        }
        while let Some((&p, &b)) = self.blocks.iter().next() {
            let s = self.streams[b.stream];
            self.free(p, b, b.stream, |arena, p, _| arena.free(p, s));
        }
        self.check(false);
        self.arena.trim();
        self.sync_mappings();
        let s = self.arena.stats();
        assert_eq!(
            (s.live, s.committed, s.handles),
            (0, 0, 0),
            "all given back: {s:?}"
        );
        assert!(self.mappings.is_empty());
    }
}

/// How large blocks may be placed: the default (stitched ranges from 1 MiB,
/// larger than any block here), or stitched ranges from 2 pages, with or
/// without their repair (from 4 pages).
#[derive(Clone, Copy, Debug)]
enum Stitching {
    Default,
    From2Pages,
    From2PagesRepaired,
}

/// Runs one program on a fresh checked driver, then checks the driver saw
/// everything given back.
/// The commit limit of programs that run out of memory: 48 pages.
const LIMIT: u64 = 48 * PAGE;

/// `tag_layout`: the settings the global arenas give a tag's arenas
/// (`bulk_streak` 0: large handles for every block's fresh pages);
/// `keep_empty_slabs`: [`ArenaConfig::keep_empty_slabs`] (off, slabs come
/// and go with their objects); `tails`: [`ArenaConfig::tails`] (`Always`
/// puts every block a tail holds there, so that tails fill, drain and
/// close in many programs).
fn run(
    kind: Kind,
    streams: usize,
    stitching: Stitching,
    limited: bool,
    tag_layout: bool,
    (keep_empty_slabs, tails): (bool, TailUse),
    ops: &[Op],
) {
    let driver = host(256 << 20);
    driver.enable_log();
    let streams: Vec<Stream> = (0..streams)
        .map(|_| driver.create_stream().expect("stream"))
        .collect();
    let mut cfg = config();
    if !matches!(stitching, Stitching::Default) {
        cfg.commit.stitch_min = 2 * PAGE;
        cfg.commit.stitch_repair = matches!(stitching, Stitching::From2PagesRepaired);
        // Ranges of 4 pages and more may be repaired (64 MiB by default).
        cfg.commit.stitch_repair_min = 4 * PAGE;
    }
    if limited {
        cfg.commit.limit = LIMIT;
    }
    if tag_layout {
        cfg.commit.bulk_streak = 0;
    }
    cfg.keep_empty_slabs = keep_empty_slabs;
    cfg.tails = tails;
    {
        let arena = SharedArena::new(&driver, kind, cfg).expect("arena");
        let mut model = Model::new(&arena, &driver, streams);
        model.limited = limited;
        model.large_handles = tag_layout;
        for (i, op) in ops.iter().enumerate() {
            model.apply(op);
            model.check(i % 8 == 7);
        }
        model.finish();
    }
    assert_balanced(&driver);
}

pub(crate) fn cases() -> u32 {
    std::env::var("GPU_ARENA_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// `cases` programs from a fixed seed, so that a run of the tests gives the
/// same programs every time (CI stays reproducible):
/// `GPU_ARENA_PROPTEST_SEED` sets another seed, or `random` a fresh one per
/// run to look further. Failing seeds are still saved in
/// `tests/proptest-regressions/` and run first.
pub(crate) fn proptest_config(cases: u32) -> ProptestConfig {
    use proptest::test_runner::RngSeed;
    let seed = match std::env::var("GPU_ARENA_PROPTEST_SEED").ok().as_deref() {
        Some("random") => RngSeed::Random,
        Some(v) => RngSeed::Fixed(v.parse().expect("GPU_ARENA_PROPTEST_SEED: a u64 or random")),
        None => RngSeed::Fixed(0x6172_656e_615f_6d6f),
    };
    ProptestConfig {
        cases,
        rng_seed: seed,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config(cases()))]

    #[test]
    fn arena_follows_the_model(
        kind in prop_oneof![Just(Kind::Device(0)), Just(Kind::PinnedHost)],
        streams in 1usize..=3,
        limited in proptest::bool::weighted(0.25),
        tag_layout in proptest::bool::weighted(0.25),
        keep_empty_slabs in proptest::bool::weighted(0.75),
        tails in prop_oneof![
            2 => Just(TailUse::Costly),
            1 => Just(TailUse::Always),
            1 => Just(TailUse::Off),
        ],
        (stitching, ops) in prop_oneof![
            2 => Just(Stitching::Default),
            1 => Just(Stitching::From2Pages),
            1 => Just(Stitching::From2PagesRepaired),
        ]
        .prop_flat_map(|s| (Just(s), proptest::collection::vec(op(s), 1..256))),
    ) {
        run(kind, streams, stitching, limited, tag_layout, (keep_empty_slabs, tails), &ops);
    }
}

// ----- stream semantics, step by step -----

/// Whether the driver's range `va..va + size` overlaps `len` bytes at `start`.
fn overlaps(va: u64, size: u64, start: DevicePtr, len: u64) -> bool {
    let start = start.addr();
    va < start + len && start < va + size
}

/// A block freed on stream S while S runs a kernel is reused at once by S
/// (stream order makes that safe), not by stream T until S's fence
/// completed; its pages are not unmapped before that fence completed, and
/// are once it did.
#[test]
fn freed_on_a_running_stream_reused_by_that_stream_only_and_unmapped_after_its_fence() {
    let driver = host(256 << 20);
    let s = driver.create_stream().unwrap();
    let t = driver.create_stream().unwrap();
    {
        let mut arena = Arena::new(&driver, Kind::Device(0), config()).unwrap();
        let size = 4 * PAGE;
        // The first block of the region: page-aligned, one run of 4 pages.
        let a = arena.alloc_on(size, 512, s).unwrap();
        assert_eq!(a, arena.reservation().0);
        let guard = arena.alloc_on(PAGE, 512, s).unwrap();
        assert_eq!(guard, a.byte_add(size), "packed");
        // One slab per stream, placed now (a slab placed while S runs could
        // take a's pages: S may reuse its own frees at once).
        let x = arena.alloc_on(100, 8, s).unwrap();
        let y0 = arena.alloc_on(100, 8, t).unwrap();
        driver.inner().hold(s);
        driver.enable_log();

        arena.free_on(a, s).unwrap();
        let b = arena.alloc_on(size, 512, s).unwrap();
        assert_eq!(b, a, "S reuses its own free at once");
        arena.free_on(b, s).unwrap();

        let c = arena.alloc_on(size, 512, t).unwrap();
        assert!(
            !overlaps(c.addr(), size, a, size),
            "T must not get S's pending block"
        );
        // Small blocks: S's slab object is reused by S at once (LIFO); T
        // takes one from its own slab.
        arena.free_on(x, s).unwrap();
        assert_eq!(arena.alloc_on(100, 8, s).unwrap(), x);
        let y = arena.alloc_on(100, 8, t).unwrap();
        assert_ne!(y, x);
        assert_eq!(arena.stats().slab.blocks, 3);

        arena.trim();
        arena.collect();
        let st = arena.stats();
        assert_eq!(st.pending_decommit, size, "a's pages wait for S's fence");
        assert_eq!(st.reclaimable, 0);
        assert!(st.pending_fences >= 1, "{st:?}");
        let log = driver.take_log();
        assert!(
            !log.iter()
                .any(|e| e.op == Call::Unmap && overlaps(e.va, e.size, a, size)),
            "nothing of a's range unmapped while S runs: {log:?}"
        );
        assert!(
            !log.iter().any(|e| e.op == Call::Wait),
            "trim and collect never wait"
        );
        // Still pending: T again cannot take it.
        let d = arena.alloc_on(size, 512, t).unwrap();
        assert!(!overlaps(d.addr(), size, a, size));

        driver.inner().complete(s);
        arena.trim();
        let log = driver.take_log();
        let unmapped: u64 = log
            .iter()
            .filter(|e| e.op == Call::Unmap && e.ok && overlaps(e.va, e.size, a, size))
            .map(|e| e.size)
            .sum();
        assert_eq!(
            unmapped, size,
            "a's pages are unmapped once S's fence completed: {log:?}"
        );
        assert_eq!(arena.stats().pending_decommit, 0);
        let e = arena.alloc_on(size, 512, t).unwrap();
        assert_eq!(e, a, "after the fence, T reuses the lowest fitting span");
        arena.check_invariants();
        for p in [guard, c, d, e, x, y, y0] {
            arena.free(p).unwrap();
        }
        arena.check_invariants();
    }
    assert_balanced(&driver);
}

/// A small block freed on another stream than the one it was allocated on
/// waits for that stream's fence, and trim records the fence: the slab
/// is given back (regression: the fence was never recorded, so the slab
/// stayed committed forever).
#[test]
fn cross_stream_small_frees_are_reclaimed() {
    let driver = host(256 << 20);
    let s1 = driver.create_stream().unwrap();
    let s2 = driver.create_stream().unwrap();
    {
        let mut arena = Arena::new(&driver, Kind::Device(0), config()).unwrap();
        for _ in 0..20_000 {
            let p = arena.alloc_on(100, 8, s1).unwrap();
            arena.free_on(p, s2).unwrap();
        }
        let st = arena.stats();
        assert!(st.committed <= 2 * PAGE, "one slab serves the loop: {st:?}");
        arena.trim();
        assert_eq!(arena.stats().committed, 0);
        arena.check_invariants();
    }
    assert_balanced(&driver);
}
