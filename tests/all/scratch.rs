//! `Scratch` tried as a `bumpalo::Bump` user would: bumpalo's test ideas
//! (its quickcheck properties: alignment, no overlap, contents survive,
//! reset reuses; allocation limits; huge and zero sizes; chunks) against a
//! scratch arena on the host backend, and a proptest running the same random
//! programs on a `Scratch` and a `bumpalo::Bump` against one shadow model.

use std::alloc::Layout;
use std::cell::Cell;

use allocator_api2::boxed::Box as ABox;
use allocator_api2::vec::Vec as AVec;
use bumpalo::Bump;
use gpu_arena::driver::{Checked, HostDriver, Stream};
use gpu_arena::{
    ArenaConfig, BadPointer, DevicePtr, Error, Kind, Policy, Scratch, ScratchConfig, SharedArena,
};
use proptest::prelude::*;

use crate::arena_model::{
    PAGE, assert_balanced, cases, config, host, proptest_config, scratch_config,
};

type TestArena<'d> = SharedArena<&'d Checked<HostDriver>>;

/// A 4 GiB arena (2 GiB of buffers: default scratch arenas reserve 256 MiB)
/// over `capacity` bytes of emulated memory, 64 KiB pages.
fn big_arena(driver: &Checked<HostDriver>) -> TestArena<'_> {
    let config = ArenaConfig {
        reservation: 8 << 30,
        min_reservation: 1 << 30,
        ..ArenaConfig::default()
    };
    SharedArena::new(driver, Kind::Device(0), config).expect("arena")
}

/// The base address of the only scratch arena of `arena`.
fn scratch_base(arena: &TestArena<'_>) -> DevicePtr {
    let snap = arena.snapshot();
    let mut bases = snap
        .blocks
        .iter()
        .filter(|b| b.policy == Policy::Scratch)
        .map(|b| snap.base.byte_add(b.offset));
    let base = bases.next().expect("a scratch arena");
    assert!(bases.next().is_none(), "one scratch arena");
    base
}

fn range<T: ?Sized>(t: &T) -> (u64, u64) {
    let start = t as *const T as *const u8 as u64;
    (start, start + size_of_val(t) as u64)
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

// ----- bumpalo's examples and unit tests -----

#[test]
fn scratch_serves_bumpalos_allocation_api() {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let scratch = Scratch::new(&arena).unwrap();
        assert_eq!(*scratch.alloc("hello"), "hello");
        assert_eq!(*scratch.alloc_with(|| [7u64; 4]), [7; 4]);
        assert_eq!(scratch.try_alloc(5u32), Ok(&mut 5));
        assert_eq!(*scratch.try_alloc_with(|| 'x').unwrap(), 'x');
        assert_eq!(scratch.alloc_str("hello world"), "hello world");
        assert_eq!(scratch.try_alloc_str("héllo").unwrap(), "héllo");
        let src: &[u16] = &[0xFEED, 0xFACE, 0xA7, 0xCAFE];
        assert_eq!(scratch.alloc_slice_copy(src), src);
        assert_eq!(scratch.try_alloc_slice_copy(src).unwrap(), src);
        let owned = vec![vec![0], vec![1, 2], vec![3, 4, 5]];
        assert_eq!(scratch.alloc_slice_clone(&owned), &owned[..]);
        assert_eq!(scratch.try_alloc_slice_clone(&owned).unwrap(), &owned[..]);
        assert_eq!(
            scratch.alloc_slice_fill_with(5, |i| 5 * (i + 1)),
            &[5, 10, 15, 20, 25]
        );
        assert_eq!(
            scratch.try_alloc_slice_fill_with(3, |i| i).unwrap(),
            &[0, 1, 2]
        );
        assert_eq!(scratch.alloc_slice_fill_copy(5, 42u8), &[42; 5]);
        assert_eq!(scratch.try_alloc_slice_fill_copy(2, 1u8).unwrap(), &[1, 1]);
        let s = String::from("Hello Scratch!");
        assert_eq!(
            scratch.alloc_slice_fill_clone(2, &s),
            &[s.clone(), s.clone()]
        );
        assert_eq!(
            scratch.try_alloc_slice_fill_clone(1, &s).unwrap(),
            std::slice::from_ref(&s)
        );
        assert_eq!(scratch.alloc_slice_fill_default::<u32>(3), &[0, 0, 0]);
        assert_eq!(
            scratch.try_alloc_slice_fill_default::<u8>(2).unwrap(),
            &[0, 0]
        );
        let squares: &[i32] = scratch.alloc_slice_fill_iter([2, 3, 5].iter().map(|i| i * i));
        assert_eq!(squares, [4, 9, 25]);
        let cubes = scratch.try_alloc_slice_fill_iter((1..4).map(|i: i32| i.pow(3)));
        assert_eq!(cubes.unwrap(), [1, 8, 27]);
        // Everything lies in the one reservation, bumped upwards.
        let a = DevicePtr::from_ptr(scratch.alloc(1u8));
        let b = DevicePtr::from_ptr(scratch.alloc(2u8));
        assert!(scratch.contains(a) && scratch.contains(b) && b == a.byte_add(1));
        assert_eq!(
            arena.stats().scratch.bytes,
            scratch.allocated_bytes() as u64
        );
        arena.lock().check_invariants();
    }
    assert_balanced(&driver);
}

