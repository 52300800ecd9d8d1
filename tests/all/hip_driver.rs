//! The HIP backend follows the driver rules measured on the H100.
//!
//! Each test opens device 0 and skips, printing `skipped: <reason>`, where no
//! usable HIP device is found (CI has no AMD GPU).

use gpu_arena::ErrorKind;
use gpu_arena::driver::hip::HipDriver;
use gpu_arena::driver::{Access, AccessMode, Driver, Location, Stream};

/// Device 0's HIP driver, or `None` (with the reason printed) where there is none.
fn hip() -> Option<HipDriver> {
    match HipDriver::new(0) {
        Ok(d) => Some(d),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

fn kind<T: std::fmt::Debug>(r: gpu_arena::Result<T>) -> ErrorKind {
    r.expect_err("expected an error")
        .driver_kind()
        .expect("a driver error")
}

#[test]
fn no_device_is_a_clear_error_not_a_panic() {
    match HipDriver::new(0) {
        Ok(d) => println!("HIP device 0 opened: {:?}", d.capabilities()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            match e.driver_kind() {
                // No GPU, no runtime: the backend says so.
                Some(k) => assert_eq!(k, ErrorKind::NoDevice, "{msg}"),
                // A device without VMM, or a runtime too old: says why.
                None => assert!(matches!(e, gpu_arena::Error::Unsupported(_)), "{msg}"),
            }
        }
    }
    assert!(HipDriver::new(u32::MAX).is_err());
}

#[test]
fn fill_then_copy_back_through_a_second_mapping_of_the_same_handle() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let va = d.reserve(8 * g, 0).unwrap();
    let h = d.create(2 * g, dev).unwrap();
    let second = va + 4 * g as u64;
    let rw = [Access::read_write(dev)];
    let mut back = vec![0u8; 2 * g];
    // SAFETY: both ranges lie in our reservation and are unmapped; `back` is
    // valid for 2 * g bytes; nothing uses the ranges after the unmaps.
    unsafe {
        d.map(va, 2 * g, 0, h).unwrap();
        d.map(second, 2 * g, 0, h).unwrap();
        d.set_access(va, 2 * g, &rw).unwrap();
        d.set_access(second, 2 * g, &rw).unwrap();
        d.fill(va, 0xAB, 2 * g, Stream::DEFAULT).unwrap();
        d.copy(back.as_mut_ptr() as u64, second, 2 * g, Stream::DEFAULT)
            .unwrap();
        assert!(back.iter().all(|&b| b == 0xAB));
        assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::ReadWrite);
        d.unmap(va, 2 * g).unwrap();
        d.unmap(second, 2 * g).unwrap();
    }
    d.release(h).unwrap();
    // SAFETY: no mapping is left; nothing uses the range.
    unsafe { d.free_reservation(va, 8 * g).unwrap() };
    assert!(d.is_clean());
}

#[test]
fn partial_unmap_is_refused() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(2 * g, Location::Device(d.device())).unwrap();
    // SAFETY: the range is ours; nothing uses it.
    unsafe {
        d.map(va, 2 * g, 0, h).unwrap();
        assert_eq!(kind(d.unmap(va, g)), ErrorKind::InvalidValue);
        assert_eq!(kind(d.unmap(va + g as u64, g)), ErrorKind::InvalidValue);
        // The refusal changed nothing: the whole mapping still unmaps.
        d.unmap(va, 2 * g).unwrap();
        d.release(h).unwrap();
        d.free_reservation(va, 4 * g).unwrap();
    }
    assert!(d.is_clean());
}

#[test]
fn nonzero_offset_is_refused() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(2 * g, Location::Device(d.device())).unwrap();
    // SAFETY: the range is ours and unmapped.
    unsafe {
        assert_eq!(kind(d.map(va, g, g, h)), ErrorKind::NotSupported);
        assert_eq!(kind(d.map(va, 2 * g, g, h)), ErrorKind::NotSupported);
        d.release(h).unwrap();
        d.free_reservation(va, 4 * g).unwrap();
    }
    assert!(d.is_clean());
}

