//! Sleep and wake: tags give their physical memory back and get it again
//! at the same addresses.

use std::sync::atomic::Ordering;

use super::{GlobalArena, cache};
use crate::arena::{SleepMode, SleepReport};
use crate::driver::Stream;
use crate::error::{Error, Result};

impl GlobalArena {
    /// Puts the tags named in `tags` to sleep (see [`crate::arena::Arena::sleep`]):
    /// their physical memory goes back, their addresses stay. Tags already
    /// asleep are skipped. A name that is no tag of this device is refused
    /// with [`Error::UnknownTag`] before any tag sleeps. On another error,
    /// the tags slept so far stay asleep and the failing one is awake again
    /// (its shards that had slept are woken: a tag is never half asleep,
    /// refusing allocations but serving frees).
    pub fn sleep(
        &'static self,
        tags: &[&str],
        mode: SleepMode,
        stream: Stream,
    ) -> Result<SleepReport> {
        cache::flush_current(self);
        let mut total = SleepReport::default();
        // Every name is checked before any tag sleeps.
        for ta in self.named_tags(tags)? {
            if ta.asleep.swap(true, Ordering::AcqRel) {
                continue;
            }
            for (i, shard) in ta.shards.iter().enumerate() {
                let r = shard.lock().sleep(mode, stream);
                match r {
                    Ok(r) => add(&mut total, r),
                    Err(e) => {
                        let woken = ta.shards[..i]
                            .iter()
                            .all(|s| self.retry_after_trim(|| s.lock().wake(stream)).is_ok());
                        if woken {
                            ta.asleep.store(false, Ordering::Release);
                        }
                        return Err(e);
                    }
                }
            }
        }
        Ok(total)
    }

    /// Obtains now the pinned host memory that offloading the tags named in
    /// `tags` will need (see [`crate::arena::Arena::prepare_offload`]). Returns the
    /// seconds it took.
    pub fn prepare_offload(&self, tags: &[&str]) -> Result<f64> {
        let mut secs = 0.0;
        for name in tags {
            let t = self.existing_tag(name)?;
            let ta = self.tag_arenas(t).ok_or(Error::Config("no such tag"))?;
            for shard in ta.shards.iter() {
                secs += shard.lock().prepare_offload()?;
            }
        }
        Ok(secs)
    }

    /// Wakes the tags named in `tags` at the same addresses. Unknown names
    /// are refused as by [`GlobalArena::sleep`]. On error the failing tag
    /// stays asleep.
    pub fn wake(&self, tags: &[&str], stream: Stream) -> Result<SleepReport> {
        let mut total = SleepReport::default();
        for ta in self.named_tags(tags)? {
            if !ta.is_asleep() {
                continue;
            }
            for shard in ta.shards.iter() {
                let r = self.retry_after_trim(|| shard.lock().wake(stream))?;
                add(&mut total, r);
            }
            ta.asleep.store(false, Ordering::Release);
        }
        Ok(total)
    }
}

fn add(t: &mut SleepReport, r: SleepReport) {
    t.bytes += r.bytes;
    t.copied += r.copied;
    t.copy_seconds += r.copy_seconds;
    t.stage_seconds += r.stage_seconds;
    t.vmm_seconds += r.vmm_seconds;
}