#[test]
#[should_panic(expected = "Iterator supplied too few elements")]
fn scratch_fill_iter_panics_on_a_short_iterator() {
    struct Liar(u32);
    impl Iterator for Liar {
        type Item = u32;
        fn next(&mut self) -> Option<u32> {
            None
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.0 as usize, Some(self.0 as usize))
        }
    }
    impl ExactSizeIterator for Liar {}
    let driver = host(256 << 20);
    let arena = big_arena(&driver);
    let scratch = Scratch::new(&arena).unwrap();
    scratch.alloc_slice_fill_iter(Liar(3));
}

#[test]
fn scratch_can_iterate_over_allocated_things() {
    // bumpalo's `can_iterate_over_allocated_things` and `with_capacity_test`:
    // one chunk here, oldest value first.
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        for initial in [0usize, 1, 8, 11, 0x1000, 0x12345] {
            let mut scratch = Scratch::with_capacity(&arena, initial).unwrap();
            assert!(scratch.committed_bytes() >= initial as u64);
            assert_eq!(scratch.iter_allocated_chunks().count(), 0, "nothing yet");
            const MAX: u64 = 131_072;
            for i in 0..MAX {
                assert_eq!(*scratch.alloc(i), i);
            }
            // SAFETY: no allocation while the iterator lives.
            let raw: Vec<_> = unsafe { scratch.iter_allocated_chunks_raw() }.collect();
            let chunks: Vec<_> = scratch.iter_allocated_chunks().collect();
            assert_eq!(chunks.len(), 1, "one reservation, one chunk");
            // SAFETY: only u64s were allocated: no padding.
            let (before, values, after) = unsafe { chunks[0].align_to::<u64>() };
            assert!(before.is_empty() && after.is_empty());
            assert!(values.iter().copied().eq(0..MAX));
            assert_eq!(raw, [(chunks[0].as_ptr() as *mut u8, chunks[0].len())]);
        }
        assert_eq!(arena.stats().scratch.blocks, 0);
    }
    assert_balanced(&driver);
}

#[test]
fn scratch_reset_reuses_the_start_and_keeps_retain() {
    // bumpalo's `test_reset`.
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let mut scratch = Scratch::with_config(&arena, scratch_config(64 << 20, 4 * PAGE)).unwrap();
        let first = scratch.alloc(0u64) as *const u64 as u64;
        for i in 1u64..100_000 {
            scratch.alloc(i);
        }
        assert!(scratch.committed_bytes() >= 800_000);
        scratch.reset();
        assert_eq!(scratch.allocated_bytes(), 0);
        assert_eq!(scratch.committed_bytes(), 4 * PAGE, "keeps retain");
        let creates = driver.counts().create;
        assert_eq!(scratch.alloc(7u64) as *const u64 as u64, first);
        assert_eq!(scratch.iter_allocated_chunks().count(), 1);
        assert_eq!(driver.counts().create, creates, "reuse commits nothing");
        assert_eq!(scratch.generation(), 1);
    }
    assert_balanced(&driver);
}

#[test]
fn scratch_chunk_capacity_shrinks_as_it_allocates() {
    let driver = host(256 << 20);
    let arena = big_arena(&driver);
    let scratch = Scratch::with_capacity(&arena, 512).unwrap();
    let orig = scratch.chunk_capacity();
    assert!(orig >= 512);
    scratch.alloc(true);
    assert_eq!(scratch.chunk_capacity(), orig - 1);
}

// ----- growth, sizes and alignments -----

#[test]
fn scratch_grows_past_its_initial_size_without_moving() {
    let driver = host(512 << 20);
    {
        let arena = big_arena(&driver);
        // Sized for 64 MiB, as a `Bump::with_capacity(64 << 20)` would be.
        let scratch = Scratch::with_capacity(&arena, 64 << 20).unwrap();
        let small = scratch.alloc(1u8) as *const u8 as u64;
        let big = scratch.alloc_layout(Layout::from_size_align(65 << 20, 8).unwrap());
        let big = big.as_ptr() as u64;
        assert!(
            big > small && big - small <= 8,
            "the same range, no new chunk"
        );
        // SAFETY: 65 MiB of fresh, host-visible memory.
        unsafe { std::ptr::write_bytes(big as *mut u8, 0xab, 65 << 20) };
        assert!(scratch.committed_bytes() >= 65 << 20);
        assert!(arena.stats().committed >= scratch.committed_bytes());
        // A growing Vec at the end of the scratch arena never moves, across
        // commits.
        let mut v: AVec<u64, _> = AVec::new_in(&scratch);
        v.push(0);
        let at = v.as_ptr();
        let committed = scratch.committed_bytes();
        v.extend(1..9_000_000u64);
        assert_eq!(v.as_ptr(), at, "grown in place");
        assert!(
            scratch.committed_bytes() > committed,
            "committed ahead as it grew"
        );
        assert!(v.iter().copied().eq(0..9_000_000));
        // SAFETY: still ours, untouched by the Vec.
        assert_eq!(unsafe { *((big + (65 << 20) - 1) as *const u8) }, 0xab);
        drop(v);
        assert_eq!(
            arena.stats().scratch.bytes,
            scratch.allocated_bytes() as u64
        );
    }
    assert_balanced(&driver);
}

