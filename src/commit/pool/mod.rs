//! The physical pool: units (one driver handle each) and mappings (one
//! virtual range each), with the aliasing rule that lets physical memory
//! move without a copy.
//!
//! A unit may be mapped at several virtual ranges at once (the drivers
//! allow one handle mapped twice; data written through one mapping is read
//! through the other). At most one of its mappings may hold live bytes at a
//! time: that mapping *owns* the unit. A unit no mapping owns is *idle*: any
//! of its mappings may take it at once for work of a stream its stamps
//! allow (same stream: stream order covers it; another: once the fences of
//! its last frees completed), with no driver call.
//!
//! Invariants (checked by `Pool::check`, built with `invariant-checks`):
//! - `owner != NIL` iff the owner mapping has `live_pages > 0`, and no other
//!   mapping of the unit has live pages;
//! - a unit is on the idle list iff it is used, not shared, owned by no
//!   mapping, and not a parked group's unit other than its first (that one
//!   stands for the others, see [`parked`]); the list is in the order units
//!   became idle (oldest first), [`Pool::idle_units`] with the groups'
//!   units in their place;
//! - `pages` of all used units add up to [`Pool::committed_pages`], those of
//!   idle ones to [`Pool::idle_pages`].
//!
//! Pure bookkeeping: no driver call, no pointer.
#![deny(unsafe_code, clippy::unwrap_used)]

use super::pages::NIL;
use crate::meta::MetaVec;
use crate::sync::{Stamp, StampSet};

pub mod parked;
use parked::Group;
pub use parked::{GroupId, IdleUnits, NO_GROUP, PARK_SCORE_NEW};

/// What a set of free stamps belongs to: a whole unit (every mapping of
/// its handle) or one mapping (the frees through that virtual range).
#[derive(Clone, Copy, Debug)]
pub enum Fenced {
    /// Unit `u`.
    Unit(u32),
    /// Mapping `m`.
    Mapping(u32),
}
/// One physical handle (the driver's handle itself is kept apart, in
/// [`Pool::handle`]).
///
/// One cache line per record (`repr(C)`, aligned to 64 bytes): large blocks
/// take and free one unit per page, with the CPU's caches cold between
/// PyTorch's calls, and a record straddling two lines cost a second miss
/// per page. What only creating, mapping and releasing need (the handle)
/// stays out of the line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Unit {
    /// The mapping that holds live bytes of it, or NIL (idle); read it
    /// with [`Pool::owner`] (a parked group's member keeps its mapping
    /// here while its group says it is idle: see [`parked`]).
    owner: u32,
    /// Head of the list of its mappings outside stitched ranges (linked by
    /// `Mapping::next_alias`).
    pub first_alias: u32,
    /// Head of the list of its mappings in stitched ranges.
    pub first_stitched: u32,
    /// Number of its mappings.
    pub aliases: u32,
    /// Frees through any of its mappings not yet known complete: taking
    /// it for another stream waits for them, and so does unmapping any of
    /// its mappings (queued work may still address the range).
    pub stamps: StampSet,
    /// Size in pages.
    pub pages: u64,
    /// Clock (ms) when it became idle.
    pub idle_since: u64,
    prev: u32,
    next: u32,
    /// The last [`Pool::new_mark`] token this unit was marked with.
    mark: u32,
    /// Created shareable or imported: never reused once empty.
    pub shared: bool,
    used: bool,
    /// The parked group it belongs to, or [`NO_GROUP`] (see [`parked`]).
    group: u16,
}

/// One virtual range backed by a whole unit (one cache line per record,
/// as [`Unit`]).
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Mapping {
    /// The unit mapped here.
    pub unit: u32,
    /// Next mapping of the same unit, or NIL.
    pub next_alias: u32,
    /// First page (index in the reservation).
    pub first: u64,
    /// Pages (the unit's size).
    pub pages: u64,
    /// Pages of this range holding live bytes; read it with
    /// [`Pool::live_pages`] (a parked group's member keeps its pages here
    /// while its group says they are empty: see [`parked`]).
    live_pages: u64,
    /// Frees through this mapping not yet known complete: unmapping it
    /// waits for them (and only for them: frees through the unit's other
    /// mappings do not address this range).
    pub stamps: StampSet,
    /// Lies in a stitched range.
    pub stitched: bool,
    /// A member of a group (see [`parked`]): [`Pool::live_pages`] asks the
    /// group only for these.
    member: bool,
    /// How often, lately, the group of the block whose first whole page
    /// this maps was taken back rather than flushed (see
    /// [`Pool::worth_parking`]).
    park_score: u8,
    used: bool,
}

