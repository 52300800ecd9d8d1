//! The host backend follows the driver rules measured on the H100.

use gpu_arena::ErrorKind;
use gpu_arena::driver::{Access, AccessMode, Driver, HostDriver, Location, Stream};

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
