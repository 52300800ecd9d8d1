//! How much idle physical memory may stay: a decay curve over time.
//!
//! jemalloc once purged by a ratio of dirty to active pages and, hovering at
//! the threshold, purged and refaulted again and again; its answer was
//! `decay_ms`: each page that goes idle is allowed to stay for a while, its
//! allowance falling along a smoothstep curve to 0 (idle for `decay_ms`).
//! Here the allowance stays 1 for the first half of `decay_ms` and falls
//! along the smoothstep over the second half: memory a program uses again
//! within `decay_ms / 2` (a training step, a batch, a repetition) never goes
//! back and is never made again, which a curve falling from the start would
//! do to a part of it on every period (measured under PyTorch on an H100).
//! [`Decay`] computes that allowance and nothing else: it knows neither
//! handles nor locks, and reads no clock (callers pass the time), so tests
//! step it by hand. Who gives memory back, and when, is
//! [`reclaim`](super::reclaim)'s business.
#![deny(unsafe_code, clippy::unwrap_used)]

/// The decay curve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decay {
    /// Milliseconds after which idle memory has no allowance left.
    pub ms: u64,
}

impl Decay {
    /// The share (out of 1) of a unit idle since `since` that may still
    /// stay at `now`: 1 until `ms / 2` after it went idle, 0 after `ms`,
    /// smoothstep in between. With `ms == 0` nothing may stay.
    pub fn allowance(&self, since: u64, now: u64) -> f64 {
        if self.ms == 0 {
            return 0.0;
        }
        let age = now.saturating_sub(since) as f64 / self.ms as f64;
        let x = ((age - 0.5) * 2.0).clamp(0.0, 1.0);
        1.0 - x * x * (3.0 - 2.0 * x)
    }

    /// Pages of idle units that may stay at `now`, given each unit's
    /// (idle since, pages).
    pub fn allowed(&self, now: u64, idle: impl Iterator<Item = (u64, u64)>) -> u64 {
        idle.map(|(since, pages)| pages as f64 * self.allowance(since, now))
            .sum::<f64>()
            .floor() as u64
    }

    /// When a unit idle since `since` has no allowance left.
    pub fn expiry(&self, since: u64) -> u64 {
        since.saturating_add(self.ms)
    }
}

#[cfg(test)]
mod tests {
    use super::Decay;

    #[test]
    fn allowance_stays_then_falls_to_zero_along_a_smoothstep() {
        let d = Decay { ms: 1000 };
        assert_eq!(d.allowance(0, 0), 1.0);
        assert_eq!(d.allowance(0, 500), 1.0, "whole for the first half");
        assert_eq!(d.allowance(0, 750), 0.5);
        assert!(d.allowance(0, 625) > 0.8 && d.allowance(0, 875) < 0.2);
        assert_eq!(d.allowance(0, 1000), 0.0);
        assert_eq!(d.allowance(0, 5000), 0.0);
        assert_eq!(d.allowance(100, 50), 1.0, "a clock behind the unit");
        assert_eq!(Decay { ms: 0 }.allowance(0, 0), 0.0);
    }

    #[test]
    fn allowed_pages_sum_the_units_allowances() {
        let d = Decay { ms: 1000 };
        let idle = [(0, 10), (250, 4), (1000, 2)];
        // 10 * 0 + 4 * 0.5 + 2 * 1
        assert_eq!(d.allowed(1000, idle.into_iter()), 4);
        assert_eq!(d.expiry(500), 1500);
    }
}
