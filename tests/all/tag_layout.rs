//! How the global arenas lay out a tag's memory: what an engine tags it
//! loaded to stay and will put to sleep, so its blocks get one handle each
//! (and larger while they grow the top) from the first one, where the
//! default tag's first blocks get one handle per page
//! (`GlobalConfig::tag_bulk_streak`, `CommitConfig::bulk_streak`). The
//! same check runs on a GPU in `gpu_arena.rs`.

use gpu_arena::SleepMode;
use gpu_arena::driver::Stream;
use gpu_arena::driver::system::Select;
use gpu_arena::global::{GlobalArena, GlobalConfig};

use crate::common::{assert_all_given_back, checked_global};

/// Blocks of 6 MiB (three 2 MiB pages of the host backend) allocated one by
/// one, as a model's weights are loaded.
const BLOCK: u64 = 6 << 20;
const BLOCKS: u64 = 48;

/// What [`load_and_sleep`] saw.
pub struct Layout {
    /// Handles the tag held before the sleep.
    pub handles: u64,
    /// Handles the sleep gave back.
    pub given_back: u64,
    /// The sleep's time.
    pub sleep: std::time::Duration,
}

/// Loads `BLOCKS` blocks into `tag` of a fresh arena of `conf` over the
/// `select` backend, sleeps and wakes the tag, frees everything and tears
/// the arena down.
fn load_and_sleep(select: Select, conf: GlobalConfig, tag: &str) -> Layout {
    let conf = GlobalConfig {
        shards: 1,
        thread_cache: 0,
        ..conf
    };
    let (arena, driver) = checked_global(select, conf);
    let index = arena.tag(tag).unwrap();
    let blocks: Vec<_> = {
        let _g = arena.tag_scope(tag).unwrap();
        (0..BLOCKS)
            .map(|_| arena.alloc(BLOCK, 512, Stream::DEFAULT).unwrap())
            .collect()
    };
    let before = arena.tag_stats(index);
    assert_eq!(before.live, BLOCKS * BLOCK);
    let released = driver.as_checked().unwrap().counts().release;
    let t = std::time::Instant::now();
    arena
        .sleep(&[tag], SleepMode::Discard, Stream::DEFAULT)
        .unwrap();
    let sleep = t.elapsed();
    let given_back = driver.as_checked().unwrap().counts().release - released;
    assert_eq!(
        arena.tag_stats(index).handles,
        0,
        "asleep, it holds no handle"
    );
    arena.wake(&[tag], Stream::DEFAULT).unwrap();
    for p in blocks {
        arena.free(p, None, Stream::DEFAULT).unwrap();
    }
    // SAFETY: this thread alone used the arena; nothing uses it afterwards.
    unsafe { GlobalArena::destroy(arena) }.unwrap();
    assert_all_given_back(&driver);
    Layout {
        handles: before.handles,
        given_back,
        sleep,
    }
}

/// The checks of a tag's layout against the default tag's, on `select`.
pub fn tags_get_few_handles(select: Select) -> (Layout, Layout) {
    let tag = load_and_sleep(select, GlobalConfig::default(), "weights");
    assert_eq!(
        tag.given_back, tag.handles,
        "the sleep gave every handle back"
    );
    assert!(
        tag.handles <= BLOCKS,
        "at most one handle per block ({} for {BLOCKS} blocks)",
        tag.handles
    );
    // The default tag keeps one handle per page for its first blocks (a
    // workload's activations, laid out to move page by page).
    let default = load_and_sleep(select, GlobalConfig::default(), "default");
    assert_eq!(default.handles, 3 * BLOCKS, "one handle per page");
    assert_eq!(default.given_back, default.handles);
    // The setting decides, not the tag's name.
    let per_page = GlobalConfig::parse("tag_bulk_streak:64").unwrap();
    assert_eq!(
        load_and_sleep(select, per_page, "weights").handles,
        3 * BLOCKS
    );
    let bulk = GlobalConfig::parse("bulk_streak:0").unwrap();
    assert_eq!(load_and_sleep(select, bulk, "default").handles, tag.handles);
    (tag, default)
}

#[test]
fn a_tags_blocks_get_few_handles_and_its_first_sleep_gives_back_few() {
    tags_get_few_handles(Select::Host);
}

/// A tag's blocks placed again after a free and a trim, below the arena's
/// top, get large handles too: what a tag holds stays a few handles however
/// its memory was freed and taken back, where the default tag's blocks
/// get one handle per page there.
#[test]
fn a_tags_blocks_taken_again_below_the_top_keep_few_handles() {
    let handles_after_retake = |tag: &str| {
        let conf = GlobalConfig {
            shards: 1,
            thread_cache: 0,
            ..GlobalConfig::default()
        };
        let (arena, driver) = checked_global(Select::Host, conf);
        let index = arena.tag(tag).unwrap();
        let _g = arena.tag_scope(tag).unwrap();
        let load = || -> Vec<_> {
            (0..BLOCKS)
                .map(|_| arena.alloc(BLOCK, 512, Stream::DEFAULT).unwrap())
                .collect()
        };
        let first = load();
        let top = arena.tag_stats(index).handles;
        for p in first {
            arena.free(p, None, Stream::DEFAULT).unwrap();
        }
        arena.trim();
        assert_eq!(arena.tag_stats(index).handles, 0, "the trim gave all back");
        let again = load();
        let retaken = arena.tag_stats(index).handles;
        for p in again {
            arena.free(p, None, Stream::DEFAULT).unwrap();
        }
        drop(_g);
        // SAFETY: this thread alone used the arena; nothing uses it afterwards.
        unsafe { GlobalArena::destroy(arena) }.unwrap();
        assert_all_given_back(&driver);
        (top, retaken)
    };
    let (top, retaken) = handles_after_retake("weights");
    assert!(
        top <= BLOCKS,
        "at the top: {top} handles for {BLOCKS} blocks"
    );
    assert!(
        retaken <= BLOCKS,
        "taken again below the top: {retaken} handles for {BLOCKS} blocks"
    );
    let (_, default) = handles_after_retake("default");
    assert_eq!(default, 3 * BLOCKS, "the default tag: one handle per page");
}
