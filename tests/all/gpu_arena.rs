//! The arena on a real GPU, through [`SharedArena`] and
//! [`GrowBuffer`] over the CUDA backend:
//!
//! a. freeing blocks while a 0.5 s kernel runs returns in microseconds, and
//!    the pages of the block the kernel uses are unmapped only after its
//!    fence completed (the `checked` layer's call log shows it), against
//!    `cuMemAlloc` + `cuMemFree` measured in the same run;
//! b. a pinned-host arena backs an `allocator_api2` `Vec<f32>` that the CPU
//!    writes, a kernel modifies, and the CPU reads back in place;
//! c. a growable buffer grows from 1 GiB to 32 GiB without a copy (stable
//!    base, marker kept, peak physical = final size), against alloc-new +
//!    copy + free-old with `cuMemAlloc` / `cuMemcpyDtoD` / `cuMemFree`;
//! d. the global arena reuses a block across streams only after its free's
//!    fence, and a tag's first offload finds its pinned memory obtained in
//!    the background;
//! e. a tag's blocks get one handle each (the default tag's first ones one
//!    per page), so its first sleep gives back few.
//!
//! Figures are printed (`docs/gpu-arena-h100.md`), never asserted on.
//! Where no CUDA device is found every test prints `skipped: <reason>` and
//! passes.

use std::time::{Duration, Instant};

use allocator_api2::vec::Vec as AVec;
use gpu_arena::driver::checked::LogEntry;
use gpu_arena::driver::cuda::{CudaDriver, sys};
use gpu_arena::driver::{Checked, Driver, Op, Stream};
use gpu_arena::{ArenaConfig, DevicePtr, GrowBuffer, Kind, SharedArena};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The driver for device 0, or `None` after printing why the test skips.
use crate::common::cuda;

/// Makes the driver's primary context current for raw `sys` calls.
fn make_current(d: &CudaDriver) {
    // SAFETY: the driver opened, so libcuda is loaded and the context retained.
    let r = unsafe { sys::cuCtxSetCurrent(d.context()) };
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "cuCtxSetCurrent");
}

/// Device memory in use (total − free from `cuMemGetInfo`).
fn gpu_used(d: &CudaDriver) -> i64 {
    make_current(d);
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: context current; valid out-pointers.
    let r = unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) };
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "cuMemGetInfo");
    (total - free) as i64
}

/// `len` bytes at `va`, copied to the host (default stream: complete on return).
fn read<D: Driver>(d: &D, va: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // SAFETY: callers pass a mapped range the device may read; `buf` is a
    // distinct host allocation of `len` bytes.
    unsafe {
        d.copy(buf.as_mut_ptr() as u64, va, len, Stream::DEFAULT)
            .expect("copy to host")
    };
    buf
}

/// Copies `bytes` from the host to `va` (default stream: complete on return).
fn write<D: Driver>(d: &D, va: u64, bytes: &[u8]) {
    // SAFETY: callers pass a mapped range the device may write.
    unsafe {
        d.copy(va, bytes.as_ptr() as u64, bytes.len(), Stream::DEFAULT)
            .expect("copy to device")
    };
}

fn words(buf: &[u8]) -> impl Iterator<Item = u32> + '_ {
    buf.chunks_exact(4)
        .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn overlaps(e: &LogEntry, va: DevicePtr, len: u64) -> bool {
    let va = va.addr();
    e.va < va + len && va < e.va + e.size
}

/// Bytes of `va..va + len` that the successful unmaps in `log` took away.
fn unmaps_of(log: &[LogEntry], va: DevicePtr, len: u64) -> u64 {
    log.iter()
        .filter(|e| e.op == Op::Unmap && e.ok && overlaps(e, va, len))
        .map(|e| (e.va + e.size).min(va.addr() + len) - e.va.max(va.addr()))
        .sum()
}

const SPIN_NANOS: u64 = 500_000_000;
const VALUE: u32 = 0x00C0_FFEE;

