//! Alignment arithmetic shared by every layer (pure functions, no state):
//! the driver rounds to its granularity, the policies to block alignments.

/// Rounds `value` up to a multiple of the power of two `align`; `None` on overflow.
///
/// ```
/// use gpu_arena::align::round_up;
/// assert_eq!(round_up(5, 4), Some(8));
/// assert_eq!(round_up(8, 4), Some(8));
/// assert_eq!(round_up(u64::MAX, 2), None);
/// ```
#[inline]
pub const fn round_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    match value.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}
