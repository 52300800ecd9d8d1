//! `GPU_ARENA_CONF`: configuration in the spirit of `PYTORCH_CUDA_ALLOC_CONF`.
//!
//! `key:value` pairs separated by commas, sizes with binary suffixes:
//!
//! ```
//! let c = gpu_arena::global::GlobalConfig::parse("limit:60GiB,decay_ms:5000,shards:4")?;
//! assert_eq!(c.arena.commit.limit, 60 << 30);
//! assert_eq!(c.shards, 4);
//! assert!(gpu_arena::global::GlobalConfig::parse("limt:1GiB").is_err());
//! # Ok::<(), gpu_arena::Error>(())
//! ```
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `backend` | `auto`, `host`, `cuda`, `hip` | `auto` |
//! | `limit` | most bytes committed per device | none |
//! | `decay_ms` | idle physical memory goes back along a decay curve over this many ms: none of it before half of that (`trim` gives it all back at once) | 30000 |
//! | `max_run` | largest physical handle | 1GiB |
//! | `stitch_min` | smallest block that may go to a stitched range | 1MiB |
//! | `growth_ahead` | while the top grows with no free, new handles may be larger by live / this (0: off) | 16 |
//! | `stitch_repair` | `1`: remap the busy pages of a cached stitched range of `stitch_repair_min` or more instead of mapping a new one, once several of its size exist (see `CommitConfig::stitch_repair`) | 0 |
//! | `stitch_repair_min` | smallest block whose stitched range `stitch_repair` may repair | 64MiB |
//! | `range_order` | `made`: a block walks the cached stitched ranges that may serve it oldest first, whatever their size; `size`: smallest size first (see `CommitConfig::range_order`) | `made` |
//! | `keep_empty_slabs` | `0`: a slab that empties goes back at once, the last of its size class too (tighter peaks, a slab made for most small objects where they come and go one at a time; see `ArenaConfig::keep_empty_slabs`) | 1 |
//! | `tails` | which blocks go to the end of a live stitched block's last page: `off`, `costly` (those that would need a driver call in the blocks region), `always` (see `ArenaConfig::tails`) | `costly` |
//! | `park` | `0`: free and take back stitched ranges page by page instead of parking their units as a group (the same decisions, more work per call; see `CommitConfig::park`) | 1 |
//! | `bulk_streak` | allocations in a row at the top (no free between) after which fresh pages get one handle per block, not per page, in the default tag's arenas; 0: every block's, below the top too | 64 |
//! | `tag_bulk_streak` | the same for every other tag's arenas (what an engine tags to sleep: weights, KV cache, loaded to stay) | 0 |
//! | `background` | `1`: a background thread gives idle memory back on time (no driver call on allocating threads) | 1 |
//! | `reservation` | address space per shard (0: 8 × device memory) | 0 |
//! | `min_reservation` | smallest reservation accepted on fallback | 1GiB |
//! | `shards` | independent arenas per device (threads spread over them) | 1 |
//! | `thread_cache` | bytes of small blocks a thread may keep cached, refilled in batches without the lock (0: off; on, it keeps slabs alive and costs physical memory: GPT-2's trace under the C ABI went from 1.012 to 1.022-1.036 peak physical / peak live) | 0 |
//! | `report` | `1`: print peak live / peak committed at exit | 0 |

use crate::arena::ArenaConfig;
use crate::driver::system::Select;
use crate::error::{ConfigText, Error, Result};

