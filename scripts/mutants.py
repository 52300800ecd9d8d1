#!/usr/bin/env python3
"""Mutants of the commit layer's promises, and which tests kill them.

Each mutant breaks one rule the allocator promises (a fence before another
stream reuses memory or before an unmap, a same-stream reuse at once, the
decay curve, the stranding rule, ownership of units) by replacing one
snippet of source. For each, the script applies it, runs the library's unit
tests and `tests/all` (release), restores the file, and prints which tests
failed: KILLED by ..., or SURVIVED (no test notices the broken rule).

    python3 scripts/mutants.py            # every mutant, some 3-4 minutes each
    python3 scripts/mutants.py M3 M8      # some of them
    python3 scripts/mutants.py --table LOG...   # runs' logs side by side (markdown)

The source (and tests/proptest-regressions/, where proptest saves the
seeds of failing programs) is restored after each mutant, also when a run
fails; do not edit or commit while it runs. docs/fuzzing.md ("Mutants") keeps a run's log.
"""
import os
import subprocess
import sys

# (name, file, snippet, replacement)
MUTANTS = [
 ("M1 a unit serves any stream whatever its fences", "src/commit/back.rs",
  "    pub(super) fn allows_unit(&mut self, u: u32, slot: u16) -> bool {\n        let streams = &self.streams;",
  "    pub(super) fn allows_unit(&mut self, u: u32, slot: u16) -> bool {\n        if u < u32::MAX { return true; }\n        let streams = &self.streams;"),
 ("M2 parked retake ignores stream and pending fences", "src/commit/pool/parked.rs",
  "                && x.stream == stream\n                && x.pending.allows(stream, done)",
  "                && { let _ = (stream, done); true }"),
 ("M3 frees never stamp", "src/commit/live.rs",
  "            let stamp_it = m != last && !safe;",
  "            let stamp_it = m != last && !safe && false;"),
 ("M4 reclaim releases units with pending fences", "src/commit/reclaim.rs",
  "    fn releasable(&mut self, u: u32) -> bool {\n        self.unit_settled(u)",
  "    fn releasable(&mut self, u: u32) -> bool {\n        let _ = u; true"),
 ("M5 same stream may not reuse before its fence", "src/sync/stamp.rs",
  "        (self.first.is_safe() || self.first.slot() == slot || done(self.first))",
  "        (self.first.is_safe() || done(self.first))"),
 ("M6 strands never", "src/commit/mod.rs",
  "        pages > 1\n            && (first < a",
  "        false && pages > 1\n            && (first < a"),
 ("M7 decay keeps everything", "src/commit/decay.rs",
  "        1.0 - x * x * (3.0 - 2.0 * x)",
  "        let _ = x; 1.0"),
 ("M8 dissolve ignores fences", "src/commit/reclaim.rs",
  "        if !maps.iter().all(|&m| {\n            let u = self.pool.map(m).unit;\n            self.unit_settled(u)\n        }) {",
  "        if false {"),
 ("M9 try_take ignores owner", "src/commit/live.rs",
  "                    !strands && self.pool.can_take(m) && (live > 0 || self.allows(m, slot))",
  "                    !strands && (live > 0 || self.allows(m, slot))"),
 ("M10 units not stamped on free (only mappings)", "src/commit/pool/mod.rs",
  "        let x = &mut self.units[u as usize];\n        if stamp_it {\n            x.stamps.add(stamp);\n        }",
  "        let x = &mut self.units[u as usize];"),
 ("M11 a mapping counts as settled with its fences pending", "src/commit/back.rs",
  "    pub(super) fn mapping_settled(&mut self, m: u32) -> bool {\n        self.settled(Fenced::Mapping(m))",
  "    pub(super) fn mapping_settled(&mut self, m: u32) -> bool {\n        let _ = m; true"),
 ("M12 a release gives nothing back to the shared budget", "src/commit/vmm.rs",
  "        if self.timed(|d| d.release(h)).is_ok() {\n            self.calls.release += 1;\n            self.budget_give(pages);\n        } else {",
  "        if self.timed(|d| d.release(h)).is_ok() {\n            self.calls.release += 1;\n            let _ = pages;\n        } else {"),
 ("M13 a cached range's first look always says held elsewhere", "src/commit/live.rs",
  "        live == 0 && (m == NIL || !self.pool.can_take(m))",
  "        let _ = (live, m); true"),
 ("M14 a wake restores what was freed while asleep", "src/commit/stage.rs",
  "        for (off, len, at) in restored_pieces(&stage.ranges, &self.pages.live_ranges(), self.shift)\n        {",
  "        for (off, len, at) in stage.ranges.clone() {"),
 ("M15 a stitched range freed while asleep stays cached, unmapped", "src/commit/stitched.rs",
  "        if self.asleep {\n            // No mapping to keep",
  "        if false {\n            // No mapping to keep"),
 ("M16 a flush leaves a parked group's members live", "src/commit/pool/parked.rs",
  "            if parked {\n                // What parking it page by page would have written.\n                mp.live_pages = 0;\n            }",
  "            let _ = parked;"),
 ("M17 a parked group's units read as owned", "src/commit/pool/parked.rs",
  "        if x.group != NO_GROUP && self.groups[x.group as usize].parked {\n            NIL\n        } else {\n            x.owner\n        }",
  "        x.owner"),
 ("M18 a mapping added outside stitched ranges leaves a parked group's marks stale", "src/commit/pool/mod.rs",
  "            // its units as they were when it formed (see [`parked`]).\n            self.flush_unit(u);",
  "            // its units as they were when it formed (see [`parked`]).\n            let _ = u;"),
]


