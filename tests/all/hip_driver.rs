//! The HIP backend follows the driver rules measured on the H100.
//!
//! Each test opens device 0. CI runs them against the stand-in
//! `libamdhip64` of `tests/support/hip-shim` (with `GPU_ARENA_REQUIRE_HIP=1`:
//! no skipping); elsewhere, without a HIP runtime, they print
//! `skipped: <reason>` and pass. Tests that need the stand-in's hooks
//! (failure injection, held streams) say so and skip on a real ROCm.

use gpu_arena::ErrorKind;
use gpu_arena::driver::hip::HipDriver;
use gpu_arena::driver::{Access, AccessMode, Driver, Location, Stream};

use crate::common::{hip, hip_required, hip_rt};

fn kind<T: std::fmt::Debug>(r: gpu_arena::Result<T>) -> ErrorKind {
    r.expect_err("expected an error")
        .driver_kind()
        .expect("a driver error")
}

#[test]
fn no_device_is_a_clear_error_not_a_panic() {
    match HipDriver::new(0) {
        Ok(d) => println!(
            "HIP device 0 opened ({}): {:?}",
            hip_rt::shim().unwrap_or_else(|| "ROCm".to_owned()),
            d.capabilities()
        ),
        Err(e) => {
            assert!(!hip_required(), "GPU_ARENA_REQUIRE_HIP is set: {e}");
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
        // ROCm's hipMemGetAccess refuses a host location: the backend
        // answers the CPU's rights from its own record.
        assert_eq!(
            d.get_access(va, Location::Host).unwrap(),
            AccessMode::ReadWrite
        );
        assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::ReadWrite);
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

/// Where the loaded library can inject failures (the stand-in's
/// `hipShimFailNext`), `Some(driver)`; else `None` after saying why.
fn hip_with_faults() -> Option<HipDriver> {
    let d = hip()?;
    if hip_rt::fail_next(c"hipMemMap", 0, 0) {
        Some(d)
    } else {
        println!("skipped: the loaded libamdhip64 cannot inject failures (a real ROCm)");
        None
    }
}

/// One reservation of `n` granules with a handle of `m` granules mapped
/// read-write at its start.
fn mapped(d: &HipDriver, n: usize, m: usize) -> (u64, gpu_arena::driver::hip::HipHandle) {
    let g = d.capabilities().granularity;
    let va = d.reserve(n * g, 0).unwrap();
    let h = d.create(m * g, Location::Device(d.device())).unwrap();
    // SAFETY: a fresh reservation; nothing else uses it.
    unsafe {
        d.map(va, m * g, 0, h).unwrap();
        d.set_access(
            va,
            m * g,
            &[Access::read_write(Location::Device(d.device()))],
        )
        .unwrap();
    }
    (va, h)
}

#[test]
fn set_access_retries_one_spurious_invalid_value() {
    let Some(d) = hip_with_faults() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let (va, h) = mapped(&d, 2, 2);
    // SAFETY: the mapping is ours; nothing uses it.
    unsafe {
        // One failure (rocm-systems#2667: set-access racing the map): retried.
        assert!(hip_rt::fail_next(c"hipMemSetAccess", 1, 1));
        d.set_access(va, 2 * g, &[Access::read(dev)]).unwrap();
        assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::Read);
        // Two in a row: reported, and nothing changed.
        assert!(hip_rt::fail_next(c"hipMemSetAccess", 2, 1));
        let e = d.set_access(va, 2 * g, &[Access::read_write(dev)]);
        assert_eq!(kind(e), ErrorKind::InvalidValue);
        assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::Read);
        d.unmap(va, 2 * g).unwrap();
    }
    d.release(h).unwrap();
    // SAFETY: no mapping is left.
    unsafe { d.free_reservation(va, 2 * g).unwrap() };
    assert!(d.is_clean());
}