#[test]
fn free_during_a_running_kernel_returns_at_once_and_unmaps_after_its_fence() {
    let Some(d) = cuda() else { return };
    let cuda = Checked::new(d);
    let k = cuda.inner().kernels().expect("kernels");
    let page = cuda.capabilities().granularity as u64;
    let arena = SharedArena::new(
        &cuda,
        Kind::Device(0),
        ArenaConfig {
            reservation: 16 * GIB,
            ..Default::default()
        },
    )
    .expect("arena");
    let a = cuda.create_stream().expect("stream A");
    let b = cuda.create_stream().expect("stream B");
    const BLOCK: u64 = 64 * MIB;
    let n = BLOCK / 4;
    // X: used by the kernel on A, then freed on A while it runs.
    // Y: receives the kernel's result; kept.
    // Z1, Z2: used by nothing, freed on B. W: used by a fill on B, freed on B.
    let x = arena.alloc(BLOCK, page, a).expect("X");
    let y = arena.alloc(BLOCK, page, a).expect("Y");
    let z1 = arena.alloc(BLOCK, page, b).expect("Z1");
    let z2 = arena.alloc(BLOCK, page, b).expect("Z2");
    let w = arena.alloc(BLOCK, page, b).expect("W");
    let base = arena.lock().reservation().0;
    let name = |p: DevicePtr| match p {
        p if p == x => "X",
        p if p == y => "Y",
        p if p == z1 => "Z1",
        p if p == z2 => "Z2",
        p if p == w => "W",
        _ => "?",
    };
    println!(
        "[free-during-kernel] blocks of {} MiB at reservation offsets: X {:#x}, Y {:#x}, Z1 {:#x}, Z2 {:#x}, W {:#x}",
        BLOCK / MIB,
        x.offset_from(base),
        y.offset_from(base),
        z1.offset_from(base),
        z2.offset_from(base),
        w.offset_from(base)
    );

    // Stream A: zero X, spin 0.5 s then write VALUE into X[0], add 1 to
    // every word of X, copy X into Y. X must stay mapped until all of it ran.
    // SAFETY: X and Y are live blocks of this arena, mapped read-write for
    // device 0, and stay so until the fence below completed (that is what
    // is checked); W is live until its fill on B ran.
    unsafe {
        cuda.fill(x.addr(), 0, BLOCK as usize, a).expect("fill X");
        k.spin(a, SPIN_NANOS, x.addr(), VALUE).expect("spin");
        k.add_one(a, x.addr(), n).expect("add_one X");
        cuda.copy(y.addr(), x.addr(), BLOCK as usize, a)
            .expect("copy X -> Y");
        cuda.fill(w.addr(), 0x77, BLOCK as usize, b)
            .expect("fill W");
    }
    let kernel = cuda.record(a).expect("kernel fence");
    let launched = Instant::now();
    cuda.enable_log();

    // Free everything but Y while the kernel runs, timing each free.
    let mut frees = Vec::new();
    for (p, s, sname) in [(x, a, "A"), (z1, b, "B"), (z2, b, "B"), (w, b, "B")] {
        let t = Instant::now();
        arena.free(p, s).expect("free");
        frees.push((name(p), sname, t.elapsed()));
    }
    let t = Instant::now();
    let trimmed = arena.trim();
    let first_trim = t.elapsed();
    let running = !cuda.is_complete(&kernel).expect("query");
    let log1 = cuda.take_log();
    for (blk, s, dt) in &frees {
        println!(
            "[free-during-kernel] gpu-arena free of {blk} ({} MiB, stream {s}) while the kernel runs: {:.1} µs",
            BLOCK / MIB,
            us(*dt)
        );
    }
    println!(
        "[free-during-kernel] first trim() while the kernel runs: {:.1} µs, gave back {} MiB; kernel still running after it: {running} ({:.1} ms after launch)",
        us(first_trim),
        trimmed / MIB,
        ms(launched.elapsed())
    );
    assert!(
        running,
        "the 0.5 s kernel had already completed: the check below would be vacuous"
    );

    // Poll: trim, then query the kernel's fence. Any unmap of X in a trim
    // that ended while the fence was still pending would be a violation.
    let mut log = log1;
    let mut trims_while_running = 1u32;
    let mut x_unmapped_while_running = unmaps_of(&log, x, BLOCK);
    let mut b_unmapped_while_running = [z1, z2, w].map(|p| unmaps_of(&log, p, BLOCK) > 0);
    let mut b_given_back_at = [None::<Duration>; 3];
    for (i, seen) in b_unmapped_while_running.iter().enumerate() {
        if *seen {
            b_given_back_at[i] = Some(launched.elapsed());
        }
    }
    // The trim in which X goes back, and the fence's state just before it.
    let mut x_trim: Option<(bool, Duration)> = None;
    loop {
        let done_before = cuda.is_complete(&kernel).expect("query");
        arena.trim();
        let done = cuda.is_complete(&kernel).expect("query");
        let entries = cuda.take_log();
        if unmaps_of(&entries, x, BLOCK) > 0 {
            x_trim = Some((done_before, launched.elapsed()));
        }
        if done {
            log.extend(entries);
            break;
        }
        trims_while_running += 1;
        x_unmapped_while_running += unmaps_of(&entries, x, BLOCK);
        for (i, p) in [z1, z2, w].into_iter().enumerate() {
            if unmaps_of(&entries, p, BLOCK) > 0 && !b_unmapped_while_running[i] {
                b_unmapped_while_running[i] = true;
                b_given_back_at[i] = Some(launched.elapsed());
            }
        }
        log.extend(entries);
        std::thread::sleep(Duration::from_millis(2));
    }
    let completed_after = launched.elapsed();
    cuda.wait(&kernel).expect("kernel completed without error");
    let t = Instant::now();
    let last = arena.trim();
    let last_trim = t.elapsed();
    let tail = cuda.take_log();
    if unmaps_of(&tail, x, BLOCK) > 0 {
        x_trim = Some((true, launched.elapsed()));
    }
    let x_unmaps_total = unmaps_of(&log, x, BLOCK) + unmaps_of(&tail, x, BLOCK);
    log.extend(tail);
    println!(
        "[free-during-kernel] kernel fence completed {:.1} ms after launch; {trims_while_running} trim() calls while it ran; unmaps of X among them: {x_unmapped_while_running}",
        ms(completed_after)
    );
    for (i, blk) in ["Z1", "Z2", "W"].into_iter().enumerate() {
        println!(
            "[free-during-kernel] {blk} (freed on B) unmapped while the kernel on A still ran: {} (at {:.1} ms after launch)",
            b_unmapped_while_running[i],
            b_given_back_at[i].map_or(f64::NAN, ms)
        );
    }
    match x_trim {
        Some((done_before, at)) => println!(
            "[free-during-kernel] X unmapped by the trim() that ended {:.1} ms after launch; kernel fence complete before that trim began: {done_before}",
            ms(at)
        ),
        None => println!("[free-during-kernel] X was never unmapped"),
    }
    println!(
        "[free-during-kernel] trim() after the fence completed: {:.1} µs, gave back {} MiB; bytes of X unmapped in the whole log: {x_unmaps_total}",
        us(last_trim),
        last / MIB
    );
    println!("[free-during-kernel] call log (checked layer), from the first free on:");
    let at = |va: u64| {
        if va >= base.addr() && va < base.addr() + 16 * GIB {
            format!("base+{:#x} {}", va - base.addr(), name(DevicePtr::new(va)))
        } else {
            format!("{va:#x}")
        }
    };
    for e in &log {
        match e.op {
            Op::Record => println!(
                "[free-during-kernel]   Record on stream {:#x} ok {}",
                e.va, e.ok
            ),
            Op::Unmap | Op::Release | Op::Map | Op::Create | Op::SetAccess => println!(
                "[free-during-kernel]   {:?} va {} size {} MiB ok {}",
                e.op,
                at(e.va),
                e.size / MIB,
                e.ok
            ),
            _ => {}
        }
    }

    // The kernel's result, through Y.
    let out = read(&cuda, y.addr(), BLOCK as usize);
    let mut it = words(&out);
    let first = it.next().unwrap();
    let rest_ok = it.all(|v| v == 1);
    println!(
        "[free-during-kernel] result in Y: word 0 = {first:#x} (expected {:#x}), all other {} words = 1: {rest_ok}",
        VALUE + 1,
        n - 1
    );

    // Anchor, same run: cuMemAlloc + cuMemFree with the device idle (median
    // of 5), then while another stream runs the same 0.5 s kernel.
    make_current(cuda.inner());
    let (mut idle_alloc, mut idle_free) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let mut p: sys::CUdeviceptr = 0;
        let t = Instant::now();
        // SAFETY: context current; valid out-pointer.
        let ra = unsafe { sys::cuMemAlloc_v2(&mut p, BLOCK as usize) };
        idle_alloc.push(t.elapsed());
        assert_eq!(ra, sys::CUresult::CUDA_SUCCESS);
        let t = Instant::now();
        // SAFETY: `p` came from cuMemAlloc and nothing uses it.
        let rf = unsafe { sys::cuMemFree_v2(p) };
        idle_free.push(t.elapsed());
        assert_eq!(rf, sys::CUresult::CUDA_SUCCESS);
    }
    idle_alloc.sort();
    idle_free.sort();
    println!(
        "[free-during-kernel] anchor cuMemAlloc({} MiB) / cuMemFree with the device idle (median of 5): {:.1} µs / {:.1} µs",
        BLOCK / MIB,
        us(idle_alloc[2]),
        us(idle_free[2])
    );
    let c = cuda.create_stream().expect("stream C");
    // SAFETY: flag 0: the kernel writes nothing.
    unsafe { k.spin(c, SPIN_NANOS, 0, 0).expect("spin") };
    let spin = cuda.record(c).expect("fence");
    make_current(cuda.inner());
    let mut p: sys::CUdeviceptr = 0;
    let t = Instant::now();
    // SAFETY: context current; valid out-pointer.
    let ra = unsafe { sys::cuMemAlloc_v2(&mut p, BLOCK as usize) };
    let alloc = t.elapsed();
    let running_at_free = !cuda.is_complete(&spin).expect("query");
    let t = Instant::now();
    // SAFETY: `p` came from cuMemAlloc and nothing uses it.
    let rf = unsafe { sys::cuMemFree_v2(p) };
    let free = t.elapsed();
    let done_after_free = cuda.is_complete(&spin).expect("query");
    assert_eq!(ra, sys::CUresult::CUDA_SUCCESS);
    assert_eq!(rf, sys::CUresult::CUDA_SUCCESS);
    cuda.wait(&spin).expect("wait");
    println!(
        "[free-during-kernel] anchor cuMemAlloc({} MiB) while a 0.5 s kernel runs on another stream: {:.1} µs; cuMemFree: {:.1} ms (kernel running when it started: {running_at_free}, complete when it returned: {done_after_free})",
        BLOCK / MIB,
        us(alloc),
        ms(free)
    );
    let worst = frees.iter().map(|f| f.2).max().unwrap();
    println!(
        "[free-during-kernel] side by side: gpu-arena free (slowest of 4) {:.1} µs vs cuMemFree {:.1} µs ({:.0}x)",
        us(worst),
        us(free),
        free.as_secs_f64() / worst.as_secs_f64()
    );

    // Both fences completed; no work is queued on the streams.
    cuda.drop_fence(kernel);
    cuda.drop_fence(spin);
    arena.free(y, a).expect("free Y");
    drop(arena);
    // SAFETY: the streams are idle and not used again.
    unsafe {
        cuda.destroy_stream(a).unwrap();
        cuda.destroy_stream(b).unwrap();
        cuda.destroy_stream(c).unwrap();
    }
    assert_eq!(
        x_unmapped_while_running, 0,
        "X was unmapped before the kernel using it completed"
    );
    assert_eq!(
        x_unmaps_total, BLOCK,
        "X is given back once, after the fence (bytes unmapped)"
    );
    assert!(x_trim.is_some(), "X was given back");
    assert!(
        b_unmapped_while_running.iter().all(|&u| u),
        "blocks freed on the idle stream B were not given back while A ran: {b_unmapped_while_running:?}"
    );
    assert_eq!(first, VALUE + 1, "the kernel's write through X");
    assert!(rest_ok, "the kernel's add_one over X");
    assert!(cuda.leaks().is_none(), "leaks: {:?}", cuda.leaks());
}

