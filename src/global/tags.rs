//! Tags: the process-wide tag registry, each device's arenas per tag, and
//! the calling thread's (or the process's) current tag.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{GlobalArena, GlobalDriver, MAX_TAGS};
use crate::arena::{Kind, SharedArena};
use crate::driver::DevicePtr;
use crate::error::{ConfigText, Error, Result};
use crate::lock::lock;
use crate::meta::MetaVec;

/// Tag names of this process in the order they were first used: a tag's
/// index is its position here, the same on every device, so a thread's
/// current tag means the same tag whichever device it allocates on. Index 0
/// is `default`.
static TAG_NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The process-wide index of tag `name`, registering it on first use (no
/// arena is created here: each device creates a tag's arenas when it first
/// needs them).
pub fn tag_index(name: &str) -> Result<u32> {
    let mut names = lock(&TAG_NAMES);
    if names.is_empty() {
        names.push("default".to_string());
    }
    if let Some(i) = names.iter().position(|n| n == name) {
        return Ok(i as u32);
    }
    if names.len() >= MAX_TAGS {
        return Err(Error::Config("too many tags (gpu_arena::global::MAX_TAGS)"));
    }
    if name.is_empty() || name.len() > 64 || name.contains(',') {
        return Err(Error::Config("a tag name is 1..=64 bytes without commas"));
    }
    names.push(name.to_string());
    Ok((names.len() - 1) as u32)
}

/// The name of the tag with process-wide index `tag`, if it was registered.
pub(super) fn tag_name(tag: u32) -> Option<String> {
    let names = lock(&TAG_NAMES);
    match names.get(tag as usize) {
        Some(n) => Some(n.clone()),
        None if tag == 0 => Some("default".to_string()),
        None => None,
    }
}

/// The arenas of one tag: its own reservation(s), so its pages are never
/// shared with another tag and it can sleep alone.
pub struct TagArenas {
    pub(super) name: String,
    pub(super) shards: Box<[SharedArena<GlobalDriver>]>,
    /// Each shard's reservation (base, size), apart from the shards so that
    /// routing a free reads no cache line a shard's owner writes.
    pub(super) ranges: Box<[(DevicePtr, u64)]>,
    /// Whether any shard may be asleep (allocations read it first).
    pub(super) asleep: AtomicBool,
    /// Held through a sleep or wake of the tag, so that one from another
    /// thread waits: the flag then always says what the shards are.
    pub(super) cycle: Mutex<()>,
}

impl TagArenas {
    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The tag's shards.
    pub fn shards(&self) -> &[SharedArena<GlobalDriver>] {
        &self.shards
    }
    /// Whether the tag is asleep.
    pub fn is_asleep(&self) -> bool {
        self.asleep.load(Ordering::Acquire)
    }
}

/// Thread tag value meaning "this thread has not chosen a tag".
const UNSET: u32 = u32::MAX;

thread_local! {
    static CURRENT_TAG: core::cell::Cell<u32> = const { core::cell::Cell::new(UNSET) };
}

// The tag of threads that have not chosen one (0 = `default`) is
// `hot::HOT.process_tag`, read by every allocation.

/// The calling thread's current tag (index; 0 = `default`): the tag the
/// thread chose ([`set_current_tag`], [`GlobalArena::tag_scope`]), or the
/// process-wide tag ([`set_process_tag`]) if it chose none.
///
/// Threads that a framework starts on its own (PyTorch's autograd engine
/// runs backward passes on device threads of its own) never choose a tag:
/// they allocate in the process-wide tag.
#[inline]
pub fn current_tag() -> u32 {
    let t = CURRENT_TAG.with(|c| c.get());
    if t != UNSET {
        t
    } else {
        super::hot::HOT.process_tag.load(Ordering::Relaxed)
    }
}

/// Sets the calling thread's current tag; returns the previous current
/// tag (the thread's own, or the process-wide one if it had none).
pub fn set_current_tag(tag: u32) -> u32 {
    let previous = current_tag();
    CURRENT_TAG.with(|c| c.set(tag));
    previous
}

/// The tag the calling thread chose, if any (see [`current_tag`]).
pub fn thread_tag() -> Option<u32> {
    let t = CURRENT_TAG.with(|c| c.get());
    (t != UNSET).then_some(t)
}

/// Sets (or, with `None`, clears) the tag the calling thread chose;
/// returns the previous choice. A thread without a choice allocates in the
/// process-wide tag.
pub fn set_thread_tag(tag: Option<u32>) -> Option<u32> {
    let previous = CURRENT_TAG.with(|c| c.replace(tag.unwrap_or(UNSET)));
    (previous != UNSET).then_some(previous)
}

/// The tag of every thread that has not chosen one (0 = `default`).
pub fn process_tag() -> u32 {
    super::hot::HOT.process_tag.load(Ordering::Relaxed)
}

/// Sets the tag of every thread that has not chosen one; returns the
/// previous one. Threads that chose a tag keep theirs.
pub fn set_process_tag(tag: u32) -> u32 {
    super::hot::HOT.process_tag.swap(tag, Ordering::Relaxed)
}

/// Restores the calling thread's previous tag choice when dropped (see
/// [`GlobalArena::tag_scope`]).
#[derive(Debug)]
pub struct TagScope {
    previous: Option<u32>,
}

impl Drop for TagScope {
    fn drop(&mut self) {
        set_thread_tag(self.previous);
    }
}

impl GlobalArena {
    /// The index of tag `name` (process-wide, see [`tag_index`]), creating
    /// its arenas on this device on first use.
    pub fn tag(&self, name: &str) -> Result<u32> {
        let i = tag_index(name)?;
        self.create_tag(i, name)?;
        Ok(i)
    }

    /// Creates the arenas of tag index `i` named `name` on this device,
    /// unless they exist.
    pub(super) fn create_tag(&self, i: u32, name: &str) -> Result<()> {
        let slot = &self.tags[i as usize];
        if slot.get().is_some() {
            return Ok(());
        }
        let _creating = lock(&self.creating);
        if slot.get().is_some() {
            return Ok(());
        }
        let mut shards = Vec::with_capacity(self.config.shards.max(1) as usize);
        // The limit holds for the device: every shard of every tag takes
        // its commits from the one budget (a tag may get a limit of its own
        // on top, `set_tag_limit`).
        let mut arena_config = self.config.arena;
        arena_config.commit.limit = u64::MAX;
        // With a background reclaimer, freeing threads never give memory
        // back themselves (unless it could not start).
        if !self.reclaimer_failed.load(Ordering::Acquire) {
            arena_config.commit.reclaim_on_free &= !self.config.background;
        }
        // What an engine tags, it loaded to stay and will put to sleep: few
        // large handles from its first allocation (sleep and wake cost per
        // handle).
        if i != 0 {
            arena_config.commit.bulk_streak = self.config.tag_bulk_streak;
        }
        for _ in 0..self.config.shards.max(1) {
            let a = SharedArena::new(self.driver.clone(), Kind::Device(self.device), arena_config)?;
            {
                let mut a = a.lock();
                a.set_tag(i);
                a.set_budget(self.budget.clone());
                if let Some(clock) = lock(&self.clock).as_ref() {
                    a.set_clock(clock.clone());
                }
            }
            shards.push(a);
        }
        let ranges = shards.iter().map(|a| a.lock().reservation()).collect();
        let _ = slot.set(TagArenas {
            name: name.to_string(),
            shards: shards.into_boxed_slice(),
            ranges,
            asleep: AtomicBool::new(false),
            cycle: Mutex::new(()),
        });
        Ok(())
    }

    /// The arenas of tag index `tag`.
    pub fn tag_arenas(&self, tag: u32) -> Option<&TagArenas> {
        self.tags.get(tag as usize).and_then(|t| t.get())
    }

    /// Every tag created on this device so far.
    pub fn tags(&self) -> impl Iterator<Item = &TagArenas> {
        self.tags.iter().filter_map(|t| t.get())
    }

    /// Every tag created on this device so far, with its index.
    pub fn tags_indexed(&self) -> impl Iterator<Item = (u32, &TagArenas)> {
        self.tags
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.get().map(|t| (i as u32, t)))
    }

    /// Makes `name` the calling thread's current tag until the guard drops.
    pub fn tag_scope(&self, name: &str) -> Result<TagScope> {
        let t = self.tag(name)?;
        Ok(TagScope {
            previous: set_thread_tag(Some(t)),
        })
    }

    /// The index of tag `name` if the process has it (never registers it).
    pub fn find_tag(&self, name: &str) -> Option<u32> {
        let names = lock(&TAG_NAMES);
        match names.iter().position(|n| n == name) {
            Some(i) => Some(i as u32),
            None if name == "default" => Some(0),
            None => None,
        }
    }

    /// The index of tag `name`, which the process must have
    /// ([`Error::UnknownTag`] otherwise), with its arenas on this device.
    pub(super) fn existing_tag(&self, name: &str) -> Result<u32> {
        let i = self.find_tag(name).ok_or(Error::UnknownTag {
            name: ConfigText::new(name),
        })?;
        self.create_tag(i, name)?;
        Ok(i)
    }

    /// The arenas of every tag named in `tags`, each name checked (and the
    /// tag's arenas made on this device) before the caller acts on any.
    pub(super) fn named_tags(&self, tags: &[&str]) -> Result<MetaVec<&TagArenas>> {
        let mut out = MetaVec::new_in(std::alloc::System);
        for name in tags {
            let t = self.existing_tag(name)?;
            out.push(self.tag_arenas(t).ok_or(Error::Config("no such tag"))?);
        }
        Ok(out)
    }
}
