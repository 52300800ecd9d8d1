"""docs/STATUS.md: where gpu-arena stands against the open goals, every figure computed from a raw log.

usage: python3 scripts/status.py            print the page
       python3 scripts/status.py --write    write docs/STATUS.md
       python3 scripts/status.py --check    exit 1 if docs/STATUS.md differs from what the logs give (CI)

The page is short on purpose: the goals of issue 12 (fast and tight at once under PyTorch), the latest
measured figure for each with its verdict, what is blocked and why, and where to read on. Its figures are
not typed by hand: the PyTorch tables come from scripts/torch_report.py run on the raw logs named in
SOURCES (the same tables as the report.md beside them), the layouts' from scripts/layout_ensemble.py, the
sleep rows and the GPU test count from the bench and test logs. When a newer run lands, point SOURCES at
it and run --write."""
import os
import re
import statistics as st
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "STATUS.md")
WORKLOADS = ["bert_infer", "gpt2_generate", "train_loop", "serve"]

# The runs the page reports: folder (or file) under docs/, and what it is.
SOURCES = {
    "torch": ("pytorch/h200-8df43e2-20261130",
              ["torch-bert_infer.log", "torch-gpt2_generate.log", "torch-train_loop.log", "torch-serve.log"],
              "One H200, the library of `8df43e2`: `scripts/torch_alternate.sh ROUNDS 3 WORKLOAD`, eight rounds "
              "for `bert_infer` and six for the others, one process per allocator in each, the order rotated by "
              "round, 3 repetitions per process"),
    # The run before, shown beside the latest for the time goal (the figure the machine's noise moves).
    "torch_prev": ("pytorch/h200-717c125-20261130",
                   ["torch-bert_infer.log", "torch-gpt2_generate.log", "torch-train_loop.log",
                    "torch-serve.log"],
                   "the library of `717c125`, the same decisions, five rounds"),
    "timed": ("pytorch/h200-timed-default-20261130",
              ["bert-train/torch-bert_infer.log", "gpt2/torch-gpt2_generate.log", "bert-train/torch-train_loop.log",
               "serve/torch-serve.log"],
              "One H200, the library of `3f0844c`: `TIMED_DEFAULT=1 scripts/torch_alternate.sh 3 3 WORKLOAD`, "
              "PyTorch's caching allocator behind the same pluggable wrapper as gpu-arena, timed the same way"),
    "layouts": ("pytorch/slab-variants-20261130/ensemble-base.log", None,
                "Host replay, build `6b3b906` (`scripts/decisions.sh`: the same decisions on every later build), "
                "each trace after 16 preludes of 0 to 1.875 MiB"),
    "sleep": ("bench", ["h200-20261130-420072a/bench-sleep.log", "h200-20261130-420072a/bench-full.md",
                        "h200-sleep-affinity-20261130/sleep-cpu0.log", "h200-sleep-affinity-20261130/sleep-cpu7.log",
                        "h200-sleep-affinity-20261130/sleep-cpu15.log",
                        "h200-sleep-affinity-20261130/sleep-unpinned.log", "h200-20261130-5c14453/bench-sleep.log"],
              "One H200, three device calls: the library of `420072a` (`gpu-arena bench --only sleep` three times, "
              "then the whole bench once: `docs/bench/h200-20261130-420072a`), that of `3f48d69` (twelve runs, "
              "the bench pinned to one CPU or not: `docs/bench/h200-sleep-affinity-20261130`) and that of "
              "`5c14453` (four runs whose notes give the driver's speed: `docs/bench/h200-20261130-5c14453`)"),
    "tests": ("bench/h200-20261130-c8dd3ca/tests.log", None,
              "One H200, the tests of `c8dd3ca`, `tests/all` and `tests/ipc_two_process` on CUDA"),
}


def path(key, name=None):
    base = os.path.join(ROOT, "docs", SOURCES[key][0])
    return os.path.join(base, name) if name else base


def link(key):
    return f"`docs/{SOURCES[key][0]}`"


def run(script, args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], check=True,
                          capture_output=True, text=True, cwd=ROOT).stdout


def tables(text):
    """Every markdown table of `text`: a list of (header, rows), each row a dict by header."""
    out, cur = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            cur = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cur is None:
            cur = (cells, [])
            out.append(cur)
        elif not set("".join(cells)) <= set("-:"):
            cur[1].append(dict(zip(cur[0], cells)))
    return out