#[test]
fn pinned_host_vec_is_shared_by_cpu_and_kernel() {
    let Some(d) = cuda() else { return };
    if !d.capabilities().host_memory {
        println!("skipped: this driver cannot create CPU-accessible host-located VMM memory");
        return;
    }
    let arena = SharedArena::new(
        &d,
        Kind::PinnedHost,
        ArenaConfig {
            reservation: 8 * GIB,
            ..Default::default()
        },
    )
    .expect("pinned-host arena");
    assert!(arena.host_visible());
    let k = d.kernels().expect("kernels");
    let s = d.create_stream().expect("stream");
    const N: usize = 1 << 22; // 16 MiB of f32, grown by pushes (reallocations)
    let t = Instant::now();
    let mut v: AVec<f32, _> = AVec::new_in(&arena);
    for i in 0..N {
        v.push(i as f32 * 0.5);
    }
    let fill = t.elapsed();
    let ptr = DevicePtr::from_ptr(v.as_mut_ptr());
    assert!(arena.contains(ptr), "the Vec's buffer lies in the arena");
    let stats = arena.stats();
    println!(
        "[pinned-host-vec] Vec<f32, &SharedArena<PinnedHost>>: {N} elements pushed by the CPU in {:.1} ms, buffer at {ptr:#x} (reservation offset {:#x}); arena live {} MiB, committed {} MiB, allocs {}, frees {}, host kind {:?}",
        ms(fill),
        ptr.offset_from(arena.lock().reservation().0),
        stats.live / MIB,
        stats.committed / MIB,
        stats.allocs,
        stats.frees,
        d.host_kind()
    );
    let mut rounds = Vec::new();
    for round in 0..2 {
        let t = Instant::now();
        // SAFETY: the Vec's buffer is pinned host memory mapped read-write for
        // device 0; nothing touches it until the wait below; the pointer is
        // re-taken after the CPU's last write.
        unsafe {
            k.add_f32(s, v.as_mut_ptr() as u64, N as u64, 1.0)
                .expect("add_f32")
        };
        let f = d.record(s).expect("fence");
        d.wait(&f).expect("kernel completed");
        d.drop_fence(f);
        let kernel = t.elapsed();
        // The CPU reads the kernel's results straight from the Vec.
        let base = if round == 0 { 0.5 } else { 1.0 };
        let extra = if round == 0 { 1.0 } else { 3.0 };
        let bad = v
            .iter()
            .enumerate()
            .filter(|&(i, &x)| x != i as f32 * base + extra)
            .count();
        println!(
            "[pinned-host-vec] round {round}: kernel add 1.0 over {N} f32 in pinned host memory: {:.2} ms; CPU reads v[0] = {}, v[1] = {}, v[{}] = {}; mismatches {bad}",
            ms(kernel),
            v[0],
            v[1],
            N - 1,
            v[N - 1]
        );
        rounds.push(bad);
        if round == 0 {
            // The CPU modifies in place: v[i] = 2 v[i] = i + 2.
            for x in v.iter_mut() {
                *x *= 2.0;
            }
        }
    }
    drop(v);
    let after = arena.stats();
    println!(
        "[pinned-host-vec] after dropping the Vec: live {} B, committed {} MiB",
        after.live,
        after.committed / MIB
    );
    // SAFETY: the stream is idle and not used again.
    unsafe { d.destroy_stream(s).unwrap() };
    assert_eq!(rounds, [0, 0], "kernel results seen by the CPU");
    assert_eq!(after.live, 0);
}

