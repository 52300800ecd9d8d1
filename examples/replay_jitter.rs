//! Replays a trace through the C ABI (as cabi_replay) with the order of
//! neighbouring events shuffled a little differently in every repetition,
//! as two threads (PyTorch's autograd thread and the main one) interleave
//! differently from run to run on a GPU:
//! `GPU_ARENA_CONF=backend:host cargo run --release --example replay_jitter --features trace -- REPEAT SWAP_PERCENT TRACE`.
use gpu_arena::api::ffi::{gpu_arena_epoch_json, gpu_arena_torch_alloc, gpu_arena_torch_free};
use gpu_arena::replay::Event;

fn addr(e: &Event) -> u64 {
    match *e {
        Event::Alloc { addr, .. } | Event::Free { addr, .. } => addr,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let times: usize = args[0].parse()?;
    let percent: u64 = args[1].parse()?;
    let events = gpu_arena::replay::read_trace(args[2].as_ref())?;
    let (keep_allocs, keep_frees) = gpu_arena::replay::persistent(&events);
    let mut live = std::collections::HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for r in 0..times {
        let last = r + 1 == times;
        // This repetition's order: neighbours of different blocks swapped
        // with probability `percent` (the first repetition as traced).
        let mut order: Vec<usize> = (0..events.len()).collect();
        if r > 0 {
            for i in 0..order.len() - 1 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if seed % 100 < percent && addr(&events[order[i]]) != addr(&events[order[i + 1]]) {
                    order.swap(i, i + 1);
                }
            }
        }
        // SAFETY: buf is valid for its length.
        unsafe { gpu_arena_epoch_json(0, buf.as_mut_ptr() as *mut _, buf.len()) };
        let mut allocs = 0u64;
        for &i in &order {
            match events[i] {
                Event::Alloc { .. } if r > 0 && keep_allocs.contains(&i) => {}
                Event::Free { .. } if !last && keep_frees.contains(&i) => {}
                Event::Alloc { addr, size, .. } => {
                    let p = gpu_arena_torch_alloc(size.max(1) as isize, 0, core::ptr::null_mut());
                    assert!(!p.is_null());
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
        // SAFETY: buf is valid for its length.
        let n = unsafe { gpu_arena_epoch_json(0, buf.as_mut_ptr() as *mut _, buf.len()) };
        let e: serde_json::Value = serde_json::from_str(std::str::from_utf8(&buf[..n as usize])?)?;
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        println!(
            "rep {}: VMM calls {} ({:.1} per 1000 allocations; {}), peak committed / peak handed out {:.4}",
            r + 1,
            e["vmm_calls"],
            num(&e["vmm_calls"]) * 1000.0 / allocs.max(1) as f64,
            e["driver_calls"],
            num(&e["peak_committed"]) / num(&e["times"]["peak_handed"]).max(1.0)
        );
    }
    Ok(())
}
