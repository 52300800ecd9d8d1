"""Markdown tables from the logs of scripts/torch_alternate.sh (REP lines of scripts/torch_bench.py).

usage: python3 scripts/torch_report.py LOG...

For each workload and allocator: peak physical / peak live in every repetition (the highest over
processes), driver calls per repetition (cold first, then the steady ones 2..N, per 1000 allocations),
time (median over processes with min-max; cold = repetition 1, steady = each process's median of
repetitions 2..N), gpu-arena's time per allocator call, whether every checksum agreed, and gpu-arena's driver calls
per 1000 allocations in each repetition; where the log has them, what its stitched-range allocations
decided in each repetition (ranges reused / repaired / made, summed over processes); and, for each
gpu-arena label, the repetitions from which no process made a VMM call any more (settled): their time
against PyTorch's default over the same repetitions (median over processes of each process's median)
and gpu-arena's time per allocator call in them. Where a workload ran two gpu-arena labels or more
(LIBS or SETTINGS of scripts/torch_alternate.sh), their processes are paired by round (the N-th
process of each label ran back to back): per round, the ratio of each label's allocator time per
settled call (the process's median over repetitions 2..N) to the first label's, the median over
rounds with min-max, and in how many rounds it was the lower. Every gpu-arena label is also paired by
round with PyTorch's default on time itself: per round, the ratio of the label's process time to the
default's (repetition 1, and each process's median of repetitions 2..N), the median over rounds with
min-max, and in how many rounds gpu-arena was the faster; the machine's drift over a call moves both
processes of a round alike, so these ratios move less than the ratio of the medians."""
import json, re, statistics as st, sys
from collections import defaultdict


def load(paths):
    runs = defaultdict(list)  # (workload, allocator) -> [process: [rep records]]
    for p in paths:
        cur = None
        for line in open(p, errors="replace"):
            # The allocator label is the rest of the line ("gpu-arena", or
            # "gpu-arena stitch_repair:1" where settings are compared).
            m = re.match(r"== process (\d+) (\S+) (.+)", line)
            if m:
                cur = []
                runs[(m.group(2), m.group(3).strip())].append(cur)
            elif line.startswith("REP ") and cur is not None:
                cur.append(json.loads(line[4:]))
    return runs


def rng(xs, fmt):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{fmt(st.median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})"


def by_round(base, other, pick):
    """Per round (the N-th process of each label ran in the same round): pick(other) / pick(base),
    for the rounds where both have a figure."""
    out = []
    for x, y in zip(base, other):
        a, b = pick(x), pick(y)
        if a and b:
            out.append(b / a)
    return out


def lower_cells(ratios, digits):
    """Two table cells: the ratios' median (min–max), and in how many rounds the ratio was below 1."""
    return f"{rng(ratios, lambda v: f'{v:.{digits}f}')} | {sum(r < 1 for r in ratios)} of {len(ratios)}"


# The workloads in the order of the tables (others after them).
ORDER = ["bert_infer", "gpt2_generate", "train", "train_loop", "serve"]


def ordered(workloads):
    return sorted(workloads, key=lambda w: ORDER.index(w) if w in ORDER else len(ORDER))


def labels(runs, w):
    """PyTorch's default first, then every gpu-arena label of workload w."""
    rest = sorted(a for x, a in runs if x == w and a != "default")
    return (["default"] if (w, "default") in runs else []) + rest


def table(columns, rows, first=False):
    """Prints a markdown table (after a blank line unless it is the first), if it has rows."""
    if not rows:
        return
    if not first:
        print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    print("\n".join(rows))


