//! Size classes for slabs: 16-byte steps up to 128 bytes, then four classes
//! per doubling (at most 25 % rounding, 12.5 % on average) up to [`MAX_SMALL`].
#![deny(unsafe_code, clippy::unwrap_used)]

/// Largest size served by slabs; larger blocks go to the large policy.
pub const MAX_SMALL: u64 = 32 << 10;
/// Number of size classes.
pub const COUNT: usize = 40;

const fn build() -> [u32; COUNT] {
    let mut t = [0u32; COUNT];
    let mut i = 0;
    while i < 8 {
        t[i] = 16 * (i as u32 + 1);
        i += 1;
    }
    let mut k = 7;
    while k < 15 {
        let base = 1u32 << k;
        let step = base / 4;
        let mut j = 1;
        while j <= 4 {
            t[8 + (k - 7) * 4 + (j - 1)] = base + step * j as u32;
            j += 1;
        }
        k += 1;
    }
    t
}

/// Object size of each class.
pub const SIZES: [u32; COUNT] = build();
const _: () = assert!(SIZES[COUNT - 1] as u64 == MAX_SMALL);
const _: () = assert!(SIZES[0] == 16);

/// The class serving `size` bytes (1..=MAX_SMALL).
#[inline(always)]
pub const fn class_of(size: u64) -> usize {
    if size <= 128 {
        let s = if size == 0 { 1 } else { size };
        (s.div_ceil(16) - 1) as usize
    } else {
        // Four classes per power of two: the quarter of `base` that
        // `size - 1` falls in (a shift: `base / 4` is a power of two, which
        // a division would not know).
        let k = 63 - (size - 1).leading_zeros() as u64;
        let base = 1u64 << k;
        (8 + (k - 7) * 4 + ((size - 1 - base) >> (k - 2))) as usize
    }
}

/// The class serving `size` bytes aligned to `align`, if slabs can serve it.
///
/// `None` for an alignment that is not a power of two (zero included): such
/// a request is the caller's to refuse, never a slab's to round.
#[inline(always)]
pub const fn class_for(size: u64, align: u64) -> Option<usize> {
    if size > MAX_SMALL || align > 4096 || !align.is_power_of_two() {
        return None;
    }
    let rounded = (size + align - 1) & !(align - 1);
    if rounded > MAX_SMALL {
        return None;
    }
    let c = class_of(rounded);
    // `align` is a power of two: a mask, not a division.
    if SIZES[c] as u64 & (align - 1) == 0 {
        Some(c)
    } else {
        None
    }
}

/// Whether an object of class size `have` may have been handed out for a
/// request of `size` bytes with some alignment: `free_sized` gets the size
/// but not the alignment, and an alignment can raise the class
/// (`class_for(20, 64)` is the 64-byte class).
///
/// Constant time: only an alignment dividing the class size can give that
/// class ([`class_for`]), and the largest of them (at most 4096) rounds the
/// request up the most without passing the class size; rounding up never
/// lowers the class, so if that alignment does not reach the class, none
/// does. (It was a walk over all 13 alignments, on every sized free of a
/// small block: PyTorch's frees pass sizes the C ABI rounded up to 512.)
pub const fn may_serve(size: u64, have: u64) -> bool {
    may_serve_class(size, class_of(have))
}

/// [`may_serve`] for an object of class `c` (what a free knows already).
/// `size` must be at least 1.
#[inline(always)]
pub const fn may_serve_class(size: u64, c: usize) -> bool {
    let class_size = SIZES[c] as u64;
    if size > class_size {
        return false;
    }
    let low = class_size & class_size.wrapping_neg();
    let align = if low > 4096 { 4096 } else { low };
    class_of((size + align - 1) & !(align - 1)) == c
}

/// `ceil(2^32 / SIZES[c])` for every class: an object's index in its slab
/// by a multiplication and a shift instead of a division by a class size
/// that is not a power of two (tens of cycles on every free of a small block).
const RECIPROCALS: [u64; COUNT] = {
    let mut t = [0u64; COUNT];
    let mut c = 0;
    while c < COUNT {
        t[c] = (1u64 << 32).div_ceil(SIZES[c] as u64);
        c += 1;
    }
    t
};