// A unit and a mapping are one cache line each.
const _: () = assert!(core::mem::size_of::<Unit>() == 64);
const _: () = assert!(core::mem::size_of::<Mapping>() == 64);

/// Units and mappings of one reservation.
#[derive(Debug)]
pub struct Pool<H> {
    units: MetaVec<Unit>,
    /// The driver's handle of each unit slot (`None` while recycled).
    handles: MetaVec<Option<H>>,
    maps: MetaVec<Mapping>,
    spare_units: MetaVec<u32>,
    spare_maps: MetaVec<u32>,
    /// Parked groups (see [`parked`]), by slot.
    groups: MetaVec<Group>,
    spare_groups: MetaVec<u16>,
    /// Groups flushed so far.
    groups_flushed: u64,
    idle_head: u32,
    idle_tail: u32,
    mark: u32,
    committed_pages: u64,
    idle_pages: u64,
    unit_count: u64,
    map_count: u64,
}

impl<H> Default for Pool<H> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a mapping's change of live pages did to its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed for the unit.
    None,
    /// The unit went from idle to owned by this mapping: its other mappings
    /// must be marked blocked.
    Owned(u32),
    /// The unit went idle: its other mappings are free to take it.
    Idle(u32),
}

impl<H> Pool<H> {
    /// An empty pool.
    pub fn new() -> Self {
        Pool {
            units: MetaVec::new_in(std::alloc::System),
            handles: MetaVec::new_in(std::alloc::System),
            maps: MetaVec::new_in(std::alloc::System),
            spare_units: MetaVec::new_in(std::alloc::System),
            spare_maps: MetaVec::new_in(std::alloc::System),
            groups: MetaVec::new_in(std::alloc::System),
            spare_groups: MetaVec::new_in(std::alloc::System),
            groups_flushed: 0,
            idle_head: NIL,
            idle_tail: NIL,
            mark: 0,
            committed_pages: 0,
            idle_pages: 0,
            unit_count: 0,
            map_count: 0,
        }
    }

    /// A fresh token for [`Pool::mark`]: marks made with older tokens no
    /// longer count.
    pub fn new_mark(&mut self) -> u32 {
        self.mark = self.mark.wrapping_add(1);
        if self.mark == 0 {
            for x in self.units.iter_mut() {
                x.mark = 0;
            }
            self.mark = 1;
        }
        self.mark
    }

    /// Marks unit `u` with `token`; returns whether it was marked with it
    /// already (a set of units without allocating).
    #[inline]
    pub fn mark(&mut self, u: u32, token: u32) -> bool {
        let x = &mut self.units[u as usize];
        let seen = x.mark == token;
        x.mark = token;
        seen
    }

    /// Pages in all units.
    pub fn committed_pages(&self) -> u64 {
        self.committed_pages
    }
    /// Pages in idle units.
    pub fn idle_pages(&self) -> u64 {
        self.idle_pages
    }
    /// Number of units (driver handles).
    pub fn unit_count(&self) -> u64 {
        self.unit_count
    }
    /// Number of mappings.
    pub fn map_count(&self) -> u64 {
        self.map_count
    }

    /// Unit `u`.
    #[inline]
    pub fn unit(&self, u: u32) -> &Unit {
        &self.units[u as usize]
    }
    /// Unit `u`, mutably.
    #[inline]
    pub fn unit_mut(&mut self, u: u32) -> &mut Unit {
        &mut self.units[u as usize]
    }
    /// Mapping `m`.
    #[inline]
    pub fn map(&self, m: u32) -> &Mapping {
        &self.maps[m as usize]
    }
    /// Mapping `m`, mutably.
    #[inline]
    pub fn map_mut(&mut self, m: u32) -> &mut Mapping {
        &mut self.maps[m as usize]
    }

