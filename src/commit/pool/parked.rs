//! Parked groups: the units of a stitched range's block (or of the pages a
//! block of the blocks region covers whole: `commit/park.rs`), freed and
//! taken back together, kept as one record while nothing else looks at
//! them.
//!
//! A stitched range holds one block at a time, and a workload that repeats
//! frees that block and takes the range back for the next block of its size,
//! most often with no other mapping having taken any of its units in
//! between (BERT inference: 58 % of the pages of the ranges taken back,
//! `docs/pytorch.md`). Done page by page, that free stamps every mapping and
//! unit, puts every unit on the idle list, and the take claims, checks and
//! unlinks them all again: the same records touched twice for nothing.
//!
//! A *group* is the range's member mappings (those of the block's pages, in
//! page order). Freeing the block *parks* the group: each member's unit
//! goes idle as everyone reads it ([`Pool::owner`] says NIL and
//! [`Pool::live_pages`] 0 for a parked group's members; their other
//! mappings' pages are unblocked, so what everyone else reads stays exact),
//! but no member's record is written: the records keep what a retake will
//! find. Only the first unit goes on the idle list, standing for all of
//! them in order, and the free's stamp is kept once, on the group
//! (`pending`), instead of on every member and unit. Taking the range back
//! for the same stream *retakes* the group: the first unit leaves the idle
//! list and the group is live again, with no check, stamp, link or record
//! written per unit (measured: `docs/pytorch.md`, "Parked groups that touch
//! no member").
//!
//! Whatever else needs a member as the page-by-page state would have it —
//! its stamps, its place on the idle list, the time it went idle — *flushes*
//! the group first ([`Pool::flush_group`]): the members are put on the idle
//! list after the first one, in page order, the pending stamps are added to
//! every member and unit, a parked group's members' owners and live pages
//! are written, and the group goes. A flushed group leaves exactly
//! the state that freeing the block page by page would have left, so no
//! decision changes; the only cost of parking is the flush, paid only when
//! something else wants a unit of the range.
//!
//! Why a retake needs no check per unit: a group is formed as the block of
//! a range is taken, every unit just checked for the block's stream (its
//! stamps allowed that stream's work), while the records are in the caches;
//! or, where it was not or did not last, when that block is freed. A block
//! of the blocks region forms its group at its take the same way, or at
//! its free asking each unit's stamps for the free's stream. While the
//! group lives, a member's own stamps only change by a flush (a free
//! through another mapping of the unit needs that mapping to own it, and
//! taking it flushes the group, and so does the free of a block in a
//! stitched range's tail through the member itself, `commit/tails.rs`),
//! and a fence once complete stays complete.
//! So for the same stream they still allow it, and only the pending stamps
//! need asking.
#![deny(unsafe_code, clippy::unwrap_used)]

use super::{NIL, Pool};
use crate::meta::MetaVec;
use crate::sync::{Stamp, StampSet};

/// No group (a unit's `group`).
pub const NO_GROUP: u16 = u16::MAX;

/// A new mapping's [`Pool::worth_parking`] score: a block's group taken
/// back raises it (up to [`PARK_SCORE_MAX`]), one flushed first lowers
/// it; at 0 the next free forms no group.
pub const PARK_SCORE_NEW: u8 = 1;
/// The highest [`Pool::worth_parking`] score.
pub const PARK_SCORE_MAX: u8 = 3;

/// A group as a stitched range remembers it: its slot and the generation
/// of that slot (a flushed group's slot may serve another group later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupId {
    slot: u16,
    generation: u32,
}

