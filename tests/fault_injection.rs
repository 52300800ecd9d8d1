//! Fault injection: a failed driver call changes nothing (`harness = false`).
//!
//! A fixed program walks the VMM life cycle (reserve, create, map twice,
//! set_access, release while mapped, unmap, free). For every step and both
//! fault kinds, the step's call is made to fail once — injected by the
//! checked layer itself, or by a second checked layer *underneath* it, the way
//! a real driver fails after the rules passed — and then:
//!
//! 1. the call returns the injected error kind;
//! 2. nothing changed: both layers still agree on what is live, and it is
//!    what it was before the call;
//! 3. the same call succeeds when made again, and the program runs to the
//!    end with nothing leaked and the call counts balanced.
//!
//! Run with `cargo test --test fault_injection`.

use std::process::ExitCode;

use gpu_arena::ErrorKind;
use gpu_arena::driver::{
    Access, Checked, Driver, Fault, FaultKind, HostDriver, HostHandle, Location, Op,
};

/// The driver under test: checked, over a checked host backend that plays
/// the real driver (faults injected there reach the outer layer as failures).
type Outer = Checked<Checked<HostDriver>>;

/// What the program holds so far.
#[derive(Default)]
struct Held {
    va: u64,
    a: Option<HostHandle>,
    b: Option<HostHandle>,
}

/// One step of the program: the op it calls, and the call.
struct Step {
    name: &'static str,
    op: Op,
    run: fn(&Outer, &mut Held, u64) -> gpu_arena::Result<()>,
}

const RW: [Access; 1] = [Access::read_write(Location::Device(0))];

/// The program. `g` is the granularity; `va` a reservation of 8 granules.
const STEPS: &[Step] = &[
    Step {
        name: "reserve 8 granules",
        op: Op::Reserve,
        run: |d, s, g| {
            s.va = d.reserve(8 * g as usize, 0)?;
            Ok(())
        },
    },
    Step {
        name: "create a (2 granules)",
        op: Op::Create,
        run: |d, s, g| {
            s.a = Some(d.create(2 * g as usize, Location::Device(0))?);
            Ok(())
        },
    },
    Step {
        name: "create b (1 granule, host-located)",
        op: Op::Create,
        run: |d, s, g| {
            s.b = Some(d.create(g as usize, Location::Host)?);
            Ok(())
        },
    },
    Step {
        name: "map a at 0",
        op: Op::Map,
        // SAFETY: inside our reservation, unmapped (the program's order).
        run: |d, s, g| unsafe { d.map(s.va, 2 * g as usize, 0, s.a.expect("a")) },
    },
    Step {
        name: "set_access a at 0",
        op: Op::SetAccess,
        // SAFETY: a whole mapping of ours.
        run: |d, s, g| unsafe { d.set_access(s.va, 2 * g as usize, &RW) },
    },
    Step {
        name: "map a again at 4 (alias)",
        op: Op::Map,
        // SAFETY: inside our reservation, unmapped.
        run: |d, s, g| unsafe { d.map(s.va + 4 * g, 2 * g as usize, 0, s.a.expect("a")) },
    },
    Step {
        name: "release a while mapped",
        op: Op::Release,
        run: |d, s, _| d.release(s.a.expect("a")),
    },
    Step {
        name: "map b at 2",
        op: Op::Map,
        // SAFETY: inside our reservation, unmapped.
        run: |d, s, g| unsafe { d.map(s.va + 2 * g, g as usize, 0, s.b.expect("b")) },
    },
    Step {
        name: "set_access over a at 0 and b at 2",
        op: Op::SetAccess,
        // SAFETY: two whole adjacent mappings of ours.
        run: |d, s, g| unsafe { d.set_access(s.va, 3 * g as usize, &RW) },
    },
    Step {
        name: "unmap a at 0 and b at 2 in one call",
        op: Op::Unmap,
        // SAFETY: nothing uses the range any more.
        run: |d, s, g| unsafe { d.unmap(s.va, 3 * g as usize) },
    },
    Step {
        name: "release b",
        op: Op::Release,
        run: |d, s, _| d.release(s.b.expect("b")),
    },
    Step {
        name: "unmap a at 4 (its memory goes back)",
        op: Op::Unmap,
        // SAFETY: nothing uses the range any more.
        run: |d, s, g| unsafe { d.unmap(s.va + 4 * g, 2 * g as usize) },
    },
    Step {
        name: "free the reservation",
        op: Op::FreeReservation,
        // SAFETY: exactly what reserve returned, no mapping left.
        run: |d, s, g| unsafe { d.free_reservation(s.va, 8 * g as usize) },
    },
];