    /// The stamps of the frees through `h` (a unit, or one mapping).
    #[inline]
    pub fn stamps(&self, h: Fenced) -> &StampSet {
        debug_assert!(
            !self.grouped(h),
            "stamps of {h:?} asked before its group was flushed"
        );
        match h {
            Fenced::Unit(u) => &self.unit(u).stamps,
            Fenced::Mapping(m) => &self.map(m).stamps,
        }
    }
    /// The stamps of the frees through `h`, mutably.
    #[inline]
    pub fn stamps_mut(&mut self, h: Fenced) -> &mut StampSet {
        debug_assert!(
            !self.grouped(h),
            "stamps of {h:?} changed before its group was flushed"
        );
        match h {
            Fenced::Unit(u) => &mut self.unit_mut(u).stamps,
            Fenced::Mapping(m) => &mut self.map_mut(m).stamps,
        }
    }

    /// The unit of `h` (itself, or the unit a mapping maps).
    fn unit_of(&self, h: Fenced) -> u32 {
        match h {
            Fenced::Unit(u) => u,
            Fenced::Mapping(m) => self.maps[m as usize].unit,
        }
    }

    /// Whether the unit of `h` is in a group (its stamps and those of its
    /// mappings lack the group's pending ones).
    fn grouped(&self, h: Fenced) -> bool {
        self.units[self.unit_of(h) as usize].group != NO_GROUP
    }

    /// Flushes the group of the unit of `h`, if any: its stamps and those
    /// of its mappings are then whole.
    pub fn flush_fenced(&mut self, h: Fenced) {
        self.flush_unit(self.unit_of(h));
    }

    /// Takes in a new unit of `pages` pages (idle, no mapping yet).
    pub fn add_unit(&mut self, handle: H, pages: u64, shared: bool, now: u64) -> u32 {
        let unit = Unit {
            pages,
            owner: NIL,
            first_alias: NIL,
            first_stitched: NIL,
            aliases: 0,
            stamps: StampSet::new(),
            idle_since: now,
            shared,
            mark: 0,
            prev: NIL,
            next: NIL,
            used: true,
            group: NO_GROUP,
        };
        let u = match self.spare_units.pop() {
            Some(u) => {
                let mut stamps = core::mem::take(&mut self.units[u as usize].stamps);
                stamps.clear();
                self.units[u as usize] = Unit { stamps, ..unit };
                self.handles[u as usize] = Some(handle);
                u
            }
            None => {
                self.units.push(unit);
                self.handles.push(Some(handle));
                (self.units.len() - 1) as u32
            }
        };
        self.committed_pages += pages;
        self.unit_count += 1;
        if !shared {
            self.push_idle(u);
        }
        u
    }

    /// Forgets unit `u` (no mapping left, not owned); returns its handle.
    pub fn remove_unit(&mut self, u: u32) -> Option<H> {
        let x = &self.units[u as usize];
        debug_assert!(
            x.used && x.aliases == 0 && self.owner(u) == NIL && x.group == NO_GROUP,
            "unit {u} in use"
        );
        if !x.shared {
            self.unlink_idle(u);
        }
        let x = &mut self.units[u as usize];
        x.used = false;
        self.committed_pages -= x.pages;
        self.unit_count -= 1;
        self.spare_units.push(u);
        self.handles[u as usize].take()
    }

    /// The driver's handle of unit `u` (`None` once released).
    #[inline]
    pub fn handle(&self, u: u32) -> Option<H>
    where
        H: Copy,
    {
        self.handles[u as usize]
    }

