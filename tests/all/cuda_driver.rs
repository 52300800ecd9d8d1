//! The CUDA backend on a real GPU: the VMM rules measured on the H100, the
//! context rule, pinned host memory and event fences.
//!
//! Where no CUDA library or device is found every test prints
//! `skipped: <reason>` and passes (CI has no GPU).
#![cfg(feature = "cuda")]

use gpu_arena::driver::cuda::{CudaDriver, CudaHandle, sys};
use gpu_arena::driver::{
    Access, AccessMode, Driver, Location, Select, Stream, SystemDriver, round_up,
};
use gpu_arena::{Backend, Error, ErrorKind};

/// The driver for device 0, or `None` after printing why the test skips.
use crate::common::cuda;

fn kind<T: std::fmt::Debug>(r: gpu_arena::Result<T>) -> ErrorKind {
    r.expect_err("expected an error")
        .driver_kind()
        .expect("a driver error")
}

/// Copies `len` bytes at `va` to a host vector (default stream: complete on return).
fn read(d: &CudaDriver, va: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: callers pass a mapped range readable by the device; `buf` is a
    // distinct host allocation of `len` bytes.
    unsafe {
        d.copy(buf.as_mut_ptr() as u64, va, len, Stream::DEFAULT)
            .unwrap()
    };
    buf
}

fn read_u32(d: &CudaDriver, va: u64) -> u32 {
    u32::from_ne_bytes(read(d, va, 4).try_into().unwrap())
}

/// Reserve `size` bytes, create one handle at `location`, map it and give
/// read-write access to `access`.
fn commit(d: &CudaDriver, size: usize, location: Location, access: &[Access]) -> (u64, CudaHandle) {
    let va = d.reserve(size, 0).unwrap();
    let h = d.create(size, location).unwrap();
    // SAFETY: the range is the fresh reservation, unmapped.
    unsafe {
        d.map(va, size, 0, h).unwrap();
        d.set_access(va, size, access).unwrap();
    }
    (va, h)
}

/// Undo [`commit`].
fn decommit(d: &CudaDriver, va: u64, size: usize, h: CudaHandle) {
    // SAFETY: no work on the range is pending (callers waited) and nothing
    // touches it again.
    unsafe {
        d.unmap(va, size).unwrap();
        d.release(h).unwrap();
        d.free_reservation(va, size).unwrap();
    }
}

#[test]
fn opens_or_says_why() {
    match CudaDriver::new(0) {
        Ok(d) => {
            let c = *d.capabilities();
            println!(
                "cuda: driver {} caps {c:?} host {:?}",
                d.driver_version(),
                d.host_kind()
            );
            assert_eq!(c.backend, Backend::Cuda);
            assert!(c.granularity.is_power_of_two());
            assert!(c.recommended_granularity >= c.granularity);
            assert!(c.device_count >= 1);
            assert!(c.device_memory > 0);
            assert_eq!(c.max_reservation, 64 << 40);
            assert!(!c.cpu_reads_device_memory);
            assert_eq!(c.peer_access, c.device_count > 1);
            assert_eq!(c.host_memory, d.host_kind().is_some());
            assert_eq!(d.granularity(Location::Device(0)).unwrap(), c.granularity);
            assert_eq!(
                kind(CudaDriver::new(c.device_count)),
                ErrorKind::InvalidValue
            );
        }
        Err(e) => {
            println!("skipped: no usable CUDA device ({e})");
            match &e {
                Error::Driver(de) => assert_eq!(de.kind, ErrorKind::NoDevice, "{e}"),
                Error::Unsupported(_) => {}
                other => panic!("unexpected error {other}"),
            }
            // Opening again, or another ordinal, still never panics.
            assert!(CudaDriver::new(3).is_err());
        }
    }
}