/// Settings of the global arenas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GlobalConfig {
    /// Backend selection.
    pub backend: Select,
    /// Settings of each shard's arena.
    pub arena: ArenaConfig,
    /// Arenas per device; threads are spread over them round-robin.
    pub shards: u32,
    /// Bytes of small blocks one thread may keep cached (0 disables caching).
    ///
    /// Cached blocks count as handed out. So a second free of a block whose
    /// address went into a cache since its first free looks like the free
    /// of a live block, as in any allocator once an address is reused; it
    /// is accepted and the block is later handed out twice. With caching
    /// off (the default) such a free is refused as a double free.
    pub thread_cache: u64,
    /// Print peak live / peak committed per device at exit (and time the
    /// C ABI's allocation calls).
    pub report: bool,
    /// Run a background thread that gives idle memory back along the decay
    /// curve, so allocating threads make no such driver call.
    pub background: bool,
    /// [`CommitConfig::bulk_streak`](crate::commit::CommitConfig::bulk_streak)
    /// of the arenas of every tag but `default`. What an engine tags is what
    /// it puts to sleep (vLLM's `weights` and `kv_cache`, SGLang's memory
    /// saver regions): memory loaded to stay, whose first sleep gives back
    /// one handle per page it was laid out in. 0: one handle per block (and
    /// larger, while the top grows) from the first allocation.
    pub tag_bulk_streak: u64,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            backend: Select::Auto,
            arena: ArenaConfig::default(),
            shards: 1,
            thread_cache: 0,
            report: false,
            background: true,
            tag_bulk_streak: 0,
        }
    }
}

fn flag(what: &'static str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(bad(what, v)),
    }
}

/// A whole number (a count, a divisor); `what` says what it must be.
fn whole(what: &'static str, v: &str) -> Result<u64> {
    v.parse::<u64>().map_err(|_| bad(what, v))
}

fn bad(what: &'static str, text: &str) -> Error {
    Error::BadConfig {
        what,
        text: ConfigText::new(text),
    }
}

/// Parses `4GiB`, `512MiB`, `64KiB`, `123B`, `123` (bytes), `2TiB`; also
/// decimal `KB`/`MB`/`GB`/`TB`.
pub fn parse_size(v: &str) -> Result<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| bad("a size must start with digits", v))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(bad("unknown size unit (use B, KiB, MiB, GiB, TiB)", v)),
    };
    n.checked_mul(mult)
        .ok_or_else(|| bad("size overflows 64 bits", v))
}

