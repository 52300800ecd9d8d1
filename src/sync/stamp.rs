//! Stream stamps: which stream freed memory, and in which epoch of it.
//!
//! A [`Stamp`] names the work queued on one stream before a free; a
//! [`StampSet`] gathers the stamps of several frees (at most one per stream:
//! the newest epoch covers the older ones of the same stream). Both are
//! plain values: whether a stamp is *done* is asked of
//! [`Streams`](super::Streams), which owns the fences.
#![deny(unsafe_code, clippy::unwrap_used)]

use crate::meta::MetaVec;

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
/// The first stamp is kept inline (a program with one stream never touches
/// the heap here); stamps of further streams go to a spill vector.
///
/// Invariant: no two entries share a slot; no entry is [`Stamp::SAFE`];
/// `first` is [`Stamp::SAFE`] only when the set is empty.
#[derive(Debug, Default)]
pub struct StampSet {
    first: Stamp,
    more: Option<allocator_api2::boxed::Box<MetaVec<Stamp>, std::alloc::System>>,
}

impl Clone for StampSet {
    fn clone(&self) -> Self {
        let mut c = StampSet::new();
        for s in self.iter() {
            c.add(s);
        }
        c
    }
}

impl StampSet {
    /// No stamps.
    pub const fn new() -> Self {
        StampSet {
            first: Stamp::SAFE,
            more: None,
        }
    }

    /// Adds `stamp`, keeping one entry per slot (the newest epoch).
    #[inline]
    pub fn add(&mut self, stamp: Stamp) {
        if stamp.is_safe() {
            return;
        }
        if self.first.is_safe() {
            self.first = stamp;
            return;
        }
        if self.first.slot() == stamp.slot() {
            if stamp.epoch() > self.first.epoch() {
                self.first = stamp;
            }
            return;
        }
        self.add_more(stamp);
    }

    #[cold]
    fn add_more(&mut self, stamp: Stamp) {
        let more = self.more.get_or_insert_with(|| {
            allocator_api2::boxed::Box::new_in(
                MetaVec::new_in(std::alloc::System),
                std::alloc::System,
            )
        });
        match more.iter_mut().find(|s| s.slot() == stamp.slot()) {
            Some(s) => {
                if stamp.epoch() > s.epoch() {
                    *s = stamp;
                }
            }
            None => more.push(stamp),
        }
    }

    /// Adds every stamp of `other`.
    #[inline]
    pub fn add_all(&mut self, other: &StampSet) {
        // `add` passes over a safe (empty) first stamp.
        self.add(other.first);
        if let Some(more) = &other.more {
            for &s in more.iter() {
                self.add(s);
            }
        }
    }

    /// Drops the stamps for which `done` says the work completed; returns
    /// whether none is left.
    #[inline]
    pub fn prune(&mut self, done: impl Fn(Stamp) -> bool) -> bool {
        if let Some(more) = self.more.as_mut() {
            more.retain(|s| !done(*s));
        }
        if !self.first.is_safe() && done(self.first) {
            // Promote a spilled stamp, keeping the invariant.
            self.first = self
                .more
                .as_mut()
                .and_then(|m| m.pop())
                .unwrap_or(Stamp::SAFE);
        }
        self.is_empty()
    }

    /// Whether work of stream slot `slot` may use what these stamps guard
    /// now: every stamp is of that slot (stream order covers it) or done.
    #[inline]
    pub fn allows(&self, slot: u16, done: impl Fn(Stamp) -> bool) -> bool {
        (self.first.is_safe() || self.first.slot() == slot || done(self.first))
            && self
                .more
                .as_ref()
                .is_none_or(|m| m.iter().all(|s| s.slot() == slot || done(*s)))
    }

    /// Whether every stamp is done.
    #[inline]
    pub fn all_done(&self, done: impl Fn(Stamp) -> bool) -> bool {
        self.iter().all(done)
    }

    /// The stamps.
    pub fn iter(&self) -> impl Iterator<Item = Stamp> + '_ {
        core::iter::once(self.first)
            .filter(|s| !s.is_safe())
            .chain(self.more.iter().flat_map(|m| m.iter().copied()))
    }

    /// Number of stamps.
    pub fn len(&self) -> usize {
        usize::from(!self.first.is_safe()) + self.more.as_ref().map_or(0, |m| m.len())
    }

    /// The `i`th stamp.
    pub fn get(&self, i: usize) -> Option<Stamp> {
        self.iter().nth(i)
    }

    /// Whether there is no stamp.
    pub fn is_empty(&self) -> bool {
        self.first.is_safe()
    }

    /// Forgets every stamp (keeps the spill vector's capacity).
    pub fn clear(&mut self) {
        self.first = Stamp::SAFE;
        if let Some(m) = self.more.as_mut() {
            m.clear();
        }
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
    fn spilled_stamps_are_kept_and_promoted() {
        let mut s = StampSet::new();
        for slot in 1..=4 {
            s.add(Stamp::new(slot, 10));
        }
        assert_eq!(s.len(), 4);
        assert!(!s.allows(1, |_| false));
        assert!(s.allows(1, |st| st.slot() != 1));
        assert!(!s.prune(|st| st.slot() == 1), "three left");
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert!(s.prune(|_| true));
        assert_eq!(s.iter().count(), 0);
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
