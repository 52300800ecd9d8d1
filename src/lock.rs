//! Locking a mutex whose last holder panicked.
//!
//! A panic while one of the crate's locks is held is a bug (bad input is an
//! error, not a panic). Every lock of the crate is then taken as it is
//! rather than poisoned for good: an allocator behind PyTorch, a C program
//! or `#[global_allocator]` must not turn one panic into a panic on every
//! later call. This function is that rule, in one place.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the guard of a poisoned lock as well.
#[inline]
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::lock;
    use std::sync::Mutex;

    /// A lock whose holder panicked is taken with what it guards.
    #[test]
    fn a_poisoned_lock_is_taken_as_it_is() {
        let m = Mutex::new(1);
        let r = std::panic::catch_unwind(|| {
            let mut g = m.lock().unwrap();
            *g = 2;
            panic!("a bug while holding it");
        });
        assert!(r.is_err() && m.is_poisoned());
        assert_eq!(*lock(&m), 2);
    }
}