#[test]
fn scratch_zero_sizes_take_no_memory() {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let mut scratch = Scratch::new(&arena).unwrap();
        for i in 0..130usize {
            let l = Layout::from_size_align(0, 1 << (i % 24)).unwrap();
            let p = scratch.alloc_layout(l).as_ptr() as usize;
            assert_eq!(p % l.align(), 0);
            scratch.alloc(());
            scratch.alloc([0u64; 0]);
            assert!(scratch.alloc_slice_copy::<u32>(&[]).is_empty());
            assert!(scratch.alloc_str("").is_empty());
        }
        let mut v: AVec<(), _> = AVec::new_in(&scratch);
        v.extend(std::iter::repeat_n((), 1000));
        drop(v);
        assert_eq!(scratch.allocated_bytes(), 0, "bumpalo takes 0 bytes too");
        assert_eq!(scratch.committed_bytes(), 0);
        assert_eq!(arena.stats().scratch.bytes, 0);
        assert_eq!(scratch.iter_allocated_chunks().count(), 0);
    }
    assert_balanced(&driver);
}

#[test]
fn scratch_serves_alignments_above_the_page() {
    // bumpalo's `alloc_with_strong_alignment` and `small_size_and_large_align`,
    // up to 16 MiB (256 pages of the test driver; 8 pages of an H100).
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let mut scratch = Scratch::new(&arena).unwrap();
        for log in 0..=24 {
            let align = 1usize << log;
            for size in [1, align, 3 * align / 2 + 1] {
                let l = Layout::from_size_align(size, align).unwrap();
                let p = scratch.try_alloc_layout(l).unwrap().as_ptr() as usize;
                assert_eq!(p % align, 0, "size {size} align {align}");
                // SAFETY: fresh memory of `size` bytes.
                unsafe { std::ptr::write_bytes(p as *mut u8, 1, size) };
            }
            scratch.reset();
        }
        // Alignment of the address, not of the offset in the reservation.
        for &a in &[64usize, 4096, 1 << 20] {
            let b = Scratch::with_capacity(&arena, 1 << 20).unwrap();
            for _ in 0..100 {
                let p = b.alloc_layout(Layout::from_size_align(a, a).unwrap());
                assert_eq!(p.as_ptr() as usize % a, 0);
            }
        }
    }
    assert_balanced(&driver);
}

#[test]
fn scratch_huge_requests_fail_cleanly() {
    // bumpalo's `oom_instead_of_bump_pointer_overflow`, as errors.
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let scratch = Scratch::with_config(&arena, scratch_config(16 * PAGE, 0)).unwrap();
        let x = scratch.alloc(0u8) as *const u8 as usize;
        let before = arena.stats();
        for size in [
            (isize::MAX as usize) - x + 1,
            isize::MAX as usize,
            16 * PAGE as usize,
        ] {
            let l = Layout::from_size_align(size, 1).unwrap();
            let r = scratch.try_alloc_layout(l);
            assert!(matches!(r, Err(Error::ScratchFull { .. })), "{size}: {r:?}");
        }
        assert!(matches!(
            scratch.try_alloc_slice_fill_copy(usize::MAX / 2, 0u64),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            scratch.try_alloc_layout(Layout::from_size_align(1, 1 << 40).unwrap()),
            Err(Error::ScratchFull { .. })
        ));
        let e = scratch.try_alloc_slice_fill_copy(1 << 20, 0u8).unwrap_err();
        assert!(e.to_string().contains("ScratchConfig::max"), "{e}");
        assert_eq!(arena.stats(), before, "nothing changed");
        assert_eq!(scratch.allocated_bytes(), 1);
    }
    assert_balanced(&driver);
}

#[test]
#[should_panic(expected = "gpu-arena scratch allocation failed")]
fn scratch_alloc_panics_when_full() {
    let driver = host(256 << 20);
    let arena = big_arena(&driver);
    let scratch = Scratch::with_config(&arena, scratch_config(PAGE, 0)).unwrap();
    scratch.alloc_slice_fill_copy(2 * PAGE as usize, 0u8);
}

// ----- allocation limits (bumpalo's allocation_limit.rs) -----