#[test]
fn grow_buffer_to_32_gib_without_copy_against_alloc_copy_free() {
    let Some(d) = cuda() else { return };
    const STEPS: [u64; 6] = [GIB, 2 * GIB, 4 * GIB, 8 * GIB, 16 * GIB, 32 * GIB];
    let max = *STEPS.last().unwrap();
    if d.capabilities().device_memory < 52 * GIB {
        println!(
            "skipped: the copy baseline needs 48 GiB live at once; this device has {} MiB",
            d.capabilities().device_memory / MIB
        );
        return;
    }
    const MARK: usize = 4096;
    let marker: Vec<u8> = (0..MARK).map(|i| (i * 7 + 3) as u8).collect();
    let tail_mark = |len: u64| -> Vec<u8> { (0..MARK).map(|i| (i as u64 ^ len) as u8).collect() };
    let used0 = gpu_used(&d);

    // gpu-arena: one growable buffer, pages committed at its end.
    let arena = SharedArena::new(
        &d,
        Kind::Device(0),
        ArenaConfig {
            reservation: 128 * GIB,
            ..Default::default()
        },
    )
    .expect("arena");
    let mut buf = GrowBuffer::with_max(&arena, max).expect("grow buffer");
    let base = buf.as_ptr();
    let mut rows = Vec::new();
    let mut prev = 0u64;
    let mut all_ok = true;
    for &len in &STEPS {
        let calls0 = arena.stats().driver_calls;
        let t = Instant::now();
        buf.resize(len).expect("resize");
        let dt = t.elapsed();
        let calls = arena.stats().driver_calls;
        if prev == 0 {
            write(&d, base.addr(), &marker);
        }
        let stable = buf.as_ptr() == base;
        let head = read(&d, base.addr(), MARK) == marker;
        let tail = |end: u64| base.byte_add(end - MARK as u64).addr();
        let tail_kept = prev == 0 || read(&d, tail(prev), MARK) == tail_mark(prev);
        write(&d, tail(len), &tail_mark(len));
        let st = arena.stats();
        let used = gpu_used(&d) - used0;
        all_ok &= stable && head && tail_kept;
        rows.push(format!(
            "| {} → {} GiB | {:.2} | {} creates, {} maps | {} | {} | {} | {} | {:.1} |",
            prev / GIB,
            len / GIB,
            ms(dt),
            calls.create - calls0.create,
            calls.map - calls0.map,
            stable,
            head,
            tail_kept,
            st.committed / GIB,
            used as f64 / GIB as f64
        ));
        prev = len;
    }
    let st = arena.stats();
    println!(
        "[grow-in-place] gpu-arena GrowBuffer (max {} GiB, reservation 128 GiB, base {base:#x})",
        max / GIB
    );
    println!();
    println!(
        "| step | resize ms | driver calls | base stable | head marker kept | previous tail marker kept | committed GiB | device memory in use GiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "[grow-in-place] gpu-arena peak_committed {} GiB ({} B), committed {} GiB, live {} GiB, handles {}",
        st.peak_committed / GIB,
        st.peak_committed,
        st.committed / GIB,
        st.live / GIB,
        st.handles
    );
    let peak = st.peak_committed;
    drop(buf);
    drop(arena);
    let used_after = gpu_used(&d) - used0;
    println!(
        "[grow-in-place] after dropping the buffer and the arena: device memory in use {:.2} GiB above the start",
        used_after as f64 / GIB as f64
    );

    // Baseline: alloc new, copy, free old, for the same steps.
    make_current(&d);
    let mut rows = Vec::new();
    let mut cur: sys::CUdeviceptr = 0;
    let mut cur_len = 0u64;
    let mut peak_live = 0u64;
    let mut peak_used = 0i64;
    let mut base_ok = true;
    for &len in &STEPS {
        let mut p: sys::CUdeviceptr = 0;
        let t = Instant::now();
        // SAFETY: context current; valid out-pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut p, len as usize) };
        let alloc = t.elapsed();
        assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "cuMemAlloc {len}");
        peak_live = peak_live.max(cur_len + len);
        peak_used = peak_used.max(gpu_used(&d) - used0);
        make_current(&d);
        let (mut copy, mut free) = (Duration::ZERO, Duration::ZERO);
        if cur_len == 0 {
            write(&d, p, &marker);
        } else {
            let t = Instant::now();
            // SAFETY: both allocations are live, `cur_len` ≤ `len`, no overlap;
            // cuCtxSynchronize makes the copy complete before timing stops
            // (a test baseline, not allocator code).
            unsafe {
                assert_eq!(
                    sys::cuMemcpyDtoD_v2(p, cur, cur_len as usize),
                    sys::CUresult::CUDA_SUCCESS
                );
                assert_eq!(sys::cuCtxSynchronize(), sys::CUresult::CUDA_SUCCESS);
            }
            copy = t.elapsed();
            let t = Instant::now();
            // SAFETY: `cur` came from cuMemAlloc and the copy completed.
            let r = unsafe { sys::cuMemFree_v2(cur) };
            free = t.elapsed();
            assert_eq!(r, sys::CUresult::CUDA_SUCCESS);
        }
        let head = read(&d, p, MARK) == marker;
        base_ok &= head;
        rows.push(format!(
            "| {} → {} GiB | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            cur_len / GIB,
            len / GIB,
            ms(alloc),
            ms(copy),
            ms(free),
            ms(alloc + copy + free),
            (cur_len + len) / GIB,
            head
        ));
        cur = p;
        cur_len = len;
        make_current(&d);
    }
    // SAFETY: `cur` came from cuMemAlloc and nothing uses it.
    let r = unsafe { sys::cuMemFree_v2(cur) };
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS);
    println!(
        "[grow-in-place] baseline cuMemAlloc(new) + cuMemcpyDtoD + cuCtxSynchronize + cuMemFree(old)"
    );
    println!();
    println!(
        "| step | cuMemAlloc ms | copy ms | cuMemFree ms | total ms | live at once GiB | head marker kept |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!(
        "[grow-in-place] peak physical: gpu-arena {} GiB (peak_committed) vs baseline {} GiB live at once ({:.1} GiB device memory in use at its peak)",
        peak / GIB,
        peak_live / GIB,
        peak_used as f64 / GIB as f64
    );
    assert!(all_ok, "growth moved the base or lost contents");
    assert!(base_ok, "baseline lost the marker");
    assert_eq!(peak, max, "peak physical of the growable buffer");
}

