//! Fuzz the map/unmap life cycle on the checked host driver.
//!
//! The driver is `Checked<Checked<HostDriver>>`: the outer checked layer is
//! under test; faults are injected into either layer (the inner one plays a
//! real driver failing after the rules passed).
//!
//! The input is a list of [`Action`]s; indices are taken modulo what is live,
//! so every input runs. A small shadow of what the program holds (written
//! here) is updated from the driver's answers, and:
//!
//! - a call the shadow knows to be valid must succeed (unless a fault was
//!   injected), and a call the driver accepts must not break a rule (no map
//!   over a mapping or outside a reservation, no partial unmap, no free with
//!   mappings, no double release);
//! - both checked layers' views (`leaks()`) always equal the shadow's counts
//!   (a failed call changes nothing);
//! - a handle first given read-write access is filled with its own pattern,
//!   and every readable mapping of every handle must show its handle's
//!   pattern: aliases agree, and no two handles overlap;
//! - at the end everything is given back and nothing leaks.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use gpu_arena::driver::{
    Access, AccessMode, Checked, Driver, Fault, FaultKind, HostConfig, HostDriver, HostHandle,
    Location, Op, Stream,
};
use libfuzzer_sys::fuzz_target;

/// Small granules and a small device, for speed.
const GRANULE: u64 = 64 << 10;
const CAPACITY: u64 = 64 << 20;

#[derive(Arbitrary, Debug)]
enum Action {
    /// Reserve `granules % 33` granules (0: refused).
    Reserve { granules: u8 },
    /// Free a reservation; `wrong`: with one granule too many.
    Free { index: u8, wrong: bool },
    /// Create `granules % 5` granules (0: refused).
    Create { granules: u8, host: bool },
    /// Release a handle, live or already released.
    Release { index: u8 },
    /// Map a handle at a granule of a reservation; `flaw % 8`: 1 nonzero
    /// offset, 2 size too large, 3 misaligned address, else none.
    Map {
        handle: u8,
        reservation: u8,
        granule: u8,
        flaw: u8,
    },
    /// Unmap exactly one mapping.
    UnmapMapping { index: u8 },
    /// Unmap `granules % 5` granules from a granule of a reservation (may
    /// cut mappings, cover holes or run past the end).
    UnmapRange {
        reservation: u8,
        granule: u8,
        granules: u8,
    },
    /// Set access on a mapping (`with_next`: and the one after it, when
    /// adjacent); `mode % 3`: read-write, read, none.
    SetAccess {
        index: u8,
        with_next: bool,
        mode: u8,
    },
    /// Write `byte` over a writable mapping's whole handle.
    Write { index: u8, byte: u8 },
    /// Read every readable mapping back.
    Check,
    /// Fail the `nth % 4 + 1`-th next call of an op, in the checked layer
    /// under test or (`inner`) in the driver under it.
    Inject {
        op: u8,
        nth: u8,
        oom: bool,
        inner: bool,
    },
}

struct Handle {
    handle: HostHandle,
    size: u64,
    released: bool,
    mappings: u32,
    /// The byte every byte of the handle holds, once written.
    pattern: Option<u8>,
    /// Host-located: the CPU may not read it (only devices are granted
    /// access here, and host memory is the CPU's only with a host
    /// descriptor, as on the H100), so it is read through a driver copy.
    host: bool,
}

struct Mapping {
    size: u64,
    handle: u32,
    mode: AccessMode,
}

#[derive(Default)]
struct Shadow {
    reservations: Vec<(u64, u64)>,
    handles: BTreeMap<u32, Handle>,
    mappings: BTreeMap<u64, Mapping>,
    next_id: u32,
    /// Faults scheduled so far (compared with the checked layer's count of
    /// those that fired: while one is pending, valid calls may fail).
    scheduled: u64,
}