#[test]
fn scratch_allocation_limit_is_exact() {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let mut scratch = Scratch::new(&arena).unwrap();
        assert_eq!(scratch.allocation_limit(), None);
        scratch.set_allocation_limit(Some(0));
        assert_eq!(scratch.allocation_limit(), Some(0));
        assert!(matches!(
            scratch.try_alloc(5u8),
            Err(Error::ScratchLimit {
                requested: 1,
                allocated: 0,
                limit: 0
            })
        ));
        scratch.set_allocation_limit(None);
        assert!(scratch.try_alloc(5u8).is_ok());
        // Exactly up to the limit, padding included, even where committed
        // memory would hold more.
        scratch.set_allocation_limit(Some(100));
        assert!(scratch.try_alloc_slice_copy(&[1u8; 96]).is_ok());
        assert_eq!(scratch.allocated_bytes(), 97);
        assert!(
            scratch.try_alloc(1u32).is_err(),
            "3 bytes of padding + 4 pass 100"
        );
        assert!(scratch.try_alloc([1u8; 3]).is_ok());
        assert_eq!(scratch.allocated_bytes(), 100);
        assert!(scratch.try_alloc(1u8).is_err());
        // A collection growing against the limit fails its reservation.
        let mut v: AVec<u8, _> = AVec::new_in(&scratch);
        assert!(v.try_reserve(1).is_err());
        drop(v);
        // The limit survives a reset and counts from zero again.
        scratch.reset();
        assert_eq!(scratch.allocation_limit(), Some(100));
        assert!(scratch.try_alloc([0u8; 100]).is_ok());
        // The fast path sees a lowered limit.
        scratch.reset();
        scratch.set_allocation_limit(None);
        scratch.alloc([0u8; 64]);
        scratch.set_allocation_limit(Some(64));
        assert!(scratch.try_alloc(0u8).is_err());
        assert!(scratch.try_alloc(()).is_ok(), "zero size fits any limit");
        // A limit set in the config.
        let limited = Scratch::with_config(
            &arena,
            ScratchConfig {
                allocation_limit: Some(8),
                ..ScratchConfig::default()
            },
        )
        .unwrap();
        assert!(limited.try_alloc(1u64).is_ok());
        assert!(limited.try_alloc(1u8).is_err());
    }
    assert_balanced(&driver);
}

// ----- stats and bad frees -----

#[test]
fn scratch_stats_are_exact_at_every_moment() {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let mut scratch = Scratch::new(&arena).unwrap();
        for i in 1..=131_072u64 {
            scratch.alloc(i);
            if i % 4096 == 0 || i < 64 {
                let s = arena.stats();
                assert_eq!(s.scratch.bytes, 8 * i, "after {i} allocations");
                assert_eq!(s.scratch.blocks, 1);
                assert_eq!(s.live, 8 * i);
                assert!(s.peak_live >= s.live);
                assert_eq!(arena.lock().accounting().live, 8 * i);
            }
        }
        // Read from another thread while this one bumps: never behind what
        // was bumped before the read began, never ahead of the end.
        scratch.reset();
        std::thread::scope(|t| {
            let reader = t.spawn(|| {
                let mut last = 0;
                for _ in 0..2000 {
                    let b = arena.stats().scratch.bytes;
                    assert!(b >= last && b <= 8 * 100_000);
                    last = b;
                }
            });
            for i in 0..100_000u64 {
                scratch.alloc(i);
            }
            reader.join().unwrap();
        });
        assert_eq!(arena.stats().scratch.bytes, 800_000);
        scratch.reset();
        let s = arena.stats();
        assert_eq!((s.scratch.bytes, s.live), (0, 0));
        assert!(s.peak_live >= 131_072 * 8, "the peak saw the bump");
        drop(scratch);
        assert_eq!(arena.stats().scratch.blocks, 0);
    }
    assert_balanced(&driver);
}

#[test]
fn scratch_memory_freed_through_the_arena_is_refused_as_scratch() {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let scratch = Scratch::new(&arena).unwrap();
        let first = DevicePtr::from_ptr(scratch.alloc(1u64));
        let inner =
            DevicePtr::from_ptr(scratch.alloc_slice_fill_copy(100, 0u8).as_ptr()).byte_add(10);
        let before = arena.stats();
        for p in [first, inner] {
            let e = arena.free(p, Stream::DEFAULT).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::BadPointer {
                        kind: BadPointer::Scratch,
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("scratch arena"), "{e}");
            let e = arena.lock().free_sized(p, 8, Stream::DEFAULT).unwrap_err();
            assert!(matches!(
                e,
                Error::BadPointer {
                    kind: BadPointer::Scratch,
                    ..
                }
            ));
        }
        assert_eq!(arena.stats(), before, "a refused free changes nothing");
        drop(scratch);
        // Once dropped, the range is no one's.
        let e = arena.free(first, Stream::DEFAULT).unwrap_err();
        assert!(matches!(
            e,
            Error::BadPointer {
                kind: BadPointer::Foreign,
                ..
            }
        ));
    }
    assert_balanced(&driver);
}

// ----- collections (bumpalo's allocator_api tests) -----

#[test]
fn scratch_backs_collections_and_boxes() {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let mut scratch = Scratch::new(&arena).unwrap();
        for round in 0..3u64 {
            {
                let drops = Cell::new(0);
                struct D<'c>(&'c Cell<u32>);
                impl Drop for D<'_> {
                    fn drop(&mut self) {
                        self.0.set(self.0.get() + 1);
                    }
                }
                let b = ABox::new_in(D(&drops), &scratch);
                let mut m = hashbrown::HashMap::new_in(&scratch);
                for i in 0..10_000u64 {
                    m.insert(i, i * round);
                }
                let mut v: AVec<u32, _> = AVec::with_capacity_in(10, &scratch);
                v.extend(0..1000);
                v.shrink_to_fit();
                v.truncate(3);
                v.shrink_to_fit();
                assert_eq!(v, [0, 1, 2]);
                assert_eq!(m[&9_999], 9_999 * round);
                drop(b);
                assert_eq!(drops.get(), 1, "a Box's destructor runs");
                // The last allocation's bytes come back when it is freed.
                let at = scratch.allocated_bytes();
                let last: AVec<u8, _> = AVec::with_capacity_in(4096, &scratch);
                assert_eq!(scratch.allocated_bytes(), at + 4096);
                drop(last);
                assert_eq!(scratch.allocated_bytes(), at);
            }
            scratch.reset();
            assert_eq!(arena.stats().scratch.bytes, 0);
            arena.lock().check_invariants();
        }
    }
    assert_balanced(&driver);
}

