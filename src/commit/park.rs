//! Parking a freed block of the blocks region: the units of the pages it
//! covers whole go idle as one group, which the next block of the same
//! place, length and stream takes back in one step.
//!
//! A workload that repeats frees a block and, most often, allocates the
//! same block at the same place again before anything else takes those
//! pages (counted on the recorded traces: 83 % of BERT inference's pages
//! covered whole, 47 % of the training loop's; `docs/pytorch.md`, "Where
//! the per-page work could go next"). Done page by page, the free stamps
//! every mapping and unit and links every unit into the idle list, and the
//! take checks, claims and unlinks them all again. The stitched ranges'
//! groups ([`parked`](super::pool::parked)) already do that in one step;
//! here the same groups serve blocks outside stitched ranges, with the
//! block's first and last pages, which it may share with its neighbours,
//! still taken and freed page by page around the group, in page order, so
//! that the idle list, the stamps and every bit anyone reads stay as page
//! by page would have left them: parking changes no decision, only what a
//! free and a take cost (`CommitConfig::park`).
//!
//! A group is found again through the records a walk over the block reads
//! anyway (the mapping of its first whole page, that mapping's unit, the
//! unit's group), not a map by offset. It forms as the block is taken, page
//! by page or backed afresh, while the records of its pages are in the
//! caches, so that the free parks it in one step too: formed at the free,
//! a 64 MiB block committed afresh took 1.4–2.3 µs to free with cold
//! caches on the host, 0.94–1.3 µs formed at the take (medians of 4 runs,
//! `docs/pytorch/experiments/free-probe-fresh-20261129.log`). A place
//! whose groups are flushed rather than taken back (other blocks take its
//! pages) forms none at every other free
//! ([`Pool::worth_parking`](super::pool::Pool::worth_parking)).
#![deny(unsafe_code, clippy::unwrap_used)]

use super::Commit;
use super::pages::NIL;
use super::pool::GroupId;
use crate::driver::Driver;
use crate::meta::MetaVec;
use crate::sync::Stamp;

/// Blocks park the units of the pages they cover whole as a group when
/// they cover at least this many (fewer save less than a group's forming
/// and flushing cost: counted on the recorded traces, 1 to 16 tried).
pub(super) const PARK_MIN_PAGES: u64 = 4;

/// A block outside stitched ranges (`len` bytes at `off`) and the pages
/// `first..=last` it covers whole: what its group parks and takes back.
#[derive(Clone, Copy, Debug)]
pub(super) struct Whole {
    off: u64,
    len: u64,
    pub(super) first: u64,
    pub(super) last: u64,
}

impl Whole {
    /// Pages covered whole.
    fn pages(self) -> u64 {
        self.last + 1 - self.first
    }
}

impl<D: Driver> Commit<D> {
    /// Parks group `g`, whose block was freed on the stream of `stamp` at
    /// `now` (a stitched range's or one of the blocks region's): the pool
    /// parks it, the pages of its units' other mappings are unblocked, and
    /// the next look at the decay comes no later than those units' turn.
    #[inline]
    pub(super) fn park_marked(&mut self, g: GroupId, stamp: Stamp, now: u64) {
        let mut marks = core::mem::replace(&mut self.marks, MetaVec::new_in(std::alloc::System));
        self.pool.park_group(g, stamp, now, &mut marks);
        self.mark_all(&mut marks, false);
        self.marks = marks;
        self.next_reclaim = self.next_reclaim.min(now + self.reclaim_period());
    }

    /// Takes parked group `g` back: the pool retakes it and the pages of
    /// its units' other mappings are blocked again.
    #[inline]
    pub(super) fn retake_marked(&mut self, g: GroupId) {
        let mut marks = core::mem::replace(&mut self.marks, MetaVec::new_in(std::alloc::System));
        self.pool.retake_group(g, &mut marks);
        self.mark_all(&mut marks, true);
        self.marks = marks;
    }

    /// The block of `len` bytes at `off` with the pages it covers whole,
    /// where parking is on and those are at least [`PARK_MIN_PAGES`].
    #[inline]
    pub(super) fn whole_pages(&self, off: u64, len: u64) -> Option<Whole> {
        if len < PARK_MIN_PAGES << self.shift || !self.config.park {
            return None;
        }
        let first = (off + self.page - 1) >> self.shift;
        let end = (off + len) >> self.shift;
        (end >= first + PARK_MIN_PAGES).then_some(Whole {
            off,
            len,
            first,
            last: end - 1,
        })
    }