#[test]
fn the_driver_names_its_own_codes() {
    use gpu_arena::driver::cuda::result;
    let Some(_d) = cuda() else {
        return;
    };
    // The probe passed: the driver names every code it knows, these too.
    let e = result::error(gpu_arena::Call::QueryFence, 700);
    assert_eq!(e.code_name(), "CUDA_ERROR_ILLEGAL_ADDRESS");
    let description = e.description().expect("cuGetErrorString describes 700");
    let msg = e.to_string();
    println!("cuda: {msg}");
    assert!(
        msg.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && msg.contains(description),
        "{msg}"
    );
    assert_eq!(
        result::error(gpu_arena::Call::Map, 1).code_name(),
        "CUDA_ERROR_INVALID_VALUE"
    );
    // A code the driver does not know is refused by it, never undefined behaviour.
    assert_eq!(
        result::error(gpu_arena::Call::Map, 123_456).code_name(),
        "CUresult"
    );
}

#[test]
fn system_driver_picks_cuda_or_falls_back_to_host() {
    let mut notes = Vec::new();
    let d = SystemDriver::open(Select::Auto, 0, |n| notes.push(n.to_owned())).unwrap();
    let expect = if CudaDriver::new(0).is_ok() {
        Backend::Cuda
    } else {
        Backend::Host
    };
    assert_eq!(d.capabilities().backend, expect, "{notes:?}");
    if expect == Backend::Host {
        assert!(notes.iter().any(|n| n.contains("CUDA")), "{notes:?}");
        assert!(SystemDriver::open(Select::Cuda, 0, |_| {}).is_err());
    }
}

#[test]
fn map_fill_and_read_back_through_a_second_mapping() {
    let Some(d) = cuda() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let rw = [Access::read_write(dev)];
    let va = d.reserve(8 * g, 0).unwrap();
    let vb = va + 4 * g as u64;
    let h = d.create(2 * g, dev).unwrap();
    assert_eq!(d.live_handles(), 1);
    // SAFETY: both ranges lie in our reservation and are unmapped.
    unsafe {
        d.map(va, 2 * g, 0, h).unwrap();
        d.map(vb, 2 * g, 0, h).unwrap();
    }
    assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::None);
    // SAFETY: whole mappings; no one loses rights.
    unsafe {
        d.set_access(va, 2 * g, &rw).unwrap();
        d.set_access(vb, 2 * g, &rw).unwrap();
    }
    assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::ReadWrite);
    // Default stream: complete on return.
    // SAFETY: mapped read-write for the device.
    unsafe { d.fill(va, 0xAB, 2 * g, Stream::DEFAULT).unwrap() };
    assert!(read(&d, vb, 2 * g).iter().all(|&b| b == 0xAB));

    // A stream of our own: stream order, then one fence.
    let s = d.create_stream().unwrap();
    let mut buf = vec![0u8; 2 * g];
    // SAFETY: mapped read-write; `buf` outlives the wait below.
    unsafe {
        d.fill(vb + g as u64, 0xCD, g, s).unwrap();
        d.copy(buf.as_mut_ptr() as u64, va, 2 * g, s).unwrap();
    }
    let f = d.record(s).unwrap();
    d.wait(&f).unwrap();
    assert!(d.is_complete(&f).unwrap());
    d.drop_fence(f);
    assert!(buf[..g].iter().all(|&b| b == 0xAB));
    assert!(buf[g..].iter().all(|&b| b == 0xCD));
    // SAFETY: the stream is idle and not used again.
    unsafe { d.destroy_stream(s).unwrap() };

    // SAFETY: nothing is pending on the ranges.
    unsafe {
        d.unmap(va, 2 * g).unwrap();
        d.unmap(vb, 2 * g).unwrap();
        d.release(h).unwrap();
        d.free_reservation(va, 8 * g).unwrap();
    }
    assert_eq!(d.live_handles(), 0);
}

