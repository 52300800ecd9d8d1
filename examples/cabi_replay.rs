//! Replays a shared trace through the C ABI's PyTorch entry points (the
//! process-wide arena, thread caches, locks, time measuring), as PyTorch's
//! pluggable allocator calls them, on the host backend:
//! `GPU_ARENA_CONF=backend:host,report:1 cargo run --release --example cabi_replay -- REPEAT TRACE [SWAP_PERCENT]`.
//!
//! Prints one line per repetition: time per call, VMM calls, peak committed
//! / peak handed out, the stitched ranges' decisions, and the time per call
//! by block size. A trace recorded with `scripts/torch_bench.py --repeat N
//! --trace` (a `rep_end` line after each of the process's repetitions) is
//! reported per recorded repetition instead: run it with REPEAT 1 to see
//! the first repetition differ from the next ones as on the GPU.
//!
//! With `SWAP_PERCENT`, every repetition after the first swaps neighbouring
//! events of different blocks with that probability, as two threads
//! (PyTorch's autograd thread and the main one) interleave differently from
//! run to run on a GPU.
//!
//! With `RUN_ON=N` in the environment, a trace whose last two recorded
//! repetitions are the same events is run on to N repetitions (the last
//! one again: [`gpu_arena::replay::run_on`]).
//!
//! With `THRASH_KIB=N` in the environment, N KiB of other memory are
//! touched between events, as PyTorch's own work (Python, kernel launches)
//! evicts the allocator's data from the CPU caches between its calls: the
//! time per call then is that of calls made cold. With `STACK_KIB=N` (at
//! most 16), N KiB of the stack below the harness's frame are touched after
//! that, so that the allocator's stack frames are warm, as PyTorch's own
//! calls on the same stack keep them in a real run. With `TLB_PAGES=N`, one
//! line in each of N distinct 4 KiB pages (mapped without huge pages) is
//! touched as well: PyTorch's own work between calls reaches many pages and
//! so evicts the CPU's address translations, which the lines alone do not.
//!
//! With `TAG_PERSISTENT=NAME`, the blocks that live through the whole
//! trace (the model's weights and cuBLAS's workspace:
//! [`gpu_arena::replay::persistent`]) are allocated in tag NAME, the rest
//! in the default tag, as an engine that tags its weights lays them out;
//! each repetition's report then adds both tags' peak committed / peak live.
use gpu_arena::api::ffi::{
    gpu_arena_epoch_json, gpu_arena_last_error, gpu_arena_set_tag, gpu_arena_torch_alloc,
    gpu_arena_torch_free,
};
use gpu_arena::replay::Event;
use std::time::Instant;

/// Touches `kib` KiB of the stack below the caller's frame, where the
/// allocator's frames will lie: PyTorch's own calls between two allocator
/// calls (kernel launches, the dispatcher) run on the same stack at about
/// the same depth, so those lines are rarely cold in a real run.
#[inline(never)]
fn warm_stack(kib: usize) {
    let mut b = [0u8; 16 << 10];
    for line in b[..kib.min(16) << 10].chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(&mut b);
}

fn addr(e: &Event) -> u64 {
    match *e {
        Event::Alloc { addr, .. } | Event::Free { addr, .. } => addr,
    }
}

/// Repetition `r`'s order of events: neighbours of different blocks swapped
/// with probability `percent` (the first repetition as traced).
fn order(events: &[Event], r: usize, percent: u64, seed: &mut u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    if r == 0 || percent == 0 {
        return order;
    }
    for i in 0..order.len().saturating_sub(1) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        if *seed % 100 < percent && addr(&events[order[i]]) != addr(&events[order[i + 1]]) {
            order.swap(i, i + 1);
        }
    }
    order
}

/// The process-wide arena's epoch figures (and starts a new epoch).
fn epoch(buf: &mut [u8]) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { gpu_arena_epoch_json(0, buf.as_mut_ptr() as *mut _, buf.len()) };
    if n < 0 {
        // SAFETY: gpu_arena_last_error returns a NUL-terminated string.
        let e = unsafe { std::ffi::CStr::from_ptr(gpu_arena_last_error()) };
        return Err(format!("gpu_arena_epoch_json failed: {}", e.to_string_lossy()).into());
    }
    Ok(serde_json::from_str(std::str::from_utf8(
        &buf[..n as usize],
    )?)?)
}

