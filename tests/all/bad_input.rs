//! Bad input on every entry point gets a clear error and changes nothing:
//! alignments that are not powers of two (zero included), sizes whose byte
//! count overflows, buffers larger than the whole reservation.

use core::alloc::{GlobalAlloc, Layout};

use allocator_api2::alloc::Allocator;
use gpu_arena::api::global_alloc::ArenaGlobalAlloc;
use gpu_arena::driver::Stream;
use gpu_arena::driver::system::Select;
use gpu_arena::global::{GlobalArena, GlobalConfig};
use gpu_arena::{ArenaConfig, DeviceVec, Error, GrowBuffer, Kind, Scratch, SharedArena};

use crate::arena_model::{PAGE, config, host};

const D: Stream = Stream::DEFAULT;

/// Alignments that are not powers of two, with sizes that the slabs (and
/// their thread caches) would serve, and one the large policy would.
const NOT_POWERS_OF_TWO: [(u64, u64); 9] = [
    (64, 0),
    (40, 3),
    (40, 6),
    (40, 12),
    (40, 24),
    (200, 80),
    (1, 0),
    (1 << 20, 0),
    (1 << 20, 3 << 12),
];

fn global(thread_cache: u64) -> &'static GlobalArena {
    let conf = GlobalConfig {
        backend: Select::Host,
        thread_cache,
        arena: ArenaConfig {
            reservation: 1 << 30,
            ..ArenaConfig::default()
        },
        ..GlobalConfig::default()
    };
    GlobalArena::leak(0, conf).unwrap()
}

#[test]
fn global_alloc_refuses_alignments_that_are_not_powers_of_two() {
    // With the thread cache (the lock-free path) and without it.
    for thread_cache in [1 << 20, 0] {
        let arena = global(thread_cache);
        // Fill the cache of the 64-byte class, so a bad request could be
        // served from it if the alignment were not checked first.
        let warm = arena.alloc(64, 16, D).unwrap();
        arena.free(warm, Some(64), D).unwrap();
        let before = arena.stats();
        for (size, align) in NOT_POWERS_OF_TWO.into_iter().chain([(64, 1 << 40)]) {
            let r = arena.alloc(size, align, D);
            assert!(
                matches!(r, Err(Error::BadAlignment { align: a, .. }) if a == align),
                "alloc({size}, {align}) with thread_cache {thread_cache}: {r:?}"
            );
            let r = arena.alloc_uncached(size, align, D);
            assert!(
                matches!(r, Err(Error::BadAlignment { .. })),
                "alloc_uncached({size}, {align}): {r:?}"
            );
        }
        assert_eq!(arena.stats(), before, "refused requests changed the stats");
        // The arena still serves good requests.
        for align in [1, 8, 64, 4096] {
            let p = arena.alloc(40, align, D).unwrap();
            assert!(p.is_aligned_to(align));
            arena.free(p, Some(40), D).unwrap();
        }
    }
}

#[test]
fn shared_arena_and_allocator_traits_refuse_bad_alignments() {
    let driver = host(256 << 20);
    let arena = SharedArena::new(&driver, Kind::Device(0), config()).unwrap();
    assert!(
        arena.host_visible(),
        "the Allocator refusal below must be the alignment's"
    );
    let before = arena.stats();
    for (size, align) in NOT_POWERS_OF_TWO {
        let r = arena.alloc(size, align, D);
        assert!(
            matches!(r, Err(Error::BadAlignment { align: a, .. }) if a == align),
            "SharedArena::alloc({size}, {align}): {r:?}"
        );
    }
    // `Layout` only holds powers of two: the traits meet alignments too
    // large to serve, and refuse them.
    let huge = Layout::from_size_align(64, 1 << 40).unwrap();
    assert!((&arena).allocate(huge).is_err());
    assert_eq!(arena.stats(), before);
    arena.lock().check_invariants();

    let global = ArenaGlobalAlloc::new();
    // SAFETY: a nonzero-size layout; a null result is the refusal checked here.
    let p = unsafe { global.alloc(huge) };
    assert!(p.is_null(), "GlobalAlloc served alignment 2^40 at {p:?}");
}

