//! One free of a 64 MiB block with cold caches (32 MiB touched before it), timed 400 times in one
//! arena of the host backend, trimmed after every second free: the frees right after a trim free a
//! block committed afresh, the others one taken back in place. Median, 10th and 90th percentile of
//! each kind. Copied into examples/ of a build to run it; not part of the crate.
use gpu_arena::{Arena, ArenaConfig, Kind};
fn main() {
    let d = gpu_arena::driver::HostDriver::new().unwrap();
    let mut a = Arena::new(d, Kind::Device(0), ArenaConfig::default()).unwrap();
    let mut junk = vec![0u8; 32 << 20];
    let mut ts = [Vec::new(), Vec::new()];
    for i in 0..400 {
        let p = a.alloc(64 << 20, 512).unwrap();
        for (j, b) in junk.iter_mut().enumerate().step_by(64) {
            *b = (i + j) as u8;
        }
        let t = std::time::Instant::now();
        a.free(std::hint::black_box(p)).unwrap();
        ts[i % 2].push(t.elapsed().as_nanos() as u64);
        if i % 2 == 1 {
            a.trim();
        }
    }
    for (k, name) in [(0, "committed afresh"), (1, "taken back in place")] {
        let v = &mut ts[k];
        v.sort();
        let n = v.len();
        eprintln!("free 64 MiB, cold, {name}: median {} ns, p10 {} p90 {}", v[n / 2], v[n / 10], v[n * 9 / 10]);
    }
    eprintln!("(checksum {})", junk[7]);
}
