//! Stream stamps: which stream freed memory, and in which epoch of it.
//!
//! A [`Stamp`] names the work queued on one stream before a free; a
//! [`StampSet`] gathers the stamps of several frees (at most one per stream:
//! the newest epoch covers the older ones of the same stream). Both are
//! plain values: whether a stamp is *done* is asked of
//! [`Streams`](super::Streams), which owns the fences.
#![deny(unsafe_code, clippy::unwrap_used)]

use crate::MetaVec;

/// Which stream last freed a span, and in which epoch of that stream.
///
/// A stream's epoch advances each time a fence is recorded on it: a span
/// stamped `(slot, e)` may be reused by another stream once the fence that
/// closed epoch `e` completed. `Stamp::SAFE` needs no fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Stamp(u64);

const SLOT_SHIFT: u32 = 48;

impl Stamp {
    /// Reusable by anyone.
    pub const SAFE: Stamp = Stamp(0);

    /// Freed on stream slot `slot` (≥ 1) during `epoch`.
    pub const fn new(slot: u16, epoch: u64) -> Stamp {
        Stamp(((slot as u64) << SLOT_SHIFT) | (epoch & ((1 << SLOT_SHIFT) - 1)))
    }
    /// The stream slot (0 for safe stamps).
    pub const fn slot(self) -> u16 {
        (self.0 >> SLOT_SHIFT) as u16
    }
    /// The epoch.
    pub const fn epoch(self) -> u64 {
        self.0 & ((1 << SLOT_SHIFT) - 1)
    }
    /// Whether no fence is needed.
    pub const fn is_safe(self) -> bool {
        self.0 == 0
    }
}

/// The stamps of several frees, one per stream slot (the newest epoch of
/// each). Empty means "no work to wait for".
///
/// Invariant: no two entries share a slot; no entry is [`Stamp::SAFE`].
#[derive(Debug)]
pub struct StampSet {
    stamps: MetaVec<Stamp>,
}

impl Default for StampSet {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for StampSet {
    fn clone(&self) -> Self {
        let mut stamps = MetaVec::new_in(std::alloc::System);
        stamps.extend_from_slice(&self.stamps);
        StampSet { stamps }
    }
}

impl StampSet {
    /// No stamps.
    pub const fn new() -> Self {
        StampSet {
            stamps: MetaVec::new_in(std::alloc::System),
        }
    }

    /// Adds `stamp`, keeping one entry per slot (the newest epoch).
    #[inline]
    pub fn add(&mut self, stamp: Stamp) {
        if stamp.is_safe() {
            return;
        }
        match self.stamps.iter_mut().find(|s| s.slot() == stamp.slot()) {
            Some(s) => {
                if stamp.epoch() > s.epoch() {
                    *s = stamp;
                }
            }
            None => self.stamps.push(stamp),
        }
    }

    /// Adds every stamp of `other`.
    pub fn add_all(&mut self, other: &StampSet) {
        for &s in &other.stamps {
            self.add(s);
        }
    }

    /// Drops the stamps for which `done` says the work completed; returns
    /// whether none is left.
    #[inline]
    pub fn prune(&mut self, done: impl Fn(Stamp) -> bool) -> bool {
        if !self.stamps.is_empty() {
            self.stamps.retain(|s| !done(*s));
        }
        self.stamps.is_empty()
    }

    /// Whether work of stream slot `slot` may use what these stamps guard
    /// now: every stamp is of that slot (stream order covers it) or done.
    #[inline]
    pub fn allows(&self, slot: u16, done: impl Fn(Stamp) -> bool) -> bool {
        self.stamps.iter().all(|s| s.slot() == slot || done(*s))
    }

    /// Whether every stamp is done.
    #[inline]
    pub fn all_done(&self, done: impl Fn(Stamp) -> bool) -> bool {
        self.stamps.iter().all(|s| done(*s))
    }

    /// The stamps.
    pub fn iter(&self) -> impl Iterator<Item = Stamp> + '_ {
        self.stamps.iter().copied()
    }

    /// Number of stamps.
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// The `i`th stamp.
    pub fn get(&self, i: usize) -> Option<Stamp> {
        self.stamps.get(i).copied()
    }

    /// Whether there is no stamp.
    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// Forgets every stamp (keeps the capacity).
    pub fn clear(&mut self) {
        self.stamps.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_slot_keeps_the_newest_epoch() {
        let mut s = StampSet::new();
        s.add(Stamp::new(1, 3));
        s.add(Stamp::new(1, 2));
        s.add(Stamp::new(2, 1));
        s.add(Stamp::SAFE);
        let v: Vec<_> = s.iter().collect();
        assert_eq!(v, vec![Stamp::new(1, 3), Stamp::new(2, 1)]);
    }

    #[test]
    fn allows_same_slot_or_done() {
        let mut s = StampSet::new();
        s.add(Stamp::new(1, 5));
        assert!(s.allows(1, |_| false));
        assert!(!s.allows(2, |_| false));
        assert!(s.allows(2, |st| st.epoch() <= 5));
        assert!(!s.prune(|_| false));
        assert!(s.prune(|_| true));
        assert!(s.is_empty());
    }
}
