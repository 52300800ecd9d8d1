"""Runs a recorded periodic trace (one training step after another, every step the same allocations)
on for more steps than were recorded, so that a host replay can show whether an allocator ever
settles on it.

The trace is cut into steps: a step starts at an allocation of exactly `--step-size` bytes that comes
at least `--gap` allocations after the previous one of that size (for the DDP trace of
docs/multi-gpu/traces/, the first 128 MiB float32 log-softmax of each step: `--step-size 134217728`).
Every free is written as (steps back, index of the allocation in that step). The last full step
must equal the two before it; it is appended `--steps` times, with fresh addresses, and a repetition
mark (`rep_end`) follows every `--per-rep` steps (the last two partial steps of the recording are
dropped). A block the recorded steps leave live is freed where the template frees the block of its
place; blocks never freed in the recording (weights, optimizer states) stay live.

    python3 scripts/extend_trace.py IN.trace.jsonl.gz OUT.trace.jsonl.gz --steps 1600 --per-rep 100 \\
        --step-size 134217728
    bash scripts/replay_reps.sh OUT.trace.jsonl.gz
"""
import argparse
import gzip
import json


def cut(events, step_size, gap):
    """The trace's events cut into steps (the first part, before the first step start, is step 0)."""
    steps, cur, since = [], [], gap
    for e in events:
        if e["action"] == "alloc":
            since += 1
            if e["size"] == step_size:
                if since > gap:
                    steps.append(cur)
                    cur = []
                since = 0
        cur.append(e)
    steps.append(cur)
    return steps


def relative(steps):
    """Each step as ("A", size) and ("F", steps back, allocation index) items."""
    where, out = {}, []
    for si, st in enumerate(steps):
        ref, k = [], 0
        for e in st:
            if e["action"] == "alloc":
                where[e["addr"]] = (si, k)
                ref.append(("A", e["size"]))
                k += 1
            elif e["action"] == "free_completed":
                s, i = where.pop(e["addr"])
                ref.append(("F", si - s, i))
        out.append(ref)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--steps", type=int, required=True, help="steps appended")
    ap.add_argument("--per-rep", type=int, default=100, help="steps per repetition mark")
    ap.add_argument("--step-size", type=int, required=True, help="bytes of the allocation that starts a step")
    ap.add_argument("--gap", type=int, default=100, help="allocations between two step starts, at least")
    a = ap.parse_args()
    with gzip.open(a.src, "rt") as f:
        events = [json.loads(line) for line in f if '"rep_end"' not in line]
    steps = relative(cut(events, a.step_size, a.gap))
    if len(steps) < 6:
        raise SystemExit(f"only {len(steps)} steps found: check --step-size and --gap")
    template = steps[-3]
    if not steps[-4] == steps[-5] == template:
        raise SystemExit("the last full steps differ: the trace is not periodic at its end")
    out = steps[:-2] + [template] * a.steps
    addr, ids, allocs = 1 << 40, {}, 0
    with gzip.open(a.dst, "wt") as f:
        for si, ref in enumerate(out):
            k = 0
            for r in ref:
                if r[0] == "A":
                    ids[(si, k)] = addr
                    f.write(json.dumps({"action": "alloc", "addr": addr, "size": r[1], "stream": 0}) + "\n")
                    addr += max(r[1], 1 << 20)
                    k += 1
                    allocs += 1
                else:
                    old = ids.pop((si - r[1], r[2]))
                    f.write(json.dumps({"action": "free_completed", "addr": old, "size": 0, "stream": 0}) + "\n")
            if (si + 1) % a.per_rep == 0:
                f.write(json.dumps({"action": "rep_end", "addr": 0, "size": 0, "stream": 0}) + "\n")
    print(
        f"the recording's start, {len(steps) - 3} recorded steps and {a.steps} copies of the last full one: "
        f"{allocs} allocations, {len(ids)} live at the end"
    )


if __name__ == "__main__":
    main()