#[test]
fn failed_runtime_calls_change_nothing() {
    let Some(d) = hip_with_faults() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let rw = [Access::read_write(dev)];
    // reserve: a real exhaustion is out-of-memory (a size that is not a
    // multiple of the granularity never reaches the runtime).
    assert!(hip_rt::fail_next(c"hipMemAddressReserve", 1, 2));
    assert_eq!(kind(d.reserve(4 * g, 0)), ErrorKind::OutOfMemory);
    assert!(d.is_clean());
    // create: out-of-memory, nothing recorded.
    assert!(hip_rt::fail_next(c"hipMemCreate", 1, 2));
    assert_eq!(kind(d.create(g, dev)), ErrorKind::OutOfMemory);
    assert_eq!(d.physical_bytes(), 0);
    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(2 * g, dev).unwrap();
    // SAFETY: the range is ours; every refused or failed call changes
    // nothing, which is what is checked.
    unsafe {
        // map: rolled back, so the same map then succeeds.
        assert!(hip_rt::fail_next(c"hipMemMap", 1, 2));
        assert_eq!(kind(d.map(va, 2 * g, 0, h)), ErrorKind::OutOfMemory);
        d.map(va, 2 * g, 0, h).unwrap();
        d.set_access(va, 2 * g, &rw).unwrap();
        d.fill(va, 0x77, 2 * g, Stream::DEFAULT).unwrap();
        // unmap: the mapping stays, with its bytes.
        assert!(hip_rt::fail_next(c"hipMemUnmap", 1, 1));
        assert_eq!(kind(d.unmap(va, 2 * g)), ErrorKind::InvalidValue);
        let mut b = [0u8; 16];
        d.copy(b.as_mut_ptr() as u64, va + g as u64, 16, Stream::DEFAULT)
            .unwrap();
        assert_eq!(b, [0x77; 16]);
        d.unmap(va, 2 * g).unwrap();
        // free_reservation: still reserved, freed on the next try.
        assert!(hip_rt::fail_next(c"hipMemAddressFree", 1, 1));
        assert_eq!(kind(d.free_reservation(va, 4 * g)), ErrorKind::InvalidValue);
        d.free_reservation(va, 4 * g).unwrap();
    }
    // release: the handle stays live and is released on the next try.
    assert!(hip_rt::fail_next(c"hipMemRelease", 1, 1));
    assert_eq!(kind(d.release(h)), ErrorKind::InvalidValue);
    d.release(h).unwrap();
    assert!(d.is_clean());
}

/// ROCm's hipMemUnmap and hipMemSetAccess take a range that starts at a
/// mapping and covers whole adjacent mappings: the backend calls them once
/// per mapping, so a range with holes (allowed by the contract, as on CUDA)
/// works there too. The stand-in refuses holes as ROCm does.
#[test]
fn ranges_with_several_mappings_and_holes_work_mapping_by_mapping() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let gu = g as u64;
    let dev = Location::Device(d.device());
    let va = d.reserve(8 * g, 0).unwrap();
    let hs: Vec<_> = [2usize, 1, 1]
        .iter()
        .map(|m| d.create(m * g, dev).unwrap())
        .collect();
    // SAFETY: the range is ours; nothing uses it after the unmap.
    unsafe {
        // [0, 2) and [2, 3) adjacent; [5, 6) after a hole.
        d.map(va, 2 * g, 0, hs[0]).unwrap();
        d.map(va + 2 * gu, g, 0, hs[1]).unwrap();
        d.map(va + 5 * gu, g, 0, hs[2]).unwrap();
        // One set-access over two adjacent mappings.
        d.set_access(va, 3 * g, &[Access::read_write(dev)]).unwrap();
        assert_eq!(
            d.get_access(va + 2 * gu, dev).unwrap(),
            AccessMode::ReadWrite
        );
        d.set_access(va + 5 * gu, g, &[Access::read(dev)]).unwrap();
        // One unmap over everything, holes included.
        d.unmap(va, 8 * g).unwrap();
        d.free_reservation(va, 8 * g).unwrap();
    }
    for h in hs {
        d.release(h).unwrap();
    }
    assert!(d.is_clean());
}