/// One group (see the module documentation).
#[derive(Debug)]
pub(super) struct Group {
    /// The member mappings, in page order (their units are distinct).
    members: MetaVec<u32>,
    /// `(first mapping outside stitched ranges, member)` for each member
    /// whose unit has such mappings, in member order: the blocked bits a
    /// park or retake changes. Fixed while the group lives (adding or
    /// removing such a mapping of a member's unit flushes the group).
    aliased: MetaVec<(u32, u32)>,
    /// Frees through the members not yet added to their stamps and to
    /// their units' stamps.
    pending: StampSet,
    /// Pages of the block the members back.
    block_pages: u64,
    /// Pages of the members' units.
    pages: u64,
    /// The stream slot whose work the members' units' own stamps allow.
    stream: u16,
    /// The block was freed: the units are idle and only the first member's
    /// is on the idle list.
    parked: bool,
    /// When it was parked (the units' `idle_since`).
    since: u64,
    /// For a block outside stitched ranges, its offset and length (the
    /// block that may take it back); none for a stitched range's.
    block: Option<(u64, u64)>,
    generation: u32,
    used: bool,
}

/// The idle units, oldest first, with the units of parked groups in their
/// place (see [`Pool::idle_units`]).
pub struct IdleUnits<'a, H> {
    pool: &'a Pool<H>,
    /// The next unit of the idle list to visit.
    at: u32,
    /// The parked group being visited and its next member.
    group: Option<(u16, usize)>,
}

impl<H> Iterator for IdleUnits<'_, H> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if let Some((g, i)) = self.group {
            let members = &self.pool.groups[g as usize].members;
            if let Some(&m) = members.get(i) {
                self.group = Some((g, i + 1));
                return Some(self.pool.maps[m as usize].unit);
            }
            self.group = None;
        }
        if self.at == NIL {
            return None;
        }
        let u = self.at;
        let x = &self.pool.units[u as usize];
        self.at = x.next;
        if x.group != NO_GROUP {
            // A parked group's first unit: the others follow it.
            self.group = Some((x.group, 1));
        }
        Some(u)
    }
}

impl<H> Pool<H> {
    /// Forms a group of the member mappings `members` (a stitched range's
    /// block's pages' mappings, or the mappings of the pages a block of the
    /// blocks region covers whole, in page order, all wholly live and
    /// owning their units) of `block_pages` pages, whose units' stamps
    /// allow the work of stream slot `stream`. None if one of them cannot
    /// join (a shared unit, one in a group already, one partly live) or
    /// every group slot is in use.
    pub fn form_group(
        &mut self,
        members: &[u32],
        block_pages: u64,
        stream: u16,
    ) -> Option<GroupId> {
        let slot = match self.spare_groups.last() {
            Some(&g) => g,
            None if self.groups.len() < NO_GROUP as usize => self.groups.len() as u16,
            None => return None,
        };
        let mut pages = 0;
        let mut aliased = self
            .groups
            .get_mut(slot as usize)
            .map(|g| core::mem::replace(&mut g.aliased, MetaVec::new_in(std::alloc::System)))
            .unwrap_or_else(|| MetaVec::new_in(std::alloc::System));
        aliased.clear();
        for (i, &m) in members.iter().enumerate() {
            let (u, stitched, whole) = {
                let x = &self.maps[m as usize];
                (x.unit, x.stitched, x.live_pages == x.pages)
            };
            // The unit's other mappings outside stitched ranges, whose
            // pages a park or retake unblocks or blocks: a stitched member
            // is never on that list, a member outside stitched ranges is.
            let first = if stitched {
                self.units[u as usize].first_alias
            } else {
                self.other_aliases(u, m)
            };
            let y = &mut self.units[u as usize];
            if !(whole && y.owner == m && !y.shared && y.group == NO_GROUP) {
                // Undo the members marked so far.
                for &m in &members[..i] {
                    let x = &mut self.maps[m as usize];
                    x.member = false;
                    self.units[x.unit as usize].group = NO_GROUP;
                }
                self.keep_aliased(slot, aliased);
                return None;
            }
            y.group = slot;
            pages += y.pages;
            self.maps[m as usize].member = true;
            if first != NIL {
                aliased.push((first, m));
            }
        }
        if members.is_empty() {
            self.keep_aliased(slot, aliased);
            return None;
        }
        if self.spare_groups.pop().is_none() {
            self.groups.push(Group {
                members: MetaVec::new_in(std::alloc::System),
                aliased: MetaVec::new_in(std::alloc::System),
                pending: StampSet::new(),
                block_pages: 0,
                pages: 0,
                stream: 0,
                parked: false,
                since: 0,
                block: None,
                generation: 0,
                used: false,
            });
        }
        let g = &mut self.groups[slot as usize];
        g.members.clear();
        g.members.extend_from_slice(members);
        g.aliased = aliased;
        g.pending.clear();
        g.block_pages = block_pages;
        g.pages = pages;
        g.stream = stream;
        g.parked = false;
        g.block = None;
        g.used = true;
        Some(GroupId {
            slot,
            generation: g.generation,
        })
    }