// ----- bumpalo's quickcheck properties, as proptests -----

/// The values of `Elems` in bumpalo's `can_allocate_heterogeneous_things`.
#[derive(Clone, Copy, Debug)]
enum Elems {
    OneT(u8),
    TwoT(u8, u8),
    FourT(u8, u8, u8, u8),
    OneU(u64),
    TwoU(u64, u64),
    Big([u64; 32]),
}

fn elems() -> impl Strategy<Value = Elems> {
    prop_oneof![
        any::<u8>().prop_map(Elems::OneT),
        any::<(u8, u8)>().prop_map(|(a, b)| Elems::TwoT(a, b)),
        any::<(u8, u8, u8, u8)>().prop_map(|(a, b, c, d)| Elems::FourT(a, b, c, d)),
        any::<u64>().prop_map(Elems::OneU),
        any::<(u64, u64)>().prop_map(|(a, b)| Elems::TwoU(a, b)),
        any::<u64>().prop_map(|x| Elems::Big([x; 32])),
    ]
}

/// One step of a program run on a `Scratch` and a `bumpalo::Bump` alike.
#[derive(Clone, Debug)]
enum Op {
    /// `try_alloc_slice_fill_copy(len, value)`.
    Bytes { value: u8, len: u16 },
    /// `try_alloc_layout` of `size` bytes at `1 << align_log2`, then filled.
    Layout { size: u16, align_log2: u8 },
    /// `try_alloc_str`.
    Str(String),
    /// Pushes `n` values to the program's `allocator_api2` vector (grown
    /// with `try_reserve`).
    Push { n: u16 },
    /// Forgets everything.
    Reset,
    /// Sets the allocation limit.
    Limit(Option<u16>),
}

fn program() -> impl Strategy<Value = Vec<Op>> {
    let align_log2 = prop_oneof![8 => 0u8..=12, 1 => 13u8..=22];
    proptest::collection::vec(
        prop_oneof![
            6 => (any::<u8>(), 0u16..300).prop_map(|(value, len)| Op::Bytes { value, len }),
            6 => (0u16..600, align_log2).prop_map(|(size, align_log2)| Op::Layout { size, align_log2 }),
            2 => "[a-zé]{0,40}".prop_map(Op::Str),
            3 => (0u16..3000).prop_map(|n| Op::Push { n }),
            1 => Just(Op::Reset),
            1 => proptest::option::weighted(0.7, 0u16..8000).prop_map(Op::Limit),
        ],
        0..120,
    )
}

/// A live allocation of the model: where it is in each arena, and the
/// bytes it holds.
struct Live {
    ours: (u64, u64),
    theirs: (u64, u64),
    bytes: Vec<u8>,
}

/// The bytes at `start..end`.
///
/// # Safety
/// `start..end` is live host memory.
unsafe fn bytes_at((start, end): (u64, u64)) -> &'static [u8] {
    // SAFETY: the caller's guarantee.
    unsafe { std::slice::from_raw_parts(start as *const u8, (end - start) as usize) }
}

/// Allocates for `op` in `layout` through one of the two arenas' APIs
/// (the same method names), filling layout-only memory with `fill`.
macro_rules! alloc_for {
    ($arena:expr, $op:expr, $layout:expr, $fill:expr) => {
        match $op {
            Op::Bytes { value, len } => $arena
                .try_alloc_slice_fill_copy(*len as usize, *value)
                .map(|s| range(&*s))
                .map_err(|e| format!("{e:?}")),
            Op::Str(s) => $arena
                .try_alloc_str(s)
                .map(|s| range(&*s))
                .map_err(|e| format!("{e:?}")),
            _ => $arena
                .try_alloc_layout($layout)
                .map(|p| {
                    // SAFETY: fresh host memory of the layout's size.
                    unsafe { std::ptr::write_bytes(p.as_ptr(), $fill, $layout.size()) };
                    let p = p.as_ptr() as u64;
                    (p, p + $layout.size() as u64)
                })
                .map_err(|e| format!("{e:?}")),
        }
    };
}