def main():
    runs = load(sys.argv[1:])
    workloads = ordered({w for w, _ in runs})
    rows = []
    for w in workloads:
        sums = {r["checksum"] for a in labels(runs, w) for proc in runs.get((w, a), []) for r in proc}
        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p]
            if not procs:
                continue
            n = max(len(p) for p in procs)
            ratios = [max(p[i]["ratio"] for p in procs if len(p) > i) for i in range(n)]
            cold = [p[0]["driver_calls"] for p in procs]
            steady = [r["driver_calls"] * 1000 / max(r["allocs"], 1) for p in procs for r in p[1:]]
            rows.append(f"| {w} | {a} | {len(procs)} × {n} | {', '.join(f'{x:.4f}' for x in ratios)} | "
                        f"{rng(cold, lambda v: f'{v:.0f}')} | {max(steady):.2f} | "
                        f"{'all equal' if len(sums) == 1 else 'DIFFER: ' + ', '.join(map(str, sorted(sums, key=str)))} |")
    table(["workload", "allocator", "processes × repetitions",
           "peak physical / peak live, every repetition (max over processes)", "driver calls, repetition 1",
           "driver calls per 1000 allocs, repetitions 2..N (max)", "checksums"], rows, first=True)
    rows = []
    for w in workloads:
        med = {}
        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p]
            if not procs:
                continue
            cold = [p[0]["time_s"] for p in procs]
            steady = [st.median(r["time_s"] for r in p[1:]) for p in procs if len(p) > 1]
            med[a] = (st.median(cold), st.median(steady) if steady else None)
            us_cold = [p[0].get("us_per_call") for p in procs]
            us_steady = [r.get("us_per_call") for p in procs for r in p[1:]]
            ratio = ("", "")
            if a != "default" and "default" in med:
                d, g = med["default"], med[a]
                ratio = (f"{g[0] / d[0]:.3f}", f"{g[1] / d[1]:.3f}" if g[1] and d[1] else "–")
            rows.append(f"| {w} | {a} | {rng(cold, lambda v: f'{v:.2f}')} | {rng(steady, lambda v: f'{v:.2f}')} | "
                        f"{ratio[0]} | {ratio[1]} | {rng(us_cold, lambda v: f'{v:.3f}')} | {rng(us_steady, lambda v: f'{v:.3f}')} |")
    table(["workload", "allocator", "time, repetition 1 (s)", "time, repetitions 2..N (s)", "gpu-arena / default, rep 1",
           "gpu-arena / default, steady", "allocator time per call (µs), rep 1", "per call, steady"], rows)
    rows = []
    for w in workloads:
        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p]
            if a == "default" or not procs:
                continue
            n = max(len(p) for p in procs)
            per_rep = [max(p[i]["driver_calls"] * 1000 / max(p[i]["allocs"], 1) for p in procs if len(p) > i)
                       for i in range(n)]
            rows.append(f"| {w} | {a} | {' / '.join(f'{x:.2f}' for x in per_rep)} |")
    table(["workload", "allocator", "driver calls per 1000 allocs, each repetition (max over processes)"], rows)
    rows = []
    for w in workloads:
        base = [p for p in runs.get((w, "default"), []) if p]
        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p]
            if a == "default" or not procs:
                continue
            n = min(len(p) for p in procs)
            s0 = n
            while s0 > 1 and all(p[s0 - 1]["driver_calls"] == 0 for p in procs):
                s0 -= 1
            if s0 == n:
                rows.append(f"| {w} | {a} | none of {n} | – | – | – | – |")
                continue
            t = [st.median(r["time_s"] for r in p[s0:n]) for p in procs]
            d = [st.median(r["time_s"] for r in p[s0:n]) for p in base if len(p) >= n]
            us = [r.get("us_per_call") for p in procs for r in p[s0:n]]
            ratio = f"{st.median(t) / st.median(d):.3f}" if d else "–"
            rows.append(f"| {w} | {a} | {s0 + 1}–{n} of {n} | {rng(t, lambda v: f'{v:.2f}')} | {rng(d, lambda v: f'{v:.2f}')} | "
                        f"{ratio} | {rng(us, lambda v: f'{v:.3f}')} |")
    table(["workload", "allocator", "settled: repetitions with no VMM call in any process", "time in them (s)",
           "default, same repetitions (s)", "gpu-arena / default", "allocator time per call in them (µs)"], rows)
    rows = []
    for w in workloads:
        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p and p[0].get("stitch")]
            if not procs:
                continue
            n = max(len(p) for p in procs)
            cells = []
            for i in range(n):
                tot = defaultdict(int)
                for p in procs:
                    if len(p) > i and p[i].get("stitch"):
                        for k, v in p[i]["stitch"].items():
                            tot[k] += v
                cells.append(f"{tot['reused']} / {tot['repaired']} / {tot['made']} ({tot['made_pages']} pages)")
            rows.append(f"| {w} | {a} | {' · '.join(cells)} |")
    table(["workload", "allocator",
           "stitched ranges reused / repaired / made (pages mapped anew), each repetition (sum over processes)"], rows)
    first_repetition(runs, workloads)
    paired_time(runs, workloads)
    paired(runs, workloads)
    gpu_time(runs, workloads)