def find(tabs, column, **match):
    """The row of the first table with `column` whose cells equal `match`."""
    for header, rows in tabs:
        if column in header:
            for r in rows:
                if all(r.get(k) == v for k, v in match.items()):
                    return r
    raise KeyError(f"no row {match} in a table with column {column!r}")


def spread(cell):
    """'3.09 (2.96–4.10)' -> (3.09, 2.96, 4.10)."""
    m = re.match(r"([0-9.]+) \(([0-9.]+)–([0-9.]+)\)", cell)
    return tuple(float(x) for x in m.groups())


def torch_rows(key="torch"):
    tabs = tables(run("torch_report.py", [path(key, f) for f in SOURCES[key][1]]))
    rows = {k: [] for k in ["peak", "pytorch_peak", "calls2", "calls1", "time", "paired", "per_call", "rep1"]}
    verdicts = {}
    for w in WORKLOADS:
        ga = find(tabs, "checksums", workload=w, allocator="gpu-arena")
        de = find(tabs, "checksums", workload=w, allocator="default")
        peak = max(float(x) for x in ga["peak physical / peak live, every repetition (max over processes)"].split(","))
        pt = max(float(x) for x in de["peak physical / peak live, every repetition (max over processes)"].split(","))
        calls2 = float(ga["driver calls per 1000 allocs, repetitions 2..N (max)"])
        # Time over repetitions 2..N (each process's median), as docs/pytorch.md's goal tables give it.
        ga_t = find(tabs, "gpu-arena / default, steady", workload=w, allocator="gpu-arena")
        de_t = find(tabs, "gpu-arena / default, steady", workload=w, allocator="default")
        t, d = spread(ga_t["time, repetitions 2..N (s)"]), spread(de_t["time, repetitions 2..N (s)"])
        ratio = float(ga_t["gpu-arena / default, steady"])
        paired = find(tabs, "rounds faster", workload=w, allocator="gpu-arena")
        us = spread(ga_t["per call, steady"])
        rows["rep1"].append(f'{float(ga_t["gpu-arena / default, rep 1"]):.3f}, paired by round '
                            f'{paired["time / default, repetition 1, per round: median (min–max)"]}')
        rows["peak"].append(verdict(peak <= 1.02, f"{peak:.4f}"))
        rows["pytorch_peak"].append(f"{pt:.4f}")
        rows["calls2"].append(verdict(calls2 <= 1.0, f"{calls2:.2f}"))
        rows["calls1"].append(f'{ga["driver calls, repetition 1"].split(" ")[0]} '
                              f'({de["driver calls, repetition 1"].split(" ")[0]})')
        # "within the spread": above 1.00 by less than either allocator's min–max spread of processes.
        excess = t[0] - d[0]
        if ratio <= 1.0:
            rows["time"].append(verdict(True, f"{ratio:.3f}"))
        elif excess < max(t[2] - t[1], d[2] - d[1]):
            rows["time"].append(f"within the spread: {ratio:.3f} ({t[1]:.2f}–{t[2]:.2f} s against "
                                f"{d[1]:.2f}–{d[2]:.2f} s)")
        else:
            rows["time"].append(verdict(False, f"{ratio:.3f}"))
        # The table has two "rounds faster" columns; the dict keeps the last, the settled one's.
        rows["paired"].append(f"{paired['time / default, repetitions 2..N, per round']}, faster in "
                              f"{paired['rounds faster']}")
        rows["per_call"].append(verdict(us[0] <= 0.3, f"{us[0]:.3f} µs"))
        verdicts[w] = (peak <= 1.02, calls2 <= 1.0, us[0] <= 0.3)
    procs = ", ".join(f'{find(tabs, "checksums", workload=w, allocator="gpu-arena")["processes × repetitions"]} '
                      f"(`{w}`)" for w in WORKLOADS)
    sums = {find(tabs, "checksums", workload=w, allocator=a)["checksums"] for w in WORKLOADS
            for a in ("default", "gpu-arena")}
    return rows, verdicts, procs, sums


def verdict(ok, figure):
    return f"**met**: {figure}" if ok else f"missed: {figure}"