    /// Gives the buffer of a group that did not form back to slot `slot`
    /// (if it exists), so that forming reuses it.
    fn keep_aliased(&mut self, slot: u16, aliased: MetaVec<(u32, u32)>) {
        if let Some(g) = self.groups.get_mut(slot as usize) {
            g.aliased = aliased;
        }
    }

    /// Names group `g` the group of the block of `len` bytes at offset
    /// `off` outside stitched ranges (see [`Pool::block_group_of`]).
    pub fn set_block(&mut self, g: GroupId, off: u64, len: u64) {
        debug_assert!(self.group_alive(g));
        self.groups[g.slot as usize].block = Some((off, len));
    }

    /// The group of the block of `len` bytes at `off` outside stitched
    /// ranges, if mapping `m` (that of the first page the block covers
    /// whole) is its first member: found through the records a walk over
    /// the block's pages reads anyway.
    #[inline]
    pub fn block_group_of(&self, m: u32, off: u64, len: u64) -> Option<GroupId> {
        let slot = self.units[self.maps[m as usize].unit as usize].group;
        if slot == NO_GROUP {
            return None;
        }
        let g = &self.groups[slot as usize];
        (g.block == Some((off, len)) && g.members.first() == Some(&m)).then_some(GroupId {
            slot,
            generation: g.generation,
        })
    }

    /// Whether a free of the block whose first whole page mapping `m`
    /// backs should park its units as a group: not if its last groups were
    /// flushed rather than taken back (a place that other blocks take pays
    /// a group's forming and flushing for nothing; parking changes no
    /// decision, only what a free and a take cost), but then again at the
    /// next free, to find out whether that changed.
    #[inline]
    pub fn worth_parking(&mut self, m: u32) -> bool {
        let x = &mut self.maps[m as usize];
        if x.park_score == 0 {
            x.park_score = 1;
            false
        } else {
            true
        }
    }

    /// Whether [`Pool::worth_parking`] would say yes, asked without
    /// changing the score (a block's take forms its group ahead only where
    /// its free would).
    #[inline]
    pub fn parks(&self, m: u32) -> bool {
        self.maps[m as usize].park_score > 0
    }

    /// Whether group `g` is parked.
    #[inline]
    pub fn group_parked(&self, g: GroupId) -> bool {
        self.live_group(g).is_some_and(|x| x.parked)
    }

    /// The slot of group `g` if it still exists (not flushed since).
    #[inline]
    fn live_group(&self, g: GroupId) -> Option<&Group> {
        self.groups
            .get(g.slot as usize)
            .filter(|x| x.used && x.generation == g.generation)
    }

    /// Whether group `g` still exists.
    #[inline]
    pub fn group_alive(&self, g: GroupId) -> bool {
        self.live_group(g).is_some()
    }

    /// Whether group `g` is parked and may be taken back at once by a block
    /// of `block_pages` pages for stream slot `stream`: same pages, same
    /// stream, and the pending stamps allow it (`done` says which stamps
    /// completed). Asks without changing anything.
    #[inline]
    pub fn can_retake(
        &self,
        g: GroupId,
        block_pages: u64,
        stream: u16,
        done: impl Fn(Stamp) -> bool,
    ) -> bool {
        self.live_group(g).is_some_and(|x| {
            x.parked
                && x.block_pages == block_pages
                && x.stream == stream
                && x.pending.allows(stream, done)
        })
    }