    /// Records a mapping of unit `u` at pages `first..first+pages` (not
    /// owning it yet), in a stitched range or not.
    pub fn add_map(&mut self, u: u32, first: u64, stitched: bool) -> u32 {
        if !stitched {
            // A parked group keeps the mappings outside stitched ranges of
            // its units as they were when it formed (see [`parked`]).
            self.flush_unit(u);
        }
        let pages = self.units[u as usize].pages;
        let next_alias = if stitched {
            self.units[u as usize].first_stitched
        } else {
            self.units[u as usize].first_alias
        };
        let map = Mapping {
            unit: u,
            first,
            pages,
            live_pages: 0,
            next_alias,
            stitched,
            member: false,
            park_score: PARK_SCORE_NEW,
            stamps: StampSet::new(),
            used: true,
        };
        let m = match self.spare_maps.pop() {
            Some(m) => {
                self.maps[m as usize] = map;
                m
            }
            None => {
                self.maps.push(map);
                (self.maps.len() - 1) as u32
            }
        };
        let x = &mut self.units[u as usize];
        if stitched {
            x.first_stitched = m;
        } else {
            x.first_alias = m;
        }
        x.aliases += 1;
        self.map_count += 1;
        m
    }

    /// Forgets mapping `m` (no live pages); returns its unit.
    pub fn remove_map(&mut self, m: u32) -> u32 {
        debug_assert!(self.live_pages(m) == 0, "mapping {m} is live");
        let u = self.maps[m as usize].unit;
        // A member's group cannot outlive it (the caller settled its stamps,
        // which flushed the group; this keeps it so whatever the caller).
        self.flush_unit(u);
        let next = self.maps[m as usize].next_alias;
        let stitched = self.maps[m as usize].stitched;
        let head = if stitched {
            &mut self.units[u as usize].first_stitched
        } else {
            &mut self.units[u as usize].first_alias
        };
        if *head == m {
            *head = next;
        } else {
            let mut i = *head;
            while i != NIL {
                if self.maps[i as usize].next_alias == m {
                    self.maps[i as usize].next_alias = next;
                    break;
                }
                i = self.maps[i as usize].next_alias;
            }
        }
        self.units[u as usize].aliases -= 1;
        self.maps[m as usize].used = false;
        self.map_count -= 1;
        self.spare_maps.push(m);
        u
    }