#[test]
fn driver_rules_and_refusals() {
    let Some(d) = cuda() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let rw = [Access::read_write(dev)];

    assert_eq!(kind(d.reserve(0, 0)), ErrorKind::InvalidValue);
    assert_eq!(kind(d.reserve(128 << 40, 0)), ErrorKind::OutOfMemory);
    let mem = d.capabilities().device_memory;
    let too_big = round_up(2 * mem, g as u64).unwrap() as usize;
    assert_eq!(kind(d.create(too_big, dev)), ErrorKind::OutOfMemory);
    assert_eq!(kind(d.create(0, dev)), ErrorKind::InvalidValue);
    assert_eq!(
        kind(d.create(g, Location::Device(99))),
        ErrorKind::InvalidValue
    );

    let va = d.reserve(4 * g, 0).unwrap();
    let h = d.create(2 * g, dev).unwrap();
    // SAFETY: ranges lie in our reservation; refused calls change nothing.
    unsafe {
        assert_eq!(kind(d.map(va, g, g, h)), ErrorKind::NotSupported);
        assert_eq!(kind(d.map(va, 2 * g, g, h)), ErrorKind::NotSupported);
        d.map(va, 2 * g, 0, h).unwrap();
        assert_eq!(kind(d.map(va, 2 * g, 0, h)), ErrorKind::InvalidValue);
        // A HOST descriptor on device memory is refused, and the device's
        // rights listed first are not half-applied (host goes first).
        let both = [Access::read_write(dev), Access::read_write(Location::Host)];
        assert_eq!(
            kind(d.set_access(va, 2 * g, &both)),
            ErrorKind::NotSupported
        );
        assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::None);
        assert_eq!(kind(d.set_access(va, g, &rw)), ErrorKind::InvalidValue);
        assert_eq!(kind(d.set_access(va, 2 * g, &[])), ErrorKind::InvalidValue);
        assert_eq!(
            kind(d.set_access(va, 2 * g, &[rw[0]; 17])),
            ErrorKind::InvalidValue
        );
        d.set_access(va, 2 * g, &[Access::read(dev)]).unwrap();
        assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::Read);
        d.set_access(va, 2 * g, &rw).unwrap();
        // Partial unmap and freeing a reservation with mappings are refused.
        assert_eq!(kind(d.unmap(va, g)), ErrorKind::InvalidValue);
        assert_eq!(kind(d.free_reservation(va, 4 * g)), ErrorKind::InvalidValue);
        // Stale and bogus handles never reach the driver (it would crash).
        d.release(h).unwrap();
        assert_eq!(kind(d.release(h)), ErrorKind::InvalidValue);
        assert_eq!(
            kind(d.map(va + 2 * g as u64, 2 * g, 0, h)),
            ErrorKind::InvalidValue
        );
        assert_eq!(
            kind(d.map(va + 2 * g as u64, 2 * g, 0, CudaHandle(12345))),
            ErrorKind::InvalidValue
        );
        assert_eq!(kind(d.release(CudaHandle(0))), ErrorKind::InvalidValue);
        d.unmap(va, 2 * g).unwrap();
        d.free_reservation(va, 4 * g).unwrap();
        assert_eq!(
            kind(d.destroy_stream(Stream::DEFAULT)),
            ErrorKind::InvalidHandle
        );
    }
    assert_eq!(d.live_handles(), 0);
}

#[test]
fn release_while_mapped_takes_effect_at_unmap() {
    let Some(d) = cuda() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let (va, h) = commit(&d, 2 * g, dev, &[Access::read_write(dev)]);
    d.release(h).unwrap();
    assert_eq!(d.live_handles(), 0);
    // Still mapped and usable until the unmap.
    // SAFETY: the mapping is still read-write for the device.
    unsafe { d.fill(va, 0x5A, 2 * g, Stream::DEFAULT).unwrap() };
    assert!(read(&d, va, 2 * g).iter().all(|&b| b == 0x5A));
    assert_eq!(d.get_access(va, dev).unwrap(), AccessMode::ReadWrite);
    // SAFETY: nothing is pending on the range.
    unsafe {
        d.unmap(va, 2 * g).unwrap();
        d.free_reservation(va, 2 * g).unwrap();
    }
}

