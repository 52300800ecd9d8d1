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
        let k = 63 - (size - 1).leading_zeros() as u64;
        let base = 1u64 << k;
        let step = base / 4;
        (8 + (k - 7) * 4 + (size - 1 - base) / step) as usize
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
    if SIZES[c] as u64 % align == 0 {
        Some(c)
    } else {
        None
    }
}

/// Whether an object of class size `have` may have been handed out for a
/// request of `size` bytes with some alignment: `free_sized` gets the size
/// but not the alignment, and an alignment can raise the class
/// (`class_for(20, 64)` is the 64-byte class).
pub const fn may_serve(size: u64, have: u64) -> bool {
    let c = class_of(have);
    let mut align = 1;
    while align <= 4096 {
        if let Some(x) = class_for(size, align) {
            if x == c {
                return true;
            }
        }
        align *= 2;
    }
    false
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
