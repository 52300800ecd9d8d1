//! Scratch arenas: bump allocation over a reserved range, reset in O(1).
//!
//! The arithmetic of [`Bump`]: a cursor inside `capacity` bytes, of which
//! `committed` are backed by physical memory. The arena commits more when
//! [`Bump::alloc`] reports it needs to, and decommits down to the retention
//! limit on reset.
#![deny(unsafe_code, clippy::unwrap_used)]

/// What a bump allocation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BumpResult {
    /// Placed at this offset.
    Placed(u64),
    /// Needs physical memory up to this offset first (then retry).
    Commit(u64),
    /// Does not fit the reserved capacity.
    Full,
}

/// Bump state of one scratch arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bump {
    /// Reserved bytes.
    pub capacity: u64,
    /// Next free offset. Invariant: `cursor <= committed <= capacity`.
    pub cursor: u64,
    /// Bytes backed by physical memory from offset 0.
    pub committed: u64,
    /// Resets (the generation of pointers handed out).
    pub generation: u64,
    /// Bytes handed out since the last reset (sum of request sizes).
    pub used: u64,
}

impl Bump {
    /// An empty bump over `capacity` bytes.
    pub const fn new(capacity: u64) -> Self {
        Bump {
            capacity,
            cursor: 0,
            committed: 0,
            generation: 0,
            used: 0,
        }
    }

    /// Places `size` bytes aligned to `align` (a power of two).
    #[inline(always)]
    pub fn alloc(&mut self, size: u64, align: u64) -> BumpResult {
        let start = (self.cursor + align - 1) & !(align - 1);
        let Some(end) = start.checked_add(size) else {
            return BumpResult::Full;
        };
        if end > self.capacity {
            BumpResult::Full
        } else if end > self.committed {
            BumpResult::Commit(end)
        } else {
            self.cursor = end;
            self.used += size;
            BumpResult::Placed(start)
        }
    }

    /// Forgets every allocation; returns the new generation.
    pub fn reset(&mut self) -> u64 {
        self.cursor = 0;
        self.used = 0;
        self.generation += 1;
        self.generation
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bump_commits_then_places_and_resets() {
        let mut b = Bump::new(1 << 20);
        assert_eq!(b.alloc(10, 8), BumpResult::Commit(10));
        b.committed = 4096;
        assert_eq!(b.alloc(10, 8), BumpResult::Placed(0));
        assert_eq!(b.alloc(10, 8), BumpResult::Placed(16));
        assert_eq!(b.alloc(1 << 21, 8), BumpResult::Full);
        assert_eq!(b.reset(), 1);
        assert_eq!(b.alloc(10, 8), BumpResult::Placed(0));
    }
}
