//! Settings of the commit layer.

/// In which order a block walks the cached stitched ranges that may serve it
/// ([`CommitConfig::range_order`]); it takes the first whose units are all
/// idle and usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RangeOrder {
    /// In the order the ranges were made, oldest first, whatever their size.
    Made,
    /// Smallest size first, oldest first within a size.
    Size,
}

impl RangeOrder {
    /// Every order.
    pub const ALL: [RangeOrder; 2] = [RangeOrder::Made, RangeOrder::Size];

    /// The order named `word` ([`name`](Self::name)), if any.
    pub fn from_name(word: &str) -> Option<RangeOrder> {
        Self::ALL.into_iter().find(|o| o.name() == word)
    }

    /// The word `GPU_ARENA_CONF`'s `range_order` takes for it.
    pub const fn name(self) -> &'static str {
        match self {
            RangeOrder::Made => "made",
            RangeOrder::Size => "size",
        }
    }
}

/// Settings of the commit layer.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CommitConfig {
    /// Largest physical handle created at once (bytes; rounded down to the
    /// granularity). Blocks and woken ranges larger than this are backed by
    /// several handles.
    pub max_run: u64,
    /// Idle physical memory (no live bytes, kept mapped for reuse) goes back
    /// to the driver on a decay curve over this many milliseconds: memory
    /// idle for less than half of it stays, memory idle for longer than
    /// `decay_ms` is gone, and in between part of it (see
    /// [`Decay`](super::decay::Decay)). `trim()` gives back all of it
    /// at once. 0: idle memory goes back as soon as the fences of its frees
    /// completed (a driver call on the freeing thread).
    pub decay_ms: u64,
    /// Most bytes ever committed at once (`u64::MAX`: the device's memory is
    /// the limit).
    pub limit: u64,
    /// Blocks of at least this many bytes that no place in the blocks
    /// region can hold without a remap go to a stitched range (a fresh
    /// virtual range mapped to idle handles found anywhere); smaller ones
    /// are placed on fresh pages instead.
    pub stitch_min: u64,
    /// While allocations keep extending the arena's top with no free in
    /// between (weights or a cache being loaded), fresh handles are made
    /// larger than the block by up to `1 / growth_ahead` of the live bytes,
    /// so that long-lived memory sits in few, large handles (sleep and wake
    /// cost per handle). 0 turns this off.
    pub growth_ahead: u64,
    /// Allocations in a row at the arena's top, with no free in between,
    /// after which the fresh pages of the next ones get one handle per block
    /// (and [`growth_ahead`](Self::growth_ahead) applies) instead of one per
    /// page. Before that, memory is taken to be a workload's activations,
    /// laid out for the first time: one-page handles let each page move on
    /// its own later (no VMM call once the workload repeats), where handles
    /// of whole blocks cost tightness. After it, memory is taken to be
    /// loaded to stay, where few large handles make sleep and wake fast
    /// (they cost per handle). Measured on the shared traces: 64 keeps every
    /// activation of BERT inference and GPT-2 generation in one-page handles,
    /// where 48 already cost BERT about 10 VMM calls per 1000 allocations in
    /// steady state. The global arenas give a tag's arenas (memory an engine
    /// tags to sleep: weights, KV cache) `tag_bulk_streak` instead
    /// ([`GlobalConfig`](crate::global::GlobalConfig)). 0 takes all of an
    /// arena's blocks to be loaded to stay: a block's fresh pages get large
    /// handles wherever it lies, below the top as well (stitched ranges
    /// keep one page per handle).
    pub bulk_streak: u64,
    /// Let the free path give idle memory back when its decay allowance ran
    /// out (a look at the clock every few hundred frees, driver calls when
    /// due). Off where another thread calls `reclaim` on time (the global
    /// arenas' background reclaimer), so that allocating threads never make
    /// those driver calls.
    pub reclaim_on_free: bool,
    /// When several cached stitched ranges of a large block's size
    /// ([`stitch_repair_min`](Self::stitch_repair_min) and more) exist and
    /// none is free of pages in use elsewhere, remap the busy pages of the
    /// best one (when fewer than half its pages are busy, so it costs fewer
    /// calls than a new range), to the idle units mapped at the fewest
    /// other places, instead of mapping a new range (see
    /// [`Commit::stitch_alloc`](super::Commit::stitch_alloc)). It cuts a
    /// training loop's VMM calls in its first repetitions (31 / 24 / 14 per
    /// 1,000 allocations in repetitions 3–5, against 138 / 28 / 41), but it
    /// never settles (10 to 24 per 1,000 up to repetition 20), where the
    /// default makes none from repetition 13 on; and it costs BERT inference
    /// up to about 50 per 1,000 allocations in its second repetition under
    /// emulated GPU lag, where it makes none without, and on BERT's trace
    /// recorded with its first repetition it never settles (about 200 per
    /// 1,000 in every repetition; `docs/pytorch.md`, "Repetitions recorded
    /// on the H100, replayed on the host"): off by default.
    pub stitch_repair: bool,
    /// Bytes from which a block's cached stitched range may be repaired
    /// ([`stitch_repair`](Self::stitch_repair)): the large blocks of a
    /// training step (logits), whose ranges come back with a few pages taken
    /// by other live ranges. Smaller ones (BERT's activations) find an
    /// intact range again when the workload repeats, and repairing them
    /// moved units the next repetition wanted (measured in
    /// `docs/pytorch.md`, "Where train's steady-state calls come from").
    /// With repair on, the free of such a block records its fence at once
    /// (about 1 µs): a repair must unmap the busy pages of the range, which
    /// waits for the frees through it, and a fence recorded only when the
    /// repair asks (the next training step) covers all the work queued
    /// since, which a GPU running behind its host has not finished; the
    /// repair then never acts.
    pub stitch_repair_min: u64,
    /// Free and take back a stitched range's block in one step where no
    /// other mapping took one of its units in between (see
    /// [`parked`](super::pool::parked)): the same decisions as page by page, with
    /// the pages' records left alone. Off only to compare the two.
    pub park: bool,
    /// The order in which a block walks the cached stitched ranges that may
    /// serve it (those of its pages up to one and a half times as many).
    /// [`RangeOrder::Made`]: the oldest first, whatever its size, so that a
    /// block takes the range its like took when the sequence ran before,
    /// also where that one was longer than it because no range of its own
    /// size was free then. By size, a repetition finds the ranges of the
    /// block's own size made meanwhile first, takes them instead, and
    /// shares units differently. Measured on the recorded traces
    /// (`docs/pytorch.md`, "Cached ranges in the order they were made"):
    /// BERT inference's second repetition makes no VMM call instead of 12.1
    /// per 1,000 allocations, a training loop's first repetition 11 % fewer
    /// and a serving pass's 7 % fewer; `train`, which makes a new optimizer
    /// in every repetition, settles at its 15th instead of its 13th.
    pub range_order: RangeOrder,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_run: 1 << 30,
            decay_ms: 30_000,
            limit: u64::MAX,
            stitch_min: 1 << 20,
            growth_ahead: 16,
            bulk_streak: 64,
            reclaim_on_free: true,
            stitch_repair: false,
            stitch_repair_min: 64 << 20,
            park: true,
            range_order: RangeOrder::Made,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CommitConfig, RangeOrder};

    #[test]
    fn every_range_order_is_found_by_its_name_and_no_other_word() {
        for order in RangeOrder::ALL {
            assert_eq!(RangeOrder::from_name(order.name()), Some(order));
        }
        assert_eq!(
            RangeOrder::from_name("Made"),
            None,
            "the words are lowercase"
        );
        assert_eq!(RangeOrder::from_name(""), None);
        assert_eq!(CommitConfig::default().range_order, RangeOrder::Made);
    }
}
