//! Replays a shared trace through the C ABI's PyTorch entry points (the
//! process-wide arena, thread caches, locks, time measuring), as PyTorch's
//! pluggable allocator calls them, on the host backend:
//! `GPU_ARENA_CONF=backend:host,report:1 cargo run --release --example cabi_replay -- REPEAT TRACE [SWAP_PERCENT]`.
//!
//! With `SWAP_PERCENT`, every repetition after the first swaps neighbouring
//! events of different blocks with that probability, as two threads
//! (PyTorch's autograd thread and the main one) interleave differently from
//! run to run on a GPU.
use gpu_arena::api::ffi::{gpu_arena_epoch_json, gpu_arena_torch_alloc, gpu_arena_torch_free};
use gpu_arena::replay::Event;

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
    Ok(serde_json::from_str(std::str::from_utf8(
        &buf[..n as usize],
    )?)?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let times: usize = args[0].parse()?;
    let events = gpu_arena::replay::read_trace(args[1].as_ref())?;
    let percent: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let mut live = std::collections::HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    // The weights once, the rest every repetition (as replay_repeated).
    let (keep_allocs, keep_frees) = gpu_arena::replay::persistent(&events);
    for r in 0..times {
        let last = r + 1 == times;
        let order = order(&events, r, percent, &mut seed);
        epoch(&mut buf)?;
        let mut allocs = 0u64;
        let t = std::time::Instant::now();
        for &i in &order {
            match events[i] {
                Event::Alloc { .. } if r > 0 && keep_allocs.contains(&i) => {}
                Event::Free { .. } if !last && keep_frees.contains(&i) => {}
                Event::Alloc { addr, size, .. } => {
                    let p = gpu_arena_torch_alloc(size.max(1) as isize, 0, core::ptr::null_mut());
                    assert!(!p.is_null(), "the host arena refused {size} bytes");
                    live.insert(addr, (p, size));
                    allocs += 1;
                }
                Event::Free { addr, .. } => {
                    if let Some((p, size)) = live.remove(&addr) {
                        gpu_arena_torch_free(p, size as isize, 0, core::ptr::null_mut());
                    }
                }
            }
        }
        let dt = t.elapsed();
        let e = epoch(&mut buf)?;
        let t = &e["times"];
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        let calls = num(&t["allocs"]) + num(&t["frees"]);
        let nanos = num(&t["alloc_nanos"]) + num(&t["free_nanos"]);
        println!(
            "rep {}: {:.0} ns per event (harness included), {:.0} ns per call inside the allocator, VMM calls {} ({:.1} per 1000 allocations; {}), peak committed / peak handed out {:.4}; stitched ranges {}",
            r + 1,
            dt.as_nanos() as f64 / events.len() as f64,
            nanos / calls.max(1.0),
            e["vmm_calls"],
            num(&e["vmm_calls"]) * 1000.0 / allocs.max(1) as f64,
            e["driver_calls"],
            num(&e["peak_committed"]) / num(&t["peak_handed"]).max(1.0),
            e["stitch"]
        );
    }
    Ok(())
}