def first_repetition(runs, workloads):
    """Where repetition 1's extra time goes: gpu-arena's time in it over the default's (medians of
    processes), the time its VMM calls took, and the allocator's own time (inside its calls, the VMM
    calls included), per process: median (min-max)."""
    rows = []
    for w in workloads:
        base = [p[0]["time_s"] for p in runs.get((w, "default"), []) if p]
        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p and p[0].get("calls") and p[0].get("us_per_call")]
            if a == "default" or not procs or not base:
                continue
            extra = st.median(p[0]["time_s"] for p in procs) - st.median(base)
            vmm = [p[0]["calls"]["vmm_nanos"] / 1e6 for p in procs]
            own = [p[0]["us_per_call"] * (p[0]["allocs"] + p[0].get("frees", 0)) / 1e3 for p in procs]
            rows.append(f"| {w} | {a} | {extra * 1e3:+.0f} | {rng(vmm, lambda v: f'{v:.0f}')} | "
                        f"{rng(own, lambda v: f'{v:.0f}')} |")
    if rows:
        table(["workload", "allocator", "repetition 1: time over the default's, medians of processes (ms)",
               "its VMM calls' time (ms)", "the allocator's own time in it, VMM calls included (ms)"], rows)


def paired_time(runs, workloads):
    """Per round, each gpu-arena label's process time against the default's of the same round."""
    rows = []
    for w in workloads:
        if (w, "default") not in runs:
            continue
        for a in [a for a in labels(runs, w) if a != "default"]:
            base, other = runs[(w, "default")], runs[(w, a)]
            cells = []
            for pick in (lambda p: p[0]["time_s"] if p else None,
                         lambda p: st.median(r["time_s"] for r in p[1:]) if len(p) > 1 else None):
                ratios = by_round(base, other, pick)
                cells.append(lower_cells(ratios, 3) if ratios else "– | –")
            rows.append(f"| {w} | {a} | {min(len(base), len(other))} | {cells[0]} | {cells[1]} |")
    table(["workload", "allocator", "rounds", "time / default, repetition 1, per round: median (min–max)",
           "rounds faster", "time / default, repetitions 2..N, per round", "rounds faster"], rows)


def paired(runs, workloads):
    """Per round, each gpu-arena label's allocator time per settled call against the first label's."""
    rows = []
    for w in workloads:
        arena = [a for a in labels(runs, w) if a != "default"]
        if len(arena) < 2:
            continue
        ref = arena[0]

        def per_call(p):
            xs = [r["us_per_call"] for r in p[1:] if r.get("us_per_call") is not None]
            return st.median(xs) if xs else None

        for a in arena[1:]:
            ratios = by_round(runs[(w, ref)], runs[(w, a)], per_call)
            if ratios:
                rows.append(f"| {w} | {a} / {ref} | {len(ratios)} | {lower_cells(ratios, 3)} |")
    table(["workload", "labels", "rounds", "allocator time per settled call, ratio per round: median (min–max)",
           "rounds where it is the lower"], rows)


def gpu_time(runs, workloads):
    """With torch_bench.py --profile: per allocator, the GPU's busy time and its kernels' time in the
    settled repetitions (each process's median over repetitions 2..N, then the median over processes),
    and each gpu-arena label's kernel time against the default's of the same round."""
    rows, pairs_rows = [], []
    for w in workloads:
        def settled(p, key):
            xs = [r["gpu"][key] for r in p[1:] if isinstance(r.get("gpu"), dict) and key in r["gpu"]]
            return st.median(xs) if xs else None

        for a in labels(runs, w):
            procs = [p for p in runs.get((w, a), []) if p]
            busy = [x for x in (settled(p, "busy_ms") for p in procs) if x]
            kern = [x for x in (settled(p, "kernel_ms") for p in procs) if x]
            copy = [x for x in (settled(p, "memcpy_ms") for p in procs) if x is not None]
            if not busy:
                continue
            rows.append(f"| {w} | {a} | {len(busy)} | {rng(busy, lambda v: f'{v:.1f}')} | "
                        f"{rng(kern, lambda v: f'{v:.1f}')} | {rng(copy, lambda v: f'{v:.1f}')} |")
            if a != "default" and (w, "default") in runs:
                ratios = by_round(runs[(w, "default")], runs[(w, a)], lambda p: settled(p, "kernel_ms"))
                if ratios:
                    pairs_rows.append(f"| {w} | {a} | {len(ratios)} | {lower_cells(ratios, 4)} |")
    table(["workload", "allocator", "processes", "GPU busy per settled repetition (ms)",
           "of it in kernels (ms)", "copies (ms)"], rows)
    table(["workload", "allocator", "rounds", "kernel time / default's, settled, per round: median (min–max)",
           "rounds lower"], pairs_rows)


if __name__ == "__main__":
    main()
