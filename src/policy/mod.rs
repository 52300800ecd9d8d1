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