    /// Frees block `w` (outside stitched ranges, found by
    /// [`Commit::whole_pages`]) with the units of the pages it covers whole
    /// parked as a group
    /// (formed now, or kept from the block's last take), and its partly
    /// covered first and last pages page by page around it, in page order:
    /// what [`Commit::unaccount`] would do, with the same outcome (see
    /// [`parked`](super::pool::parked)). Returns false, changing nothing,
    /// where the caller must free it page by page: asleep, a free that
    /// stamps nothing, or a page that cannot join
    /// (a unit of several pages, one whose fences do not allow the free's
    /// stream).
    #[inline(never)]
    pub(super) fn park_block(&mut self, w: Whole, stamp: Stamp) -> bool {
        if self.asleep || stamp.is_safe() {
            return false;
        }
        let (off, len) = (w.off, w.len);
        let Some(g) = self.block_group(w, stamp.slot()) else {
            return false;
        };
        let (from, to) = (w.first << self.shift, (w.last + 1) << self.shift);
        let mut now = None;
        let mut shared = false;
        if off < from {
            shared = self.unaccount_at(off, from - off, stamp, &mut now);
        }
        self.pages
            .sub_block(from, to - from, self.shift, |emptied, _| {
                debug_assert!(emptied, "a page the block covers whole stays live");
            });
        let t = *now.get_or_insert_with(|| self.clock.now_ms());
        self.park_marked(g, stamp, t);
        if to < off + len {
            shared |= self.unaccount_at(to, off + len - to, stamp, &mut now);
        }
        // Pages emptied (the whole ones at least), as `unaccount` says.
        self.after_free(len, true, shared);
        self.stitch_counts.blocks_parked += 1;
        true
    }

    /// The group of the units of the pages live block `w` covers whole, to
    /// park as it is freed on the stream of `slot`: the one formed or
    /// kept at the block's take, else a new one (each page its own
    /// one-page mapping, whose unit's fences allow `slot`).
    fn block_group(&mut self, w: Whole, slot: u16) -> Option<GroupId> {
        let m0 = self.pages.live_map(w.first).1;
        if m0 == NIL {
            return None;
        }
        if let Some(g) = self.pool.block_group_of(m0, w.off, w.len) {
            debug_assert!(!self.pool.group_parked(g), "a live block's group is parked");
            return Some(g);
        }
        if !self.pool.worth_parking(m0) {
            return None;
        }
        self.form_block_group(w, slot)
    }

    /// Forms the group of live block `w`'s whole pages as the block is
    /// taken for work of `slot` (page by page, or backed afresh), where its
    /// free would form one: the members' records (a mapping and a unit
    /// per page) were just read and written, where at the free they have
    /// mostly gone cold. The take checked every unit's stamps for `slot`,
    /// so the group's units allow it.
    #[inline(never)]
    pub(super) fn group_on_take(&mut self, w: Whole, slot: u16) {
        let m0 = self.pages.live_map(w.first).1;
        if m0 != NIL && self.pool.parks(m0) && self.pool.block_group_of(m0, w.off, w.len).is_none()
        {
            self.form_block_group(w, slot);
        }
    }

    /// A new group of live block `w`'s whole pages for `slot` (see
    /// [`Commit::block_group`]), named its block's.
    fn form_block_group(&mut self, w: Whole, slot: u16) -> Option<GroupId> {
        let mut members =
            core::mem::replace(&mut self.members, MetaVec::new_in(std::alloc::System));
        members.clear();
        let streams = &self.streams;
        let mut ok = true;
        for p in w.first..=w.last {
            let m = self.pages.live_map(p).1;
            ok = m != NIL && {
                let x = self.pool.map(m);
                x.pages == 1 && self.pool.unit_allows(x.unit, slot, |s| streams.done(s))
            };
            if !ok {
                break;
            }
            members.push(m);
        }
        let g = if ok {
            self.pool.form_group(&members, w.pages(), slot)
        } else {
            None
        };
        self.members = members;
        if let Some(g) = g {
            self.pool.set_block(g, w.off, w.len);
        }
        g
    }

