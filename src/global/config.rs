//! `GPU_ARENA_CONF`: configuration in the spirit of `PYTORCH_CUDA_ALLOC_CONF`.
//!
//! `key:value` pairs separated by commas, sizes with binary suffixes:
//!
//! ```
//! let c = gpu_arena::global::GlobalConfig::parse("limit:60GiB,keep_alive:256MiB,shards:4")?;
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
//! | `keep_alive` | empty committed bytes always kept | 4MiB |
//! | `keep_alive_fraction` | hysteresis over the peak of live bytes | 0.015625 |
//! | `max_run` | largest physical handle | 1GiB |
//! | `wait_for_reuse` | `1`: wait on pending fences of empty pages before growing beyond the keep-alive | 0 |
//! | `reservation` | address space per shard (0: 4 × device memory) | 0 |
//! | `min_reservation` | smallest reservation accepted on fallback | 1GiB |
//! | `shards` | independent arenas per device (threads spread over them) | 1 |
//! | `thread_cache` | bytes of small blocks a thread may keep cached (0: off) | 1MiB |
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
    pub thread_cache: u64,
    /// Print peak live / peak committed per device at exit.
    pub report: bool,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            backend: Select::Auto,
            arena: ArenaConfig::default(),
            shards: 1,
            thread_cache: 1 << 20,
            report: false,
        }
    }
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
                "keep_alive" => c.arena.commit.keep_alive = parse_size(v)?,
                "keep_alive_fraction" => {
                    c.arena.commit.keep_alive_fraction = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| (0.0..=16.0).contains(f))
                        .ok_or_else(|| bad("keep_alive_fraction must be a number in 0..=16", v))?
                }
                "max_run" => c.arena.commit.max_run = parse_size(v)?,
                "wait_for_reuse" => {
                    c.arena.commit.wait_for_reuse = match v {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(bad("wait_for_reuse must be 0 or 1", v)),
                    }
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
                "report" => {
                    c.report = match v {
                        "1" | "true" | "yes" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(bad("report must be 0 or 1", v)),
                    }
                }
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
        let c = GlobalConfig::parse("backend:host, limit:1GiB,keep_alive_fraction:0.5,report:1")
            .unwrap();
        assert_eq!(c.backend, Select::Host);
        assert!(c.report);
        let e = GlobalConfig::parse("limit=4").unwrap_err().to_string();
        assert!(e.contains("key:value") && e.contains("limit=4"), "{e}");
        let e = GlobalConfig::parse("bogus:1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