#[test]
fn device_vec_refuses_lengths_whose_bytes_overflow() {
    let driver = host(256 << 20);
    let arena = SharedArena::new(&driver, Kind::Device(0), config()).unwrap();
    let before = arena.stats();
    for len in [(1usize << 61) + 1, usize::MAX, usize::MAX / 8 + 1] {
        let r = DeviceVec::<u64, _>::with_len(&arena, len);
        match r {
            Err(Error::SizeOverflow { count, elem_size }) => {
                assert_eq!((count, elem_size), (len as u64, 8));
                assert!(
                    Error::SizeOverflow { count, elem_size }
                        .to_string()
                        .contains("ask for fewer elements")
                );
            }
            other => panic!("with_len({len}) of u64: {other:?}"),
        }
    }
    // Fits in 64 bits but not in the arena: too large, not an overflow.
    let r = DeviceVec::<u64, _>::with_len(&arena, 1 << 60);
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
    assert_eq!(arena.stats(), before);
    let v = DeviceVec::<u64, _>::with_len(&arena, 1000).unwrap();
    assert_eq!(v.len(), 1000);
    drop(v);
    arena.lock().check_invariants();
}

/// Copies to or from device memory must stay inside one live block: a
/// freed block, an interior or foreign pointer, and a length past the block
/// are refused with `BadCopy`, and nothing is written.
#[test]
fn copies_outside_a_live_block_are_refused() {
    let driver = host(256 << 20);
    let arena = SharedArena::new(&driver, Kind::Device(0), config()).unwrap();
    let mut a = arena.lock();
    let p = a.alloc(256, 64).unwrap();
    let big = a.alloc(4 << 20, 256).unwrap();
    let write = |a: &gpu_arena::Arena<_>, ptr, bytes: &[u8]| {
        // SAFETY: the blocks are this test's own and used by nothing else;
        // a refused copy touches nothing.
        unsafe { a.write(ptr, bytes) }
    };
    let read = |a: &gpu_arena::Arena<_>, ptr, bytes: &mut [u8]| {
        // SAFETY: as for `write`.
        unsafe { a.read(ptr, bytes) }
    };
    write(&a, p, &[7u8; 256]).unwrap();
    write(&a, big, &[9u8; 4 << 20]).unwrap();
    let block = a.block_size(p).unwrap();
    let cases = [
        (p, block as usize + 1, block),
        (p.byte_add(64), 8, 0),
        (gpu_arena::DevicePtr::new(64), 8, 0),
        (big, (4 << 20) + 1, 4 << 20),
    ];
    for (ptr, len, want_block) in cases {
        match write(&a, ptr, &vec![1u8; len]) {
            Err(Error::BadCopy {
                addr,
                len: l,
                block,
            }) => {
                assert_eq!((addr, l, block), (ptr, len as u64, want_block));
            }
            other => panic!("write of {len} bytes at {ptr}: {other:?}"),
        }
        let r = read(&a, ptr, &mut vec![0u8; len]);
        assert!(matches!(r, Err(Error::BadCopy { .. })), "{r:?}");
    }
    let mut back = [0u8; 256];
    read(&a, p, &mut back).unwrap();
    assert_eq!(back, [7u8; 256], "a refused copy wrote nothing");
    a.free(p).unwrap();
    let r = write(&a, p, &[1u8; 8]);
    assert!(matches!(r, Err(Error::BadCopy { block: 0, .. })), "{r:?}");
    a.free(big).unwrap();
    a.check_invariants();
}

#[test]
fn buffers_larger_than_the_reservation_say_so() {
    let driver = host(256 << 20);
    let arena = SharedArena::new(&driver, Kind::Device(0), config()).unwrap();
    let (_, reserved) = arena.lock().reservation();
    let before = arena.stats();
    for max in [1u64 << 60, u64::MAX, reserved] {
        let e = GrowBuffer::with_max(&arena, max).unwrap_err();
        assert!(
            matches!(e, Error::ExceedsReservation { requested, capacity }
                if requested == max && capacity < reserved),
            "GrowBuffer::with_max({max}): {e:?}"
        );
        let msg = e.to_string();
        assert!(!msg.contains("is full"), "{msg}");
        assert!(msg.contains("configure a larger reservation"), "{msg}");
        let config = gpu_arena::ScratchConfig {
            max,
            ..Default::default()
        };
        let e = Scratch::with_config(&arena, config).unwrap_err();
        assert!(matches!(e, Error::ExceedsReservation { .. }), "{e:?}");
    }
    assert_eq!(arena.stats(), before);
    // What fits is served.
    let mut g = GrowBuffer::with_max(&arena, 4 * PAGE).unwrap();
    g.resize(PAGE).unwrap();
    drop(g);
    arena.lock().check_invariants();
}