/// Runs `ops` on a scratch arena and a bump arena, checking both against
/// one model after every step: where the scratch arena puts each block
/// (exactly), no overlap, alignment, contents kept, the arena's stats, the
/// vector's contents; and each arena against its own contract where they
/// differ (the limit: exact for `Scratch`, per chunk for `Bump`).
fn same_program(ops: &[Op]) {
    let driver = host(256 << 20);
    {
        let arena = big_arena(&driver);
        let max = 64 << 20;
        let mut scratch = Scratch::with_config(&arena, scratch_config(max, PAGE)).unwrap();
        // Host addresses: the model compares them with bumpalo's.
        let base = scratch_base(&arena).addr();
        let mut bump = Bump::new();
        let mut limit: Option<usize> = None;
        for segment in ops.split(|op| matches!(op, Op::Reset)) {
            {
                let mut live: Vec<Live> = Vec::new();
                let mut ours_v: AVec<u32, _> = AVec::new_in(&scratch);
                let mut theirs_v: AVec<u32, _> = AVec::new_in(&bump);
                for op in segment {
                    let before = scratch.allocated_bytes();
                    let layout = match op {
                        Op::Bytes { len, .. } => Layout::array::<u8>(*len as usize).unwrap(),
                        Op::Layout { size, align_log2 } => {
                            Layout::from_size_align(*size as usize, 1 << align_log2).unwrap()
                        }
                        Op::Str(s) => Layout::for_value(s.as_bytes()),
                        Op::Push { n } => {
                            let n = *n as usize;
                            let ours = ours_v.try_reserve(n).is_ok();
                            let theirs = theirs_v.try_reserve(n).is_ok();
                            if limit.is_none() {
                                assert!(theirs, "bumpalo without a limit");
                                assert!(ours || before as u64 > max / 4, "room left: {before}");
                            }
                            if ours && theirs {
                                let from = ours_v.len() as u32;
                                ours_v.extend(from..from + n as u32);
                                theirs_v.extend(from..from + n as u32);
                            }
                            Layout::new::<()>()
                        }
                        Op::Limit(l) => {
                            limit = l.map(usize::from);
                            scratch.set_allocation_limit(limit);
                            bump.set_allocation_limit(limit);
                            assert_eq!(scratch.allocation_limit(), limit);
                            continue;
                        }
                        Op::Reset => unreachable!("split on resets"),
                    };
                    if !matches!(op, Op::Push { .. }) {
                        let fill = live.len() as u8;
                        // Where the scratch arena must put it: exact.
                        let cursor = before as u64;
                        let start = (base + cursor).next_multiple_of(layout.align() as u64) - base;
                        let end = start + layout.size() as u64;
                        let fits = end <= max && limit.is_none_or(|l| end <= l as u64);
                        let ours = alloc_for!(scratch, op, layout, fill);
                        let theirs = alloc_for!(bump, op, layout, fill);
                        if layout.size() == 0 {
                            // Zero sizes: no memory on either side, never refused.
                            assert!(ours.is_ok() && theirs.is_ok());
                            assert_eq!(scratch.allocated_bytes(), before);
                        } else {
                            match &ours {
                                Ok(r) => {
                                    assert!(fits, "{op:?} placed past the model's bounds");
                                    assert_eq!(
                                        *r,
                                        (base + start, base + end),
                                        "{op:?}: bump order"
                                    );
                                    assert_eq!(scratch.allocated_bytes() as u64, end);
                                }
                                Err(e) if e.starts_with("ScratchLimit") => {
                                    assert!(!fits && end <= max, "{op:?}: {e}")
                                }
                                Err(e) if e.starts_with("ScratchFull") => {
                                    assert!(!fits && end > max, "{op:?}: {e}")
                                }
                                Err(e) => panic!("{op:?}: {e}"),
                            }
                            if limit.is_none() {
                                assert!(theirs.is_ok(), "bumpalo without a limit");
                            }
                        }
                        if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
                            if layout.size() > 0 {
                                // SAFETY: both are fresh, filled allocations.
                                let (bytes, other) =
                                    unsafe { (bytes_at(ours).to_vec(), bytes_at(theirs)) };
                                assert_eq!(bytes, other);
                                for r in [ours, theirs] {
                                    assert_eq!(r.0 % layout.align() as u64, 0);
                                }
                                for l in &live {
                                    assert!(!overlap(l.ours, ours) && !overlap(l.theirs, theirs));
                                }
                                live.push(Live {
                                    ours,
                                    theirs,
                                    bytes,
                                });
                            }
                        }
                    }
                    // Contents survive on both sides; the vectors agree; the
                    // stats are exact; the limit is never passed by an
                    // allocation (a limit lowered below what is allocated
                    // refuses everything).
                    for l in &live {
                        // SAFETY: live allocations.
                        unsafe {
                            assert_eq!(bytes_at(l.ours), &l.bytes[..]);
                            assert_eq!(bytes_at(l.theirs), &l.bytes[..]);
                        }
                    }
                    assert_eq!(ours_v, theirs_v);
                    assert!(ours_v.iter().copied().eq(0..ours_v.len() as u32));
                    let bumped = scratch.allocated_bytes();
                    assert_eq!(arena.stats().scratch.bytes, bumped as u64);
                    if let Some(l) = limit {
                        assert!(bumped <= l.max(before), "{bumped} > limit {l}");
                    }
                }
            }
            scratch.reset();
            bump.reset();
            assert_eq!(scratch.allocated_bytes(), 0);
            assert_eq!(arena.stats().scratch.bytes, 0);
            assert!(scratch.committed_bytes() <= PAGE, "reset keeps retain");
        }
    }
    assert_balanced(&driver);
}

