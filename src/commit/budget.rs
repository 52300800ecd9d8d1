//! One limit over several arenas: the committed bytes of every arena that
//! shares a [`Budget`] add up against its limit (the global arenas of a
//! device share one, so that `limit` bounds the device, whatever the number
//! of shards and tags).
//!
//! An arena takes bytes from its budget before it creates a handle (and
//! gives them back if the create fails) and gives them back once a release
//! succeeded, so the budget's `used` is exactly the sum of its arenas'
//! committed bytes, handles whose release the driver refused included.
#![deny(unsafe_code, clippy::unwrap_used)]

use core::sync::atomic::{AtomicU64, Ordering};

/// Committed bytes of several arenas against one limit (see the module
/// docs). Lock-free.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicU64,
    used: AtomicU64,
    peak: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes (`u64::MAX`: none; the budget then only
    /// counts).
    pub const fn new(limit: u64) -> Self {
        Budget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the limit (bytes already taken stay taken).
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes committed by the arenas now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes ever committed at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if they fit under the limit; false (nothing taken)
    /// otherwise.
    pub fn try_take(&self, bytes: u64) -> bool {
        let limit = self.limit();
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes).filter(|&n| n <= limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.peak.fetch_max(next, Ordering::Relaxed);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Takes `bytes` whatever the limit (memory that arrived committed,
    /// such as a handle imported from another process).
    pub fn take(&self, bytes: u64) {
        let next = self.used.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.peak.fetch_max(next, Ordering::Relaxed);
    }

    /// Gives `bytes` back.
    pub fn give(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(
            before >= bytes,
            "budget: {bytes} given back, {before} taken"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn takes_up_to_the_limit_and_counts_the_peak() {
        let b = Budget::new(10);
        assert!(b.try_take(6));
        assert!(!b.try_take(5), "6 + 5 > 10");
        assert!(b.try_take(4));
        assert_eq!((b.used(), b.peak()), (10, 10));
        b.give(7);
        b.take(20);
        assert_eq!((b.used(), b.peak()), (23, 23));
        assert!(!b.try_take(1));
        b.give(23);
        b.set_limit(u64::MAX);
        assert!(b.try_take(u64::MAX));
        assert!(!b.try_take(1), "no overflow");
    }

    #[test]
    fn threads_never_take_more_than_the_limit() {
        let b = Budget::new(1000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if b.try_take(7) {
                            assert!(b.used() <= 1000);
                            b.give(7);
                        }
                    }
                });
            }
        });
        assert_eq!(b.used(), 0);
        assert!(b.peak() <= 1000);
    }
}
