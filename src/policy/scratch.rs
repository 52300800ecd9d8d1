//! Scratch arenas: bump allocation over one reserved range, reset in O(1).
//!
//! The arithmetic of [`Bump`]: a cursor inside `max` reserved bytes, of which
//! the first `committed` are backed by physical memory. [`Bump::place`] says
//! where an allocation goes and whether more must be committed first;
//! [`Bump::grow_target`] says how far ahead to commit (geometric growth, so
//! that commits are amortized); [`Bump::keep`] says how much stays committed
//! across a reset. The arena does the committing.
//!
//! Alignment is computed on `origin + offset`, the allocation's address, so
//! every power-of-two alignment is served wherever its padding fits in the
//! reservation, however the reservation itself is aligned.
#![deny(unsafe_code, clippy::unwrap_used)]

use crate::align::round_up;

/// Where a bump allocation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// At `start..end`, in committed memory and under the allocation limit.
    At {
        /// First byte (offset).
        start: u64,
        /// One past the last byte (the new cursor).
        end: u64,
    },
    /// At `start..end` once `committed..commit_to` is committed (then the
    /// allocation is under the limit and fits).
    Commit {
        /// First byte (offset).
        start: u64,
        /// One past the last byte (the new cursor).
        end: u64,
        /// Where the committed prefix should end (see [`Bump::grow_target`]).
        commit_to: u64,
    },
    /// The allocation would end at `end`, past the allocation limit.
    OverLimit {
        /// Where the allocation would end.
        end: u64,
    },
    /// The allocation does not fit the reservation (`end` is `u64::MAX`
    /// where the arithmetic overflows).
    Full {
        /// Where the allocation would end.
        end: u64,
    },
}

/// Bump state of one scratch arena (offsets from the start of its
/// reservation). Invariants: `committed` and `max` are multiples of `page`;
/// `committed <= max`; every cursor handed to [`Bump::place`] is `<= max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bump {
    /// Address of offset 0: alignments are computed on `origin + offset`.
    pub origin: u64,
    /// Reserved bytes (a multiple of `page`).
    pub max: u64,
    /// Commit granularity (a power of two).
    pub page: u64,
    /// Bytes backed by physical memory from offset 0 (a multiple of `page`).
    pub committed: u64,
    /// Most bytes committed beyond the end of the allocation that needs a
    /// commit (growth doubles the committed prefix up to this much ahead).
    pub commit_ahead: u64,
    /// Committed bytes kept across a reset (the rest is given back).
    pub retain: u64,
    /// Most bytes allocated (cursor offset, padding included) between two
    /// resets; `u64::MAX`: no limit.
    pub limit: u64,
    /// Resets so far (the generation of the pointers handed out).
    pub generation: u64,
}

impl Bump {
    /// An empty bump over `max` bytes (rounded up to `page`, a power of
    /// two) whose offset 0 lies at `origin`; nothing committed, no limit,
    /// no retention, commits at most 1 GiB ahead.
    pub fn new(origin: u64, max: u64, page: u64) -> Self {
        Bump {
            origin,
            max: round_up(max, page).unwrap_or(max / page * page),
            page,
            committed: 0,
            commit_ahead: 1 << 30,
            retain: 0,
            limit: u64::MAX,
            generation: 0,
        }
    }

    /// Where `size` bytes (more than zero) aligned to `align` (a power of
    /// two) go when the cursor is at offset `cursor`. Constant time.
    pub fn place(&self, cursor: u64, size: u64, align: u64) -> Place {
        let full = Place::Full { end: u64::MAX };
        let Some(at) = self.origin.checked_add(cursor) else {
            return full;
        };
        let Some(start) = round_up(at, align).map(|a| a - self.origin) else {
            return full;
        };
        let Some(end) = start.checked_add(size) else {
            return full;
        };
        if end > self.limit {
            Place::OverLimit { end }
        } else if end > self.max {
            Place::Full { end }
        } else if end > self.committed {
            Place::Commit {
                start,
                end,
                commit_to: self.grow_target(end),
            }
        } else {
            Place::At { start, end }
        }
    }

    /// Where the committed prefix should end so that `end` (past
    /// `committed`, at most `max`) fits: at least double the committed
    /// bytes, at most `commit_ahead` past `end`, never past the
    /// reservation or the page holding the allocation limit. A multiple of
    /// `page`, at least [`Bump::min_commit`].
    pub fn grow_target(&self, end: u64) -> u64 {
        let least = self.min_commit(end);
        let want = end
            .max(self.committed.saturating_mul(2))
            .min(end.saturating_add(self.commit_ahead));
        let cap = self
            .max
            .min(round_up(self.limit, self.page).unwrap_or(self.max));
        round_up(want, self.page)
            .unwrap_or(self.max)
            .min(cap)
            .max(least)
    }