impl Shadow {
    fn reservation_holding(&self, va: u64, size: u64) -> bool {
        self.reservations
            .iter()
            .any(|&(base, len)| base <= va && va + size <= base + len)
    }
    fn overlapping(&self, va: u64, size: u64) -> Vec<u64> {
        self.mappings
            .iter()
            .filter(|(start, m)| **start < va + size && va < **start + m.size)
            .map(|(start, _)| *start)
            .collect()
    }
    fn cuts(&self, va: u64, size: u64) -> bool {
        self.overlapping(va, size)
            .iter()
            .any(|s| *s < va || s + self.mappings[s].size > va + size)
    }
    fn remove_mapping(&mut self, va: u64) {
        let m = self.mappings.remove(&va).expect("mapping");
        let h = self.handles.get_mut(&m.handle).expect("handle");
        h.mappings -= 1;
        if h.released && h.mappings == 0 {
            self.handles.remove(&m.handle);
        }
    }
}

fn pick<T: Copy>(items: &[T], index: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[index as usize % items.len()])
}

fn dev(mode: AccessMode) -> [Access; 1] {
    [Access {
        location: Location::Device(0),
        mode,
    }]
}

/// Every readable mapping shows its handle's pattern (sampled every 4 KiB,
/// and at both ends): read by the CPU, or through a driver copy where the
/// CPU may not read it (host-located handles).
fn check_all(d: &Under, s: &Shadow) {
    for (&va, m) in &s.mappings {
        let h = &s.handles[&m.handle];
        let Some(want) = h.pattern else {
            continue;
        };
        if m.mode == AccessMode::None {
            continue;
        }
        let mut at = 0;
        while at < m.size {
            for off in [at, at + 4095] {
                let got = if h.host {
                    let mut b = 0u8;
                    // SAFETY: va+off is mapped and readable by device 0 (the
                    // shadow and the checked driver agree on it at every
                    // step); `b` is one writable byte outside every
                    // reservation.
                    unsafe { d.copy(&raw mut b as u64, va + off, 1, Stream::DEFAULT) }
                        .expect("copy");
                    b
                } else {
                    // SAFETY: va..va+size is mapped and readable (the shadow
                    // and the checked driver agree on it at every step), and
                    // device-located memory is the CPU's on the host backend.
                    unsafe { ((va + off) as *const u8).read_volatile() }
                };
                assert_eq!(
                    got, want,
                    "mapping {va:#x} of handle {} at +{off:#x}: {got:#x}, want {want:#x}",
                    m.handle
                );
            }
            at += 4096;
        }
    }
}

/// The checked layer under test, over a checked host backend that fails
/// when faults are injected into it.
type Under = Checked<Checked<HostDriver>>;

fn fill(d: &Under, va: u64, size: u64, byte: u8) {
    // SAFETY: va..va+size is a whole mapping with read-write access.
    unsafe { d.fill(va, byte, size as usize, Stream::DEFAULT) }.expect("fill");
}