#[test]
fn host_located_memory_is_shared_by_cpu_and_gpu() {
    let Some(d) = cuda() else { return };
    if !d.capabilities().host_memory {
        println!("skipped: this driver cannot create CPU-accessible host-located VMM memory");
        return;
    }
    println!("cuda: host-located memory uses {:?}", d.host_kind());
    let g = d.granularity(Location::Host).unwrap();
    let dev = Location::Device(d.device());
    let access = [Access::read_write(dev), Access::read_write(Location::Host)];
    let (va, h) = commit(&d, g, Location::Host, &access);
    assert_eq!(
        d.get_access(va, Location::Host).unwrap(),
        AccessMode::ReadWrite
    );
    let n = g / 4;
    let p = va as *mut u32;
    for i in 0..n {
        // SAFETY: the range is mapped read-write for the CPU and `i < n`.
        unsafe { p.add(i).write_volatile(i as u32) };
    }
    let k = d.kernels().unwrap();
    let s = d.create_stream().unwrap();
    // SAFETY: mapped read-write for the device until the wait below.
    unsafe { k.add_one(s, va, n as u64).unwrap() };
    let f = d.record(s).unwrap();
    d.wait(&f).unwrap();
    d.drop_fence(f);
    for i in 0..n {
        // SAFETY: as above; the kernel has completed.
        assert_eq!(unsafe { p.add(i).read_volatile() }, i as u32 + 1, "at {i}");
    }
    // The device's fill is seen by the CPU once complete.
    // SAFETY: as above.
    unsafe { d.fill(va, 0x11, g, Stream::DEFAULT).unwrap() };
    // SAFETY: as above.
    assert_eq!(unsafe { p.add(n - 1).read_volatile() }, 0x1111_1111);
    // SAFETY: the stream is idle and not used again.
    unsafe { d.destroy_stream(s).unwrap() };
    decommit(&d, va, g, h);
}

#[test]
fn fences_follow_a_long_kernel_and_wait_on_one_fence_only() {
    let Some(d) = cuda() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let (va, h) = commit(&d, g, dev, &[Access::read_write(dev)]);
    // SAFETY: mapped read-write.
    unsafe { d.fill(va, 0, g, Stream::DEFAULT).unwrap() };
    let k = d.kernels().unwrap();
    println!(
        "cuda: test kernels JIT-compiled from PTX target {}",
        k.target()
    );
    let s1 = d.create_stream().unwrap();
    let s2 = d.create_stream().unwrap();

    // SAFETY: the flag is mapped read-write until the waits below.
    unsafe { k.spin(s1, 200_000_000, va, 7).unwrap() };
    let long = d.record(s1).unwrap();
    assert!(!d.is_complete(&long).unwrap(), "a 200 ms kernel is running");

    // Work on another stream completes and is waited on alone.
    // SAFETY: mapped read-write; s2 does not touch the flag.
    unsafe { d.fill(va + 64, 0x22, 64, s2).unwrap() };
    let short = d.record(s2).unwrap();
    d.wait(&short).unwrap();
    assert!(d.is_complete(&short).unwrap());
    // A default-stream copy does not wait for the non-blocking stream.
    assert_eq!(read_u32(&d, va), 0, "spin kernel already done?");
    assert!(
        !d.is_complete(&long).unwrap(),
        "waiting one fence waited all"
    );

    let t = std::time::Instant::now();
    d.wait(&long).unwrap();
    println!(
        "cuda: waited {:?} for the rest of the 200 ms kernel",
        t.elapsed()
    );
    assert!(d.is_complete(&long).unwrap());
    assert_eq!(read_u32(&d, va), 7);
    d.drop_fence(long);
    d.drop_fence(short);

    // Events are pooled: recording again makes no new event.
    let made = d.events_created();
    for _ in 0..100 {
        let f = d.record(s1).unwrap();
        d.wait(&f).unwrap();
        d.drop_fence(f);
    }
    assert_eq!(d.events_created(), made);
    assert_eq!(d.events_pooled(), made);

    // SAFETY: both streams are idle and not used again.
    unsafe {
        d.destroy_stream(s1).unwrap();
        d.destroy_stream(s2).unwrap();
    }
    decommit(&d, va, g, h);
}