    /// Parks group `g` (its block was freed on the stream of `stamp`, at
    /// `now`): every member loses its live pages and every unit goes idle,
    /// the first one on the idle list. Pushes `(first other mapping,
    /// member)` to `marks` for each unit with mappings outside stitched
    /// ranges, whose pages the caller marks free.
    ///
    /// No member's record is touched: the group says they are idle
    /// ([`Pool::owner`], [`Pool::live_pages`]) until it is retaken, which
    /// leaves them as they are, or flushed, which writes it into them.
    pub fn park_group(
        &mut self,
        g: GroupId,
        stamp: Stamp,
        now: u64,
        marks: &mut MetaVec<(u32, u32)>,
    ) {
        let slot = g.slot as usize;
        debug_assert!(
            self.group_alive(g) && !self.groups[slot].parked,
            "group {slot} cannot park"
        );
        let group = &mut self.groups[slot];
        marks.extend_from_slice(&group.aliased);
        group.pending.add(stamp);
        let (first, pages) = (self.maps[group.members[0] as usize].unit, group.pages);
        self.groups[slot].parked = true;
        self.groups[slot].since = now;
        self.units[first as usize].idle_since = now;
        self.push_idle(first);
        self.idle_pages += pages - self.units[first as usize].pages;
    }

    /// Takes parked group `g` back (see [`Pool::can_retake`]):
    /// the first unit leaves the idle list and every member owns its unit
    /// again, with all its pages live. Pushes `marks` as
    /// [`Pool::park_group`] does, for the caller to mark blocked.
    pub fn retake_group(&mut self, g: GroupId, marks: &mut MetaVec<(u32, u32)>) {
        let slot = g.slot as usize;
        debug_assert!(
            self.group_alive(g) && self.groups[slot].parked,
            "group {slot} not parked"
        );
        let m0 = self.groups[slot].members[0];
        let x = &mut self.maps[m0 as usize];
        x.park_score = (x.park_score + 1).min(PARK_SCORE_MAX);
        let first = self.maps[m0 as usize].unit;
        self.unlink_idle(first);
        self.idle_pages -= self.groups[slot].pages - self.units[first as usize].pages;
        let group = &mut self.groups[slot];
        group.parked = false;
        // The members' records still say what they said when the group
        // parked: every page live, each unit owned by its member.
        marks.extend_from_slice(&group.aliased);
    }

    /// Flushes group `slot`: leaves the state that freeing and taking its
    /// block page by page would have left (see the module documentation)
    /// and forgets the group.
    #[cold]
    #[inline(never)]
    pub fn flush_group(&mut self, slot: u16) {
        let s = slot as usize;
        debug_assert!(self.groups[s].used, "group {slot} flushed twice");
        let members = core::mem::replace(
            &mut self.groups[s].members,
            MetaVec::new_in(std::alloc::System),
        );
        let pending = core::mem::take(&mut self.groups[s].pending);
        let (parked, since) = (self.groups[s].parked, self.groups[s].since);
        if parked && self.groups[s].block.is_some() {
            // A block's group flushed before a block took it back.
            if let Some(&m) = members.first() {
                let x = &mut self.maps[m as usize];
                x.park_score = x.park_score.saturating_sub(1);
            }
        }
        let mut at = NIL;
        for &m in members.iter() {
            let u = self.maps[m as usize].unit;
            let mp = &mut self.maps[m as usize];
            mp.member = false;
            mp.stamps.add_all(&pending);
            if parked {
                // What parking it page by page would have written.
                mp.live_pages = 0;
            }
            let x = &mut self.units[u as usize];
            x.stamps.add_all(&pending);
            x.group = NO_GROUP;
            if parked {
                x.owner = NIL;
                x.idle_since = since;
                // The first unit is on the list already; the others follow
                // it in page order, as page-by-page frees would have put
                // them.
                if at != NIL {
                    self.insert_idle_after(at, u);
                }
                at = u;
            }
        }
        let g = &mut self.groups[s];
        g.members = members;
        g.members.clear();
        g.aliased.clear();
        g.pending = pending;
        g.pending.clear();
        g.used = false;
        g.parked = false;
        g.generation = g.generation.wrapping_add(1);
        self.spare_groups.push(slot);
        self.groups_flushed += 1;
    }