/// Block sizes whose calls are timed apart: up to 64 KiB (slabs), up to
/// 1 MiB, up to 64 MiB, larger.
const SIZES: [(&str, u64); 4] = [
    ("<=64K", 64 << 10),
    ("<=1M", 1 << 20),
    ("<=64M", 64 << 20),
    (">64M", u64::MAX),
];

/// Calls and nanoseconds per size bucket: [alloc, free].
#[derive(Default)]
struct BySize([[(u64, u64); 2]; 4]);

impl BySize {
    fn add(&mut self, size: u64, free: bool, nanos: u64) {
        let i = SIZES.iter().position(|&(_, max)| size <= max).unwrap_or(3);
        let b = &mut self.0[i][free as usize];
        b.0 += 1;
        b.1 += nanos;
    }

    fn line(&self) -> String {
        let mean = |(n, t): (u64, u64)| t as f64 / n.max(1) as f64;
        let parts: Vec<String> = SIZES
            .iter()
            .zip(&self.0)
            .map(|((name, _), b)| {
                format!(
                    "{name} {} at {:.0} / {:.0} ns",
                    b[0].0,
                    mean(b[0]),
                    mean(b[1])
                )
            })
            .collect();
        format!(
            "  calls by size (allocs at ns per alloc / per free, harness timer included): {}",
            parts.join("; ")
        )
    }
}

/// One repetition's figures, from the epoch it ends.
fn report(
    label: &str,
    buf: &mut [u8],
    events: usize,
    allocs: u64,
    since: Instant,
    by_size: &BySize,
    tag: Option<&std::ffi::CStr>,
) -> Result<(), Box<dyn std::error::Error>> {
    let dt = since.elapsed();
    if let Some(tag) = tag {
        // Read before the epoch resets the peaks.
        let arena = gpu_arena::global::arena(0)?;
        let mut line = String::from("tags (peak committed / peak live):");
        for name in ["default", tag.to_str()?] {
            if let Some(i) = arena.find_tag(name) {
                let st = arena.tag_stats(i);
                line += &format!(
                    " {name} {:.4} ({:.1} of {:.1} MiB)",
                    st.peak_ratio(),
                    st.peak_committed as f64 / (1u64 << 20) as f64,
                    st.peak_live as f64 / (1u64 << 20) as f64
                );
            }
        }
        println!("{line}");
    }
    let e = epoch(buf)?;
    let t = &e["times"];
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let calls = num(&t["allocs"]) + num(&t["frees"]);
    let nanos = num(&t["alloc_nanos"]) + num(&t["free_nanos"]);
    println!(
        "{label}: {:.0} ns per event (harness included), {:.0} ns per call inside the allocator, VMM calls {} ({:.1} per 1000 allocations; {}), peak committed / peak handed out {:.4}; stitched ranges {}",
        dt.as_nanos() as f64 / events.max(1) as f64,
        nanos / calls.max(1.0),
        e["vmm_calls"],
        num(&e["vmm_calls"]) * 1000.0 / allocs.max(1) as f64,
        e["driver_calls"],
        num(&e["peak_committed"]) / num(&t["peak_handed"]).max(1.0),
        e["stitch"]
    );
    println!("{}", by_size.line());
    Ok(())
}

/// `pages` distinct 4 KiB pages of their own mapping, kept in small pages
/// (`MADV_NOHUGEPAGE`), one line of each touched per event: each touch
/// needs a translation of its own.
struct TlbThrash {
    base: *mut u8,
    pages: usize,
}

impl TlbThrash {
    fn new(pages: usize) -> Self {
        if pages == 0 {
            return TlbThrash {
                base: core::ptr::null_mut(),
                pages,
            };
        }
        // SAFETY: an anonymous private mapping of `pages` 4 KiB pages, no
        // address asked; checked for failure below.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                pages << 12,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "TLB_PAGES: mmap failed");
        // SAFETY: the range is the mapping just made; advice only.
        unsafe { libc::madvise(base, pages << 12, libc::MADV_NOHUGEPAGE) };
        TlbThrash {
            base: base.cast(),
            pages,
        }
    }

    #[inline(never)]
    fn touch(&self) {
        for i in 0..self.pages {
            // One line per page, its offset moving from page to page so
            // that the lines spread over the cache's sets.
            let off = (i << 12) + ((i * 64) & 0xfff);
            // SAFETY: `off` lies inside the mapping of `pages` pages, which
            // lives as long as `self`.
            unsafe {
                let p = self.base.add(off);
                p.write_volatile(p.read_volatile().wrapping_add(1));
            }
        }
    }
}

