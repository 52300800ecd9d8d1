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
    python3 scripts/extend_trace.py --self-test      (CI: a made-up periodic trace, run on and checked)
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


def self_test():
    """A made-up trace: a prelude (a block that stays), then steps of a 4 KiB block kept to the next
    step, a step-start block of 1 MiB and a 2 KiB block freed at once; run on by 5 steps, every free
    must name a live block and every allocation a free address, and the steps must repeat."""
    import os
    import tempfile

    ev, addr, carry = [], 1, None
    ev.append({"action": "alloc", "addr": 999, "size": 512, "stream": 0})
    for _ in range(6):
        a, b, c = addr, addr + 1, addr + 2
        addr += 3
        ev.append({"action": "alloc", "addr": a, "size": 1 << 20, "stream": 0})
        ev.append({"action": "alloc", "addr": b, "size": 4096, "stream": 0})
        if carry is not None:
            ev.append({"action": "free_completed", "addr": carry, "size": 4096, "stream": 0})
        ev.append({"action": "alloc", "addr": c, "size": 2048, "stream": 0})
        ev.append({"action": "free_completed", "addr": c, "size": 2048, "stream": 0})
        ev.append({"action": "free_completed", "addr": a, "size": 1 << 20, "stream": 0})
        carry = b
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.jsonl.gz"), os.path.join(d, "out.jsonl.gz")
        with gzip.open(src, "wt") as f:
            f.writelines(json.dumps(e) + "\n" for e in ev)
        run([src, dst, "--steps", "5", "--per-rep", "2", "--step-size", str(1 << 20), "--gap", "0"])
        with gzip.open(dst, "rt") as f:
            out = [json.loads(line) for line in f]
    live, allocs, marks = set(), 0, 0
    for e in out:
        if e["action"] == "alloc":
            assert e["addr"] not in live, e
            live.add(e["addr"])
            allocs += 1
        elif e["action"] == "free_completed":
            assert e["addr"] in live, e
            live.discard(e["addr"])
        else:
            marks += 1
    # prelude 1 + recorded steps kept (6 - 2 = 4) * 3 + 5 copies * 3
    assert allocs == 1 + 4 * 3 + 5 * 3, allocs
    assert len(live) == 2, live  # the prelude's block and the last step's kept one
    assert marks == (1 + 4 + 5) // 2, marks
    print("extend_trace self-test: ok")


def main():
    import sys

    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    run(sys.argv[1:])


def run(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--steps", type=int, required=True, help="steps appended")
    ap.add_argument("--per-rep", type=int, default=100, help="steps per repetition mark")
    ap.add_argument("--step-size", type=int, required=True, help="bytes of the allocation that starts a step")
    ap.add_argument("--gap", type=int, default=100, help="allocations between two step starts, at least")
    a = ap.parse_args(argv)
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
