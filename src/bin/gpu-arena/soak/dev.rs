//! Where the soak fills and checks its blocks: the CPU on the host backend,
//! kernels on CUDA (`fill_pattern` / `check_pattern`, in stream order).
//!
//! Every block holds [`pattern_word`]`(seed, i)` at word `i`, with a seed of
//! its own: a byte written through a wrong mapping, a page mapped at the
//! wrong place, or memory handed to another block too early shows as a
//! mismatch when the block is checked, just before it is freed.
//!
//! Stream order across streams is what PyTorch's `record_stream` gives: a
//! block written on stream S and freed on stream T gets a [`Mark`] recorded
//! on S after the write, and T waits for it before the check (and so before
//! the free) is queued.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use gpu_arena::driver::{DevicePtr, Driver, Stream, SystemDriver};

use crate::{AnyResult, lock};

/// The word at index `i` of a block filled with `seed`: the same formula
/// as the CUDA test kernels' (`driver::cuda::kernels::pattern_word`).
#[inline]
pub const fn pattern_word(seed: u32, i: u64) -> u32 {
    (i as u32).wrapping_mul(PATTERN_STEP) ^ seed
}

/// The pattern's multiplier (odd: every index of a block gets its own word).
const PATTERN_STEP: u32 = 0x9E37_79B1;

/// A block the soak owns.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// Address.
    pub ptr: DevicePtr,
    /// Bytes asked for (a multiple of 4).
    pub size: u64,
    /// Pattern seed.
    pub seed: u32,
    /// The stream that last wrote it.
    pub stream: Stream,
}

/// A point in a stream's work that another stream can be made to wait for
/// (an event on CUDA; nothing on the host, where writes are synchronous).
#[derive(Debug)]
pub enum Mark {
    /// Nothing to wait for.
    None,
    /// A CUDA event.
    #[cfg(feature = "cuda")]
    Event(crate::cuda::Event),
}

/// A mismatch seen by a CPU check.
#[derive(Clone, Copy, Debug)]
pub struct Mismatch {
    /// Block address.
    pub ptr: DevicePtr,
    /// Word index.
    pub word: u64,
    /// Expected word.
    pub expected: u32,
    /// Word found.
    pub found: u32,
}

/// Fills and checks blocks (see the module docs).
pub enum Dev {
    /// The CPU, on host memory.
    Host {
        /// Corrupted words seen so far.
        corrupted: AtomicU64,
        /// The first few mismatches.
        first: Mutex<Vec<Mismatch>>,
    },
    /// Kernels on a CUDA device.
    #[cfg(feature = "cuda")]
    Cuda(CudaDev),
}

/// The CUDA side of [`Dev`].
#[cfg(feature = "cuda")]
pub struct CudaDev {
    cu: crate::cuda::Cu,
    driver: Arc<SystemDriver>,
    streams: Vec<Stream>,
    /// One `u32` per stream (`cuMemAlloc`, outside the arena): the check
    /// kernels add their mismatches there.
    counters: u64,
}

impl Dev {
    /// The filler for `driver`'s backend; `streams` are the streams the
    /// soak uses (CUDA: one mismatch counter each).
    pub fn new(driver: &Arc<SystemDriver>, streams: &[Stream]) -> AnyResult<Self> {
        #[cfg(feature = "cuda")]
        if let Some(c) = driver.as_cuda() {
            let cu = crate::cuda::Cu::new(c)?;
            c.kernels()?;
            let bytes = 4 * streams.len().max(1);
            let counters = cu.mem_alloc(bytes)?;
            cu.memset_sync(counters, 0, bytes)?;
            return Ok(Dev::Cuda(CudaDev {
                cu,
                driver: driver.clone(),
                streams: streams.to_vec(),
                counters,
            }));
        }
        let _ = streams;
        if !driver.capabilities().cpu_reads_device_memory {
            return Err(format!(
                "blocks are filled and checked by CUDA kernels or by the CPU; the {} backend offers neither",
                driver.capabilities().backend
            )
            .into());
        }
        Ok(Dev::Host {
            corrupted: AtomicU64::new(0),
            first: Mutex::new(Vec::new()),
        })
    }