/// Stream-ordered reuse in the global arenas. A kernel on stream A
/// spins, then writes into block X; X is freed on A while the kernel runs.
/// Another stream B must not get X (its write would race the kernel's), while
/// A gets it back at once (stream order keeps that safe). The kernel's write
/// must land intact in the block A was given.
#[test]
fn global_arena_reuses_across_streams_only_after_the_free_fence() {
    use gpu_arena::driver::SystemDriver;
    use gpu_arena::driver::system::Select;
    use gpu_arena::global::{GlobalArena, GlobalConfig};
    let Some(probe) = cuda() else { return };
    drop(probe);
    let g: &'static GlobalArena = GlobalArena::leak(
        0,
        GlobalConfig {
            backend: Select::Cuda,
            ..GlobalConfig::default()
        },
    )
    .unwrap();
    let SystemDriver::Cuda(d) = &**g.driver() else {
        panic!("Select::Cuda opened another backend")
    };
    let k = d.kernels().unwrap();
    let (a, b) = (d.create_stream().unwrap(), d.create_stream().unwrap());
    const N: u64 = 1 << 20;
    let x = g.alloc(N, 512, a).unwrap();
    // SAFETY: x is a live, mapped block of this device; the streams are live.
    unsafe { k.spin(a, 300_000_000, x.addr(), 0xC0FFEE) }.unwrap();
    let t = std::time::Instant::now();
    g.free(x, Some(N), a).unwrap();
    println!(
        "STREAMS free of X on A while its kernel runs: {:?}",
        t.elapsed()
    );
    let y = g.alloc(N, 512, b).unwrap();
    assert_ne!(
        y, x,
        "premature cross-stream reuse: B got X while A's kernel still uses it"
    );
    // SAFETY: y is a live block; B writes it while A's kernel still runs.
    unsafe { d.fill(y.addr(), 0x11, N as usize, b) }.unwrap();
    let z = g.alloc(N, 512, a).unwrap();
    assert_eq!(z, x, "a block freed on A is reused by A at once");
    let f = d.record(a).unwrap();
    d.wait(&f).unwrap();
    d.drop_fence(f);
    let mut word = 0u32;
    // SAFETY: z is live and A's work on it completed; 4 bytes into a local.
    unsafe { d.copy(&mut word as *mut u32 as u64, z.addr(), 4, Stream::DEFAULT) }.unwrap();
    assert_eq!(
        word, 0xC0FFEE,
        "the kernel's write is intact in the block A was given"
    );
    println!(
        "STREAMS B got a different block ({y:#x} vs {x:#x}); A reused X at once; kernel result intact"
    );
    g.free(y, Some(N), b).unwrap();
    g.free(z, Some(N), a).unwrap();
    let f = d.record(b).unwrap();
    d.wait(&f).unwrap();
    d.drop_fence(f);
    // SAFETY: both streams are idle and not used afterwards.
    unsafe {
        d.destroy_stream(a).unwrap();
        d.destroy_stream(b).unwrap();
    }
}