#[test]
fn freeing_a_reservation_with_mappings_is_refused() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(g, Location::Device(d.device())).unwrap();
    // SAFETY: the range is ours; nothing uses it.
    unsafe {
        d.map(va + g as u64, g, 0, h).unwrap();
        assert_eq!(kind(d.free_reservation(va, 4 * g)), ErrorKind::InvalidValue);
        d.unmap(va + g as u64, g).unwrap();
        d.release(h).unwrap();
        d.free_reservation(va, 4 * g).unwrap();
    }
    assert!(d.is_clean());
}

#[test]
fn release_while_mapped_takes_effect_at_unmap() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let va = d.reserve(2 * g, 0).unwrap();
    let h = d.create(2 * g, Location::Device(d.device())).unwrap();
    // SAFETY: the range is ours; nothing uses it after the unmap.
    unsafe {
        d.map(va, 2 * g, 0, h).unwrap();
        d.set_access(
            va,
            2 * g,
            &[Access::read_write(Location::Device(d.device()))],
        )
        .unwrap();
    }
    d.release(h).unwrap();
    assert_eq!(d.physical_bytes(), 2 * g as u64);
    // Released once: a second release is refused.
    assert_eq!(kind(d.release(h)), ErrorKind::InvalidValue);
    // SAFETY: as above.
    unsafe {
        d.unmap(va, 2 * g).unwrap();
        assert_eq!(d.physical_bytes(), 0);
        d.free_reservation(va, 2 * g).unwrap();
    }
    assert!(d.is_clean());
}

#[test]
fn host_located_handle_is_cpu_readable() {
    let Some(d) = hip() else { return };
    if !d.capabilities().host_memory {
        println!("skipped: this HIP runtime has no host-located VMM memory");
        return;
    }
    let g = d.granularity(Location::Host).unwrap();
    let dev = Location::Device(d.device());
    let va = d.reserve(2 * g, 0).unwrap();
    let h = d.create(g, Location::Host).unwrap();
    // SAFETY: the range is ours, mapped with access for the device and the
    // CPU; nothing uses it after the unmap.
    unsafe {
        d.map(va, g, 0, h).unwrap();
        d.set_access(
            va,
            g,
            &[Access::read_write(dev), Access::read_write(Location::Host)],
        )
        .unwrap();
        d.fill(va, 0x5A, g, Stream::DEFAULT).unwrap();
        let p = va as *mut u8;
        assert_eq!(p.read_volatile(), 0x5A);
        assert_eq!(p.add(g - 1).read_volatile(), 0x5A);
        p.add(7).write_volatile(0x11);
        let mut back = [0u8; 8];
        d.copy(back.as_mut_ptr() as u64, va, 8, Stream::DEFAULT)
            .unwrap();
        assert_eq!(back[7], 0x11);
        d.unmap(va, g).unwrap();
    }
    d.release(h).unwrap();
    // SAFETY: no mapping is left.
    unsafe { d.free_reservation(va, 2 * g).unwrap() };
    assert!(d.is_clean());
}

#[test]
fn fences_record_complete_and_wait() {
    let Some(d) = hip() else { return };
    let f = d.record(Stream::DEFAULT).unwrap();
    d.wait(&f).unwrap();
    assert!(d.is_complete(&f).unwrap());
    d.drop_fence(f);

    // Work on a stream of our own, fenced; the fence completes after a wait.
    let g = d.capabilities().granularity;
    let s = d.create_stream().unwrap();
    let va = d.reserve(g, 0).unwrap();
    let h = d.create(g, Location::Device(d.device())).unwrap();
    // SAFETY: the range is ours; the stream's work is waited for before the
    // unmap; the stream is not used after it is destroyed.
    unsafe {
        d.map(va, g, 0, h).unwrap();
        d.set_access(va, g, &[Access::read_write(Location::Device(d.device()))])
            .unwrap();
        d.fill(va, 1, g, s).unwrap();
        let f = d.record(s).unwrap();
        let _ = d.is_complete(&f).unwrap(); // never blocks, either answer is fine
        d.wait(&f).unwrap();
        assert!(d.is_complete(&f).unwrap());
        d.drop_fence(f);
        d.unmap(va, g).unwrap();
        d.destroy_stream(s).unwrap();
    }
    d.release(h).unwrap();
    // SAFETY: no mapping is left.
    unsafe { d.free_reservation(va, g).unwrap() };
    assert!(d.is_clean());
}
