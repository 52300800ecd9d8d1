"""The table of scripts/layout_ensemble.sh's raw lines: per trace and part, over the layouts (one per
prelude), how many keep peak committed / peak live above 1.02, how many call the driver more than once
per 1,000 allocations in repetition 2, in any repetition from the second on, and in the last one (3
for the traces recorded with three, 16 for train run on; serve plays five times), and the mean excess in 2 MiB pages. For `work`, the ratio is the whole process's with the trace's weights in a tag of their own:
(work's peak committed + the `weights` line's) / (work's peak live + the `weights` line's), the weights
being allocated first and kept to the end. Several logs: one table each, then one line of totals each,
with the VMM calls per 1,000 allocations of the repetitions from the second summed over the layouts, per
trace.

usage: python3 scripts/layout_ensemble.py LOG [LOG...]"""
import re
import sys

LINE = re.compile(r"(\S+) (\S+) prelude (\S+): peak committed ([0-9.]+) MiB, peak live ([0-9.]+) MiB, "
                  r"excess ([0-9.]+) pages, ratio ([0-9.]+); VMM calls per 1000 by repetition (.*)")


def table(path):
    weights, rows = {}, {}
    for line in open(path):
        m = LINE.match(line)
        if not m:
            continue
        trace, part, _, pc, pl, excess, ratio, reps = m.groups()
        reps = [float(x) for x in reps.split()]
        if part == "weights":
            weights[trace] = (float(pc), float(pl))
            continue
        rows.setdefault((trace, part), []).append((float(pc), float(pl), float(excess), float(ratio), reps))
    out = ["| trace | part | layouts | > 1.02 | ratio, min–max | rep 2: > 1 VMM call / 1,000 | any rep from 2: > 1 / 1,000 | last rep: > 1 / 1,000 | mean excess, pages |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    totals = [0, 0, 0, 0, 0]
    calls = {}
    for (trace, part), v in rows.items():
        ratios = []
        for pc, pl, _, ratio, _ in v:
            if part == "work":
                wc, wl = weights[trace]
                ratio = (pc + wc) / (pl + wl)
            ratios.append(ratio)
        over = sum(r > 1.02 for r in ratios)
        rep2 = sum(reps[1] > 1.0 for *_, reps in v)
        later = sum(max(reps[1:]) > 1.0 for *_, reps in v)
        lasts = [reps[-1] for *_, reps in v if len(reps) > 2]
        later_n = sum(r > 1.0 for r in lasts) if lasts else None
        excess = sum(x[2] for x in v) / len(v)
        name = part if part == "all" else "work, weights tagged"
        out.append(f"| {trace} | {name} | {len(v)} | {over} | {min(ratios):.4f}–{max(ratios):.4f} | {rep2} | {later} | "
                   f"{'–' if later_n is None else later_n} | {excess:.2f} |")
        totals[0] += len(v)
        totals[1] += over
        totals[2] += rep2
        totals[3] += later_n or 0
        totals[4] += later
        calls[trace] = calls.get(trace, 0.0) + sum(sum(reps[1:]) for *_, reps in v)
    return out, totals, calls


summary = []
for path in sys.argv[1:]:
    out, t, calls = table(path)
    print(f"### {path}\n")
    print("\n".join(out) + "\n")
    summary.append(f"{path}: of {t[0]} layouts, {t[1]} over 1.02, {t[2]} with more than 1 VMM call per 1,000 in "
                   f"repetition 2, {t[4]} in any from the second, {t[3]} in the last; summed per 1,000 from the "
                   f"second: " + ", ".join(f"{k} {c:.1f}" for k, c in calls.items()))
print("\n".join(summary))