/// What [`weights_on_the_gpu`] makes.
type Weights = (
    &'static gpu_arena::global::GlobalArena,
    std::sync::Arc<gpu_arena::driver::SystemDriver>,
    Vec<(DevicePtr, u64, u8)>,
);

/// A global arena of device 0 over the checked CUDA backend (one shard, no
/// thread cache) holding blocks of `sizes` in tag `weights`, block `i`
/// filled with byte `first + i`: (arena, driver, (block, size, byte)).
/// `None` (the test skips) where no CUDA device is found.
fn weights_on_the_gpu(sizes: &[u64], first: u8) -> Option<Weights> {
    use gpu_arena::driver::system::Select;
    use gpu_arena::global::GlobalConfig;
    drop(cuda()?);
    let conf = GlobalConfig {
        shards: 1,
        thread_cache: 0,
        ..GlobalConfig::default()
    };
    let (g, driver) = crate::common::checked_global(Select::Cuda, conf);
    let blocks = {
        let _t = g.tag_scope("weights").unwrap();
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let p = g.alloc(size, 512, Stream::DEFAULT).unwrap();
                let byte = first + i as u8;
                // SAFETY: a live block of `size` bytes on this device.
                unsafe { driver.fill(p.addr(), byte, size as usize, Stream::DEFAULT) }.unwrap();
                (p, size, byte)
            })
            .collect()
    };
    Some((g, driver, blocks))
}