    /// The parked group of block `w` (its first whole page backed by
    /// mapping `m`) that a block for `slot` there may take back in one
    /// step.
    #[inline]
    pub(super) fn retakable(&self, m: u32, w: Whole, slot: u16) -> Option<GroupId> {
        let g = self.pool.block_group_of(m, w.off, w.len)?;
        let streams = &self.streams;
        self.pool
            .can_retake(g, w.pages(), slot, |s| streams.done(s))
            .then_some(g)
    }

    /// Takes parked group `g` of block `w`'s whole pages back in one step
    /// (see [`Commit::retakable`]): what taking each page would do.
    pub(super) fn retake_block(&mut self, g: GroupId, w: Whole) {
        self.pages.add_block(
            w.first << self.shift,
            w.pages() << self.shift,
            self.shift,
            |first_live, _| {
                debug_assert!(first_live, "a parked page is live");
            },
        );
        self.retake_marked(g);
        self.stitch_counts.blocks_retaken += 1;
    }
}

#[cfg(test)]
mod tests {
    use crate::commit::testing::{PAGE, driver, finish, state};
    use crate::commit::{Backing, Commit};
    use crate::driver::{Checked, Driver, HostDriver, Stream};

    /// Pages of the blocks region (no stitch region).
    const PAGES: u64 = 48;

    /// What two page tables driven alike must agree on, whatever parking
    /// they do: live bytes per page, runs, live and committed bytes, the
    /// driver's calls, the idle units in order with when they went idle,
    /// and each page's blocked bit.
    fn seen(
        d: &Checked<HostDriver>,
        c: &Commit<&Checked<HostDriver>>,
    ) -> impl PartialEq + core::fmt::Debug + use<> {
        let idle: Vec<(u32, u64)> = c
            .pool
            .idle_units()
            .map(|u| (u, c.pool.idle_since(u)))
            .collect();
        let blocked: Vec<u64> = (0..PAGES).map(|p| c.pages.cost(p, p).blocked).collect();
        (state(c), c.committed(), d.counts(), idle, blocked)
    }

