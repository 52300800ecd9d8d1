"""Where two allocation traces (the format of shared/traces/README.md) first part: each trace becomes a
sequence of allocations (by size) and frees (which allocation, by its number, and its size), addresses
left out; the first place they differ is printed with the events around it, and how many events each
has.

    python3 scripts/trace_diff.py A.trace.jsonl.gz B.trace.jsonl.gz [--context 6] [--actions alloc,free_completed]
"""
import argparse
import gzip
import json


def normalized(path, actions):
    """The trace's events of `actions` as (action, size, allocation number)."""
    seq, live, n = [], {}, 0
    with gzip.open(path, "rt") as f:
        for line in f:
            e = json.loads(line)
            a = e["action"]
            if a not in actions:
                continue
            if a == "alloc":
                live[e["addr"]] = (n, e["size"])
                seq.append(("alloc", e["size"], n))
                n += 1
            else:
                # A free names its allocation (its number and size; traces
                # differ in what size they give a free).
                k, size = (live.pop if a == "free_completed" else live.get)(e["addr"], (None, 0))
                seq.append((a, size, k))
    return seq


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--context", type=int, default=6)
    ap.add_argument("--actions", default="alloc,free_requested,free_completed")
    args = ap.parse_args()
    actions = set(args.actions.split(","))
    a, b = normalized(args.a, actions), normalized(args.b, actions)
    print(f"events: {len(a)} and {len(b)}")
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if i is None:
        print("the same" if len(a) == len(b) else f"one is a prefix of the other, up to event {min(len(a), len(b))}")
        return
    allocs = sum(1 for x in a[:i] if x[0] == "alloc")
    print(f"first difference at event {i} (after {allocs} allocations):")
    for name, s in (("A", a), ("B", b)):
        for j in range(max(0, i - args.context), min(len(s), i + args.context)):
            mark = ">" if j == i else " "
            print(f"{name}{mark} {j:8d} {s[j][0]:15s} {s[j][1]:>12d} #{s[j][2]}")


if __name__ == "__main__":
    main()