    /// The least committed prefix holding `end` (at most `max`): `end`
    /// rounded up to a page.
    pub fn min_commit(&self, end: u64) -> u64 {
        round_up(end, self.page).unwrap_or(self.max).min(self.max)
    }

    /// The end (offset) of what the fast path may hand out without asking:
    /// committed memory under the allocation limit.
    pub fn fast_end(&self) -> u64 {
        self.committed.min(self.limit)
    }

    /// Committed bytes a reset keeps: `retain` rounded up to a page, at most
    /// what is committed.
    pub fn keep(&self) -> u64 {
        round_up(self.retain, self.page)
            .unwrap_or(self.committed)
            .min(self.committed)
    }

    /// Forgets every allocation: returns the new generation. The caller
    /// gives `keep()..committed` back and sets `committed` to what it kept.
    pub fn reset(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    #[test]
    fn places_commits_then_places_and_refuses() {
        let mut b = Bump::new(1 << 30, 1 << 20, PAGE);
        assert_eq!(
            b.place(0, 10, 8),
            Place::Commit {
                start: 0,
                end: 10,
                commit_to: PAGE
            }
        );
        b.committed = PAGE;
        assert_eq!(b.place(0, 10, 8), Place::At { start: 0, end: 10 });
        assert_eq!(b.place(10, 10, 8), Place::At { start: 16, end: 26 });
        assert_eq!(
            b.place(0, (1 << 20) + 1, 8),
            Place::Full { end: (1 << 20) + 1 }
        );
        assert_eq!(b.place(0, u64::MAX, 8), Place::Full { end: u64::MAX });
        assert_eq!(b.reset(), 1);
    }

    #[test]
    fn alignment_is_of_the_address_not_the_offset() {
        // Offset 0 at an address aligned to 4 KiB only: a 64 KiB alignment
        // needs padding even at offset 0.
        let mut b = Bump::new((1 << 30) + PAGE, 1 << 20, PAGE);
        b.committed = 1 << 20;
        let Place::At { start, end } = b.place(0, 1, 1 << 16) else {
            panic!("fits")
        };
        assert_eq!((b.origin + start) % (1 << 16), 0);
        assert_eq!(start, (1 << 16) - PAGE);
        assert_eq!(end, start + 1);
        // An alignment larger than the reservation fits only where the
        // padding does.
        assert!(matches!(b.place(0, 1, 1 << 40), Place::Full { .. }));
    }

    #[test]
    fn growth_doubles_within_commit_ahead_and_limits() {
        let mut b = Bump::new(0, 1 << 30, PAGE);
        b.committed = 16 * PAGE;
        // Doubling: 32 pages.
        assert_eq!(b.grow_target(16 * PAGE + 1), 32 * PAGE);
        // A large request commits what it needs.
        assert_eq!(b.grow_target(100 * PAGE + 1), 101 * PAGE);
        // At most `commit_ahead` past the end.
        b.commit_ahead = 2 * PAGE;
        assert_eq!(b.grow_target(16 * PAGE + 1), 19 * PAGE);
        // Never past the reservation or the limit's page.
        b.commit_ahead = 1 << 30;
        b.max = 20 * PAGE;
        assert_eq!(b.grow_target(17 * PAGE), 20 * PAGE);
        b.max = 1 << 30;
        b.limit = 18 * PAGE - 5;
        assert_eq!(b.grow_target(17 * PAGE), 18 * PAGE);
        assert_eq!(
            b.place(17 * PAGE, 5, 1),
            Place::Commit {
                start: 17 * PAGE,
                end: 17 * PAGE + 5,
                commit_to: 18 * PAGE
            }
        );
    }

    #[test]
    fn limit_is_checked_before_the_reservation() {
        let mut b = Bump::new(0, 8 * PAGE, PAGE);
        b.limit = 100;
        assert_eq!(b.place(96, 8, 8), Place::OverLimit { end: 104 });
        assert_eq!(b.fast_end(), 0);
        b.committed = PAGE;
        assert_eq!(b.fast_end(), 100);
        assert_eq!(
            b.place(90, 10, 1),
            Place::At {
                start: 90,
                end: 100
            }
        );
    }

    #[test]
    fn reset_keeps_retain_rounded_to_pages() {
        let mut b = Bump::new(0, 64 * PAGE, PAGE);
        b.committed = 8 * PAGE;
        b.retain = 2 * PAGE + 1;
        assert_eq!(b.keep(), 3 * PAGE);
        b.retain = u64::MAX;
        assert_eq!(b.keep(), 8 * PAGE);
        b.retain = 0;
        assert_eq!(b.keep(), 0);
    }
}
