//! Sleep and wake: tags give their physical memory back and get it again
//! at the same addresses.

use std::sync::atomic::Ordering;

use super::{GlobalArena, cache};
use crate::arena::{SleepMode, SleepReport, obtain};
use crate::driver::Stream;
use crate::error::Result;
use crate::lock::lock;

impl GlobalArena {
    /// Puts the tags named in `tags` to sleep (see [`crate::arena::Arena::sleep`]):
    /// their physical memory goes back, their addresses stay. Shards
    /// already asleep are skipped: a tag asleep costs nothing, and one that
    /// a failed [`GlobalArena::wake`] left partly awake goes to sleep whole.
    /// A name that is no tag of this device is refused
    /// with [`Error::UnknownTag`](crate::Error::UnknownTag) before any tag
    /// sleeps. On another error, the tags slept so far stay asleep and the
    /// failing one is awake again (its shards that had slept are woken: a
    /// tag is never half asleep, some shards refusing the allocations that
    /// others serve). Frees into an asleep tag are served (see
    /// [`crate::arena::Arena::sleep`]). A sleep or wake of the same tag
    /// from another thread waits for this one to finish with it.
    pub fn sleep(
        &'static self,
        tags: &[&str],
        mode: SleepMode,
        stream: Stream,
    ) -> Result<SleepReport> {
        cache::flush_current(self);
        if mode == SleepMode::Offload {
            // Pinned memory being obtained for it is waited for, not
            // obtained a second time.
            self.join_stager();
        }
        let mut total = SleepReport::default();
        // Every name is checked before any tag sleeps.
        for ta in self.named_tags(tags)? {
            let _cycle = lock(&ta.cycle);
            // The flag says whether any shard of the tag may be asleep: a
            // wake that failed part way leaves some awake, holding memory,
            // so each shard is asked, not the flag alone.
            ta.asleep.store(true, Ordering::Release);
            for shard in ta.shards.iter() {
                let r = {
                    let mut a = shard.lock();
                    if a.is_asleep() {
                        continue;
                    }
                    a.sleep(mode, stream)
                };
                match r {
                    Ok(r) => add(&mut total, r),
                    Err(e) => {
                        // Awake again, every shard (a wake of an awake one
                        // does nothing), or flagged asleep if one cannot be.
                        let woken = ta
                            .shards
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
    /// `tags` will need (see [`crate::arena::Arena::prepare_offload`]), so
    /// that their first offload runs at copy speed. Each shard's lock is
    /// held only to ask what it needs and to take what was obtained, not
    /// while the memory is pinned: allocations go on meanwhile. Tags asleep
    /// need nothing. Returns the seconds obtaining it took.
    pub fn prepare_offload(&self, tags: &[&str]) -> Result<f64> {
        let mut secs = 0.0;
        for ta in self.named_tags(tags)? {
            for shard in ta.shards.iter() {
                let need = shard.lock().offload_need();
                if let Some(need) = need {
                    let obtained = obtain(&self.driver, need);
                    secs += shard.lock().adopt_stage(obtained)?;
                }
            }
        }
        Ok(secs)
    }

    /// Wakes the tags named in `tags` at the same addresses. Unknown names
    /// are refused as by [`GlobalArena::sleep`]. On error the failing tag
    /// stays flagged asleep, the shards woken before the failure awake: a
    /// later `wake` wakes the others, a later `sleep` puts those back to
    /// sleep.
    pub fn wake(&self, tags: &[&str], stream: Stream) -> Result<SleepReport> {
        let mut total = SleepReport::default();
        for ta in self.named_tags(tags)? {
            let _cycle = lock(&ta.cycle);
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
