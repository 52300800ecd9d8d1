//! A whole test binary running on gpu-arena as its `#[global_allocator]`.

use gpu_arena::api::global_alloc::ArenaGlobalAlloc;

#[global_allocator]
static ALLOC: ArenaGlobalAlloc = ArenaGlobalAlloc::new();

#[test]
fn real_work_runs_on_the_arena() {
    let before = ALLOC.stats().expect("the test harness allocated already");
    // Collections, small and large.
    let mut v: Vec<u64> = (0..100_000).collect();
    assert!(ALLOC.contains(v.as_ptr() as *const u8));
    let mut m = std::collections::HashMap::new();
    for i in 0..10_000u64 {
        m.insert(i, format!("value {i}"));
    }
    let big = vec![7u8; 64 << 20];
    assert!(ALLOC.contains(big.as_ptr()));
    // Threads allocating and freeing.
    let handles: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut s = String::new();
                for i in 0..5000 {
                    s.push_str(&format!("{t}:{i};"));
                    let b = Box::new([i as u8; 300]);
                    assert_eq!(b[299], i as u8);
                }
                s.len()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total > 0);
    v.retain(|x| x % 3 == 0);
    assert_eq!(m[&9999], "value 9999");
    let during = ALLOC.stats().unwrap();
    assert!(during.allocs > before.allocs + 10_000, "{during:?}");
    assert!(during.peak_live >= 64 << 20);
    assert!(during.large.blocks >= 1 && during.slab.blocks >= 1);
    drop(big);
    drop(m);
    drop(v);
    let after = ALLOC.stats().unwrap();
    assert!(after.frees > before.frees + 10_000);
    assert!(after.live < during.live);
}