/// Pinned memory for an offload obtained in the background on the GPU: the
/// first offload of a tag then obtains nothing itself, and its contents come
/// back at the same addresses after the wake; every handle, the stage's
/// too, goes back to the driver at teardown.
#[test]
fn offload_with_pinned_memory_obtained_in_the_background() {
    use gpu_arena::SleepMode;
    use gpu_arena::global::GlobalArena;
    let Some((g, driver, blocks)) = weights_on_the_gpu(&[64 * MIB, 3 * MIB, 200, 16 * MIB], 0x31)
    else {
        return;
    };
    let t = Instant::now();
    g.prepare_offload_in_background(&["weights"]).unwrap();
    let returned = t.elapsed();
    let r = g
        .sleep(&["weights"], SleepMode::Offload, Stream::DEFAULT)
        .unwrap();
    println!(
        "OFFLOAD-AHEAD prepare returned in {:.1} us; sleep {:.2} ms (obtaining {:.2} ms, copy {:.2} ms at {:.1} GiB/s, VMM {:.2} ms)",
        us(returned),
        (r.stage_seconds + r.copy_seconds + r.vmm_seconds) * 1e3,
        r.stage_seconds * 1e3,
        r.copy_seconds * 1e3,
        r.copied as f64 / GIB as f64 / r.copy_seconds,
        r.vmm_seconds * 1e3,
    );
    assert_eq!(r.stage_seconds, 0.0, "the sleep obtained nothing itself");
    assert!(r.copied >= 83 * MIB);
    g.wake(&["weights"], Stream::DEFAULT).unwrap();
    for &(p, size, byte) in &blocks {
        let back = read(&*driver, p.addr(), size as usize);
        assert!(back.iter().all(|&b| b == byte), "block at {p:#x} restored");
    }
    for (p, _, _) in blocks {
        g.free(p, None, Stream::DEFAULT).unwrap();
    }
    // SAFETY: this thread alone used the arena; nothing uses it afterwards.
    unsafe { GlobalArena::destroy(g) }.unwrap();
    crate::common::assert_all_given_back(&driver);
}

