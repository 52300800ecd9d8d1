//! Placement policies: pure offset arithmetic inside a region.
//!
//! Nothing here touches memory or calls a driver, so every policy runs under
//! proptest and fuzzing at full speed. Pointers live in `arena` and `api`;
//! driver calls in `commit`.
#![deny(unsafe_code, clippy::unwrap_used)]

pub mod classes;
pub mod grow;
pub mod large;
pub mod scratch;
pub mod slab;

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

/// Which policy placed a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Small blocks in size-class slabs.
    Slab,
    /// Large spans in the TLSF index.
    Large,
    /// Bump-allocated scratch arenas.
    Scratch,
    /// Growable buffers.
    Grow,
}

impl Policy {
    /// All policies, in report order.
    pub const ALL: [Policy; 4] = [Policy::Slab, Policy::Large, Policy::Scratch, Policy::Grow];
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::Slab => "slab",
            Policy::Large => "large",
            Policy::Scratch => "scratch",
            Policy::Grow => "grow",
        }
    }
}
