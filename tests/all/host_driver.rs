//! The host backend follows the driver rules measured on the H100.

use gpu_arena::ErrorKind;
use gpu_arena::driver::{Access, AccessMode, Driver, HostConfig, HostDriver, Location, Stream};

fn kind<T: std::fmt::Debug>(r: gpu_arena::Result<T>) -> ErrorKind {
    r.expect_err("expected an error")
        .driver_kind()
        .expect("a driver error")
}

#[test]
fn same_handle_at_two_addresses_sees_same_bytes() {
    let d = HostDriver::new().unwrap();
    let g = d.capabilities().granularity;
    let va = d.reserve(8 * g, 0).unwrap();
    let h = d.create(2 * g, Location::Device(0)).unwrap();
    let rw = [Access::read_write(Location::Device(0))];
    // SAFETY: both ranges lie in our reservation and are unmapped.
    unsafe {
        d.map(va, 2 * g, 0, h).unwrap();
        d.map(va + 4 * g as u64, 2 * g, 0, h).unwrap();
        d.set_access(va, 2 * g, &rw).unwrap();
        d.set_access(va + 4 * g as u64, 2 * g, &rw).unwrap();
        let a = va as *mut u8;
        let b = (va + 4 * g as u64) as *mut u8;
        a.add(12345).write(0xAB);
        assert_eq!(b.add(12345).read(), 0xAB);
    }
    assert_eq!(
        d.get_access(va, Location::Device(0)).unwrap(),
        AccessMode::ReadWrite
    );
    // Release while mapped is allowed; memory stays until the last unmap.
    d.release(h).unwrap();
    assert_eq!(d.physical_bytes(), 2 * g as u64);
    // SAFETY: as above; nothing uses the ranges afterwards.
    unsafe {
        assert_eq!(kind(d.unmap(va, g)), ErrorKind::InvalidValue);
        assert_eq!(kind(d.free_reservation(va, 8 * g)), ErrorKind::InvalidValue);
        d.unmap(va, 2 * g).unwrap();
        assert_eq!(d.physical_bytes(), 2 * g as u64);
        d.unmap(va + 4 * g as u64, 2 * g).unwrap();
        assert_eq!(d.physical_bytes(), 0);
        d.free_reservation(va, 8 * g).unwrap();
    }
    assert!(d.is_clean());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let d = HostDriver::new().unwrap();
    let g = d.capabilities().granularity;
    assert_eq!(kind(d.reserve(0, 0)), ErrorKind::InvalidValue);
    assert_eq!(kind(d.reserve(g / 2, 0)), ErrorKind::InvalidValue);
    assert_eq!(kind(d.reserve(128 << 40, 0)), ErrorKind::OutOfMemory);
    assert_eq!(
        kind(d.create(0, Location::Device(0))),
        ErrorKind::InvalidValue
    );
    assert_eq!(
        kind(d.create(g + 4096, Location::Device(0))),
        ErrorKind::InvalidValue
    );
    assert_eq!(
        kind(d.create(g, Location::Device(7))),
        ErrorKind::InvalidValue
    );
    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(2 * g, Location::Device(0)).unwrap();
    // SAFETY: ranges are inside our reservation or refused before any syscall.
    unsafe {
        assert_eq!(kind(d.map(va, 2 * g, g, h)), ErrorKind::NotSupported);
        assert_eq!(
            kind(d.map(va + 4 * g as u64, 2 * g, 0, h)),
            ErrorKind::InvalidValue
        );
        assert_eq!(kind(d.map(0x1000, 2 * g, 0, h)), ErrorKind::InvalidValue);
        d.map(va, 2 * g, 0, h).unwrap();
        assert_eq!(kind(d.map(va, 2 * g, 0, h)), ErrorKind::InvalidValue);
        d.unmap(va, 2 * g).unwrap();
        d.release(h).unwrap();
        assert_eq!(kind(d.map(va, 2 * g, 0, h)), ErrorKind::InvalidValue);
        d.free_reservation(va, 4 * g).unwrap();
    }
    assert!(d.is_clean());
    let f = d.record(Stream::DEFAULT).unwrap();
    assert!(d.is_complete(&f).unwrap());
}