/// Where the fault is injected.
#[derive(Clone, Copy, Debug)]
enum Layer {
    /// The checked layer under test refuses the call itself.
    Checked,
    /// The driver under it fails after the rules passed.
    Driver,
}

/// Runs the program with step `k` failing once; returns what went wrong.
fn scenario(k: usize, kind: FaultKind, layer: Layer) -> Result<(), String> {
    let host = HostDriver::new().map_err(|e| e.to_string())?;
    let g = host.capabilities().granularity as u64;
    let d: Outer = Checked::new(Checked::new(host));
    let mut held = Held::default();
    for (i, step) in STEPS.iter().enumerate() {
        let what = |m: &str| format!("step {i} ({}): {m}", step.name);
        if i == k {
            let fault = Fault {
                op: step.op,
                nth: 1,
                kind,
            };
            match layer {
                Layer::Checked => d.inject(fault),
                Layer::Driver => d.inner().inject(fault),
            }
            let before = (d.leaks(), d.inner().leaks());
            let e = match (step.run)(&d, &mut held, g) {
                Ok(()) => return Err(what("the injected fault did not fire")),
                Err(e) => e,
            };
            let want = match kind {
                FaultKind::OutOfMemory => ErrorKind::OutOfMemory,
                FaultKind::DriverError => ErrorKind::Other,
            };
            if e.driver_kind() != Some(want) {
                return Err(what(&format!("failed with {e}, not {want:?}")));
            }
            let after = (d.leaks(), d.inner().leaks());
            if after != before {
                return Err(what(&format!(
                    "the failed call changed the state: before {before:?}, after {after:?}"
                )));
            }
            if d.leaks() != d.inner().leaks() {
                return Err(what(&format!(
                    "the layers disagree after the failure: checked {:?}, driver {:?}",
                    d.leaks(),
                    d.inner().leaks()
                )));
            }
        }
        (step.run)(&d, &mut held, g).map_err(|e| what(&format!("failed: {e}")))?;
        if d.leaks() != d.inner().leaks() {
            return Err(what(&format!(
                "the layers disagree: checked {:?}, driver {:?}",
                d.leaks(),
                d.inner().leaks()
            )));
        }
    }
    let (outer, inner) = (d.counts(), d.inner().counts());
    let end = format!("after the program: checked {outer:?}, driver {inner:?}");
    if d.leaks().is_some() || d.inner().leaks().is_some() || !d.inner().inner().is_clean() {
        return Err(format!("leaked: {:?}; {end}", d.leaks()));
    }
    let (injected, failed) = match layer {
        Layer::Checked => (1, 0),
        Layer::Driver => (0, 1),
    };
    if outer.injected != injected || outer.failed != failed || inner.injected != failed {
        return Err(format!("fault not counted as expected; {end}"));
    }
    let balanced = |c: &gpu_arena::driver::CallCounts| {
        c.create == c.release && c.reserve == c.free_reservation && c.refused == 0
    };
    if !balanced(&outer) || !balanced(&inner) {
        return Err(format!("counts do not balance; {end}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut failed = 0;
    let mut ran = 0;
    for layer in [Layer::Checked, Layer::Driver] {
        for kind in [FaultKind::OutOfMemory, FaultKind::DriverError] {
            for k in 0..STEPS.len() {
                ran += 1;
                if let Err(e) = scenario(k, kind, layer) {
                    failed += 1;
                    println!("FAIL {layer:?} {kind:?}: {e}");
                }
            }
        }
    }
    println!(
        "fault_injection: {ran} scenarios ({} steps x 2 kinds x 2 layers), {failed} failed",
        STEPS.len()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
