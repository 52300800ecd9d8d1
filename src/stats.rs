//! Counters (cheap, `Copy`) and snapshots (serde, built on demand).

use crate::commit::{DriverCalls, PageState, StitchCounts};
use crate::policy::Policy;

/// Count and bytes of the blocks of one policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyStats {
    /// Live blocks (slab objects, large spans, scratch arenas, grow buffers).
    pub blocks: u64,
    /// Live bytes (as handed out, rounded to the class or quantum; for
    /// scratch arenas the bytes bumped since the last reset; for growable
    /// buffers their length).
    pub bytes: u64,
}

/// Arena counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Bytes of virtual address space reserved.
    pub reserved: u64,
    /// Bytes of physical memory committed now.
    pub committed: u64,
    /// Live bytes (sum over the policies).
    pub live: u64,
    /// Highest `committed` so far.
    pub peak_committed: u64,
    /// Highest `live` so far.
    pub peak_live: u64,
    /// Committed bytes holding no live byte: idle handles kept mapped for
    /// reuse (given back along the decay curve) and shared handles waiting
    /// for their fences.
    pub pending_decommit: u64,
    /// Of those, bytes whose fences completed (given back by `trim`).
    pub reclaimable: u64,
    /// Fences recorded and not yet seen complete.
    pub pending_fences: u64,
    /// Physical handles held.
    pub handles: u64,
    /// Mappings of those handles (a handle mapped at two addresses counts
    /// twice; its memory counts once in `committed`).
    pub mappings: u64,
    /// Stitched ranges kept (holding a block, or cached for reuse).
    pub stitched_ranges: u64,
    /// Pinned host bytes held for offloads: an asleep arena's contents, or
    /// kept for the next offload (`trim` gives those back).
    pub staged: u64,
    /// Slab objects.
    pub slab: PolicyStats,
    /// Large spans.
    pub large: PolicyStats,
    /// Scratch arenas.
    pub scratch: PolicyStats,
    /// Growable buffers.
    pub grow: PolicyStats,
    /// Driver calls made by the arena.
    pub driver_calls: DriverCalls,
    /// What stitched-range allocations decided (reuse, repair, new range).
    pub stitch: StitchCounts,
    /// Allocations served.
    pub allocs: u64,
    /// Frees served.
    pub frees: u64,
}

impl Stats {
    /// Committed bytes not holding live data.
    pub const fn fragmentation(&self) -> u64 {
        self.committed.saturating_sub(self.live)
    }
    /// Peak committed / peak live (the figure PyTorch reports as peak
    /// reserved / peak allocated); 0 when nothing was allocated.
    pub fn peak_ratio(&self) -> f64 {
        if self.peak_live == 0 {
            0.0
        } else {
            self.peak_committed as f64 / self.peak_live as f64
        }
    }
    /// The stats of one policy.
    pub const fn policy(&self, p: Policy) -> PolicyStats {
        match p {
            Policy::Slab => self.slab,
            Policy::Large => self.large,
            Policy::Scratch => self.scratch,
            Policy::Grow => self.grow,
        }
    }
}

/// One region of the reservation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionReport {
    /// Name (`blocks`, `buffers`).
    pub name: String,
    /// Offset from the reservation base.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// Bytes handed out at least once (high-water mark).
    pub used: u64,
}

/// One committed page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageReport {
    /// Page index from the reservation base.
    pub index: u64,
    /// Live or pending.
    pub state: PageStateReport,
    /// Live bytes on the page.
    pub live: u64,
}

/// Page state in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageStateReport {
    /// Not committed.
    Free,
    /// Committed with live bytes.
    Live,
    /// Committed, empty, waiting to be given back.
    Pending,
}

impl From<PageState> for PageStateReport {
    fn from(s: PageState) -> Self {
        match s {
            PageState::Free => PageStateReport::Free,
            PageState::Live => PageStateReport::Live,
            PageState::Pending => PageStateReport::Pending,
        }
    }
}

/// One live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockReport {
    /// Offset from the reservation base.
    pub offset: u64,
    /// Size.
    pub size: u64,
    /// Policy that placed it.
    pub policy: Policy,
}

/// A whole-arena snapshot: regions, committed pages, live blocks.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// Backend name.
    pub backend: String,
    /// Reservation base address.
    pub base: crate::driver::DevicePtr,
    /// Page size.
    pub page: u64,
    /// Counters at the time.
    pub stats: Stats,
    /// Regions.
    pub regions: Vec<RegionReport>,
    /// Committed pages.
    pub pages: Vec<PageReport>,
    /// Live blocks.
    pub blocks: Vec<BlockReport>,
}
