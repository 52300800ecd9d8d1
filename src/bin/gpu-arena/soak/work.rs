//! The soak's threads: workers, the sleeper, the janitor's trims, and on the
//! host backend the chaos thread (faults) and emulated long-running kernels.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use gpu_arena::driver::{Checked, Fault, FaultKind, HostDriver, Op, Stream, SystemDriver};
use gpu_arena::global::GlobalArena;
use gpu_arena::{Error, ErrorKind, Reason, SleepMode};

use super::dev::{Block, Dev, Mark};
use crate::{AnyResult, lock, xorshift};

macro_rules! tally {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// What the threads did (a snapshot of [`Counters`]).
        #[derive(Clone, Copy, Debug, Default, serde::Serialize)]
        pub struct Tally { $($(#[$doc])* pub $name: u64,)* }

        /// Counters the threads add to.
        #[derive(Debug, Default)]
        pub struct Counters { $($(#[$doc])* pub $name: AtomicU64,)* }

        impl Counters {
            /// The counts now.
            pub fn snapshot(&self) -> Tally {
                Tally { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

tally! {
    /// Blocks allocated (workers and sleeper).
    allocs,
    /// Bytes of those blocks.
    alloc_bytes,
    /// Blocks freed.
    frees,
    /// Of those, freed on the stream that wrote them.
    frees_same_stream,
    /// Freed on another stream, ordered after the write by an event.
    frees_other_stream,
    /// Handed to another thread, which freed them on its stream.
    frees_other_thread,
    /// Blocks checked (every word) before their free or after a wake.
    checks,
    /// Bytes checked.
    checked_bytes,
    /// Allocations refused with out-of-memory (the limit, or an injected fault).
    out_of_memory,
    /// Allocations refused by an injected driver error.
    injected_errors,
    /// Trims, and the bytes they gave back.
    trims,
    /// Bytes given back by trims.
    trimmed_bytes,
    /// Tags put to sleep (offload: `weights`; discard: `kv_cache`).
    sleeps,
    /// Bytes given back by sleeps.
    sleep_bytes,
    /// Bytes copied to pinned host memory by sleeps.
    offloaded_bytes,
    /// Tags woken.
    wakes,
    /// Bytes recommitted by wakes.
    wake_bytes,
    /// Sleeps or wakes that failed (injected faults) and were retried.
    sleep_wake_retries,
    /// Allocations refused by an asleep tag, as they must be.
    asleep_refusals,
    /// Frees served by an asleep tag (its pages are not woken again).
    asleep_frees,
    /// Emulated long-running kernels (host: streams held).
    held_streams,
}

/// State the soak's threads share.
pub struct Soak<'a> {
    /// The arena under test.
    pub arena: &'static GlobalArena,
    /// Fills and checks.
    pub dev: &'a Dev,
    /// The streams.
    pub streams: &'a [Stream],
    /// Sizes to draw from.
    pub sizes: &'a [u64],
    /// Multiplier of the sizes.
    pub scale: u64,
    /// Bytes each worker may hold before it only frees.
    pub budget: u64,
    /// Bytes the sleeper loads in each of its two tags.
    pub tag_bytes: u64,
    /// Base seed.
    pub seed: u64,
    /// Set when the workload must stop.
    pub stop: AtomicBool,
    /// Counters.
    pub counters: Counters,
    /// Errors by kind (expected ones: out-of-memory, injected faults).
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Errors that must not happen, with what was being done.
    pub unexpected: Mutex<Vec<String>>,
    /// Blocks handed to each worker, with the mark after their write.
    pub inboxes: Vec<Mutex<Vec<(Block, Mark)>>>,
    seeds: AtomicU32,
}

/// How long the sleeper keeps trying to wake its tags.
const WAKE_PATIENCE: Duration = Duration::from_secs(30);

/// How an error is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    OutOfMemory,
    Injected,
    Unexpected,
}

impl<'a> Soak<'a> {
    /// Shared state for `threads` workers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arena: &'static GlobalArena,
        dev: &'a Dev,
        streams: &'a [Stream],
        sizes: &'a [u64],
        scale: u64,
        budget: u64,
        tag_bytes: u64,
        seed: u64,
        threads: usize,
    ) -> Self {
        Soak {
            arena,
            dev,
            streams,
            sizes,
            scale,
            budget,
            tag_bytes,
            seed,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            unexpected: Mutex::new(Vec::new()),
            inboxes: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
            seeds: AtomicU32::new(1),
        }
    }

    fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// Counts an error of `what` by kind; returns its class.
    fn error(&self, what: &str, e: &Error) -> Class {
        let (label, class) = match e {
            Error::OutOfMemory(_) => ("out of memory".to_string(), Class::OutOfMemory),
            Error::Driver(d) if d.reason == Some(Reason::Injected) => (
                format!("{:?} failed ({:?}, injected)", d.call, d.kind),
                Class::Injected,
            ),
            Error::Driver(d) if d.kind == ErrorKind::OutOfMemory && !d.checked => (
                format!("{:?} out of memory (device)", d.call),
                Class::OutOfMemory,
            ),
            e => (e.to_string(), Class::Unexpected),
        };
        *lock(&self.errors)
            .entry(format!("{what}: {label}"))
            .or_default() += 1;
        if class == Class::Unexpected {
            self.unexpected(what, &label);
        }
        class
    }

    fn unexpected(&self, what: &str, msg: &str) {
        let mut u = lock(&self.unexpected);
        if u.len() < 32 {
            u.push(format!("{what}: {msg}"));
        } else if u.len() == 32 {
            u.push("(more unexpected errors left out)".to_string());
        }
    }

    /// Counts a failure of the filler (a kernel launch, an event).
    fn dev_error(&self, what: &str, e: &dyn std::fmt::Display) {
        *lock(&self.errors)
            .entry(format!("{what}: {e}"))
            .or_default() += 1;
        self.unexpected(what, &e.to_string());
    }

    fn size(&self, rng: &mut u64) -> u64 {
        let s = self.sizes[(xorshift(rng) % self.sizes.len() as u64) as usize];
        s.saturating_mul(self.scale)
    }

    fn seed(&self) -> u32 {
        self.seeds.fetch_add(1, Relaxed) ^ (self.seed as u32).rotate_left(16)
    }

    /// Allocates a block of `size` bytes for `stream` in the calling
    /// thread's tag and fills it there. `Err` carries the error's class.
    fn alloc(&self, size: u64, align: u64, stream: Stream, what: &str) -> Result<Block, Class> {
        match self.arena.alloc(size, align, stream) {
            Ok(ptr) => {
                let b = Block {
                    ptr,
                    size,
                    seed: self.seed(),
                    stream,
                };
                self.add(&self.counters.allocs, 1);
                self.add(&self.counters.alloc_bytes, size);
                if let Err(e) = self.dev.fill(&b) {
                    self.dev_error("fill", &e);
                }
                Ok(b)
            }
            Err(e) => {
                let class = self.error(what, &e);
                match class {
                    Class::OutOfMemory => self.add(&self.counters.out_of_memory, 1),
                    Class::Injected => self.add(&self.counters.injected_errors, 1),
                    Class::Unexpected => {}
                }
                Err(class)
            }
        }
    }

    /// Checks `b` on `stream` (after its write: `mark`, or one recorded
    /// now on the stream that wrote it) and frees it there.
    fn release(&self, b: &Block, stream: Stream, mark: Option<Mark>, sized: bool) {
        let ordered: AnyResult<()> = (|| {
            if stream != b.stream {
                let m = match mark {
                    Some(m) => m,
                    None => self.dev.mark(b.stream)?,
                };
                self.dev.after(stream, &m)?;
            }
            self.dev.check(b, stream)
        })();
        if let Err(e) = ordered {
            self.dev_error("check", &e);
        }
        self.add(&self.counters.checks, 1);
        self.add(&self.counters.checked_bytes, b.size);
        let size = sized.then_some(b.size);
        match self.arena.free(b.ptr, size, stream) {
            Ok(()) => self.add(&self.counters.frees, 1),
            Err(e) => {
                self.error("free", &e);
            }
        }
    }

    /// One worker: allocates, fills, hands over, checks and frees until
    /// told to stop; then frees what it holds and what it was handed.
    pub fn worker(&self, t: usize, barrier: &Barrier) {
        if let Err(e) = self.dev.enter() {
            self.dev_error("context", &e);
            barrier.wait();
            return;
        }
        let n = self.streams.len();
        let threads = self.inboxes.len();
        let mut rng = (self.seed ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(t as u64 + 1) | 1;
        let mut held: Vec<Block> = Vec::new();
        let mut bytes = 0u64;
        let mut cur = t % n;
        while !self.stopped() {
            if xorshift(&mut rng) % 16 == 0 {
                cur = (xorshift(&mut rng) % n as u64) as usize;
            }
            let s = self.streams[cur];
            let handed = std::mem::take(&mut *lock(&self.inboxes[t]));
            for (b, m) in handed {
                self.release(&b, s, Some(m), true);
                self.add(&self.counters.frees_other_thread, 1);
            }
            let r = xorshift(&mut rng) % 100;
            if held.is_empty() || (bytes < self.budget && r < 60) {
                let size = self.size(&mut rng);
                let align = match xorshift(&mut rng) % 8 {
                    0 => 16,
                    1 => 4096,
                    _ => 512,
                };
                match self.alloc(size, align, s, "alloc") {
                    Ok(b) => {
                        bytes += b.size;
                        held.push(b);
                    }
                    Err(Class::OutOfMemory) => {
                        // Make room as an engine would: drop half of the
                        // blocks held, oldest first.
                        let k = held.len().div_ceil(2);
                        for b in held.drain(..k) {
                            bytes -= b.size;
                            self.release(&b, b.stream, None, true);
                            self.add(&self.counters.frees_same_stream, 1);
                        }
                    }
                    Err(_) => {}
                }
                continue;
            }
            let i = (xorshift(&mut rng) % held.len() as u64) as usize;
            let b = held.swap_remove(i);
            bytes -= b.size;
            let route = xorshift(&mut rng) % 4;
            let sized = xorshift(&mut rng) % 4 != 0;
            if route == 3 && threads > 1 {
                let other =
                    (t + 1 + (xorshift(&mut rng) % (threads as u64 - 1)) as usize) % threads;
                match self.dev.mark(b.stream) {
                    Ok(m) => lock(&self.inboxes[other]).push((b, m)),
                    Err(e) => {
                        self.dev_error("mark", &e);
                        self.release(&b, b.stream, None, sized);
                    }
                }
            } else if route == 2 && n > 1 {
                let j = self
                    .streams
                    .iter()
                    .position(|&x| x == b.stream)
                    .unwrap_or(0);
                let other =
                    self.streams[(j + 1 + (xorshift(&mut rng) % (n as u64 - 1)) as usize) % n];
                self.release(&b, other, None, sized);
                self.add(&self.counters.frees_other_stream, 1);
            } else {
                self.release(&b, b.stream, None, sized);
                self.add(&self.counters.frees_same_stream, 1);
            }
        }
        // Nobody hands blocks over once every worker passed the barrier.
        barrier.wait();
        let s = self.streams[cur];
        let handed = std::mem::take(&mut *lock(&self.inboxes[t]));
        for (b, m) in handed {
            self.release(&b, s, Some(m), true);
            self.add(&self.counters.frees_other_thread, 1);
        }
        for b in held {
            self.release(&b, b.stream, None, true);
            self.add(&self.counters.frees_same_stream, 1);
        }
    }

    /// The sleeper: loads `weights` and `kv_cache`, puts them to sleep
    /// (offload, discard), checks the refusals, wakes them and checks the
    /// contents, frees some, again until told to stop.
    pub fn sleeper(&self) {
        if let Err(e) = self.dev.enter() {
            self.dev_error("context", &e);
            return;
        }
        const TAGS: [(&str, SleepMode); 2] = [
            ("weights", SleepMode::Offload),
            ("kv_cache", SleepMode::Discard),
        ];
        let mut rng = self.seed ^ 0x5151_5151 | 1;
        let mut sets: [Vec<Block>; 2] = [Vec::new(), Vec::new()];
        while !self.stopped() {
            let s = self.streams[(xorshift(&mut rng) % self.streams.len() as u64) as usize];
            for (i, (tag, _)) in TAGS.iter().enumerate() {
                let _scope = match self.arena.tag_scope(tag) {
                    Ok(g) => g,
                    Err(e) => {
                        self.error("tag", &e);
                        return;
                    }
                };
                let mut have: u64 = sets[i].iter().map(|b| b.size).sum();
                while have < self.tag_bytes && !self.stopped() {
                    let size = self.size(&mut rng).min(self.tag_bytes);
                    match self.alloc(size, 512, s, "sleeper alloc") {
                        Ok(b) => {
                            have += b.size;
                            sets[i].push(b);
                        }
                        Err(_) => break,
                    }
                }
            }
            for (tag, mode) in TAGS {
                match self.arena.sleep(&[tag], mode, s) {
                    Ok(r) => {
                        self.add(&self.counters.sleeps, 1);
                        self.add(&self.counters.sleep_bytes, r.bytes);
                        self.add(&self.counters.offloaded_bytes, r.copied);
                    }
                    Err(e) => {
                        self.error("sleep", &e);
                        self.add(&self.counters.sleep_wake_retries, 1);
                    }
                }
            }
            // An asleep tag refuses allocations, changing nothing, and
            // serves frees (PyTorch cannot be told no).
            let weights = self.arena.tag("weights").ok();
            if weights
                .and_then(|t| self.arena.tag_arenas(t))
                .is_some_and(|t| t.is_asleep())
            {
                if let Ok(_g) = self.arena.tag_scope("weights") {
                    match self.arena.alloc(4096, 512, s) {
                        Err(Error::Asleep { .. }) => self.add(&self.counters.asleep_refusals, 1),
                        Ok(p) => {
                            self.unexpected("asleep", "an asleep tag served an allocation");
                            sets[0].push(Block {
                                ptr: p,
                                size: 4096,
                                seed: 0,
                                stream: s,
                            });
                        }
                        Err(e) => {
                            self.error("asleep alloc", &e);
                        }
                    }
                }
                if !sets[0].is_empty() {
                    // No contents to check: nothing is mapped.
                    let b = sets[0].swap_remove(0);
                    match self.arena.free(b.ptr, Some(b.size), s) {
                        Ok(()) => {
                            self.add(&self.counters.asleep_frees, 1);
                            self.add(&self.counters.frees, 1);
                        }
                        Err(e) => {
                            self.error("asleep free", &e);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(xorshift(&mut rng) % 40));
            if !self.wake_all(&TAGS.map(|t| t.0), s) {
                return;
            }
            // Offloaded contents came back identical; discarded ones are
            // refilled (and must hold what was written).
            for b in sets[0].iter() {
                if let Err(e) = self.dev.check(b, s) {
                    self.dev_error("check", &e);
                }
                self.add(&self.counters.checks, 1);
                self.add(&self.counters.checked_bytes, b.size);
            }
            for b in sets[1].iter_mut() {
                b.seed = self.seed();
                b.stream = s;
                if let Err(e) = self.dev.fill(b) {
                    self.dev_error("fill", &e);
                }
            }
            // Some blocks go, so that the next cycle loads fresh ones.
            for set in sets.iter_mut() {
                let mut i = 0;
                while i < set.len() {
                    if xorshift(&mut rng) % 3 == 0 {
                        let b = set.swap_remove(i);
                        self.release(&b, s, None, true);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        let s = self.streams[0];
        if self.wake_all(&TAGS.map(|t| t.0), s) {
            for b in sets.iter().flatten() {
                self.release(b, s, None, true);
            }
        }
    }

    /// Wakes `tags`, retrying through injected faults and out-of-memory
    /// (the workers hold the memory under the limit for a while) for up to
    /// [`WAKE_PATIENCE`]. False if they stay asleep (counted as unexpected).
    fn wake_all(&self, tags: &[&str], s: Stream) -> bool {
        let t0 = std::time::Instant::now();
        loop {
            match self.arena.wake(tags, s) {
                Ok(r) => {
                    self.add(&self.counters.wakes, tags.len() as u64);
                    self.add(&self.counters.wake_bytes, r.bytes);
                    return true;
                }
                Err(e) => {
                    self.add(&self.counters.sleep_wake_retries, 1);
                    if self.error("wake", &e) == Class::Unexpected || t0.elapsed() > WAKE_PATIENCE {
                        self.unexpected("wake", "the tags stay asleep");
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Trims the arena (the janitor calls this every half second).
    pub fn trim(&self) {
        let bytes = self.arena.trim();
        self.add(&self.counters.trims, 1);
        self.add(&self.counters.trimmed_bytes, bytes);
    }

    /// Keeps one fault pending on each driver call of `ops`, each firing
    /// within `every` calls of its op, renewed every 50 ms; clears them
    /// when told to stop.
    pub fn chaos(&self, checked: &Checked<SystemDriver>, every: u64, ops: &[Op]) {
        let mut rng = self.seed ^ 0xC4A0_5EED | 1;
        while !self.stopped() {
            checked.clear_faults();
            for &op in ops {
                let kind = if xorshift(&mut rng) % 2 == 0 {
                    FaultKind::OutOfMemory
                } else {
                    FaultKind::DriverError
                };
                checked.inject(Fault {
                    op,
                    nth: 1 + xorshift(&mut rng) % every.max(1),
                    kind,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        checked.clear_faults();
    }

    /// Emulates long-running kernels on the host backend: holds a random
    /// stream for a few milliseconds (its fences stay pending), again and
    /// again; completes every stream when told to stop.
    pub fn holds(&self, host: &HostDriver) {
        let mut rng = self.seed ^ 0x401D_401D | 1;
        while !self.stopped() {
            let s = self.streams[(xorshift(&mut rng) % self.streams.len() as u64) as usize];
            host.hold(s);
            self.add(&self.counters.held_streams, 1);
            std::thread::sleep(Duration::from_millis(2 + xorshift(&mut rng) % 30));
            host.complete(s);
            std::thread::sleep(Duration::from_millis(xorshift(&mut rng) % 10));
        }
        for &s in self.streams {
            host.complete(s);
        }
    }
}