/// Frees while a tag sleeps on the GPU: a block and a grow buffer of an
/// offloaded tag go while it is asleep; the wake recommits and restores
/// only what is still live (a restore into the freed pages, never
/// recommitted, would fault on the device), and the blocks kept come back.
#[test]
fn frees_while_asleep_on_the_gpu_are_not_woken() {
    use gpu_arena::SleepMode;
    use gpu_arena::global::GlobalArena;
    let sizes = [24 * MIB, 3 * MIB, 200, 16 * MIB, 40 * MIB];
    let Some((g, driver, blocks)) = weights_on_the_gpu(&sizes, 0x41) else {
        return;
    };
    let weights = g.tag("weights").unwrap();
    let shard = &g.shards(weights)[0];
    let mut buf = GrowBuffer::with_max(shard, GIB).unwrap();
    buf.resize(32 * MIB).unwrap();
    // SAFETY: the buffer's 32 MiB are committed on this device.
    unsafe {
        driver.fill(
            buf.as_ptr().addr(),
            0x77,
            32 * MIB as usize,
            Stream::DEFAULT,
        )
    }
    .unwrap();
    let r = g
        .sleep(&["weights"], SleepMode::Offload, Stream::DEFAULT)
        .unwrap();
    let live = g.tag_stats(weights).live;
    let (gone, kept): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|b| b.1 >= 16 * MIB);
    for &(p, _, _) in gone.iter().step_by(2) {
        g.free(p, None, Stream::DEFAULT).unwrap();
    }
    drop(buf);
    let freed = live - g.tag_stats(weights).live;
    let w = g.wake(&["weights"], Stream::DEFAULT).unwrap();
    println!(
        "ASLEEP-FREES freed {} MiB while asleep; offloaded {} MiB, restored {} MiB, woke {} MiB",
        freed / MIB,
        r.copied / MIB,
        w.copied / MIB,
        w.bytes / MIB
    );
    assert_eq!(freed, (24 + 40 + 32) * MIB, "the blocks and buffer freed");
    assert!(w.copied + 90 * MIB <= r.copied, "{w:?} {r:?}");
    let still: Vec<_> = kept.iter().chain(gone.iter().skip(1).step_by(2)).collect();
    for &&(p, size, byte) in &still {
        let back = read(&*driver, p.addr(), size as usize);
        assert!(back.iter().all(|&b| b == byte), "block at {p:#x} restored");
    }
    for &(p, _, _) in still {
        g.free(p, None, Stream::DEFAULT).unwrap();
    }
    // SAFETY: this thread alone used the arena; nothing uses it afterwards.
    unsafe { GlobalArena::destroy(g) }.unwrap();
    crate::common::assert_all_given_back(&driver);
}

#[test]
fn a_tags_blocks_get_few_handles_on_the_gpu() {
    let Some(probe) = cuda() else { return };
    drop(probe);
    let (tag, default) =
        crate::tag_layout::tags_get_few_handles(gpu_arena::driver::system::Select::Cuda);
    println!(
        "TAG-LAYOUT first sleep of 48 blocks of 6 MiB: a tag {} handles in {:.2} ms, the default tag {} handles in {:.2} ms",
        tag.handles,
        ms(tag.sleep),
        default.handles,
        ms(default.sleep),
    );
}