/// The index of the object of class `c` starting `rel` bytes into its slab,
/// or `None` if no object of that class starts there.
///
/// For `rel = q * size < 2^20` (every slab is smaller: see [`slab_bytes`]),
/// `rel * ceil(2^32 / size) = q * (2^32 + r)` with `q * r < 2^20`, so the
/// shift by 32 gives `q` exactly; for any other `rel`, `q * size != rel`
/// whatever `q` the shift gives.
#[inline(always)]
pub const fn object_index(rel: u64, c: usize) -> Option<u32> {
    if rel >= 1 << 20 {
        return None;
    }
    let q = (rel * RECIPROCALS[c]) >> 32;
    if q * SIZES[c] as u64 == rel {
        Some(q as u32)
    } else {
        None
    }
}

/// Bytes of one slab of class `c` (a power of two, slabs are aligned to it).
pub const fn slab_bytes(c: usize) -> u64 {
    let s = SIZES[c] as u64;
    if s <= 8 << 10 { 64 << 10 } else { 256 << 10 }
}

/// Objects in one slab of class `c`.
pub const fn objects(c: usize) -> u32 {
    (slab_bytes(c) / SIZES[c] as u64) as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        for size in 1..=MAX_SMALL {
            let c = class_of(size);
            assert!(SIZES[c] as u64 >= size, "size {size} class {c}");
            if c > 0 {
                assert!((SIZES[c - 1] as u64) < size, "size {size} class {c}");
            }
        }
        for w in SIZES.windows(2) {
            assert!(w[0] < w[1]);
        }
    }

    #[test]
    fn free_sized_accepts_every_size_an_alignment_could_have_raised() {
        for align in [1u64, 8, 64, 512, 4096] {
            for size in (1..=MAX_SMALL).step_by(13) {
                if let Some(c) = class_for(size, align) {
                    assert!(may_serve(size, SIZES[c] as u64), "{size} {align}");
                }
            }
        }
        assert!(may_serve(20, 64));
        // The same answers as trying every alignment, for every size and class.
        let by_walk = |size: u64, have: u64| {
            let c = class_of(have);
            (0..=12).any(|k| class_for(size, 1 << k) == Some(c))
        };
        for &have in SIZES.iter() {
            for size in 0..=MAX_SMALL + 1 {
                assert_eq!(
                    may_serve(size, have as u64),
                    by_walk(size, have as u64),
                    "{size} in {have}"
                );
            }
        }
        // Object indices by reciprocal: the division's answers, every offset of every slab.
        for (c, &size) in SIZES.iter().enumerate() {
            let size = size as u64;
            for rel in 0..slab_bytes(c) {
                let want = (rel % size == 0).then_some((rel / size) as u32);
                assert_eq!(object_index(rel, c), want, "offset {rel} in class {c}");
            }
        }
        assert!(!may_serve(65, 64), "larger than the object");
        assert!(!may_serve(16, 48), "no alignment takes 16 bytes to 48");
    }

    #[test]
    fn alignments_that_are_not_powers_of_two_get_no_class() {
        for (size, align) in [
            (64, 0),
            (1, 0),
            (40, 3),
            (40, 6),
            (40, 12),
            (40, 24),
            (200, 80),
        ] {
            assert_eq!(class_for(size, align), None, "size {size} align {align}");
        }
    }

    #[test]
    fn aligned_classes_are_aligned() {
        for align in [1u64, 2, 8, 16, 64, 256, 512, 4096] {
            for size in (1..=MAX_SMALL).step_by(7) {
                if let Some(c) = class_for(size, align) {
                    assert_eq!(SIZES[c] as u64 % align, 0);
                    assert!(SIZES[c] as u64 >= size);
                    assert_eq!(slab_bytes(c) % align, 0);
                }
            }
        }
    }
}
