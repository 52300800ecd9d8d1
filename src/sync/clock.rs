//! A millisecond clock the decay policy reads, which tests can step by hand.
//!
//! Giving idle memory back "after `decay_ms`" needs a clock; tests and the
//! background reclaimer's unit tests need one they control, so that what is
//! given back, and when, is deterministic (jemalloc's decay tests do the
//! same with a mocked `nstime`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since some start, from the system's coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE`: a few nanoseconds to read, a few milliseconds
/// of resolution, which is all a decay over seconds needs; it is read on
/// every page that empties or fills) or set by hand ([`Clock::manual`]).
#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    /// Milliseconds of the coarse monotonic clock at the start.
    System(u64),
    Manual(Arc<AtomicU64>),
}

/// The coarse monotonic clock in milliseconds (through the C library,
/// whose vDSO lookup works under every loader and tool: valgrind, the GPU
/// machines' virtual machines).
#[inline]
fn coarse_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE
    // exists on every Linux since 2.6.32. On failure `t` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The monotonic system clock (milliseconds since this call).
    pub fn system() -> Self {
        Clock(Source::System(coarse_ms()))
    }

    /// A clock that reads 0 until [`Clock::advance`] or [`Clock::set`] moves
    /// it. Clones share the same time.
    pub fn manual() -> Self {
        Clock(Source::Manual(Arc::new(AtomicU64::new(0))))
    }

    /// Milliseconds now.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System(start) => coarse_ms().saturating_sub(*start),
            Source::Manual(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward by `ms` (no effect on the system clock).
    pub fn advance(&self, ms: u64) {
        if let Source::Manual(t) = &self.0 {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }

    /// Sets a manual clock to `ms` (no effect on the system clock).
    pub fn set(&self, ms: u64) {
        if let Source::Manual(t) = &self.0 {
            t.store(ms, Ordering::Relaxed);
        }
    }

    /// Whether this clock is stepped by hand.
    pub fn is_manual(&self) -> bool {
        matches!(self.0, Source::Manual(_))
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn manual_clock_moves_only_by_hand_and_clones_share_it() {
        let c = Clock::manual();
        let d = c.clone();
        assert_eq!(c.now_ms(), 0);
        c.advance(250);
        assert_eq!(d.now_ms(), 250);
        d.set(1000);
        assert_eq!(c.now_ms(), 1000);
    }
}