#[test]
fn checked_copies_and_fills_refuse_unmapped_ranges_of_their_reservations() {
    use gpu_arena::driver::Checked;
    let d = Checked::new(HostDriver::new().unwrap());
    let g = d.capabilities().granularity;
    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(g, Location::Device(0)).unwrap();
    let rw = [Access::read_write(Location::Device(0))];
    let mut host = vec![0u8; 64];
    let dst = host.as_mut_ptr() as u64;
    // SAFETY: the first granule of our reservation is mapped with access
    // before it is touched; `host` is a live buffer of 64 bytes; the
    // refused calls reach no memory.
    unsafe {
        d.map(va, g, 0, h).unwrap();
        d.set_access(va, g, &rw).unwrap();
        d.fill(va, 1, g, Stream::DEFAULT).unwrap();
        // Mapped source, host target outside every reservation: fine.
        d.copy(dst, va, 64, Stream::DEFAULT).unwrap();
        assert_eq!(host[63], 1);
        // Past the mapping, into unmapped granules: refused, nothing done.
        assert_eq!(
            kind(d.fill(va, 7, 2 * g, Stream::DEFAULT)),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(d.copy(dst, va + g as u64, 64, Stream::DEFAULT)),
            ErrorKind::InvalidValue
        );
        assert_eq!((va as *const u8).read(), 1);
        d.unmap(va, g).unwrap();
        // A range that starts outside the reservation and runs into its
        // unmapped start is refused too.
        assert_eq!(
            kind(d.fill(va - 64, 0, 128, Stream::DEFAULT)),
            ErrorKind::InvalidValue
        );
    }
    d.release(h).unwrap();
    // SAFETY: the reservation is ours and has no mapping left.
    unsafe { d.free_reservation(va, 4 * g).unwrap() };
}

// Found by a review of the driver layer (2026-11-30): each failed before
// its fix.

/// A create of a whole number of granules near 2^64 bytes must be
/// refused with out-of-memory (CUDA: `cuMemCreate(1 << 50)` is
/// CUDA_ERROR_OUT_OF_MEMORY, research/vmm-probe-h100.md §2). The host
/// backend's capacity and offset checks wrap instead: the create succeeds,
/// the physical count wraps, and the next handle is a live handle's twin.
#[test]
fn a_huge_create_is_out_of_memory_and_never_aliases_a_live_handle() {
    let d = HostDriver::with_config(HostConfig {
        capacity: 1 << 30,
        ..HostConfig::default()
    })
    .unwrap();
    let g = d.capabilities().granularity;
    let _a = d.create(g, Location::Device(0)).unwrap();
    let b = d.create(g, Location::Device(0)).unwrap();
    let huge = usize::MAX - g + 1; // 2^64 - g: granular, 16 EiB
    match d.create(huge, Location::Device(0)) {
        Err(e) => assert_eq!(e.driver_kind(), Some(ErrorKind::OutOfMemory)),
        Ok(h) => {
            let c = d.create(g, Location::Device(0)).unwrap();
            panic!(
                "a {huge}-byte create succeeded ({h:?}); physical_bytes is now {} \
                 (was {}); the next create returned {c:?}, the same handle (and \
                 memfd range) as the live {b:?}: {}",
                d.physical_bytes(),
                2 * g,
                c == b
            );
        }
    }
}

/// Handle offsets in the common memfd are never reused, so once 2^52
/// bytes (FILE_SIZE) have ever been created, every create fails with
/// out-of-memory although nothing is held. An emulated 80 GiB device that
/// commits and gives back 64 GiB 65 536 times (a sleep/wake loop) hits it.
#[test]
fn creates_keep_working_after_4_pib_were_created_and_released() {
    let d = HostDriver::with_config(HostConfig {
        capacity: 80 << 30,
        ..HostConfig::default()
    })
    .unwrap();
    let size = 64usize << 30;
    for i in 0..(1u64 << 16) + 8 {
        let h = d.create(size, Location::Device(0)).unwrap_or_else(|e| {
            panic!(
                "create #{i} of 64 GiB with {} bytes held failed: {e}",
                d.physical_bytes()
            )
        });
        d.release(h).unwrap();
    }
    assert!(d.is_clean());
}

