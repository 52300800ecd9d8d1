//! Replays a shared trace through the C ABI's PyTorch entry points (the
//! process-wide arena, thread caches, locks, time measuring), as PyTorch's
//! pluggable allocator calls them, on the host backend:
//! `GPU_ARENA_CONF=backend:host,report:1 cargo run --release --example cabi_replay -- REPEAT TRACE`.
use gpu_arena::api::ffi::{gpu_arena_epoch_json, gpu_arena_torch_alloc, gpu_arena_torch_free};
use gpu_arena::replay::Event;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let times: usize = args[0].parse()?;
    let events = gpu_arena::replay::read_trace(args[1].as_ref())?;
    let mut live = std::collections::HashMap::new();
    let mut buf = vec![0u8; 1 << 16];
    // The weights once, the rest every repetition (as replay_repeated).
    let (keep_allocs, keep_frees) = gpu_arena::replay::persistent(&events);
    for r in 0..times {
        let last = r + 1 == times;
        // SAFETY: buf is valid for its length.
        unsafe { gpu_arena_epoch_json(0, buf.as_mut_ptr() as *mut _, buf.len()) };
        let t = std::time::Instant::now();
        for (i, e) in events.iter().enumerate() {
            match *e {
                Event::Alloc { .. } if r > 0 && keep_allocs.contains(&i) => {}
                Event::Free { .. } if !last && keep_frees.contains(&i) => {}
                Event::Alloc { addr, size, .. } => {
                    let p = gpu_arena_torch_alloc(size.max(1) as isize, 0, core::ptr::null_mut());
                    assert!(!p.is_null());
                    live.insert(addr, (p, size));
                }
                Event::Free { addr, .. } => {
                    let (p, size) = live.remove(&addr).unwrap();
                    gpu_arena_torch_free(p, size as isize, 0, core::ptr::null_mut());
                }
            }
        }
        let dt = t.elapsed();
        // SAFETY: buf is valid for its length.
        let n = unsafe { gpu_arena_epoch_json(0, buf.as_mut_ptr() as *mut _, buf.len()) };
        let json = std::str::from_utf8(&buf[..n as usize])?;
        let e: serde_json::Value = serde_json::from_str(json)?;
        let t = &e["times"];
        let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
        let calls = num(&t["allocs"]) + num(&t["frees"]);
        let nanos = num(&t["alloc_nanos"]) + num(&t["free_nanos"]);
        println!(
            "rep {}: {:.0} ns per event (harness included), {:.0} ns per call inside the allocator, VMM calls {}, peak committed / peak handed out {:.4}",
            r + 1,
            dt.as_nanos() as f64 / events.len() as f64,
            nanos / calls.max(1.0),
            e["vmm_calls"],
            num(&e["peak_committed"]) / num(&t["peak_handed"]).max(1.0)
        );
    }
    Ok(())
}