    /// Flushes group `g`, if it still exists.
    pub fn flush(&mut self, g: GroupId) {
        if self.group_alive(g) {
            self.flush_group(g.slot);
        }
    }

    /// Groups flushed so far (see [`Pool::flush_group`]).
    pub fn groups_flushed(&self) -> u64 {
        self.groups_flushed
    }

    /// Flushes the group of unit `u`, if it is in one.
    #[inline]
    pub fn flush_unit(&mut self, u: u32) {
        let g = self.units[u as usize].group;
        if g != NO_GROUP {
            self.flush_group(g);
        }
    }

    /// Flushes every group (before sleeping, and in tests).
    pub fn flush_all(&mut self) {
        for g in 0..self.groups.len() {
            if self.groups[g].used {
                self.flush_group(g as u16);
            }
        }
    }

    /// Whether unit `u`'s stamps, its group's pending ones included, allow
    /// the work of stream slot `slot` now (see [`StampSet::allows`]).
    #[inline]
    pub fn unit_allows(&self, u: u32, slot: u16, done: impl Fn(Stamp) -> bool) -> bool {
        let x = &self.units[u as usize];
        x.stamps.allows(slot, &done)
            && (x.group == NO_GROUP || self.groups[x.group as usize].pending.allows(slot, &done))
    }

    /// Whether every stamp of unit `u`, its group's pending ones included,
    /// is done.
    pub fn unit_all_done(&self, u: u32, done: impl Fn(Stamp) -> bool) -> bool {
        let x = &self.units[u as usize];
        x.stamps.all_done(&done)
            && (x.group == NO_GROUP || self.groups[x.group as usize].pending.all_done(&done))
    }

    /// When idle unit `u` went idle (its group's parking time while parked).
    pub fn idle_since(&self, u: u32) -> u64 {
        let x = &self.units[u as usize];
        if x.group != NO_GROUP && self.groups[x.group as usize].parked {
            self.groups[x.group as usize].since
        } else {
            x.idle_since
        }
    }

    /// The mapping holding live bytes of unit `u`, or NIL (idle; a parked
    /// group's member is idle whatever its record keeps).
    #[inline]
    pub fn owner(&self, u: u32) -> u32 {
        let x = &self.units[u as usize];
        if x.group != NO_GROUP && self.groups[x.group as usize].parked {
            NIL
        } else {
            x.owner
        }
    }

    /// Pages of mapping `m` holding live bytes (none for a parked group's
    /// member, whatever its record keeps).
    #[inline]
    pub fn live_pages(&self, m: u32) -> u64 {
        let x = &self.maps[m as usize];
        if x.live_pages > 0 && x.member {
            let g = self.units[x.unit as usize].group;
            if g != NO_GROUP && self.groups[g as usize].parked {
                return 0;
            }
        }
        x.live_pages
    }