fn run(actions: &[Action]) {
    let d: Under = Checked::new(Checked::new(
        HostDriver::with_config(HostConfig {
            granularity: GRANULE as usize,
            capacity: CAPACITY,
            ..Default::default()
        })
        .expect("host driver"),
    ));
    let g = GRANULE;
    let mut s = Shadow::default();

    for action in actions {
        let calm = d.counts().injected + d.inner().counts().injected == s.scheduled;
        match *action {
            Action::Reserve { granules } => {
                let size = u64::from(granules % 33) * g;
                let r = d.reserve(size as usize, 0);
                if let Ok(va) = r {
                    assert!(size > 0 && va % g == 0);
                    assert!(
                        s.reservations
                            .iter()
                            .all(|&(b, l)| va + size <= b || b + l <= va)
                    );
                    s.reservations.push((va, size));
                } else if calm {
                    assert_eq!(size, 0, "reserve of {size} failed: {r:?}");
                }
            }
            Action::Free { index, wrong } => {
                let Some((va, size)) = pick(&s.reservations, index) else {
                    continue;
                };
                let len = if wrong { size + g } else { size };
                let has_mappings = !s.overlapping(va, size).is_empty();
                // SAFETY: exactly one of our reservations, or refused.
                let r = unsafe { d.free_reservation(va, len as usize) };
                if r.is_ok() {
                    assert!(!wrong && !has_mappings, "free accepted: {action:?}");
                    s.reservations.retain(|&(b, _)| b != va);
                } else if calm {
                    assert!(wrong || has_mappings, "free failed: {r:?}");
                }
            }
            Action::Create { granules, host } => {
                let size = u64::from(granules % 5) * g;
                let location = if host {
                    Location::Host
                } else {
                    Location::Device(0)
                };
                let physical: u64 = s.handles.values().map(|h| h.size).sum();
                match d.create(size as usize, location) {
                    Ok(handle) => {
                        assert!(size > 0 && physical + size <= CAPACITY);
                        s.next_id += 1;
                        s.handles.insert(
                            s.next_id,
                            Handle {
                                handle,
                                size,
                                released: false,
                                mappings: 0,
                                pattern: None,
                                host,
                            },
                        );
                    }
                    Err(e) if calm => {
                        assert!(size == 0 || physical + size > CAPACITY, "create: {e}");
                    }
                    Err(_) => {}
                }
            }
            Action::Release { index } => {
                let ids: Vec<u32> = s.handles.keys().copied().collect();
                let Some(id) = pick(&ids, index) else {
                    continue;
                };
                let h = &s.handles[&id];
                let (released, mapped) = (h.released, h.mappings > 0);
                let r = d.release(h.handle);
                if r.is_ok() {
                    assert!(!released, "double release accepted");
                    if mapped {
                        s.handles.get_mut(&id).expect("handle").released = true;
                    } else {
                        s.handles.remove(&id);
                    }
                } else if calm {
                    assert!(released, "release failed: {r:?}");
                }
            }
            Action::Map {
                handle,
                reservation,
                granule,
                flaw,
            } => {
                let ids: Vec<u32> = s.handles.keys().copied().collect();
                let (Some(id), Some((base, len))) =
                    (pick(&ids, handle), pick(&s.reservations, reservation))
                else {
                    continue;
                };
                let h = &s.handles[&id];
                let (mut va, mut size, mut offset) =
                    (base + u64::from(granule) % (len / g) * g, h.size, 0);
                match flaw % 8 {
                    1 => offset = g,
                    2 => size += g,
                    3 => va += g / 2,
                    _ => {}
                }
                let valid = offset == 0
                    && size == h.size
                    && va % g == 0
                    && !h.released
                    && s.reservation_holding(va, size)
                    && s.overlapping(va, size).is_empty();
                // SAFETY: inside our reservation and unmapped, or refused.
                let r = unsafe { d.map(va, size as usize, offset as usize, h.handle) };
                if r.is_ok() {
                    assert!(valid, "map accepted: {action:?} at {va:#x}");
                    s.handles.get_mut(&id).expect("handle").mappings += 1;
                    s.mappings.insert(
                        va,
                        Mapping {
                            size,
                            handle: id,
                            mode: AccessMode::None,
                        },
                    );
                } else if calm {
                    assert!(!valid, "map failed: {r:?}");
                }
            }
            Action::UnmapMapping { index } => {
                let vas: Vec<u64> = s.mappings.keys().copied().collect();
                let Some(va) = pick(&vas, index) else {
                    continue;
                };
                // SAFETY: a whole mapping of ours; nothing refers into it.
                let r = unsafe { d.unmap(va, s.mappings[&va].size as usize) };
                if r.is_ok() {
                    s.remove_mapping(va);
                } else if calm {
                    panic!("unmap of a whole mapping failed: {r:?}");
                }
            }
            Action::UnmapRange {
                reservation,
                granule,
                granules,
            } => {
                let Some((base, len)) = pick(&s.reservations, reservation) else {
                    continue;
                };
                let va = base + u64::from(granule) % (len / g) * g;
                let size = u64::from(granules % 5) * g;
                let valid = size > 0 && s.reservation_holding(va, size) && !s.cuts(va, size);
                // SAFETY: inside our reservation (or refused); nothing refers
                // into the mappings it removes.
                let r = unsafe { d.unmap(va, size as usize) };
                if r.is_ok() {
                    assert!(valid, "unmap accepted: {action:?} at {va:#x}");
                    for m in s.overlapping(va, size) {
                        s.remove_mapping(m);
                    }
                } else if calm {
                    assert!(!valid, "unmap failed: {r:?}");
                }
            }
            Action::SetAccess {
                index,
                with_next,
                mode,
            } => {
                let vas: Vec<u64> = s.mappings.keys().copied().collect();
                let Some(va) = pick(&vas, index) else {
                    continue;
                };
                let mut size = s.mappings[&va].size;
                if with_next && s.mappings.contains_key(&(va + size)) {
                    size += s.mappings[&(va + size)].size;
                }
                let mode = [AccessMode::ReadWrite, AccessMode::Read, AccessMode::None]
                    [usize::from(mode % 3)];
                // SAFETY: whole mappings of ours; revoking access while
                // nothing holds a reference into them.
                let r = unsafe { d.set_access(va, size as usize, &dev(mode)) };
                if r.is_err() {
                    assert!(!calm, "set_access failed: {r:?}");
                    continue;
                }
                for m in s.overlapping(va, size) {
                    let mapping = s.mappings.get_mut(&m).expect("mapping");
                    mapping.mode = mode;
                    let h = s.handles.get_mut(&mapping.handle).expect("handle");
                    if mode == AccessMode::ReadWrite && h.pattern.is_none() {
                        // A fresh handle: fill it with its own pattern.
                        let byte = (mapping.handle as u8).wrapping_mul(37) | 1;
                        fill(&d, m, mapping.size, byte);
                        h.pattern = Some(byte);
                    }
                }
            }
            Action::Write { index, byte } => {
                let writable: Vec<u64> = s
                    .mappings
                    .iter()
                    .filter(|(_, m)| m.mode == AccessMode::ReadWrite)
                    .map(|(va, _)| *va)
                    .collect();
                let Some(va) = pick(&writable, index) else {
                    continue;
                };
                let m = &s.mappings[&va];
                fill(&d, va, m.size, byte);
                s.handles.get_mut(&m.handle).expect("handle").pattern = Some(byte);
                check_all(&d, &s);
            }
            Action::Check => check_all(&d, &s),
            Action::Inject {
                op,
                nth,
                oom,
                inner,
            } => {
                let op = [
                    Op::Reserve,
                    Op::FreeReservation,
                    Op::Create,
                    Op::Release,
                    Op::Map,
                    Op::Unmap,
                    Op::SetAccess,
                ][usize::from(op % 7)];
                let fault = Fault {
                    op,
                    nth: u64::from(nth % 4) + 1,
                    kind: if oom {
                        FaultKind::OutOfMemory
                    } else {
                        FaultKind::DriverError
                    },
                };
                if inner {
                    d.inner().inject(fault);
                } else {
                    d.inject(fault);
                }
                s.scheduled += 1;
            }
        }
        // Both checked layers see what the shadow holds.
        let held = (s.reservations.len(), s.handles.len(), s.mappings.len());
        for (layer, leaks) in [("checked", d.leaks()), ("driver", d.inner().leaks())] {
            let seen = leaks.map_or((0, 0, 0), |l| (l.reservations, l.handles, l.mappings));
            assert_eq!(seen, held, "{layer} layer after {action:?}");
        }
    }

    // Give everything back.
    check_all(&d, &s);
    d.clear_faults();
    d.inner().clear_faults();
    let vas: Vec<u64> = s.mappings.keys().copied().collect();
    for va in vas {
        // SAFETY: a whole mapping of ours; nothing refers into it.
        unsafe { d.unmap(va, s.mappings[&va].size as usize) }.expect("unmap");
        s.remove_mapping(va);
    }
    for h in s.handles.values() {
        d.release(h.handle).expect("release");
    }
    for &(va, size) in &s.reservations {
        // SAFETY: exactly what reserve returned, no mapping left.
        unsafe { d.free_reservation(va, size as usize) }.expect("free");
    }
    assert_eq!((d.leaks(), d.inner().leaks()), (None, None));
    assert!(d.inner().inner().is_clean());
    let c = d.counts();
    assert_eq!((c.create, c.reserve), (c.release, c.free_reservation));
}

fuzz_target!(|actions: Vec<Action>| run(&actions));