impl GlobalConfig {
    /// Parses a `key:value,key:value` string; unknown keys and malformed
    /// values are rejected with a message naming them.
    pub fn parse(s: &str) -> Result<Self> {
        let mut c = GlobalConfig::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((k, v)) = item.split_once(':') else {
                return Err(bad("expected key:value", item));
            };
            let (k, v) = (k.trim(), v.trim());
            match k {
                "backend" => {
                    c.backend = match v {
                        "auto" => Select::Auto,
                        "host" => Select::Host,
                        "cuda" => Select::Cuda,
                        "hip" => Select::Hip,
                        _ => return Err(bad("backend must be auto, host, cuda or hip", v)),
                    }
                }
                "limit" => c.arena.commit.limit = parse_size(v)?,
                "decay_ms" => {
                    c.arena.commit.decay_ms = v
                        .parse::<u64>()
                        .ok()
                        .filter(|ms| *ms <= 24 * 3600 * 1000)
                        .ok_or_else(|| bad("decay_ms must be milliseconds, at most a day", v))?
                }
                "max_run" => c.arena.commit.max_run = parse_size(v)?,
                "stitch_min" => c.arena.commit.stitch_min = parse_size(v)?,
                "growth_ahead" => {
                    c.arena.commit.growth_ahead =
                        whole("growth_ahead must be a whole number (0: off)", v)?
                }
                "bulk_streak" => {
                    c.arena.commit.bulk_streak =
                        whole("bulk_streak must be a whole number of allocations", v)?
                }
                "tag_bulk_streak" => {
                    c.tag_bulk_streak =
                        whole("tag_bulk_streak must be a whole number of allocations", v)?
                }
                "background" => c.background = flag("background must be 0 or 1", v)?,
                "stitch_repair" => {
                    c.arena.commit.stitch_repair = flag("stitch_repair must be 0 or 1", v)?
                }
                "stitch_repair_min" => c.arena.commit.stitch_repair_min = parse_size(v)?,
                "park" => c.arena.commit.park = flag("park must be 0 or 1", v)?,
                "keep_empty_slabs" => {
                    c.arena.keep_empty_slabs = flag("keep_empty_slabs must be 0 or 1", v)?
                }
                "tails" => {
                    c.arena.tails = crate::arena::TailUse::from_name(v)
                        .ok_or_else(|| bad("tails must be off, costly or always", v))?
                }
                "range_order" => {
                    c.arena.commit.range_order = crate::commit::RangeOrder::from_name(v)
                        .ok_or_else(|| bad("range_order must be made or size", v))?
                }
                "keep_alive" | "keep_alive_fraction" | "wait_for_reuse" => {
                    return Err(bad(
                        "this key is gone: idle memory now goes back along a decay curve (use decay_ms)",
                        k,
                    ));
                }
                "reservation" => c.arena.reservation = parse_size(v)?,
                "min_reservation" => c.arena.min_reservation = parse_size(v)?,
                "shards" => {
                    c.shards = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=64).contains(n))
                        .ok_or_else(|| bad("shards must be 1..=64", v))?
                }
                "thread_cache" => c.thread_cache = parse_size(v)?,
                "report" => c.report = flag("report must be 0 or 1", v)?,
                _ => {
                    return Err(bad(
                        "unknown key (see the GPU_ARENA_CONF table in the docs)",
                        k,
                    ));
                }
            }
        }
        Ok(c)
    }

    /// The configuration from `GPU_ARENA_CONF`, or the defaults.
    pub fn from_env() -> Result<Self> {
        match std::env::var("GPU_ARENA_CONF") {
            Ok(s) => Self::parse(&s),
            Err(_) => Ok(Self::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_keys() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert_eq!(parse_size("3 MB").unwrap(), 3_000_000);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1ZiB").is_err());
        let c = GlobalConfig::parse("backend:host, limit:1GiB,decay_ms:500,report:1,background:0")
            .unwrap();
        assert_eq!(c.backend, Select::Host);
        assert!(c.report && !c.background);
        assert_eq!(c.arena.commit.decay_ms, 500);
        let c = GlobalConfig::parse("range_order:size").unwrap();
        assert_eq!(c.arena.commit.range_order, crate::commit::RangeOrder::Size);
        for order in crate::commit::RangeOrder::ALL {
            let c = GlobalConfig::parse(&format!("range_order:{}", order.name())).unwrap();
            assert_eq!(c.arena.commit.range_order, order, "its name parses back");
        }
        assert_eq!(
            GlobalConfig::default().arena.commit.range_order,
            crate::commit::RangeOrder::Made
        );
        assert!(GlobalConfig::parse("range_order:oldest").is_err());
        let c = GlobalConfig::parse("stitch_repair:1,stitch_repair_min:256MiB").unwrap();
        assert!(c.arena.commit.stitch_repair);
        assert_eq!(c.arena.commit.stitch_repair_min, 256 << 20);
        assert!(GlobalConfig::default().arena.keep_empty_slabs);
        assert!(
            !GlobalConfig::parse("keep_empty_slabs:0")
                .unwrap()
                .arena
                .keep_empty_slabs
        );
        assert!(GlobalConfig::parse("keep_empty_slabs:2").is_err());
        assert_eq!(
            GlobalConfig::default().arena.tails,
            crate::arena::TailUse::Costly
        );
        for t in crate::arena::TailUse::ALL {
            let c = GlobalConfig::parse(&format!("tails:{}", t.name())).unwrap();
            assert_eq!(c.arena.tails, t, "its name parses back");
        }
        assert!(GlobalConfig::parse("tails:1").is_err());
        let c = GlobalConfig::parse("bulk_streak:8,tag_bulk_streak:2").unwrap();
        assert_eq!((c.arena.commit.bulk_streak, c.tag_bulk_streak), (8, 2));
        let d = GlobalConfig::default();
        assert_eq!((d.arena.commit.bulk_streak, d.tag_bulk_streak), (64, 0));
        let e = GlobalConfig::parse("tag_bulk_streak:-1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tag_bulk_streak"), "{e}");
        let e = GlobalConfig::parse("keep_alive_fraction:0.5")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("decay_ms"),
            "a removed key says what replaced it: {e}"
        );
        let e = GlobalConfig::parse("limit=4").unwrap_err().to_string();
        assert!(e.contains("key:value") && e.contains("limit=4"), "{e}");
        let e = GlobalConfig::parse("bogus:1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