/// A fence that completed stays complete (a CUDA event does, whatever
/// happens to its stream). On the host backend a fence is (stream slot,
/// sequence number), and `create_stream` reuses a destroyed stream's slot
/// with its counters reset to 0.
#[test]
fn a_completed_fence_stays_complete_when_its_stream_slot_is_reused() {
    let d = HostDriver::new().unwrap();
    let s = d.create_stream().unwrap();
    let old = d.record(s).unwrap();
    assert!(d.is_complete(&old).unwrap());
    // SAFETY: the stream is not used afterwards.
    unsafe { d.destroy_stream(s).unwrap() };
    let s2 = d.create_stream().unwrap();
    assert!(
        d.is_complete(&old).unwrap(),
        "a completed fence is pending again once its stream's slot was reused"
    );
    // The new stream runs a long kernel; waiting on the old fence must not
    // complete the new stream's work.
    d.hold(s2);
    let new = d.record(s2).unwrap();
    d.wait(&old).unwrap();
    assert!(
        !d.is_complete(&new).unwrap(),
        "waiting on a stale fence completed work of the held stream {s2:?} ({old:?} == {new:?}: {})",
        old == new
    );
    d.complete(s2);
}

/// The CPU's protection of the page holding `va` ("rw-s", "---s", ...).
fn cpu_prot(va: u64) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let (range, rest) = line.split_once(' ').unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let a = u64::from_str_radix(a, 16).unwrap();
        let b = u64::from_str_radix(b, 16).unwrap();
        if a <= va && va < b {
            return rest[..4].to_string();
        }
    }
    panic!("{va:#x} is not in /proc/self/maps")
}

/// Host-located memory is CPU-accessible only with a HOST descriptor
/// (H100: HOST memory with [dev0 RW] only: CPU read SIGSEGV,
/// research/vmm-probe-h100.md §2). The host backend opens the pages to the
/// CPU when any accessor has rights, so a CPU access after
/// `Arena::revoke(Location::Host)` works in host tests and faults on a GPU.
#[test]
fn host_located_memory_is_cpu_accessible_only_with_host_rights() {
    let d = HostDriver::new().unwrap();
    let g = d.capabilities().granularity;
    let va = d.reserve(2 * g, 0).unwrap();
    let h = d.create(g, Location::Host).unwrap();
    let dev = Access::read_write(Location::Device(0));
    let cpu = Access::read_write(Location::Host);
    let no_cpu = Access {
        location: Location::Host,
        mode: AccessMode::None,
    };
    // SAFETY: the range is in our reservation and unmapped; nothing touches it.
    unsafe {
        d.map(va, g, 0, h).unwrap();
        d.set_access(va, g, &[dev]).unwrap();
    }
    assert_eq!(d.get_access(va, Location::Host).unwrap(), AccessMode::None);
    let only_device = cpu_prot(va);
    // SAFETY: as above.
    unsafe { d.set_access(va, g, &[dev, cpu]).unwrap() };
    assert_eq!(cpu_prot(va), "rw-s");
    // SAFETY: as above: the CPU no longer uses the range.
    unsafe { d.set_access(va, g, &[no_cpu]).unwrap() };
    let revoked = cpu_prot(va);
    // SAFETY: as above.
    unsafe {
        d.unmap(va, g).unwrap();
        d.release(h).unwrap();
        d.free_reservation(va, 2 * g).unwrap();
    }
    assert_eq!(
        (only_device.as_str(), revoked.as_str()),
        ("---s", "---s"),
        "the CPU can touch host-located memory it has no rights to"
    );
}
