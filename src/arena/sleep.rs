//! Sleep and wake: every physical page given back while every address stays
//! reserved, the contents dropped or staged in pinned host memory, and
//! recommitted (and restored) at the same addresses on wake.

use super::Arena;
use crate::commit::stage::Stage;
pub use crate::commit::stage::{Obtained, StageNeed, obtain};
use crate::driver::{Driver, Stream};
use crate::error::{Error, Result};

/// How [`Arena::sleep`] treats the contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SleepMode {
    /// Contents are dropped; woken pages read as zero on the host backend
    /// and unspecified on GPUs.
    Discard,
    /// Contents are copied to pinned host memory first and restored on wake.
    Offload,
}

/// What a sleep or wake did.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct SleepReport {
    /// Physical bytes given back (sleep) or recommitted (wake).
    pub bytes: u64,
    /// Bytes copied to or from pinned host memory.
    pub copied: u64,
    /// Seconds spent copying (including the wait on the copy's fence).
    pub copy_seconds: f64,
    /// Seconds spent obtaining pinned host memory for an offload (0 when
    /// the memory kept from the last wake was reused).
    pub stage_seconds: f64,
    /// Seconds spent in driver map/unmap work.
    pub vmm_seconds: f64,
}

/// How an asleep arena sleeps.
pub(super) struct Sleeping<H> {
    pub(super) mode: SleepMode,
    pub(super) stage: Option<Stage<H>>,
}

impl<D: Driver> Arena<D> {
    #[inline]
    pub(super) fn awake(&self) -> Result<()> {
        if self.hot.asleep {
            return Err(Error::Asleep { tag: self.tag });
        }
        Ok(())
    }

    /// Whether the arena is asleep.
    pub fn is_asleep(&self) -> bool {
        self.hot.asleep
    }

    /// Records what waking needs (`None`: awake), and whether asleep in
    /// the line every call reads.
    fn set_sleeping(&mut self, sleeping: Option<Sleeping<D::Handle>>) {
        self.hot.asleep = sleeping.is_some();
        self.sleeping = sleeping;
        self.tell_scratch_arenas();
    }