def timed_rows():
    tabs = tables(run("torch_report.py", [path("timed", f) for f in SOURCES["timed"][1]]))
    rows = {"pytorch": [], "arena": [], "ratio": []}
    for w in WORKLOADS:
        pt = find(tabs, "per call, steady", workload=w, allocator="default-timed")["per call, steady"]
        ga = find(tabs, "per call, steady", workload=w, allocator="gpu-arena")["per call, steady"]
        r = find(tabs, "rounds where it is the lower", workload=w, labels="gpu-arena / default-timed")
        rows["pytorch"].append(pt.replace(" (", " µs (", 1))
        rows["arena"].append(ga.replace(" (", " µs (", 1))
        rows["ratio"].append(f"{r['allocator time per settled call, ratio per round: median (min–max)']}, "
                             f"lower in {r['rounds where it is the lower']}")
    return rows


def layout_rows():
    text = run("layout_ensemble.py", [path("layouts")])
    tabs = tables(text)
    out = []
    for header, rows in tabs:
        for r in rows:
            out.append(f"| {r['trace']} | {r['part']} | {r['> 1.02']} of {r['layouts']} | {r['ratio, min–max']} | "
                       f"{r['rep 2: > 1 VMM call / 1,000']} | {r['last rep: > 1 / 1,000']} |")
    m = re.search(r"of (\d+) layouts, (\d+) over 1.02, (\d+) with more than 1 VMM call per 1,000 in repetition 2, "
                  r"(\d+) in any from the second, (\d+) in the last", text)
    return out, m.groups()


def sleep_rows():
    cases = {
        "sleep, discard (first, a tag's arena: as allocated)": "first sleep, a tag's arena (what engines put to sleep)",
        "sleep, discard (first, default arena: as allocated)": "first sleep, the default arena",
        "sleep, discard (steady: after a wake)": "a later sleep (after a wake)",
        "wake, no restore (first, a tag's arena)": "first wake, a tag's arena",
        "wake, no restore (first, default arena)": "first wake, the default arena",
    }
    first_case = "sleep, discard (first, default arena: as allocated)"
    got = {c: [] for c in cases}
    anchor = []
    counts = set()
    # Each file's default-arena first sleeps (the affinity probe's, by CPU set, are shown below).
    by_file = {}
    for f in SOURCES["sleep"][1]:
        text = open(path("sleep", f)).read()
        counts.update(re.findall(r"(\d+) in the default arena \(one per page", text))
        for header, rows in tables(text):
            for r in rows:
                if r.get("case") in got:
                    got[r["case"]].append((r["gpu-arena"], r["check"].startswith("yes")))
                    if r["case"] == first_case:
                        anchor.append(r["per-tensor handles"])
                        by_file.setdefault(f, []).append(ms(r["gpu-arena"]))
    handles = "/".join(sorted(counts))
    out = []
    for case, label in cases.items():
        runs = got[case]
        goal = "≤ 10 ms" if case.startswith("sleep") else "≤ 15 ms"
        met = sum(ok for _, ok in runs)
        out.append(f"| {label} | {spread_ms([ms(v) for v, _ in runs])} | {goal} | {met} of {len(runs)} |")
    out.append(f"| the anchor: one handle per tensor, unmapped and released one by one | "
               f"{spread_ms([ms(a) for a in anchor])} | | |")
    # The machine's state: the default arena's first sleep against the anchor's, run by run.
    first = got[first_case]
    missed = [ms(a) for a, (_, ok) in zip(anchor, first) if not ok]
    kept = [ms(a) for a, (_, ok) in zip(anchor, first) if ok]
    note = ""
    if missed and kept:
        note = (f"In the runs where the default arena's first sleep missed, the anchor's same sequence took "
                f"{min(missed):.1f}–{max(missed):.1f} ms; in those where it met the goal, "
                f"{min(kept):.1f}–{max(kept):.1f} ms: the driver's charge per handle moves from run to run, "
                f"and with it whether {handles} handles fit in 10 ms.")
    # The affinity probe's runs, by CPU set: whether the thread's CPU decides it.
    by_set = []
    for f, runs in by_file.items():
        m = re.search(r"sleep-(\w+)\.log$", f)
        if m and "affinity" in f:
            by_set.append(f"{m.group(1)} {spread_ms(runs)}")
    if by_set:
        topo = open(path("sleep", "h200-sleep-affinity-20261130/topology.txt")).read()
        nodes = re.search(r"NUMA node\(s\):\s+(\d+)", topo).group(1)
        note += (f" Pinned to one CPU or not, the default arena's first sleeps spread alike (NUMA nodes on the "
                 f"machine: {nodes}): " + "; ".join(by_set) + ".")
    return out, note