#[test]
fn stream_ordered_reuse_sees_its_own_writes() {
    let Some(d) = cuda() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    let (va, h) = commit(&d, 2 * g, dev, &[Access::read_write(dev)]);
    let n = (g / 4) as u64;
    let errors = va + g as u64;
    let k = d.kernels().unwrap();
    let s = d.create_stream().unwrap();
    // SAFETY: all ranges are mapped read-write until the wait below; one
    // stream orders every step.
    unsafe {
        d.fill(va, 0, 2 * g, s).unwrap();
        for _ in 0..3 {
            k.add_one(s, va, n).unwrap();
        }
        k.check_and_write(s, va, n, 3, 9, errors).unwrap();
        // Again, now expecting the 9s just written: no error either.
        k.check_and_write(s, va, n, 9, 10, errors).unwrap();
        // And a wrong expectation counts every element.
        k.check_and_write(s, va, n, 3, 11, errors + 4).unwrap();
    }
    let f = d.record(s).unwrap();
    d.wait(&f).unwrap();
    d.drop_fence(f);
    assert_eq!(read_u32(&d, errors), 0);
    assert_eq!(read_u32(&d, errors + 4), n as u32);
    let words = read(&d, va, g);
    assert!(
        words
            .chunks_exact(4)
            .all(|w| u32::from_ne_bytes(w.try_into().unwrap()) == 11)
    );
    // SAFETY: the stream is idle and not used again.
    unsafe { d.destroy_stream(s).unwrap() };
    decommit(&d, va, 2 * g, h);
}

#[test]
fn threads_without_a_current_context_work() {
    let Some(d) = cuda() else { return };
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    std::thread::scope(|sc| {
        for t in 0..4u8 {
            let d = &d;
            sc.spawn(move || {
                // A fresh thread: no context is current here.
                let (va, h) = commit(d, g, dev, &[Access::read_write(dev)]);
                // SAFETY: mapped read-write.
                unsafe { d.fill(va, t, g, Stream::DEFAULT).unwrap() };
                assert!(read(d, va, g).iter().all(|&b| b == t));
                let f = d.record(Stream::DEFAULT).unwrap();
                d.wait(&f).unwrap();
                d.drop_fence(f);
                decommit(d, va, g, h);
            });
        }
    });
    assert_eq!(d.live_handles(), 0);
}

#[test]
fn a_foreign_current_context_is_left_current() {
    let Some(d) = cuda() else { return };
    // SAFETY: the driver opened, so libcuda is loaded; looking a symbol up
    // calls nothing.
    let has = unsafe { sys::culib().get::<unsafe extern "C" fn()>(b"cuCtxCreate_v2") }.is_ok();
    if !has {
        println!("skipped: this driver lacks cuCtxCreate_v2");
        return;
    }
    let mut foreign: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer; device 0 exists; the context is destroyed
    // below. cuCtxCreate makes it current on this thread.
    let r = unsafe { sys::cuCtxCreate_v2(&mut foreign, 0, 0) };
    if r != sys::CUresult::CUDA_SUCCESS {
        println!("skipped: cuCtxCreate failed ({r:?})");
        return;
    }
    let g = d.capabilities().granularity;
    let dev = Location::Device(d.device());
    // Events and the default stream belong to the driver's primary context:
    // it is pushed over the foreign one for each call, then popped.
    let (va, h) = commit(&d, g, dev, &[Access::read_write(dev)]);
    // SAFETY: mapped read-write.
    unsafe { d.fill(va, 0x77, g, Stream::DEFAULT).unwrap() };
    assert!(read(&d, va, g).iter().all(|&b| b == 0x77));
    let f = d.record(Stream::DEFAULT).unwrap();
    d.wait(&f).unwrap();
    d.drop_fence(f);
    decommit(&d, va, g, h);
    let mut cur: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: valid out-pointer.
    unsafe { sys::cuCtxGetCurrent(&mut cur) };
    assert_eq!(cur, foreign, "the caller's context must stay current");
    assert_ne!(cur, d.context());
    // SAFETY: our own context, current on this thread and used no more.
    unsafe { sys::cuCtxDestroy_v2(foreign) };
}