    /// The mappings of unit `u`.
    pub fn aliases(&self, u: u32) -> Aliases<'_, H> {
        let x = &self.units[u as usize];
        Aliases {
            pool: self,
            next: x.first_alias,
            then: x.first_stitched,
        }
    }

    /// Whether mapping `m` may take its unit now (idle or already its own;
    /// an empty shared unit is never taken again).
    #[inline]
    pub fn can_take(&self, m: u32) -> bool {
        self.may_go_to(self.maps[m as usize].unit, m)
    }

    /// Whether mapping `m` may take unit `u`: it owns it already, or the
    /// unit is idle and not shared (an empty shared unit is never taken
    /// again).
    #[inline]
    fn may_go_to(&self, u: u32, m: u32) -> bool {
        let owner = self.owner(u);
        owner == m || (owner == NIL && !self.units[u as usize].shared)
    }

    /// Claims the unit of mapping `m` for a block over pages `a..=b` being
    /// checked: the unit, if `m` may take it ([`Pool::can_take`]), it was
    /// not claimed with `token` already (no unit twice in one block), and
    /// `m` is not an idle multi-page mapping reaching past `a..=b` (taking it
    /// would strand its other pages). Marks the unit with `token`. One look
    /// at each record.
    #[inline]
    pub fn claim(&mut self, m: u32, a: u64, b: u64, token: u32) -> Option<u32> {
        let x = &self.maps[m as usize];
        let u = x.unit;
        if x.pages > 1 && (x.first < a || x.first + x.pages > b + 1) && self.live_pages(m) == 0 {
            return None;
        }
        if !self.may_go_to(u, m) || self.units[u as usize].mark == token {
            return None;
        }
        self.units[u as usize].mark = token;
        Some(u)
    }

    /// The first of unit `u`'s mappings outside stitched ranges (linked by
    /// `Mapping::next_alias`) when one of them is not `m`, else NIL: whether
    /// `u`'s change of owner to or from `m` has blocked bits to change.
    /// Most units have one mapping there, `m` itself.
    #[inline]
    pub fn other_aliases(&self, u: u32, m: u32) -> u32 {
        let first = self.units[u as usize].first_alias;
        if first == NIL || (first == m && self.maps[m as usize].next_alias == NIL) {
            NIL
        } else {
            first
        }
    }

    /// Mapping `m` gains a page with live bytes.
    ///
    /// The unit must be idle or owned by `m` ([`Pool::can_take`]).
    #[inline]
    pub fn gain_page(&mut self, m: u32) -> Transition {
        let u = self.maps[m as usize].unit;
        // A unit of a parked group taken page by page: the group's state
        // goes back to the page-by-page one first (its members' live pages
        // among it).
        self.flush_unit(u);
        let mp = &mut self.maps[m as usize];
        mp.live_pages += 1;
        if mp.live_pages > 1 {
            return Transition::None;
        }
        debug_assert!(
            self.units[u as usize].owner == NIL,
            "mapping {m} takes unit {u} owned by mapping {}",
            self.units[u as usize].owner
        );
        self.units[u as usize].owner = m;
        if !self.units[u as usize].shared {
            self.unlink_idle(u);
        }
        Transition::Owned(u)
    }

    /// A free through mapping `m` that took live bytes off one of its
    /// pages: stamps the mapping and its unit with `stamp` when `stamp_it`
    /// (the first page of the mapping in this free), and when the page
    /// `emptied`, the mapping loses it, and with its last page its unit goes
    /// idle (at `now`). One look at each record, where a stamp and a lost
    /// page each looked them up again.
    #[inline]
    pub fn free_page(
        &mut self,
        m: u32,
        stamp: Stamp,
        stamp_it: bool,
        emptied: bool,
        now: u64,
    ) -> Transition {
        // A member freed page by page (a group is parked whole, by its
        // range): its group goes first.
        self.flush_unit(self.maps[m as usize].unit);
        let mp = &mut self.maps[m as usize];
        let u = mp.unit;
        if stamp_it {
            mp.stamps.add(stamp);
        }
        let idle = emptied && {
            debug_assert!(mp.live_pages > 0, "mapping {m} has no live page");
            mp.live_pages -= 1;
            mp.live_pages == 0
        };
        let x = &mut self.units[u as usize];
        if stamp_it {
            x.stamps.add(stamp);
        }
        if !idle {
            return Transition::None;
        }
        x.owner = NIL;
        x.idle_since = now;
        if !x.shared {
            self.push_idle(u);
        }
        Transition::Idle(u)
    }

    fn push_idle(&mut self, u: u32) {
        let x = &mut self.units[u as usize];
        x.prev = self.idle_tail;
        x.next = NIL;
        let pages = x.pages;
        if self.idle_tail == NIL {
            self.idle_head = u;
        } else {
            self.units[self.idle_tail as usize].next = u;
        }
        self.idle_tail = u;
        self.idle_pages += pages;
    }

    /// Puts idle unit `u` on the idle list right after unit `at`.
    fn insert_idle_after(&mut self, at: u32, u: u32) {
        let next = self.units[at as usize].next;
        let x = &mut self.units[u as usize];
        x.prev = at;
        x.next = next;
        self.units[at as usize].next = u;
        if next == NIL {
            self.idle_tail = u;
        } else {
            self.units[next as usize].prev = u;
        }
    }

    fn unlink_idle(&mut self, u: u32) {
        let (prev, next, pages) = {
            let x = &self.units[u as usize];
            (x.prev, x.next, x.pages)
        };
        if prev == NIL {
            self.idle_head = next;
        } else {
            self.units[prev as usize].next = next;
        }
        if next == NIL {
            self.idle_tail = prev;
        } else {
            self.units[next as usize].prev = prev;
        }
        let x = &mut self.units[u as usize];
        x.prev = NIL;
        x.next = NIL;
        self.idle_pages -= pages;
    }

    /// The oldest unit on the idle list, then the next ones with
    /// [`Pool::next_idle`]: a parked group's first unit stands there for
    /// all of them ([`Pool::idle_units`] lists every idle unit).
    pub fn first_idle(&self) -> u32 {
        self.idle_head
    }

    /// The idle unit after `u` on the idle list, or NIL.
    pub fn next_idle(&self, u: u32) -> u32 {
        self.units[u as usize].next
    }

    /// Forgets every unit and mapping whatever their state (sleep,
    /// teardown) and returns the handles with their pages, which the
    /// caller releases.
    pub fn take_all(&mut self) -> MetaVec<(H, u64)> {
        let mut handles = MetaVec::new_in(std::alloc::System);
        for (x, h) in self.units.iter().zip(self.handles.iter_mut()) {
            if x.used {
                if let Some(h) = h.take() {
                    handles.push((h, x.pages));
                }
            }
        }
        self.units.clear();
        self.handles.clear();
        self.maps.clear();
        self.spare_units.clear();
        self.spare_maps.clear();
        self.forget_groups();
        self.idle_head = NIL;
        self.idle_tail = NIL;
        self.committed_pages = 0;
        self.idle_pages = 0;
        self.unit_count = 0;
        self.map_count = 0;
        handles
    }

    /// Every used unit id.
    pub fn unit_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.units
            .iter()
            .enumerate()
            .filter(|(_, x)| x.used)
            .map(|(i, _)| i as u32)
    }

    /// Every used mapping id.
    pub fn map_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.maps
            .iter()
            .enumerate()
            .filter(|(_, x)| x.used)
            .map(|(i, _)| i as u32)
    }

    /// Full structural check (tests, proptest, fuzzing).
    #[cfg(any(test, feature = "invariant-checks"))]
    pub fn check(&self) {
        let (mut committed, mut idle, mut units, mut maps) = (0, 0, 0, 0);
        assert_eq!(
            self.handles.len(),
            self.units.len(),
            "a handle slot per unit"
        );
        for (u, x) in self.units.iter().enumerate().filter(|(_, x)| x.used) {
            assert!(self.handles[u].is_some(), "unit {u} has no handle");
            units += 1;
            committed += x.pages;
            let mut n = 0;
            let mut owners = 0;
            for m in self.aliases(u as u32) {
                let mp = &self.maps[m as usize];
                assert!(mp.used, "unit {u} lists a dead mapping {m}");
                assert_eq!(mp.unit, u as u32, "mapping {m} of unit {u}");
                assert_eq!(mp.pages, x.pages, "mapping {m} size");
                if self.live_pages(m) > 0 {
                    owners += 1;
                    assert_eq!(
                        self.owner(u as u32),
                        m,
                        "unit {u}: its live mapping {m} owns it"
                    );
                }
                n += 1;
            }
            assert_eq!(n, x.aliases, "unit {u} alias count");
            assert!(owners <= 1, "unit {u} has {owners} live mappings");
            if owners == 0 {
                assert_eq!(
                    self.owner(u as u32),
                    NIL,
                    "unit {u} owned by an empty mapping"
                );
                if !x.shared {
                    idle += x.pages;
                }
            }
        }
        for x in self.maps.iter().filter(|x| x.used) {
            maps += 1;
            assert!(self.units[x.unit as usize].used, "mapping of a dead unit");
        }
        let off_list = self.check_groups();
        let (mut u, mut prev) = (self.idle_head, NIL);
        while u != NIL {
            let x = &self.units[u as usize];
            assert!(
                x.used && self.owner(u) == NIL && !x.shared,
                "idle list holds unit {u}"
            );
            assert_eq!(x.prev, prev, "idle list links");
            prev = u;
            u = x.next;
        }
        assert_eq!(self.idle_tail, prev, "idle list tail");
        // Parked groups' units in their first unit's place.
        let (mut listed, mut last) = (0, 0);
        for u in self.idle_units() {
            let x = &self.units[u as usize];
            assert!(x.used && self.owner(u) == NIL && !x.shared, "idle unit {u}");
            assert!(last <= self.idle_since(u), "idle list order");
            last = self.idle_since(u);
            listed += x.pages;
        }
        assert!(off_list <= listed, "parked units off the list");
        assert_eq!(listed, idle, "idle list = idle units");
        assert_eq!(idle, self.idle_pages, "idle pages");
        assert_eq!(committed, self.committed_pages, "committed pages");
        assert_eq!(units, self.unit_count, "unit count");
        assert_eq!(maps, self.map_count, "mapping count");
    }
}