    /// Tells every scratch arena's lock-free fast path whether it may hand
    /// memory out (not while asleep).
    pub(super) fn tell_scratch_arenas(&self) {
        for (_, c) in self.scratch_cursors.iter() {
            c.asleep
                .store(self.hot.asleep, core::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Registers a safe handle that may give the CPU references into this
    /// arena's memory: sleeping is refused until [`Arena::unpin_host`].
    /// Refused while asleep.
    pub(crate) fn pin_host(&mut self) -> Result<()> {
        self.awake()?;
        self.host_refs += 1;
        Ok(())
    }

    /// Ends a [`Arena::pin_host`].
    pub(crate) fn unpin_host(&mut self) {
        self.host_refs = self.host_refs.saturating_sub(1);
    }

    /// Gives every physical page back while every address stays reserved and
    /// every pointer held stays valid for after [`Arena::wake`].
    ///
    /// First waits on fences of this arena's streams only (work queued on
    /// the pages must finish), then, with [`SleepMode::Offload`], copies the
    /// pages holding live bytes to pinned host memory on `stream` and waits
    /// on that copy's fence; then unmaps and releases everything. Allocating
    /// in an asleep arena (or resizing, copying, exporting) is refused with
    /// [`Error::Asleep`]. Freeing is not: a block (or buffer) freed while
    /// asleep leaves the stats at once, and the wake neither recommits nor
    /// restores the pages that held only it.
    ///
    /// ```
    /// use gpu_arena::{Arena, ArenaConfig, Kind, SleepMode};
    /// use gpu_arena::driver::{HostDriver, Stream};
    ///
    /// let driver = HostDriver::new()?;
    /// let mut arena = Arena::new(&driver, Kind::Device(0), ArenaConfig::default())?;
    /// let kept = arena.alloc(8 << 20, 256)?;
    /// let dropped = arena.alloc(8 << 20, 256)?;
    /// arena.sleep(SleepMode::Offload, Stream::DEFAULT)?;
    /// arena.free(dropped)?; // PyTorch frees a tensor of a sleeping tag
    /// assert_eq!(arena.stats().live, 8 << 20);
    /// let woken = arena.wake(Stream::DEFAULT)?;
    /// assert_eq!((woken.bytes, woken.copied), (8 << 20, 8 << 20));
    /// arena.free(kept)?;
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub fn sleep(&mut self, mode: SleepMode, stream: Stream) -> Result<SleepReport> {
        self.awake()?;
        if self.host_refs > 0 {
            return Err(Error::Unsupported(
                "safe host references into this arena are live (allocator_api2 blocks, scratch arenas' typed values, growable buffers' slices): drop them, or reset the scratch arenas, before sleeping",
            ));
        }
        if self.commit.has_live_shared() {
            return Err(Error::Unsupported(
                "this arena holds shared or imported buffers: drop them before sleeping",
            ));
        }
        self.commit.streams.slot(stream);
        self.commit.quiesce()?;
        let mut report = SleepReport::default();
        let stage = match mode {
            SleepMode::Discard => None,
            SleepMode::Offload => {
                let t = std::time::Instant::now();
                let (stage, stage_seconds) = self.commit.offload(stream)?;
                report.stage_seconds = stage_seconds;
                report.copy_seconds = t.elapsed().as_secs_f64() - stage_seconds;
                report.copied = stage.as_ref().map_or(0, |s| s.copied());
                stage
            }
        };
        let t = std::time::Instant::now();
        report.bytes = self.commit.sleep();
        report.vmm_seconds = t.elapsed().as_secs_f64();
        self.set_sleeping(Some(Sleeping { mode, stage }));
        Ok(report)
    }

    /// Obtains now the pinned host memory the next offload of this arena
    /// needs (as large as the pages holding live bytes), so that the first
    /// [`SleepMode::Offload`] runs at copy speed too: pinning host memory is
    /// the slow part of a first offload. The memory is kept across cycles
    /// (see [`Stats::staged`](crate::stats::Stats::staged)) until [`Arena::trim`]. Returns the seconds it
    /// took (0 when enough was held).
    pub fn prepare_offload(&mut self) -> Result<f64> {
        self.awake()?;
        let bytes = self.commit.offload_bytes();
        self.commit.prepare_stage(bytes)
    }

    /// The pinned host memory the next offload needs beyond what is held:
    /// `None` when enough is held, nothing is live, or the arena is asleep.
    /// [`obtain`] it through the arena's driver without holding this
    /// arena's lock, then hand it to [`Arena::adopt_stage`]: that is
    /// [`Arena::prepare_offload`] in two steps, with allocations served in
    /// between (pinning tens of GiB of host memory takes seconds).
    ///
    /// ```
    /// use gpu_arena::{Arena, ArenaConfig, Kind, SleepMode};
    /// use gpu_arena::arena::obtain;
    /// use gpu_arena::driver::{HostDriver, Stream};
    ///
    /// let driver = HostDriver::new()?;
    /// let mut arena = Arena::new(&driver, Kind::Device(0), ArenaConfig::default())?;
    /// let p = arena.alloc(3 << 20, 256)?;
    /// let need = arena.offload_need().expect("3 MiB live, nothing held");
    /// let obtained = obtain(&driver, need); // no lock of the arena held here
    /// arena.adopt_stage(obtained)?;
    /// assert!(arena.offload_need().is_none());
    /// let report = arena.sleep(SleepMode::Offload, Stream::DEFAULT)?;
    /// assert_eq!(report.stage_seconds, 0.0); // the first offload pins nothing
    /// arena.wake(Stream::DEFAULT)?;
    /// arena.free(p)?;
    /// # Ok::<(), gpu_arena::Error>(())
    /// ```
    pub fn offload_need(&self) -> Option<StageNeed> {
        if self.is_asleep() {
            return None;
        }
        self.commit.stage_need()
    }

    /// Keeps a stage obtained for [`Arena::offload_need`] for the next
    /// offload (the larger of it and the one held; the other goes back at
    /// once), counting its driver calls. Returns the seconds obtaining it
    /// took, or the error obtaining it met.
    pub fn adopt_stage(&mut self, obtained: Obtained<D::Handle>) -> Result<f64> {
        self.commit.adopt_stage(obtained)
    }

    /// Recommits every page that holds live bytes at its old address (large
    /// handles, as in commit) and restores offloaded contents on `stream`
    /// (waiting on that copy's fence). On failure nothing stays mapped and
    /// the arena stays asleep.
    pub fn wake(&mut self, stream: Stream) -> Result<SleepReport> {
        let Some(sleeping) = self.sleeping.take() else {
            return Ok(SleepReport::default());
        };
        // Scratch arenas' lock-free fast paths are told only once the pages
        // are back and restored (end of this call).
        self.hot.asleep = false;
        let mut report = SleepReport::default();
        let t = std::time::Instant::now();
        match self.commit.wake() {
            Ok(bytes) => report.bytes = bytes,
            Err(e) => {
                self.set_sleeping(Some(sleeping));
                return Err(e);
            }
        }
        report.vmm_seconds = t.elapsed().as_secs_f64();
        if let Some(stage) = sleeping.stage {
            let t = std::time::Instant::now();
            match self.commit.restore(stage, stream) {
                Ok(copied) => report.copied = copied,
                Err((e, stage)) => {
                    // Back to sleep, contents kept in the stage for a retry.
                    self.commit.sleep();
                    self.set_sleeping(Some(Sleeping {
                        mode: sleeping.mode,
                        stage: Some(stage),
                    }));
                    return Err(e);
                }
            }
            report.copy_seconds = t.elapsed().as_secs_f64();
        }
        self.tell_scratch_arenas();
        Ok(report)
    }
}