proptest! {
    #![proptest_config(proptest_config(cases() / 4))]

    #[test]
    fn scratch_matches_bumpalo_on_random_programs(ops in program()) {
        same_program(&ops);
    }

    #[test]
    fn scratch_heterogeneous_things_never_overlap_and_survive(things in proptest::collection::vec(elems(), 0..400)) {
        // bumpalo's `can_allocate_heterogeneous_things_and_they_dont_overlap`,
        // `can_allocate_big_values` and `big_allocations_never_overlap`.
        let driver = host(256 << 20);
        {
            let arena = big_arena(&driver);
            let scratch = Scratch::with_capacity(&arena, 4096).unwrap();
            let mut held: Vec<((u64, u64), Elems)> = Vec::new();
            for t in things.iter().copied() {
                let r = match t {
                    Elems::OneT(a) => range(scratch.alloc(a)),
                    Elems::TwoT(a, b) => range(scratch.alloc([a, b])),
                    Elems::FourT(a, b, c, d) => range(scratch.alloc([a, b, c, d])),
                    Elems::OneU(a) => range(scratch.alloc(a)),
                    Elems::TwoU(a, b) => range(scratch.alloc([a, b])),
                    Elems::Big(x) => range(scratch.alloc(x)),
                };
                for (s, _) in &held {
                    prop_assert!(!overlap(r, *s));
                }
                held.push((r, t));
            }
            for &((start, _), t) in &held {
                // SAFETY: live values of the recorded types.
                let kept = unsafe {
                    match t {
                        Elems::OneT(a) => *(start as *const u8) == a,
                        Elems::TwoT(a, b) => *(start as *const [u8; 2]) == [a, b],
                        Elems::FourT(a, b, c, d) => *(start as *const [u8; 4]) == [a, b, c, d],
                        Elems::OneU(a) => *(start as *const u64) == a,
                        Elems::TwoU(a, b) => *(start as *const [u64; 2]) == [a, b],
                        Elems::Big(x) => *(start as *const [u64; 32]) == x,
                    }
                };
                prop_assert!(kept, "{t:?} kept");
            }
            let total: usize = things.iter().map(|t| match t {
                Elems::OneT(_) => 1, Elems::TwoT(..) => 2, Elems::FourT(..) => 4,
                Elems::OneU(_) => 8, Elems::TwoU(..) => 16, Elems::Big(_) => 256,
            }).sum();
            prop_assert!(scratch.allocated_bytes() >= total);
            prop_assert!(scratch.allocated_bytes() <= total + 7 * things.len());
        }
        assert_balanced(&driver);
    }

    #[test]
    fn scratch_alignment_chunks_hold_no_padding(sizes in proptest::collection::vec(0usize..10, 0..200)) {
        // bumpalo's `test_alignment_chunks`: sizes that are multiples of
        // one alignment leave no padding in the chunk.
        let driver = host(256 << 20);
        {
            let arena = big_arena(&driver);
            for alignment in [1usize, 2, 4, 8, 16, 4096] {
                let mut s = Scratch::with_capacity(&arena, 513).unwrap();
                let sizes: Vec<usize> = sizes.iter().map(|&n| n * alignment).collect();
                for &size in &sizes {
                    let l = Layout::from_size_align(size, alignment).unwrap();
                    prop_assert_eq!(s.alloc_layout(l).as_ptr() as usize % alignment, 0);
                }
                let in_chunks: usize = s.iter_allocated_chunks().map(|c| c.len()).sum();
                prop_assert_eq!(in_chunks, sizes.iter().sum::<usize>());
            }
        }
        assert_balanced(&driver);
    }

    #[test]
    fn scratch_limit_is_never_exceeded(limit in 0usize..16 * 1024) {
        // bumpalo's `limit_is_never_exceeded`; exact here.
        let driver = host(256 << 20);
        {
            let arena = big_arena(&driver);
            let scratch = Scratch::new(&arena).unwrap();
            scratch.set_allocation_limit(Some(limit));
            let layout = Layout::array::<u8>(limit / 16 + 1).unwrap();
            let mut ok = 0;
            for _ in 0..32 {
                ok += usize::from(scratch.try_alloc_layout(layout).is_ok());
            }
            prop_assert!(scratch.allocated_bytes() <= limit);
            prop_assert_eq!(ok, limit / layout.size(), "every allocation that fits succeeds");
        }
        assert_balanced(&driver);
    }
}

#[test]
fn scratch_default_reservations_leave_room_for_more() {
    // The default maximum is an eighth of the buffers region not reserved
    // yet: many default scratch arenas fit, each smaller than the last.
    let driver = host(256 << 20);
    {
        let arena = SharedArena::new(&driver, Kind::Device(0), config()).unwrap();
        let (region, free) = arena.lock().buffers_space();
        assert_eq!(region, free);
        let scratches: Vec<_> = (0..20).map(|_| Scratch::new(&arena).unwrap()).collect();
        assert_eq!(scratches[0].reserved_bytes(), region / 8);
        for w in scratches.windows(2) {
            assert!(w[1].reserved_bytes() <= w[0].reserved_bytes());
        }
        let total: u64 = scratches.iter().map(|s| s.reserved_bytes()).sum();
        assert_eq!(arena.lock().buffers_space().1, region - total);
        assert_eq!(arena.stats().scratch.blocks, 20);
        // Each still grows to its reservation.
        let last = scratches.last().unwrap();
        let all = last.reserved_bytes() as usize;
        assert!(
            last.try_alloc_layout(Layout::from_size_align(all, 1).unwrap())
                .is_ok()
        );
    }
    assert_balanced(&driver);
}

