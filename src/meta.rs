//! Containers for the allocator's own metadata: always on the system
//! allocator, never on the global one (gpu-arena may itself be the global
//! allocator, see `ArenaGlobalAlloc`). The ground floor: every layer keeps
//! its bookkeeping in these.

/// A `Vec` for allocator metadata, on the system allocator.
pub(crate) type MetaVec<T> = allocator_api2::vec::Vec<T, std::alloc::System>;
/// A `Box` on the system allocator, as [`MetaVec`] (what an error carries).
pub(crate) type MetaBox<T> = allocator_api2::boxed::Box<T, std::alloc::System>;
/// `value` in a [`MetaBox`].
pub(crate) fn meta_box<T>(value: T) -> MetaBox<T> {
    MetaBox::new_in(value, std::alloc::System)
}
/// A hash map for allocator metadata, on the system allocator, hashed with a
/// fixed seed (its keys are the allocator's own offsets and handles).
pub(crate) type MetaMap<K, V> =
    hashbrown::HashMap<K, V, foldhash::fast::FixedState, std::alloc::System>;

/// The free ranges `(start, len)` of one space (the stitch region's pages,
/// the host backend's file), sorted and merged: taken first fit, given
/// back merged with the ranges beside them.
#[derive(Debug)]
pub(crate) struct Holes {
    list: MetaVec<(u64, u64)>,
}

impl Holes {
    /// No free range.
    pub(crate) fn new() -> Self {
        Holes {
            list: MetaVec::new_in(std::alloc::System),
        }
    }

    /// `len` from the first free range that holds it: its start.
    pub(crate) fn take(&mut self, len: u64) -> Option<u64> {
        let i = self.list.iter().position(|&(_, n)| n >= len)?;
        let (start, n) = self.list[i];
        if n == len {
            self.list.remove(i);
        } else {
            self.list[i] = (start + len, n - len);
        }
        Some(start)
    }

    /// Gives `start..start + len` back (no part of it free now), merged
    /// with the free ranges next to it.
    pub(crate) fn give(&mut self, start: u64, len: u64) {
        let i = self.list.partition_point(|&(s, _)| s < start);
        self.list.insert(i, (start, len));
        if i + 1 < self.list.len() && self.list[i].0 + self.list[i].1 == self.list[i + 1].0 {
            self.list[i].1 += self.list[i + 1].1;
            self.list.remove(i + 1);
        }
        if i > 0 && self.list[i - 1].0 + self.list[i - 1].1 == self.list[i].0 {
            self.list[i - 1].1 += self.list[i].1;
            self.list.remove(i);
        }
    }

    /// Removes the last free range if it ends at `end` (a space's top):
    /// its start.
    pub(crate) fn pop_ending_at(&mut self, end: u64) -> Option<u64> {
        let &(start, len) = self.list.last()?;
        (start + len == end).then(|| {
            self.list.pop();
            start
        })
    }

    /// The free ranges, in address order.
    #[cfg(any(test, feature = "invariant-checks"))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.list.iter().copied()
    }
}

/// Keys per leaf of a [`SparseIndex`].
const LEAF_SHIFT: u32 = 12;
const LEAF: usize = 1 << LEAF_SHIFT;
/// A [`SparseIndex`] slot holding no value.
const EMPTY: u32 = u32::MAX;

/// A map from dense keys (indices of fixed-size pieces of one region, as
/// slab chunks) to `u32` values below `u32::MAX`, as a two-level table:
/// leaves of 4096 keys, each made on its first insert. A lookup is two
/// loads and no hashing, where a hash map spent some 30 instructions on
/// every slab free; the memory is 16 KiB per leaf any key of which was used.
#[derive(Debug)]
pub(crate) struct SparseIndex {
    leaves: MetaVec<Option<MetaBox<[u32; LEAF]>>>,
}

impl SparseIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        SparseIndex {
            leaves: MetaVec::new_in(std::alloc::System),
        }
    }

    /// The value of `key`.
    #[inline]
    pub(crate) fn get(&self, key: u64) -> Option<u32> {
        let leaf = self.leaves.get((key >> LEAF_SHIFT) as usize)?.as_deref()?;
        let v = leaf[key as usize & (LEAF - 1)];
        (v != EMPTY).then_some(v)
    }

    /// Sets the value of `key` (`value` below `u32::MAX`).
    pub(crate) fn insert(&mut self, key: u64, value: u32) {
        debug_assert_ne!(value, EMPTY, "u32::MAX marks an empty slot");
        let l = (key >> LEAF_SHIFT) as usize;
        if self.leaves.len() <= l {
            self.leaves.resize_with(l + 1, || None);
        }
        let leaf = self.leaves[l].get_or_insert_with(|| meta_box([EMPTY; LEAF]));
        leaf[key as usize & (LEAF - 1)] = value;
    }

    /// Removes `key`'s value, returning it.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u32> {
        let leaf = self
            .leaves
            .get_mut((key >> LEAF_SHIFT) as usize)?
            .as_deref_mut()?;
        let v = core::mem::replace(&mut leaf[key as usize & (LEAF - 1)], EMPTY);
        (v != EMPTY).then_some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::SparseIndex;

    #[test]
    fn sparse_index_keeps_what_a_map_keeps() {
        let mut ix = SparseIndex::new();
        let mut model = std::collections::HashMap::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys spread over a few leaves, some far apart.
            let key = (x % 3) * 1_000_000 + (x >> 40) % 9000;
            match x % 3 {
                0 | 1 => {
                    ix.insert(key, step);
                    model.insert(key, step);
                }
                _ => assert_eq!(ix.remove(key), model.remove(&key)),
            }
            assert_eq!(ix.get(key), model.get(&key).copied());
        }
        for (&k, &v) in &model {
            assert_eq!(ix.get(k), Some(v));
        }
        assert_eq!(ix.get(u64::MAX), None, "a key past every leaf");
    }
}
