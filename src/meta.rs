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