    /// Parking the units of the pages a freed block covers whole as a
    /// group (`CommitConfig::park`, on by default) changes nothing anyone
    /// can see: two page tables, one parking and one not, run the same
    /// pseudo-random program of blocks of up to 8 pages at 512-byte
    /// offsets (half the allocations take a recently freed block's place,
    /// length and stream again, as a repeating workload does, the others
    /// anywhere), freed on their own stream or the other, on two streams
    /// held and completed, with trims, polls and the clock moving. After
    /// every step both have the same live bytes, runs, committed bytes,
    /// driver calls and idle units in the same order with the same times;
    /// at the end, the groups flushed, every unit and mapping has the same
    /// stamps. Blocks were parked and taken back in one step.
    #[test]
    fn parking_freed_blocks_changes_nothing_seen() {
        use crate::commit::CommitConfig;
        use crate::commit::pages::NIL;
        use crate::commit::pool::Fenced;
        use crate::sync::Clock;
        let mut retaken = 0;
        for seed in [0x9e37_79b9_7f4a_7c15u64, 0x2545_f491_4f6c_dd1d, 11] {
            let ds = [driver(), driver()];
            let streams: Vec<Vec<Stream>> = ds
                .iter()
                .map(|d| {
                    (0..2)
                        .map(|_| d.create_stream().expect("a stream"))
                        .collect()
                })
                .collect();
            {
                let mut cs: Vec<_> = [false, true]
                    .into_iter()
                    .zip(&ds)
                    .map(|(park, d)| {
                        let config = CommitConfig {
                            park,
                            ..CommitConfig::default()
                        };
                        let mut c = Commit::for_tests_with(d, PAGES, (PAGES, 0), config);
                        c.set_clock(Clock::manual());
                        c
                    })
                    .collect();
                let slots: Vec<u16> = streams[0].iter().map(|&s| cs[0].streams.slot(s)).collect();
                let other: Vec<u16> = streams[1].iter().map(|&s| cs[1].streams.slot(s)).collect();
                assert_eq!(slots, other, "both page tables number the streams alike");
                let mut live: Vec<(u64, u64, usize)> = Vec::new();
                let mut freed: Vec<(u64, u64, usize)> = Vec::new();
                let mut in_flight: Vec<(u64, u64, usize)> = Vec::new();
                let mut held = [false; 2];
                let mut x = seed;
                for step in 0..4_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let stream = (x >> 60) as usize & 1;
                    let clear = |off: u64,
                                 len: u64,
                                 stream: usize,
                                 live: &[(u64, u64, usize)],
                                 fl: &[(u64, u64, usize)]| {
                        let overlaps =
                            |&(o, l, _): &(u64, u64, usize)| off < o + l && o < off + len;
                        !live.iter().any(overlaps)
                            && !fl.iter().any(|b| b.2 != stream && overlaps(b))
                    };
                    match x % 16 {
                        0..=6 => {
                            let again = x % 16 < 4 && !freed.is_empty();
                            let (off, len, stream) = if again {
                                freed[(x >> 8) as usize % freed.len()]
                            } else {
                                let len = (1 + (x >> 8) % (8 * PAGE)).next_multiple_of(512);
                                (((x >> 24) % (PAGES * PAGE - len)) & !511, len, stream)
                            };
                            // Another stream's bytes in flight may lie there
                            // (one time in two): the page table must then
                            // back the block elsewhere, parking or not.
                            let fl: &[(u64, u64, usize)] =
                                if x & 0x400 == 0 { &in_flight } else { &[] };
                            if !clear(off, len, stream, &live, fl) {
                                continue;
                            }
                            let backing = if x & 0x100 == 0 {
                                Backing::Pages
                            } else {
                                Backing::Block
                            };
                            for c in cs.iter_mut() {
                                c.add_live(off, len, slots[stream], backing)
                                    .expect("room for the block");
                            }
                            freed.retain(|&(o, l, _)| o + l <= off || off + len <= o);
                            live.push((off, len, stream));
                        }
                        7..=11 if !live.is_empty() => {
                            let b = live.swap_remove((x >> 20) as usize % live.len());
                            let on = if x & 0x300 == 0 { 1 - b.2 } else { b.2 };
                            for c in cs.iter_mut() {
                                let stamp = c.streams.stamp(slots[on]);
                                c.sub_live(b.0, b.1, stamp);
                            }
                            freed.push((b.0, b.1, b.2));
                            if freed.len() > 8 {
                                freed.remove(0);
                            }
                            if held[on] {
                                in_flight.push((b.0, b.1, on));
                            }
                        }
                        12 => {
                            for (d, s) in ds.iter().zip(&streams) {
                                d.inner().hold(s[stream]);
                            }
                            held[stream] = true;
                        }
                        13 => {
                            for (d, s) in ds.iter().zip(&streams) {
                                d.inner().complete(s[stream]);
                            }
                            held[stream] = false;
                            in_flight.retain(|b| b.2 != stream);
                        }
                        14 => {
                            for c in cs.iter_mut() {
                                c.trim();
                            }
                        }
                        _ => {
                            for c in cs.iter_mut() {
                                c.clock.advance(1 + (x >> 32) % 50);
                                c.poll();
                            }
                        }
                    }
                    for c in &cs {
                        c.check_invariants();
                    }
                    assert_eq!(
                        seen(&ds[0], &cs[0]),
                        seen(&ds[1], &cs[1]),
                        "seed {seed:#x} step {step}: parking changed what is seen"
                    );
                }
                retaken += cs[1].stitch_counts().blocks_retaken;
                assert_eq!(cs[0].stitch_counts().blocks_parked, 0);
                cs[1].pool.flush_all();
                let stamps = |c: &Commit<&Checked<HostDriver>>| {
                    let units: Vec<_> = c
                        .pool
                        .unit_ids()
                        .map(|u| c.pool.stamps(Fenced::Unit(u)).iter().collect::<Vec<_>>())
                        .collect();
                    let maps: Vec<_> = (0..PAGES)
                        .map(|p| c.pages.live_map(p).1)
                        .filter(|&m| m != NIL)
                        .map(|m| c.pool.stamps(Fenced::Mapping(m)).iter().collect::<Vec<_>>())
                        .collect();
                    (units, maps)
                };
                assert_eq!(stamps(&cs[0]), stamps(&cs[1]), "seed {seed:#x}: stamps");
                for c in cs.iter_mut() {
                    c.trim();
                }
            }
            for (d, s) in ds.iter().zip(&streams) {
                for &t in s {
                    d.inner().complete(t);
                }
                finish(d, s);
            }
        }
        println!("blocks taken back in one step: {retaken}");
        assert!(retaken > 0, "no block was taken back in one step");
    }
}