def spread_ms(xs):
    """Median (min–max) of milliseconds, as the bench prints them."""
    f = lambda v: f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"
    return f"{f(st.median(xs))} ({f(min(xs))}–{f(max(xs))})"


def ms(cell):
    """'46.4 ms' or '828 µs' -> milliseconds."""
    v, unit = cell.split()
    return float(v) * {"ms": 1.0, "µs": 1e-3, "s": 1e3}[unit]


def tests_line():
    """Passed and failed over every test binary of the log."""
    results = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", open(path("tests")).read())
    return sum(int(p) for p, _ in results), sum(int(f) for _, f in results)


def page():
    rows, verdicts, procs, sums = torch_rows()
    prev = torch_rows("torch_prev")[0]
    timed = timed_rows()
    lrows, ltot = layout_rows()
    srows, snote = sleep_rows()
    passed, failed = tests_line()
    head = "| | " + " | ".join(f"`{w}`" for w in WORKLOADS) + " |\n|---|" + "---|" * len(WORKLOADS)

    def line(label, cells):
        return f"| {label} | " + " | ".join(cells) + " |"

    per_call_missed = [f"`{w}`" for w in WORKLOADS if not verdicts[w][2]]
    all_tight = all(v[0] and v[1] for v in verdicts.values())
    p = []
    p.append("""# Where gpu-arena stands

<!-- Generated by scripts/status.py from the raw logs it names: edit the script, not this page
     (`python3 scripts/status.py --write`; CI runs `--check`). -->

The short page for an engine builder: the goals of the open issue (12, *fast and tight at once under
PyTorch*), the latest measured figure for each, what is blocked and why, and where to read on. Every
figure here is computed by `scripts/status.py` from a raw log kept in `docs/` (named under each table).
How the figures were taken, the history and every idea tried are in `docs/pytorch.md` and
`docs/TRIED.md`.
""")
    svg = os.path.relpath(path("torch", "report.svg"), os.path.dirname(OUT))
    p.append(f"""## Under PyTorch: the four workloads

{SOURCES['torch'][2]}: {procs} per allocator, default settings. Raw logs: {link('torch')}; the
workloads' output checksums: {'all equal' if sums == {'all equal'} else 'DIFFERENT: ' + ', '.join(sorted(sums))}.

{head}
{line("1. peak physical / peak live ≤ 1.02, every repetition (worst process)", rows["peak"])}
{line("the same, PyTorch's caching allocator", rows["pytorch_peak"])}
{line("2. VMM calls per 1,000 allocations, repetitions 2..N (worst process), ≤ 1", rows["calls2"])}
{line("VMM calls in repetition 1, median process (PyTorch's allocator)", rows["calls1"])}
{line("3. time of repetitions 2..N / PyTorch's default (medians of processes), ≤ 1.00", rows["time"])}
{line("the same, paired by round: median (min–max)", rows["paired"])}
{line(f"the same goal in the run before ({SOURCES['torch_prev'][2]})", prev["time"])}
{line("time of repetition 1 (memory laid out, VMM calls) / PyTorch's default, medians; paired by round", rows["rep1"])}
{line("3. allocator time per call in repetitions 2..N (inside alloc and free, driver calls included), ≤ 0.3 µs", rows["per_call"])}

"Within the spread": above 1.00 by less than either allocator's min–max spread of processes.

![The same run, repetition by repetition: peak physical / peak live, VMM calls per 1,000 allocations, time, and gpu-arena's time per call]({svg})

**PyTorch's own allocator per call, on the same machine.** {SOURCES['timed'][2]}. Raw logs:
{link('timed')}.

{head}
{line("PyTorch's caching allocator, µs per call in repetitions 2..N: median (min–max)", timed["pytorch"])}
{line("gpu-arena, the same call", timed["arena"])}
{line("gpu-arena / PyTorch's, paired by round", timed["ratio"])}
""")
    p.append(f"""## Over layouts (host replay)

A recorded run is one layout of the process's memory; a block allocated before the workload moves
everything above it. {SOURCES['layouts'][2]} ({link('layouts')}, `scripts/layout_ensemble.py`): of
{ltot[0]} layouts, **{ltot[1]} keep more than 1.02** and **{ltot[2]} call the driver
more than once per 1,000 allocations in repetition 2** ({ltot[4]} in the last repetition). `train16` is the
training loop that makes a new optimizer every 24 steps, run on to 16 repetitions; "work, weights
tagged" is the whole process with the trace's weights in a tag of their own, as engines that sleep
tag them.

| trace | part | layouts over 1.02 | ratio, min–max | rep 2: > 1 VMM call per 1,000 | last rep: > 1 per 1,000 |
|---|---|---:|---|---:|---:|
""" + "\n".join(lrows) + "\n")
    p.append(f"""## Sleep and wake of 10 GiB (bench section g)

{SOURCES['sleep'][2]}. Goal: sleep ≤ 10 ms and wake ≤ 15 ms per 10 GiB in every cycle,
the first one too.

| case | median (min–max) over the runs | goal | runs that met it |
|---|---|---|---:|
""" + "\n".join(srows) + "\n\n" + snote + "\n")
    p.append(f"""## On the GPU, the tests

{SOURCES['tests'][2]}: {passed} passed, {failed} failed ({link('tests')}). CI runs every test on the host backend
and the HIP backend's tests through a stand-in library; GPU-only tests skip there with a printed reason.
""")
    p.append(f"""## Blocked, and why

- **Allocator time per settled call, {', '.join(per_call_missed) or 'none'}** (goal 3, 0.3 µs). A settled call's
  cost is the records of the pages it touches (units, mappings, blocked bits), and it moves with the
  machine's state. PyTorch's own caching allocator misses the same 0.3 µs on this machine (table above).
  Every lever found is in `docs/TRIED.md` ("Time per call"); what is left changes the design: per-range
  state for stitched ranges (changes the idle order, hence the decisions) and placement planned from a
  repetition (exact for training loops, not for BERT's varying shapes: `docs/pytorch.md`, "Where the
  per-page work could go next").
- **The default arena's first sleep** of freshly allocated tensors (goal 4). The driver charges every
  release per handle, from one thread at a time, whatever the order of unmap and release; the default
  tag's first 64 tensors keep one handle per page so that the workloads stay tight. Every way tried of
  giving them fewer handles cost GPT-2's tightness or training's settling (`docs/TRIED.md`, "Sleep,
  wake, offload"). Engines tag what they put to sleep, and a tag's layout meets the goal (table above).
- **Tightness over layouts** ({'goals 1 and 2 hold on every recorded run; ' if all_tight else ''}not on every
  layout). What remains at BERT's and GPT-2's peaks is partly used pages: a stitched block's last page and
  slab spans kept as the last of their class (`docs/pytorch.md`, "One trace, sixteen layouts"; "Tails").
  `GPU_ARENA_CONF=keep_empty_slabs:0` is the tightest setting found, at more CPU per call, so it is off
  by default.
""")
    p.append("""## Read on

| page | what it holds |
|---|---|
| `README.md` | what gpu-arena is, the two commands, the API, known misses with their history |
| `docs/pytorch.md` | PyTorch's pluggable allocator: every run, method and rule, newest first |
| `docs/TRIED.md` | every idea tried for the goals, one line each, with its verdict: read it before trying one |
| `docs/sleep-wake.md` | sleep, wake, offload, the engine adapters |
| `docs/BENCHMARKS.md` | `gpu-arena bench` on the host, the H100 and the H200, against the anchors |
| `docs/multi-gpu.md` | peer access, IPC, NCCL, data-parallel training |
| `docs/python.md`, `docs/scratch.md` | the Python package; the scratch (bump) arena against bumpalo |
| `docs/conformance.md`, `docs/fuzzing.md`, `docs/soak.md` | driver rules checked, fuzzing and models, soak runs |
""")
    return "\n".join(p)


def main():
    text = page()
    if "--check" in sys.argv:
        old = open(OUT).read() if os.path.exists(OUT) else ""
        if old != text:
            sys.exit("docs/STATUS.md is not what scripts/status.py makes from the logs: run "
                     "`python3 scripts/status.py --write` and commit it")
        print("docs/STATUS.md matches its logs")
    elif "--write" in sys.argv:
        open(OUT, "w").write(text)
        print(f"wrote {OUT}")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