REGRESSIONS = [
    os.path.join("tests/proptest-regressions", f)
    for f in sorted(os.listdir(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "..", "tests/proptest-regressions")))
]


def table(logs):
    """A markdown table of runs' logs (their first line names the run): per
    mutant, how many tests failed in each run, or SURVIVED."""
    runs = []
    for path in logs:
        lines = open(path).read().splitlines()
        verdicts = {}
        for line in lines[1:]:
            name, _, verdict = line.partition(": ")
            if verdict.startswith("KILLED by "):
                verdict = f"killed by {len(verdict[len('KILLED by '):].split(', '))}"
            verdicts[name.split()[0]] = verdict
        runs.append((lines[0].lstrip("# ").split(",")[0], verdicts))
    print("| mutant | " + " | ".join(r[0] for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name, _, _, _ in MUTANTS:
        key = name.split()[0]
        print(f"| {name} | " + " | ".join(r[1].get(key, "–") for r in runs) + " |")


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if sys.argv[1:2] == ["--table"]:
        table(sys.argv[2:])
        return
    chosen = sys.argv[1:]
    for name, path, old, new in MUTANTS:
        if chosen and name.split()[0] not in chosen:
            continue
        src = open(path).read()
        if src.count(old) != 1:
            print(f"{name}: SKIPPED (the snippet occurs {src.count(old)} times)", flush=True)
            continue
        open(path, "w").write(src.replace(old, new))
        # Proptest saves the seeds of failing programs: a mutant's are not
        # regressions of the library.
        saved = {f: open(f).read() for f in REGRESSIONS}
        try:
            failed = []
            for args in (["--lib"], ["--test", "all"]):
                r = subprocess.run(["cargo", "test", "--release", *args],
                                   capture_output=True, text=True, timeout=1800)
                out = r.stdout + r.stderr
                if "could not compile" in out:
                    failed.append("(does not compile)")
                    break
                failed += [l.split()[1] for l in out.splitlines()
                           if l.startswith("test ") and l.endswith("FAILED")]
                if r.returncode != 0 and not failed:
                    failed.append(f"(crashed, exit {r.returncode})")
            verdict = "KILLED by " + ", ".join(failed) if failed else "SURVIVED"
            print(f"{name}: {verdict}", flush=True)
        finally:
            open(path, "w").write(src)
            for f, text in saved.items():
                open(f, "w").write(text)


if __name__ == "__main__":
    main()