/// Iterator over a unit's mappings (outside stitched ranges first).
pub struct Aliases<'a, H> {
    pool: &'a Pool<H>,
    next: u32,
    then: u32,
}

impl<H> Iterator for Aliases<'_, H> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.next == NIL {
            self.next = core::mem::replace(&mut self.then, NIL);
        }
        if self.next == NIL {
            return None;
        }
        let m = self.next;
        self.next = self.pool.maps[m as usize].next_alias;
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_is_owned_by_one_mapping_at_a_time_and_idles_in_order() {
        let mut p: Pool<u8> = Pool::new();
        let a = p.add_unit(1, 1, false, 0);
        let b = p.add_unit(2, 2, false, 0);
        assert_eq!(p.idle_pages(), 3);
        let ma = p.add_map(a, 10, false);
        let ma2 = p.add_map(a, 20, true);
        let mb = p.add_map(b, 30, false);
        assert_eq!(p.aliases(a).count(), 2);
        assert!(p.can_take(ma) && p.can_take(ma2));
        assert_eq!(p.gain_page(ma), Transition::Owned(a));
        assert!(
            !p.can_take(ma2),
            "the alias is blocked while ma owns the unit"
        );
        assert_eq!(p.gain_page(mb), Transition::Owned(b));
        assert_eq!(p.gain_page(mb), Transition::None);
        assert_eq!(p.idle_pages(), 0);
        assert_eq!(
            p.free_page(mb, Stamp::SAFE, false, true, 5),
            Transition::None
        );
        assert_eq!(
            p.free_page(mb, Stamp::SAFE, false, true, 6),
            Transition::Idle(b)
        );
        assert_eq!(
            p.free_page(ma, Stamp::SAFE, false, true, 7),
            Transition::Idle(a)
        );
        assert_eq!(p.first_idle(), b, "oldest idle first");
        assert_eq!(p.next_idle(b), a);
        p.check();
        assert_eq!(p.remove_map(ma2), a);
        assert_eq!(p.remove_map(ma), a);
        assert_eq!(p.remove_unit(a), Some(1));
        assert_eq!(p.committed_pages(), 2);
        p.check();
        // Slots are recycled.
        let c = p.add_unit(3, 4, true, 9);
        assert_eq!(c, a);
        assert_eq!(p.idle_pages(), 2, "shared units are never idle-listed");
        p.check();
    }

    #[test]
    fn a_free_stamps_the_mapping_and_its_unit_once_and_a_claim_takes_each_unit_once() {
        let mut p: Pool<u8> = Pool::new();
        let a = p.add_unit(1, 2, false, 0);
        let ma = p.add_map(a, 10, false);
        assert_eq!(p.gain_page(ma), Transition::Owned(a));
        assert_eq!(p.gain_page(ma), Transition::None);
        let s = Stamp::new(1, 4);
        // The first page of the free stamps; the second empties the mapping.
        assert_eq!(p.free_page(ma, s, true, true, 3), Transition::None);
        assert_eq!(p.free_page(ma, s, false, true, 3), Transition::Idle(a));
        assert_eq!(p.stamps(Fenced::Unit(a)).iter().collect::<Vec<_>>(), [s]);
        assert_eq!(
            p.stamps(Fenced::Mapping(ma)).iter().collect::<Vec<_>>(),
            [s]
        );
        assert_eq!(p.unit(a).idle_since, 3);
        assert_eq!(p.first_idle(), a);
        p.check();
        // A block over pages 10..=11 may take the whole idle mapping, once.
        let t = p.new_mark();
        assert_eq!(p.claim(ma, 10, 11, t), Some(a));
        assert_eq!(p.claim(ma, 10, 11, t), None, "a unit twice in one block");
        // A block over page 11 alone would strand page 10 of the idle mapping.
        let t = p.new_mark();
        assert_eq!(p.claim(ma, 11, 11, t), None);
        // Owned by another mapping: not claimable.
        let ma2 = p.add_map(a, 20, true);
        assert_eq!(p.gain_page(ma2), Transition::Owned(a));
        let t = p.new_mark();
        assert_eq!(p.claim(ma, 10, 11, t), None);
        assert_eq!(p.claim(ma2, 20, 21, t), Some(a));
    }
}
