//! The allocator's own time, measured inside the C ABI's allocation and free
//! calls (driver calls included), when `GPU_ARENA_CONF=report:1` asks for it.
//!
//! Each thread adds its calls and ticks to counters of its own (one writer,
//! no atomic read-modify-write, no shared cache line on the allocation path);
//! a registry of every thread's counters is summed when a report is made. On
//! x86-64 the clock is the time-stamp counter (a few nanoseconds to read),
//! calibrated once against the monotonic clock; elsewhere the monotonic
//! clock. The reading itself is inside the measured interval: the figures
//! include the cost of measuring (about two counter reads per call).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::lock::lock;

// Whether measuring is on: [`HOT`](super::hot::HOT)`.timing`, read by
// every call of the C ABI.

/// Bytes the C ABI handed out and not yet freed (sizes rounded up to 512,
/// as PyTorch counts them), and the peak of that since the last epoch.
/// Kept only while measuring: the figures a program sees, apart from the
/// blocks thread caches hold.
static HANDED: AtomicU64 = AtomicU64::new(0);
static HANDED_PEAK: AtomicU64 = AtomicU64::new(0);

/// Turns measuring on (process-wide; off by default).
pub fn enable() {
    let _ = calibration();
    super::hot::HOT.timing.store(true, Ordering::Relaxed);
}

/// Whether calls are being measured.
#[inline]
pub fn enabled() -> bool {
    super::hot::HOT.timing.load(Ordering::Relaxed)
}

/// Calls and time measured so far (or since an earlier [`Times`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Times {
    /// Allocation calls.
    pub allocs: u64,
    /// Free calls.
    pub frees: u64,
    /// Nanoseconds inside allocation calls.
    pub alloc_nanos: u64,
    /// Nanoseconds inside free calls.
    pub free_nanos: u64,
    /// Peak of the bytes the C ABI had handed out and not taken back
    /// (sizes rounded up to 512), since the last epoch: the program's own
    /// view of its peak live bytes.
    pub peak_handed: u64,
}

impl Times {
    /// Calls of either kind.
    pub const fn calls(&self) -> u64 {
        self.allocs + self.frees
    }
    /// Mean nanoseconds per call (alloc or free); 0 with no call.
    pub fn nanos_per_call(&self) -> f64 {
        (self.alloc_nanos + self.free_nanos) as f64 / self.calls().max(1) as f64
    }
    /// The calls and time since `earlier`.
    pub const fn since(&self, earlier: &Times) -> Times {
        Times {
            allocs: self.allocs - earlier.allocs,
            frees: self.frees - earlier.frees,
            alloc_nanos: self.alloc_nanos - earlier.alloc_nanos,
            free_nanos: self.free_nanos - earlier.free_nanos,
            peak_handed: self.peak_handed,
        }
    }
}

#[derive(Default)]
struct Counters {
    allocs: AtomicU64,
    frees: AtomicU64,
    alloc_ticks: AtomicU64,
    free_ticks: AtomicU64,
}

impl Counters {
    /// Adds to a counter only this thread writes.
    #[inline]
    fn bump(c: &AtomicU64, by: u64) {
        c.store(c.load(Ordering::Relaxed) + by, Ordering::Relaxed);
    }
}

static REGISTRY: Mutex<Vec<Arc<Counters>>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: Arc<Counters> = {
        let c = Arc::new(Counters::default());
        lock(&REGISTRY).push(c.clone());
        c
    };
}

/// Ticks per nanosecond of [`ticks`] (1.0 where ticks are nanoseconds).
fn calibration() -> f64 {
    static CAL: OnceLock<f64> = OnceLock::new();
    *CAL.get_or_init(|| {
        if cfg!(target_arch = "x86_64") {
            let (t0, c0) = (Instant::now(), ticks());
            std::thread::sleep(std::time::Duration::from_millis(20));
            let (dt, dc) = (t0.elapsed().as_nanos() as f64, ticks() - c0);
            (dc as f64 / dt.max(1.0)).max(1e-3)
        } else {
            1.0
        }
    })
}

/// A point in time, in ticks.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86-64 processor and reads a
        // counter; it has no memory effects.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Counts `size` bytes handed out by the C ABI (while measuring).
#[inline]
pub fn handed(size: u64) {
    let n =
        HANDED.fetch_add(size.div_ceil(512) * 512, Ordering::Relaxed) + size.div_ceil(512) * 512;
    HANDED_PEAK.fetch_max(n, Ordering::Relaxed);
}

/// Counts `size` bytes taken back by the C ABI (while measuring).
#[inline]
pub fn taken_back(size: u64) {
    let n = size.div_ceil(512) * 512;
    let _ = HANDED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
        Some(h.saturating_sub(n))
    });
}

/// Restarts the peak of handed-out bytes from the current value.
pub fn reset_peak_handed() {
    HANDED_PEAK.store(HANDED.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Records an allocation call that started at `start` ([`ticks`]).
#[inline]
pub fn record_alloc(start: u64) {
    let d = ticks().wrapping_sub(start);
    let _ = MINE.try_with(|c| {
        Counters::bump(&c.allocs, 1);
        Counters::bump(&c.alloc_ticks, d);
    });
}

/// Records a free call that started at `start` ([`ticks`]).
#[inline]
pub fn record_free(start: u64) {
    let d = ticks().wrapping_sub(start);
    let _ = MINE.try_with(|c| {
        Counters::bump(&c.frees, 1);
        Counters::bump(&c.free_ticks, d);
    });
}

/// Every thread's calls and time so far.
pub fn total() -> Times {
    let per_ns = calibration();
    let reg = lock(&REGISTRY);
    let mut t = Times::default();
    let (mut at, mut ft) = (0u64, 0u64);
    for c in reg.iter() {
        t.allocs += c.allocs.load(Ordering::Relaxed);
        t.frees += c.frees.load(Ordering::Relaxed);
        at += c.alloc_ticks.load(Ordering::Relaxed);
        ft += c.free_ticks.load(Ordering::Relaxed);
    }
    t.alloc_nanos = (at as f64 / per_ns) as u64;
    t.free_nanos = (ft as f64 / per_ns) as u64;
    t.peak_handed = HANDED_PEAK.load(Ordering::Relaxed);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_time_add_up_across_threads() {
        enable();
        let before = total();
        let h = std::thread::spawn(|| {
            for _ in 0..10 {
                let t = ticks();
                std::thread::sleep(std::time::Duration::from_micros(200));
                record_alloc(t);
            }
        });
        h.join().unwrap();
        let t = ticks();
        record_free(t);
        let d = total().since(&before);
        assert!(d.allocs >= 10 && d.frees >= 1, "{d:?}");
        assert!(d.alloc_nanos > 0, "{d:?}");
    }
}