#[test]
fn a_fence_of_busy_work_stays_pending_until_it_completes() {
    let Some(d) = hip() else { return };
    let s = d.create_stream().unwrap();
    if !hip_rt::hold(s.0) {
        println!("skipped: the loaded libamdhip64 cannot hold a stream (a real ROCm)");
        // SAFETY: the stream is idle and not used again.
        unsafe { d.destroy_stream(s).unwrap() };
        return;
    }
    let f = d.record(s).unwrap();
    assert!(!d.is_complete(&f).unwrap(), "held work is pending");
    assert!(!d.is_complete(&f).unwrap(), "is_complete never waits");
    let other = d.record(Stream::DEFAULT).unwrap();
    assert!(d.is_complete(&other).unwrap() || d.wait(&other).is_ok());
    assert!(hip_rt::complete(s.0));
    assert!(d.is_complete(&f).unwrap());
    d.drop_fence(f);
    d.drop_fence(other);
    // Waiting ends held work too (as it would end a kernel).
    assert!(hip_rt::hold(s.0));
    let f = d.record(s).unwrap();
    d.wait(&f).unwrap();
    assert!(d.is_complete(&f).unwrap());
    d.drop_fence(f);
    // SAFETY: the stream is idle and not used again.
    unsafe { d.destroy_stream(s).unwrap() };
}

#[test]
fn a_released_handle_value_may_come_back() {
    let Some(d) = hip() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    // ROCm's handles are pointers to runtime objects: a value may be handed
    // out again once released, and the backend must treat it as new.
    let mut seen = std::collections::HashSet::new();
    let mut again = false;
    for _ in 0..16 {
        let h = d.create(g, dev).unwrap();
        again |= !seen.insert(h);
        d.release(h).unwrap();
        assert_eq!(kind(d.release(h)), ErrorKind::InvalidValue);
    }
    println!("a released handle value was handed out again: {again}");
    assert!(d.is_clean());
}

/// The contract: a copy on the default stream has completed when `copy`
/// returns. ROCm's hipMemcpy returns before a device-to-device copy has run
/// (as CUDA's cuMemcpy may), and the stand-in does the same.
#[test]
fn a_default_stream_copy_has_completed_on_return() {
    let Some(d) = hip() else { return };
    const LEN: usize = 256 << 20;
    let dev = Location::Device(d.device());
    let rw = [Access::read_write(dev)];
    let va = d.reserve(2 * LEN, 0).unwrap();
    let (a, b) = (d.create(LEN, dev).unwrap(), d.create(LEN, dev).unwrap());
    let dst = va + LEN as u64;
    // SAFETY: both ranges are ours, mapped read-write; nothing else uses
    // them; the host buffer is our own.
    unsafe {
        d.map(va, LEN, 0, a).unwrap();
        d.map(dst, LEN, 0, b).unwrap();
        d.set_access(va, 2 * LEN, &rw).unwrap();
        d.fill(va, 0x3C, LEN, Stream::DEFAULT).unwrap();
        d.copy(dst, va, LEN, Stream::DEFAULT).unwrap();
        let f = d.record(Stream::DEFAULT).unwrap();
        let done = d.is_complete(&f).unwrap();
        d.wait(&f).unwrap();
        d.drop_fence(f);
        assert!(
            done,
            "the device-to-device copy was still running when copy() returned"
        );
        let mut tail = [0u8; 64];
        d.copy(
            tail.as_mut_ptr() as u64,
            dst + (LEN - 64) as u64,
            64,
            Stream::DEFAULT,
        )
        .unwrap();
        assert_eq!(tail, [0x3C; 64]);
        d.unmap(va, 2 * LEN).unwrap();
        d.free_reservation(va, 2 * LEN).unwrap();
    }
    d.release(a).unwrap();
    d.release(b).unwrap();
    assert!(d.is_clean());
}