impl Drop for TlbThrash {
    fn drop(&mut self) {
        if self.pages > 0 {
            // SAFETY: the mapping `new` made, not used after this.
            unsafe { libc::munmap(self.base.cast(), self.pages << 12) };
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let times: usize = args[0].parse()?;
    let (mut events, mut marks) = gpu_arena::replay::read_trace_marked(args[1].as_ref())?;
    if let Ok(n) = std::env::var("RUN_ON") {
        (events, marks) = gpu_arena::replay::run_on(&events, &marks, n.parse()?)
            .ok_or("RUN_ON: the trace's last two recorded repetitions differ")?;
    }
    let percent: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let thrash_kib: usize = match std::env::var("THRASH_KIB") {
        Ok(s) => s.parse()?,
        Err(_) => 0,
    };
    let mut thrash = vec![0u8; thrash_kib << 10];
    let tlb = TlbThrash::new(match std::env::var("TLB_PAGES") {
        Ok(s) => s.parse()?,
        Err(_) => 0,
    });
    let stack_kib: usize = match std::env::var("STACK_KIB") {
        Ok(s) => s.parse()?,
        Err(_) => 0,
    };
    let tag = match std::env::var("TAG_PERSISTENT") {
        Ok(s) => Some(std::ffi::CString::new(s)?),
        Err(_) => None,
    };
    let mut live = std::collections::HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    // The weights once, the rest every repetition (as replay_repeated).
    let (keep_allocs, keep_frees) = gpu_arena::replay::persistent(&events);
    for r in 0..times {
        let last = r + 1 == times;
        let order = order(&events, r, percent, &mut seed);
        epoch(&mut buf)?;
        let (mut allocs, mut done, mut segment) = (0u64, 0usize, 1usize);
        let mut by_size = BySize::default();
        let mut since = Instant::now();
        for (n, &i) in order.iter().enumerate() {
            if marks.binary_search(&n).is_ok() {
                let label = format!("rep {} (recorded repetition {segment})", r + 1);
                report(
                    &label,
                    &mut buf,
                    n - done,
                    allocs,
                    since,
                    &by_size,
                    tag.as_deref(),
                )?;
                (allocs, done, segment) = (0, n, segment + 1);
                by_size = BySize::default();
                since = Instant::now();
            }
            for line in thrash.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            tlb.touch();
            if stack_kib > 0 {
                warm_stack(stack_kib);
            }
            match events[i] {
                Event::Alloc { .. } if r > 0 && keep_allocs.contains(&i) => {}
                Event::Free { .. } if !last && keep_frees.contains(&i) => {}
                Event::Alloc { addr, size, .. } => {
                    let tagged = tag.as_deref().filter(|_| keep_allocs.contains(&i));
                    if let Some(name) = tagged {
                        // SAFETY: a NUL-terminated string.
                        unsafe { gpu_arena_set_tag(name.as_ptr()) };
                    }
                    let t = Instant::now();
                    let p = gpu_arena_torch_alloc(size.max(1) as isize, 0, core::ptr::null_mut());
                    by_size.add(size, false, t.elapsed().as_nanos() as u64);
                    if tagged.is_some() {
                        // SAFETY: a NUL-terminated string.
                        unsafe { gpu_arena_set_tag(c"default".as_ptr()) };
                    }
                    assert!(!p.is_null(), "the host arena refused {size} bytes");
                    live.insert(addr, (p, size));
                    allocs += 1;
                }
                Event::Free { addr, .. } => {
                    if let Some((p, size)) = live.remove(&addr) {
                        let t = Instant::now();
                        gpu_arena_torch_free(p, size as isize, 0, core::ptr::null_mut());
                        by_size.add(size, true, t.elapsed().as_nanos() as u64);
                    }
                }
            }
        }
        let label = if marks.is_empty() {
            format!("rep {}", r + 1)
        } else {
            format!(
                "rep {} (recorded repetition {segment}, after its end)",
                r + 1
            )
        };
        report(
            &label,
            &mut buf,
            order.len() - done,
            allocs,
            since,
            &by_size,
            tag.as_deref(),
        )?;
    }
    Ok(())
}
