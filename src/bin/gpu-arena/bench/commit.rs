//! c. commit bandwidth: an arena allocating one block of 64 MiB … 8 GiB
//! (fresh arena, then again after `trim`), against the raw driver sequence
//! through the crate's `Driver` trait: `create` in the arena's handle size
//! (`CommitConfig::max_run`), `map`, `set_access`; then the undo (`unmap`,
//! `release`) against the arena's `free` + `trim`. The reservations are made
//! before timing on both sides. The arena runs in two layouts: the default
//! (a fresh arena's first blocks in one handle per page, movable one by
//! one) and a tag's (large handles from the first block, as the global
//! arenas lay out what engines load to stay).

use std::time::Instant;

use gpu_arena::driver::{Access, Driver, Location};
use gpu_arena::{Arena, ArenaConfig, Kind};

use super::{Anchor, Ctx, Row, Section, SectionId, Unit, median, tag_config};
use crate::{AnyResult, fmt_bytes};

const SIZES: [u64; 5] = [64 << 20, 256 << 20, 1 << 30, 4 << 30, 8 << 30];
/// Target: the arena commits at least this fraction of the raw bandwidth.
const TARGET: f64 = 0.8;

const GIB: f64 = (1u64 << 30) as f64;

/// Raw commit and undo of `size` bytes in handles of `run` bytes: seconds.
fn raw(
    driver: &impl Driver,
    device: u32,
    size: u64,
    run: u64,
    reps: usize,
) -> AnyResult<(f64, f64)> {
    let page = driver.capabilities().granularity;
    let va = driver.reserve(size as usize, page)?;
    let access = [Access::read_write(Location::Device(device))];
    let (mut commit, mut undo) = (Vec::new(), Vec::new());
    let mut result = Ok(());
    for _ in 0..reps {
        let mut handles = Vec::new();
        let t = Instant::now();
        let mut off = 0;
        while off < size {
            let len = run.min(size - off) as usize;
            let h = match driver.create(len, Location::Device(device)) {
                Ok(h) => h,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            // SAFETY: the range lies in our reservation and is unmapped.
            if let Err(e) = unsafe { driver.map(va + off, len, 0, h) } {
                let _ = driver.release(h);
                result = Err(e);
                break;
            }
            handles.push((off, len, h));
            // SAFETY: the range is exactly the mapping just made.
            if let Err(e) = unsafe { driver.set_access(va + off, len, &access) } {
                result = Err(e);
                break;
            }
            off += len as u64;
        }
        commit.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        for &(off, len, h) in &handles {
            // SAFETY: a whole mapping of ours; nothing touches it.
            unsafe { driver.unmap(va + off, len) }?;
            driver.release(h)?;
        }
        undo.push(t.elapsed().as_secs_f64());
        if result.is_err() {
            break;
        }
    }
    // SAFETY: every mapping was undone above; nothing uses the range.
    unsafe { driver.free_reservation(va, size as usize) }?;
    result?;
    Ok((median(commit), median(undo)))
}

/// The arena's layouts measured: name (a row suffix) and settings.
fn layouts() -> [(&'static str, ArenaConfig); 2] {
    [
        ("", ArenaConfig::default()),
        (", a tag's layout", tag_config()),
    ]
}

/// One block of `size` committed and given back `reps` times in `arena`:
/// (median seconds to commit, median seconds to give back, handles made for
/// the block, median seconds of the commit spent inside the driver's VMM
/// calls as the arena times them).
fn arena_cycle<D: Driver>(
    arena: &mut Arena<D>,
    size: u64,
    reps: usize,
) -> AnyResult<(f64, f64, u64, f64)> {
    let page = arena.page();
    let (mut commit, mut undo, mut made, mut in_vmm) = (Vec::new(), Vec::new(), 0, Vec::new());
    for _ in 0..reps {
        let calls = arena.stats().driver_calls;
        let (before, vmm_before) = (calls.create, calls.vmm_nanos);
        let t = Instant::now();
        let p = arena.alloc(size, page)?;
        commit.push(t.elapsed().as_secs_f64());
        let calls = arena.stats().driver_calls;
        made = calls.create - before;
        in_vmm.push((calls.vmm_nanos - vmm_before) as f64 * 1e-9);
        let t = Instant::now();
        arena.free(p)?;
        arena.trim();
        undo.push(t.elapsed().as_secs_f64());
        let left = arena.stats().committed;
        if left != 0 {
            return Err(format!(
                "the arena kept {} committed after free + trim",
                fmt_bytes(left)
            )
            .into());
        }
    }
    Ok((median(commit), median(undo), made, median(in_vmm)))
}

/// Runs the section.
pub fn run(ctx: &Ctx) -> AnyResult<Section> {
    let mut s = Section::new(
        SectionId::Commit,
        "c. commit bandwidth (GiB/s; commit = create + map + set_access, give back = unmap + release)",
        vec![Anchor::measured("raw Driver calls")],
    );
    let capacity = ctx.caps.device_memory;
    let (sizes, reps): (Vec<u64>, usize) = if ctx.quick {
        (SIZES[..2].to_vec(), 2)
    } else {
        (SIZES.to_vec(), 5)
    };
    let (run_sizes, skipped): (Vec<u64>, Vec<u64>) =
        sizes.into_iter().partition(|&b| b + b / 8 <= capacity);
    let layouts = layouts();
    let pb = ctx.progress(SectionId::Commit, (run_sizes.len() * layouts.len()) as u64);
    let raw_driver = ctx.backends.driver()?;
    let mut max_run = 0;
    let mut page = 0;
    // Handles the arena made per block, per layout (the raw side makes one
    // per `max_run` bytes).
    let mut handles: Vec<String> = Vec::new();
    for (name, config) in layouts {
        let mut arena = Arena::new(ctx.backends.driver()?, Kind::Device(ctx.device), config)?;
        max_run = arena.config().commit.max_run;
        page = arena.page();
        let mut made = Vec::new();
        for &size in &run_sizes {
            pb.set_message(format!("{}{name}", fmt_bytes(size)));
            let (commit, undo, n, in_vmm) = arena_cycle(&mut arena, size, reps)?;
            made.push(format!("{n} for {}", fmt_bytes(size)));
            let (raw_commit, raw_undo) = raw(&raw_driver, ctx.device, size, max_run, reps)?;
            let bw = |secs: f64| size as f64 / GIB / secs;
            let ours = bw(commit);
            let frac = ours / bw(raw_commit);
            let times = format!(
                "{} vs {}; {} of it in VMM calls",
                crate::fmt_ns(commit * 1e9),
                crate::fmt_ns(raw_commit * 1e9),
                crate::fmt_ns(in_vmm * 1e9)
            );
            s.rows.push(
                Row::new(
                    format!("commit {}{name}", fmt_bytes(size)),
                    Unit::GiBps,
                    Some(ours),
                    vec![Some(bw(raw_commit))],
                )
                .target(
                    format!("≥ {:.0} % of raw", TARGET * 100.0),
                    Some(frac >= TARGET),
                    format!("{:.0} % of raw ({times})", frac * 100.0),
                ),
            );
            s.rows.push(Row::new(
                format!("give back {}{name}", fmt_bytes(size)),
                Unit::GiBps,
                Some(bw(undo)),
                vec![Some(bw(raw_undo))],
            ));
            pb.inc(1);
        }
        let what = if name.is_empty() {
            "the default arena"
        } else {
            "a tag's layout"
        };
        handles.push(format!("{what}: {}", made.join(", ")));
    }
    pb.finish_and_clear();
    s.notes.push(format!(
        "median of {reps}; gpu-arena: alloc of one block (align = page) in a fresh arena, then after trim; give back = free + trim; \
         raw: handles of {} (CommitConfig::max_run), measured beside each row; \"in VMM calls\": the part of gpu-arena's commit inside \
         create, map and set_access as it times them itself (DriverCalls::vmm_nanos), the rest its own work",
        fmt_bytes(max_run)
    ));
    s.notes.push(format!(
        "handles gpu-arena made per block, {}. The default arena's blocks get one handle per {} page until {} blocks in a row \
         grew its top (CommitConfig::bulk_streak; a free starts over), so that their idle pages can later back other blocks \
         anywhere without a copy, and each handle costs its own create, map and access; a tag's arena (what an engine loads to stay \
         and puts to sleep: GlobalConfig::tag_bulk_streak {}) makes large handles from the first block",
        handles.join("; "),
        fmt_bytes(page),
        ArenaConfig::default().commit.bulk_streak,
        tag_config().commit.bulk_streak
    ));
    if ctx.quick {
        s.notes.push("--quick: 64 MiB and 256 MiB only".into());
    }
    if !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().map(|&b| fmt_bytes(b)).collect();
        s.notes.push(format!(
            "skipped {}: more than the {} of device memory (host capacity) allows",
            list.join(", "),
            fmt_bytes(capacity)
        ));
    }
    Ok(s)
}