    /// What fills and checks, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            Dev::Host { .. } => "the CPU (every word written, every word read back)",
            #[cfg(feature = "cuda")]
            Dev::Cuda(_) => "kernels (fill_pattern, check_pattern: every word, in stream order)",
        }
    }

    /// Makes the device's context current on the calling thread.
    pub fn enter(&self) -> AnyResult<()> {
        match self {
            Dev::Host { .. } => Ok(()),
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => c.cu.make_current(),
        }
    }

    /// Writes the pattern of `b.seed` over `b`, on `b.stream`.
    pub fn fill(&self, b: &Block) -> AnyResult<()> {
        match self {
            Dev::Host { .. } => {
                let n = (b.size / 4) as usize;
                let p = b.ptr.as_mut_ptr::<u32>();
                // Word i is (i * K) ^ seed: a running sum of K, so that the
                // loop stays fast in a debug build too.
                let mut acc = 0u32;
                for i in 0..n {
                    // SAFETY: host backend: `b` is a live block of host
                    // memory of `b.size` bytes (aligned for u32) that only
                    // this thread touches until it is freed.
                    unsafe { p.add(i).write(acc ^ b.seed) };
                    acc = acc.wrapping_add(PATTERN_STEP);
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => {
                let k = c.kernels()?;
                // SAFETY: `b` is a live block of the arena's device memory,
                // 512-byte aligned, that stays allocated until its free,
                // queued after this launch (same stream, or a stream made to
                // wait for a mark recorded after it).
                unsafe { k.fill_pattern(b.stream, b.ptr.addr(), b.size / 4, b.seed) }?;
                Ok(())
            }
        }
    }

    /// Checks that `b` holds its pattern, on `stream` (which the caller
    /// ordered after `b.stream`'s write). The host counts mismatches at
    /// once; kernels add them to the stream's counter ([`Dev::corrupted`]).
    pub fn check(&self, b: &Block, stream: Stream) -> AnyResult<()> {
        match self {
            Dev::Host { corrupted, first } => {
                let _ = stream;
                let n = (b.size / 4) as usize;
                let p = b.ptr.as_ptr::<u32>();
                let (mut acc, mut bad, mut at) = (0u32, 0u64, None);
                for i in 0..n {
                    // SAFETY: as in `fill`; the block is still allocated.
                    let w = unsafe { p.add(i).read() };
                    if w != acc ^ b.seed {
                        bad += 1;
                        at.get_or_insert((i, w));
                    }
                    acc = acc.wrapping_add(PATTERN_STEP);
                }
                if let Some((i, w)) = at {
                    corrupted.fetch_add(bad, Relaxed);
                    let mut f = lock(first);
                    if f.len() < 8 {
                        f.push(Mismatch {
                            ptr: b.ptr,
                            word: i as u64,
                            expected: pattern_word(b.seed, i as u64),
                            found: w,
                        });
                    }
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => {
                let k = c.kernels()?;
                let slot = c.streams.iter().position(|&s| s == stream).unwrap_or(0);
                let counter = c.counters + 4 * slot as u64;
                // SAFETY: the block is live until its free, queued after this
                // launch on `stream`; the counter is our own device `u32`.
                unsafe { k.check_pattern(stream, b.ptr.addr(), b.size / 4, b.seed, counter) }?;
                Ok(())
            }
        }
    }

    /// Adds 1 to each of the `words` `u32`s at `ptr`, on `stream` (a
    /// compute step whose result counts the steps that ran).
    pub fn add_one(&self, ptr: DevicePtr, words: u64, stream: Stream) -> AnyResult<()> {
        match self {
            Dev::Host { .. } => {
                let _ = stream;
                let p = ptr.as_mut_ptr::<u32>();
                for i in 0..words as usize {
                    // SAFETY: the caller passes a live block of host memory
                    // of `words` u32s that only it touches.
                    unsafe { p.add(i).write(p.add(i).read().wrapping_add(1)) };
                }
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => {
                let k = c.kernels()?;
                // SAFETY: the caller passes a live block of device memory of
                // `words` u32s that stays allocated while the kernel runs.
                unsafe { k.add_one(stream, ptr.addr(), words) }?;
                Ok(())
            }
        }
    }

    /// Counts (as [`Dev::check`] does) the `words` `u32`s at `ptr` that are
    /// not `value`, on `stream`.
    pub fn check_value(
        &self,
        ptr: DevicePtr,
        words: u64,
        value: u32,
        stream: Stream,
    ) -> AnyResult<()> {
        match self {
            Dev::Host { corrupted, .. } => {
                let _ = stream;
                let p = ptr.as_ptr::<u32>();
                let mut bad = 0;
                for i in 0..words as usize {
                    // SAFETY: as in `add_one`.
                    if unsafe { p.add(i).read() } != value {
                        bad += 1;
                    }
                }
                corrupted.fetch_add(bad, Relaxed);
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => {
                let k = c.kernels()?;
                let slot = c.streams.iter().position(|&s| s == stream).unwrap_or(0);
                let counter = c.counters + 4 * slot as u64;
                // SAFETY: as in `add_one`; the counter is our own device u32.
                unsafe { k.check_and_write(stream, ptr.addr(), words, value, value, counter) }?;
                Ok(())
            }
        }
    }

    /// Waits until the work queued on `stream` so far completed (one
    /// event; never the device).
    pub fn sync(&self, stream: Stream) -> AnyResult<()> {
        match self {
            Dev::Host { .. } => {
                let _ = stream;
                Ok(())
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => c.cu.record(stream)?.wait(),
        }
    }

    /// A mark after the work queued on `stream` so far.
    pub fn mark(&self, stream: Stream) -> AnyResult<Mark> {
        match self {
            Dev::Host { .. } => {
                let _ = stream;
                Ok(Mark::None)
            }
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => Ok(Mark::Event(c.cu.record(stream)?)),
        }
    }

    /// Makes work queued on `stream` from now on wait for `mark`.
    pub fn after(&self, stream: Stream, mark: &Mark) -> AnyResult<()> {
        match (self, mark) {
            #[cfg(feature = "cuda")]
            (Dev::Cuda(c), Mark::Event(e)) => c.cu.wait_event(stream, e),
            _ => {
                let _ = stream;
                Ok(())
            }
        }
    }

    /// Waits until the work queued on every soak stream so far completed
    /// (one event per stream; never the device).
    pub fn finish(&self) -> AnyResult<()> {
        match self {
            Dev::Host { .. } => Ok(()),
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => {
                c.cu.make_current()?;
                for &s in &c.streams {
                    c.cu.record(s)?.wait()?;
                }
                Ok(())
            }
        }
    }

    /// Corrupted words seen so far (CUDA: the counters as of now; call
    /// [`Dev::finish`] first for the final figure).
    pub fn corrupted(&self) -> AnyResult<u64> {
        match self {
            Dev::Host { corrupted, .. } => Ok(corrupted.load(Relaxed)),
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => {
                let mut host = vec![0u32; c.streams.len().max(1)];
                // SAFETY: `host` is writable for its length; the counters are
                // our device buffer of that many `u32`s; the default stream's
                // copy has completed on return.
                unsafe {
                    c.driver.copy(
                        host.as_mut_ptr() as u64,
                        c.counters,
                        4 * host.len(),
                        Stream::DEFAULT,
                    )
                }?;
                Ok(host.iter().map(|&x| u64::from(x)).sum())
            }
        }
    }

    /// The first mismatches the CPU saw (kernels only count them).
    pub fn first_mismatches(&self) -> Vec<Mismatch> {
        match self {
            Dev::Host { first, .. } => lock(first).clone(),
            #[cfg(feature = "cuda")]
            Dev::Cuda(_) => Vec::new(),
        }
    }

    /// The device's (free, total) memory (CUDA), for the check that
    /// teardown gave everything back.
    pub fn mem_info(&self) -> Option<(u64, u64)> {
        match self {
            Dev::Host { .. } => None,
            #[cfg(feature = "cuda")]
            Dev::Cuda(c) => c.cu.mem_info().ok(),
        }
    }
}

#[cfg(feature = "cuda")]
impl CudaDev {
    fn kernels(&self) -> AnyResult<&gpu_arena::driver::cuda::Kernels> {
        let c = self
            .driver
            .as_cuda()
            .ok_or("the CUDA filler lost its driver (bug)")?;
        Ok(c.kernels()?)
    }
}

#[cfg(feature = "cuda")]
impl Drop for CudaDev {
    fn drop(&mut self) {
        if self.cu.make_current().is_ok() {
            let _ = self.cu.mem_free(self.counters);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pattern_word;

    #[cfg(feature = "cuda")]
    #[test]
    fn the_cpu_pattern_is_the_kernels_pattern() {
        for (seed, i) in [
            (0, 0),
            (1, 1),
            (0xdead_beef, 12345),
            (7, u64::from(u32::MAX) + 3),
        ] {
            assert_eq!(
                pattern_word(seed, i),
                gpu_arena::driver::cuda::kernels::pattern_word(seed, i)
            );
        }
    }

    #[test]
    fn the_running_sum_is_the_pattern() {
        let mut acc = 0u32;
        for i in 0..100_000u64 {
            assert_eq!(acc ^ 9, pattern_word(9, i));
            acc = acc.wrapping_add(super::PATTERN_STEP);
        }
    }

    #[test]
    fn neighbouring_words_and_seeds_differ() {
        assert_ne!(pattern_word(1, 0), pattern_word(1, 1));
        assert_ne!(pattern_word(1, 5), pattern_word(2, 5));
    }
}