    /// The idle units, oldest first, the units of each parked group in its
    /// first unit's place: the order of the idle list had the groups been
    /// flushed.
    pub fn idle_units(&self) -> IdleUnits<'_, H> {
        IdleUnits {
            pool: self,
            at: self.idle_head,
            group: None,
        }
    }

    /// Forgets every group (everything is being forgotten: sleep, teardown).
    pub(super) fn forget_groups(&mut self) {
        self.spare_groups.clear();
        for (i, g) in self.groups.iter_mut().enumerate() {
            // (Mappings forgotten already have no flag left to clear.)
            for &m in g.members.iter() {
                if let Some(x) = self.maps.get_mut(m as usize) {
                    x.member = false;
                }
            }
            g.members.clear();
            g.aliased.clear();
            g.pending.clear();
            g.used = false;
            g.parked = false;
            g.generation = g.generation.wrapping_add(1);
            self.spare_groups.push(i as u16);
        }
        // Taken from the end first: low slots are reused first.
        self.spare_groups.reverse();
    }

    /// Checks the groups against the units and mappings (see
    /// [`Pool::check`]); returns the pages of parked units not on the idle
    /// list.
    #[cfg(any(test, feature = "invariant-checks"))]
    pub(super) fn check_groups(&self) -> u64 {
        let mut off_list = 0;
        for (i, g) in self.groups.iter().enumerate().filter(|(_, g)| g.used) {
            assert!(!g.members.is_empty(), "group {i} has no member");
            let (mut pages, mut with_aliases) = (0, 0);
            for (j, &m) in g.members.iter().enumerate() {
                let x = &self.maps[m as usize];
                assert!(x.used && x.member, "group {i}: member {m}");
                let y = &self.units[x.unit as usize];
                assert_eq!(y.group as usize, i, "group {i}: member {m}'s unit");
                pages += y.pages;
                // A parked member's record keeps what the retake finds.
                assert_eq!(
                    x.live_pages, x.pages,
                    "group {i}: member {m} not wholly live"
                );
                assert_eq!(y.owner, m, "group {i}: member {m}'s unit record");
                if g.parked {
                    assert_eq!(self.live_pages(m), 0, "group {i}: parked member {m} live");
                    assert_eq!(
                        self.owner(x.unit),
                        NIL,
                        "group {i}: parked member {m}'s unit owned"
                    );
                    if j > 0 {
                        off_list += y.pages;
                    }
                }
                let first = if x.stitched {
                    y.first_alias
                } else {
                    self.other_aliases(x.unit, m)
                };
                if first != NIL {
                    assert!(
                        g.aliased.contains(&(first, m)),
                        "group {i}: member {m}'s other mappings"
                    );
                    with_aliases += 1;
                }
            }
            assert_eq!(pages, g.pages, "group {i} pages");
            // No mark beyond those: one per member whose unit has mappings
            // outside stitched ranges (found above), no other.
            assert_eq!(
                g.aliased.len(),
                with_aliases,
                "group {i}: marks of mappings no member's unit has"
            );
        }
        for (u, y) in self.units.iter().enumerate().filter(|(_, y)| y.used) {
            if y.group != NO_GROUP {
                let g = &self.groups[y.group as usize];
                assert!(
                    g.used
                        && g.members
                            .iter()
                            .any(|&m| self.maps[m as usize].unit == u as u32),
                    "unit {u} in group {} that does not hold it",
                    y.group
                );
            }
        }
        off_list
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Fenced, Transition};
    use super::*;

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Two pools built the same way (same ids), the member mappings of each
    /// stitched range, and (unit, mapping) of each mapping in the blocks
    /// region.
    struct Setup {
        lazy: Pool<u8>,
        eager: Pool<u8>,
        ranges: Vec<Vec<u32>>,
        aliases: Vec<(u32, u32)>,
    }

    /// Units of one or two pages, each mapped once in a stitched range
    /// (four ranges of three units), some mapped in the blocks region as
    /// well, and two more ranges over units of the first four.
    fn pools() -> Setup {
        let build = || {
            let mut p: Pool<u8> = Pool::new();
            let mut ranges = vec![];
            let mut aliases = vec![];
            let mut units = vec![];
            for r in 0..4u64 {
                let mut members = vec![];
                for i in 0..3u64 {
                    let pages = 1 + (r + i) % 2;
                    let u = p.add_unit(0, pages, false, 0);
                    units.push(u);
                    members.push(p.add_map(u, 1000 + 10 * r + 3 * i, true));
                    if (r + i) % 3 == 0 {
                        aliases.push((u, p.add_map(u, 10 * r + 3 * i, false)));
                    }
                }
                ranges.push(members);
            }
            // Two more ranges over units of the first four: taking one takes
            // units that other ranges' groups may hold parked.
            for (r, picks) in [[1usize, 3, 8], [5, 6, 11]].iter().enumerate() {
                let members = picks
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| p.add_map(units[k], 2000 + 10 * r as u64 + 3 * i as u64, true))
                    .collect();
                ranges.push(members);
            }
            (p, ranges, aliases)
        };
        let (lazy, ranges, aliases) = build();
        let (eager, _, _) = build();
        Setup {
            lazy,
            eager,
            ranges,
            aliases,
        }
    }

    fn idle_order(p: &Pool<u8>) -> Vec<(u32, u64)> {
        p.idle_units().map(|u| (u, p.idle_since(u))).collect()
    }

    fn eager_idle_order(p: &Pool<u8>) -> Vec<(u32, u64)> {
        let mut v = vec![];
        let mut u = p.first_idle();
        while u != NIL {
            v.push((u, p.unit(u).idle_since));
            u = p.next_idle(u);
        }
        v
    }

    fn gain_all(p: &mut Pool<u8>, members: &[u32]) {
        for &m in members {
            for _ in 0..p.map(m).pages {
                p.gain_page(m);
            }
        }
    }

    fn free_all(p: &mut Pool<u8>, members: &[u32], stamp: Stamp, now: u64) {
        for &m in members {
            let pages = p.map(m).pages;
            for i in 0..pages {
                p.free_page(m, stamp, i == 0, true, now);
            }
        }
    }

    /// Parking, retaking and flushing leave what page-by-page frees and
    /// takes leave: the same owners, idle order, idle times and stamps,
    /// whatever else takes and frees the units in between (other ranges
    /// sharing them, mappings in the blocks region), and with blocks of
    /// fewer pages than the group's taking a range back.
    #[test]
    fn groups_leave_the_state_of_page_by_page_frees_and_takes() {
        let (mut retakes, mut reparks, mut flushes) = (0, 0, 0);
        for seed in 1..400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let Setup {
                mut lazy,
                mut eager,
                ranges,
                aliases,
            } = pools();
            let mut live: Vec<Option<usize>> = vec![None; ranges.len()];
            let mut alias_live = vec![false; aliases.len()];
            let mut groups: Vec<Option<GroupId>> = vec![None; ranges.len()];
            let mut epoch = 1;
            let mut done_upto = 0;
            for step in 0..300u64 {
                let now = step / 3;
                let stream = 1 + rng.below(2) as u16;
                match rng.below(5) {
                    0 | 1 => {
                        let r = rng.below(ranges.len() as u64) as usize;
                        if let Some(len) = live[r] {
                            let members = &ranges[r][..len];
                            epoch += 1;
                            let stamp = Stamp::new(stream, epoch);
                            free_all(&mut eager, members, stamp, now);
                            let kept = groups[r].filter(|&g| lazy.group_alive(g));
                            reparks += usize::from(kept.is_some());
                            let g = kept.or_else(|| lazy.form_group(members, len as u64, stream));
                            groups[r] = g;
                            let mut marks = MetaVec::new_in(std::alloc::System);
                            match g {
                                Some(g) => lazy.park_group(g, stamp, now, &mut marks),
                                None => free_all(&mut lazy, members, stamp, now),
                            }
                            live[r] = None;
                        } else {
                            // A block of the range's first `len` members.
                            let len = if rng.below(3) == 0 {
                                1 + rng.below(3) as usize
                            } else {
                                3
                            };
                            let members = &ranges[r][..len];
                            let idle = |p: &Pool<u8>| {
                                members.iter().all(|&m| p.owner(p.map(m).unit) == NIL)
                            };
                            if !idle(&eager) {
                                assert!(!idle(&lazy), "seed {seed} step {step}: idle differs");
                                continue;
                            }
                            assert!(idle(&lazy), "seed {seed} step {step}: idle differs");
                            gain_all(&mut eager, members);
                            let g = groups[r].filter(|&g| {
                                lazy.can_retake(g, len as u64, stream, |s| s.epoch() <= done_upto)
                            });
                            let mut marks = MetaVec::new_in(std::alloc::System);
                            match g {
                                Some(g) => {
                                    retakes += 1;
                                    lazy.retake_group(g, &mut marks);
                                }
                                None => gain_all(&mut lazy, members),
                            }
                            live[r] = Some(len);
                        }
                    }
                    2 => {
                        // Another mapping takes or frees a unit.
                        let i = rng.below(aliases.len() as u64) as usize;
                        let (u, m) = aliases[i];
                        if !alias_live[i] && eager.owner(u) == NIL {
                            for p in [&mut eager, &mut lazy] {
                                assert!(matches!(p.gain_page(m), Transition::Owned(_)));
                                for _ in 1..p.map(m).pages {
                                    p.gain_page(m);
                                }
                            }
                            alias_live[i] = true;
                        } else if alias_live[i] {
                            epoch += 1;
                            let stamp = Stamp::new(stream, epoch);
                            free_all(&mut eager, &[m], stamp, now);
                            free_all(&mut lazy, &[m], stamp, now);
                            alias_live[i] = false;
                        }
                    }
                    3 => done_upto = epoch - rng.below(3).min(epoch),
                    _ if rng.below(4) == 0
                        && groups
                            .iter()
                            .any(|g| g.is_some_and(|g| lazy.group_alive(g))) =>
                    {
                        flushes += 1;
                        lazy.flush_all();
                    }
                    _ => {}
                }
                lazy.check();
                eager.check();
                let at = format!("seed {seed} step {step}");
                assert_eq!(
                    idle_order(&lazy),
                    eager_idle_order(&eager),
                    "{at}: idle order"
                );
                assert_eq!(lazy.idle_pages(), eager.idle_pages(), "{at}: idle pages");
                for u in eager.unit_ids() {
                    assert_eq!(lazy.owner(u), eager.owner(u), "{at}: owner of {u}");
                    for slot in 1..=2 {
                        let done = |s: Stamp| s.epoch() <= done_upto;
                        assert_eq!(
                            lazy.unit_allows(u, slot, done),
                            eager.unit_allows(u, slot, done),
                            "{at}: stamps of {u}"
                        );
                    }
                }
                for m in eager.map_ids() {
                    assert_eq!(lazy.live_pages(m), eager.live_pages(m), "{at}: mapping {m}");
                }
            }
            lazy.flush_all();
            for u in eager.unit_ids() {
                let s = |p: &Pool<u8>| p.stamps(Fenced::Unit(u)).iter().collect::<Vec<_>>();
                assert_eq!(s(&lazy), s(&eager), "seed {seed}: stamps of unit {u}");
                // Flushed, the records themselves say it.
                assert_eq!(
                    lazy.unit(u).owner,
                    eager.unit(u).owner,
                    "seed {seed}: owner of {u}"
                );
                if eager.unit(u).owner == NIL {
                    // (An owned unit's idle time is never read.)
                    assert_eq!(
                        lazy.unit(u).idle_since,
                        eager.unit(u).idle_since,
                        "seed {seed}: idle since {u}"
                    );
                }
            }
            for m in eager.map_ids() {
                let s = |p: &Pool<u8>| p.stamps(Fenced::Mapping(m)).iter().collect::<Vec<_>>();
                assert_eq!(s(&lazy), s(&eager), "seed {seed}: stamps of mapping {m}");
                assert_eq!(
                    lazy.map(m).live_pages,
                    eager.map(m).live_pages,
                    "seed {seed}: live pages of {m}"
                );
            }
        }
        // The paths compared were taken, many times each.
        assert!(
            retakes > 1000 && reparks > 400 && flushes > 100,
            "{retakes} {reparks} {flushes}"
        );
    }
}
