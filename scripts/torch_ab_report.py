"""Tables of a within-process A/B (scripts/torch_alternate.sh with AB_WITHIN=1): two builds of gpu-arena
in each process, repetitions alternating between them (scripts/torch_bench.py --ab).

usage: python3 scripts/torch_ab_report.py LOG...

Each build's first repetition in a process lays out its memory and is left out; the others are settled.
For each workload and process: each build's allocator time per call (report:1, inside its calls)
in its settled repetitions, median (min-max), and the second build's against the first's two ways:
the ratio of the medians, and each settled repetition of the second build against the mean of the
first build's repetitions just before and after it (neighbours a few seconds apart: what drifts over
a process cancels), median (min-max) and how many were lower. Then the same over all processes, the
repetitions' wall time paired the same way, the driver calls per 1,000 allocations in settled
repetitions, and whether every checksum of a workload is the same."""
import json
import re
import statistics
import sys

from torch_report import lower_cells, rng


def read(paths):
    """{workload: [process, ...]}, a process being (names, {rep: record})."""
    out = {}
    for path in paths:
        cur = None
        for line in open(path):
            m = re.match(r"== process (\d+) (\S+) ab (\S+) (\S+)", line)
            if m:
                cur = ((m.group(3), m.group(4)), {})
                out.setdefault(m.group(2), []).append(cur)
            elif line.startswith("REP ") and cur is not None:
                rec = json.loads(line[4:])
                cur[1][rec["rep"]] = rec
    return out


def spread(xs, digits=3):
    """The values' median (min–max), as torch_report.py writes them."""
    return rng(xs, lambda v: f"{v:.{digits}f}")


def settled(reps, name):
    """The repetitions of build `name` after its first, in order: [(rep, record)]."""
    mine = sorted((r, x) for r, x in reps.items() if x["allocator"] == "ab " + name)
    return mine[1:]


def paired(reps, names, key):
    """Each settled repetition of names[1] against the mean of names[0]'s settled neighbours."""
    first = dict(settled(reps, names[0]))
    ratios = []
    for r, x in settled(reps, names[1]):
        around = [first[q][key] for q in (r - 1, r + 1) if q in first and first[q].get(key)]
        if around and x.get(key):
            ratios.append(x[key] / statistics.mean(around))
    return ratios


def lower(ratios):
    return f"{sum(q < 1 for q in ratios)} of {len(ratios)}"


def main():
    data = read(sys.argv[1:])
    for w, procs in data.items():
        names = procs[0][0]
        print(f"\n### {w}: {names[1]} against {names[0]}, two builds in each process\n")
        print(f"| process | first | {names[0]}: µs per call | {names[1]}: µs per call | ratio of medians "
              f"| {names[1]} / neighbours | lower |")
        print("|---|---|---|---|---|---|---|")
        all_pairs, all_times, meds = [], [], []
        calls = {n: [] for n in names}
        sums = set()
        for i, (nm, reps) in enumerate(procs, 1):
            per = {n: [x["us_per_call"] for _, x in settled(reps, n) if x.get("us_per_call")] for n in nm}
            pr = paired(reps, nm, "us_per_call")
            all_pairs += pr
            all_times += paired(reps, nm, "time_s")
            for n in nm:
                for _, x in settled(reps, n):
                    calls[n].append(1000 * (x.get("driver_calls") or 0) / max(x.get("allocs") or 1, 1))
            sums |= {x.get("checksum") for x in reps.values()}
            first = reps[min(reps)]["allocator"][3:] if reps else "–"
            ratio = statistics.median(per[nm[1]]) / statistics.median(per[nm[0]]) if all(per.values()) else None
            if ratio:
                meds.append(ratio)
            print(f"| {i} | {first} | {spread(per[nm[0]])} | {spread(per[nm[1]])} | "
                  f"{'–' if ratio is None else f'{ratio:.3f}'} | {lower_cells(pr, 3)} |")
        print(f"\nAll processes: ratio of medians {spread(meds)}, lower in {lower(meds)}; each settled "
              f"repetition against its neighbours {spread(all_pairs)}, lower in {lower(all_pairs)}.")
        print(f"Wall time of a repetition, {names[1]} / neighbours: {spread(all_times)}, lower in {lower(all_times)}.")
        for n in names:
            print(f"VMM calls per 1,000 allocations in {n}'s settled repetitions: {spread(calls[n], 2)}.")
        print(f"Checksums: {'all equal' if len(sums) == 1 else f'{len(sums)} different'}.")


if __name__ == "__main__":
    main()