/// Device memory the CPU cannot touch: the layout-only forms serve it, the
/// typed forms and collections refuse it.
#[cfg(feature = "cuda")]
#[test]
fn scratch_on_device_memory_serves_layouts_only() {
    use gpu_arena::driver::Driver;
    let Some(d) = crate::common::cuda() else {
        return;
    };
    let arena = SharedArena::new(d, Kind::Device(0), ArenaConfig::default()).unwrap();
    assert!(!arena.host_visible());
    let mut scratch = Scratch::new(&arena).unwrap();
    assert!(!scratch.host_visible());
    assert!(matches!(scratch.try_alloc(1u8), Err(Error::Unsupported(_))));
    assert!(AVec::<u8, _>::new_in(&scratch).try_reserve(1).is_err());
    // 65 MiB at a 4 MiB alignment, then more: one range, committed as needed.
    let l = Layout::from_size_align(65 << 20, 4 << 20).unwrap();
    let a = scratch.try_alloc_device(l).unwrap();
    assert!(a.is_aligned_to(4 << 20));
    let b = scratch.alloc_layout(Layout::from_size_align(1 << 20, 256).unwrap());
    let b = DevicePtr::from_ptr(b.as_ptr());
    assert_eq!(b, a.byte_add(65 << 20));
    let pattern: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
    let mut back = vec![0u8; pattern.len()];
    {
        let a = arena.lock();
        // SAFETY: b.. is 1 MiB of committed device memory; pattern and back
        // are host memory of that length.
        unsafe {
            a.driver()
                .copy(
                    b.addr(),
                    pattern.as_ptr() as u64,
                    pattern.len(),
                    Stream::DEFAULT,
                )
                .unwrap();
            a.driver()
                .copy(
                    back.as_mut_ptr() as u64,
                    b.addr(),
                    back.len(),
                    Stream::DEFAULT,
                )
                .unwrap();
        }
    }
    assert_eq!(back, pattern);
    assert_eq!(
        arena.stats().scratch.bytes,
        scratch.allocated_bytes() as u64
    );
    scratch.reset();
    println!(
        "scratch on device memory: {} committed after reset",
        scratch.committed_bytes()
    );
}

/// A scratch arena or a growable buffer whose memory a kernel on stream S
/// still uses, given back (dropped after `reset_on(S)` / `resize_on(.., S)`,
/// or by `free_on(S)`): the next one, used on another stream, gets neither
/// those addresses nor those pages before S's fence, and waits for nothing
/// (memory is plentiful). Until the fix (found by review) a drop gave
/// everything back on the default stream: the next scratch arena got the
/// same addresses and physical pages at once, or, with nothing retained,
/// waited on S's kernel inside an ordinary allocation.
#[test]
fn scratch_and_grow_buffers_give_memory_back_on_the_stream_that_used_it() {
    use gpu_arena::driver::{Driver, HostDriver};
    use gpu_arena::{ArenaConfig, GrowBuffer, Kind, SharedArena};
    const LEN: u64 = 4 << 20;
    let overlap =
        |a: DevicePtr, b: DevicePtr| a.addr() < b.addr() + LEN && b.addr() < a.addr() + LEN;
    for (retain, how) in [
        (8 << 20, "drop"),
        (0, "drop"),
        (8 << 20, "free_on"),
        (0, "grow"),
    ] {
        let arena = SharedArena::new(
            HostDriver::new().unwrap(),
            Kind::Device(0),
            ArenaConfig::default(),
        )
        .unwrap();
        let s = arena.lock().driver().create_stream().unwrap();
        let cfg = ScratchConfig {
            max: 8 << 20,
            retain,
            ..ScratchConfig::default()
        };
        let old = if how == "grow" {
            let mut g = GrowBuffer::with_max(&arena, 8 << 20).unwrap();
            g.resize_on(LEN, s).unwrap();
            let p = g.as_ptr();
            arena.lock().driver().hold(s);
            drop(g);
            p
        } else {
            let mut sc = Scratch::with_config(&arena, cfg).unwrap();
            let p = sc.alloc_raw(LEN, 512).unwrap().get(&sc).unwrap();
            // SAFETY: host memory, just allocated.
            unsafe { core::ptr::write_bytes(p.as_mut_ptr::<u8>(), 0xAB, LEN as usize) };
            // A kernel on s works on it and has not finished.
            arena.lock().driver().hold(s);
            if how == "free_on" {
                sc.free_on(s);
            } else {
                sc.reset_on(s);
                drop(sc);
            }
            p
        };
        let sc = Scratch::with_config(&arena, cfg).unwrap();
        let new = sc.alloc_raw(LEN, 512).unwrap().get(&sc).unwrap();
        assert_eq!(
            arena.stats().driver_calls.wait,
            0,
            "{how}, retain {retain}: a wait"
        );
        assert!(
            !overlap(old, new),
            "{how}, retain {retain}: memory last used on stream s handed out again before its \
             fence: {old:#x} then {new:#x}"
        );
        // SAFETY: host memory, just allocated.
        let first = unsafe { *new.as_ptr::<u8>() };
        assert_ne!(first, 0xAB, "{how}: the same physical page");
        drop(sc);
        arena.lock().driver().complete(s);
        arena.lock().trim();
        assert_eq!(
            arena.stats().committed,
            0,
            "{how}: everything goes back after the fence"
        );
    }
}
