"""What would a placement planned from one repetition give? (a simulation on the recorded traces, nothing built)

An allocator that sees a workload repeat the same calls (a training step, an
inference pass over the same inputs) could plan the next repetition's
blocks offline, as static memory planners do (TFLite's greedy-by-size,
XLA's heap simulator; STWeaver for PyTorch): each block that is allocated
and freed within a repetition gets a fixed offset in one region, chosen so
that blocks live at the same time never overlap. A call that matches the
plan then costs a comparison and an addition (no search, no page walk), and
the region, committed once in large handles, needs no driver call while
the plan holds.

For each trace (with repetition marks, `docs/pytorch/traces/*-r3`), this
script takes the second recorded repetition and reports:

- whether the third repetition makes the same calls in the same order
  (sizes, and which block each free frees), so a plan made from the second
  would hold in the third;
- how many of a repetition's calls concern blocks allocated and freed within
  it (the calls a plan would serve);
- the peak of those blocks' live bytes (no packing can do better) and the
  size of the region greedy-by-size packing needs for them;
- the smallest period of the repetition's calls, and of its allocations'
  sizes alone (a training loop's steps inside a repetition of several):
  what an allocator with no mark from the program could find;
- the whole process's peak committed / peak live if every other block kept
  its own memory and the plan region stayed committed: (the peak of the
  other blocks' live bytes + the region) / the peak of all live bytes.

    python3 scripts/plan_sim.py [--min-kib=N] TRACE...

--min-kib=N plans only blocks of N KiB or more (the others count as placed
at their live bytes, no better than any allocator can). The region is packed
in three orders (largest first, largest size x lifetime first, longest-lived
first) and the smallest is kept.
"""
import gzip
import json
import sys
from bisect import bisect_left, insort


def events(path):
    """(action, addr, size) of each alloc, free_completed and rep_end, in order."""
    with gzip.open(path, "rt") as f:
        for line in f:
            e = json.loads(line)
            if e["action"] in ("alloc", "free_completed", "rep_end"):
                yield e["action"], e["addr"], e["size"]


def blocks_by_rep(path):
    """Per repetition: the calls [(kind, block id)] and each block's (size, alloc index, free index or None),
    indices counted over the whole trace."""
    live = {}
    blocks = []
    reps = [[]]
    t = 0
    for action, addr, size in events(path):
        if action == "rep_end":
            reps.append([])
            continue
        if action == "alloc":
            b = len(blocks)
            blocks.append([size, t, None])
            live[addr] = b
            reps[-1].append(("a", b))
        else:
            b = live.pop(addr)
            blocks[b][2] = t
            reps[-1].append(("f", b))
        t += 1
    return [r for r in reps if r], blocks


def shape(calls, blocks):
    """A repetition's calls as sizes and relative block numbers: equal for two repetitions that make the
    same calls in the same order."""
    first = {}
    out = []
    for kind, b in calls:
        if kind == "a":
            first[b] = len(first)
            out.append(("a", blocks[b][0]))
        else:
            out.append(("f", first.get(b, -1), blocks[b][0]))
    return out


ORDERS = {
    "size": lambda it: (-it[0], it[1]),
    "area": lambda it: (-it[0] * (it[2] - it[1]), it[1]),
    "lifetime": lambda it: (-(it[2] - it[1]), -it[0]),
    "start": lambda it: (it[1],),
}


def pack(items, order_name):
    """Offsets for [(size, start, end)] (half-open lifetimes) so that blocks live at once never overlap:
    in the order `order_name` names (largest first: greedy by size), each at the lowest offset clear of
    the placed blocks whose lifetimes overlap its own. Returns the region's size."""
    key = ORDERS[order_name]
    order = sorted(range(len(items)), key=lambda i: key(items[i]))
    width = 2048  # lifetime buckets, so a block is checked only against blocks near it in time
    buckets = {}
    j_info = {}
    top = 0
    for i in order:
        size, s, e = items[i]
        seen = set()
        near = []
        for k in range(s // width, (e - 1) // width + 1):
            for j in buckets.get(k, ()):
                if j not in seen:
                    seen.add(j)
                    _, s2, e2, _ = j_info[j]
                    if s2 < e and s < e2:
                        near.append((j_info[j][3], j_info[j][0]))
        near.sort()
        off = 0
        for o, sz in near:
            if o >= off + size:
                break
            off = max(off, o + sz)
        j_info[i] = (size, s, e, off)
        top = max(top, off + size)
        for k in range(s // width, (e - 1) // width + 1):
            buckets.setdefault(k, []).append(i)
    return top


def peak(intervals, end_default):
    """Peak of live bytes over [(size, start, end or None)]."""
    ev = []
    for size, s, e in intervals:
        ev.append((s, size))
        ev.append((e if e is not None else end_default, -size))
    ev.sort(key=lambda x: (x[0], x[1]))
    cur = top = 0
    for _, d in ev:
        cur += d
        top = max(top, cur)
    return top


def tokens(calls, blocks):
    """A repetition's calls as tokens that a shift in time leaves alike: an allocation's size, a free's size
    and how many allocations ago its block was allocated."""
    out, count, at = [], 0, {}
    for kind, b in calls:
        if kind == "a":
            at[b] = count
            count += 1
            out.append(("a", blocks[b][0]))
        else:
            out.append(("f", blocks[b][0], count - at.get(b, -1)))
    return out


def smallest_period(seq):
    """The smallest p such that seq repeats with period p throughout (len(seq) if none is shorter)."""
    n = len(seq)
    # Prefix function (Knuth-Morris-Pratt): n - pi[-1] is the smallest period of a string that repeats.
    pi = [0] * n
    for i in range(1, n):
        k = pi[i - 1]
        while k and seq[i] != seq[k]:
            k = pi[k - 1]
        if seq[i] == seq[k]:
            k += 1
        pi[i] = k
    return n - pi[-1] if n else 0


def main():
    args = sys.argv[1:]
    min_size = 0
    if args and args[0].startswith("--min-kib="):
        min_size = int(args.pop(0).split("=")[1]) << 10
    for path in args:
        reps, blocks = blocks_by_rep(path)
        r2 = reps[1]
        start = min(blocks[b][1] for k, b in r2 if k == "a")
        end = start + len(r2)
        same = len(reps) > 2 and shape(reps[1], blocks) == shape(reps[2], blocks)
        inside = [b for k, b in r2 if k == "a" and blocks[b][2] is not None and blocks[b][2] < end
                  and blocks[b][0] >= min_size]
        inside_set = set(inside)
        served = sum(1 for k, b in r2 if b in inside_set)
        items = [(blocks[b][0], blocks[b][1] - start, blocks[b][2] - start) for b in inside]
        regions = {name: pack(items, name) for name in ORDERS}
        best = min(regions, key=regions.get)
        region = regions[best]
        trans_peak = peak(items, end - start)
        # Every block live at some point of the repetition, and those outside the plan.
        during = [(sz, max(s, start), min(e, end) if e is not None else end)
                  for sz, s, e in blocks if s < end and (e is None or e > start)]
        others = [(sz, max(s, start), min(e, end) if e is not None else end)
                  for b, (sz, s, e) in enumerate(blocks)
                  if b not in inside_set and s < end and (e is None or e > start)]
        all_peak = peak(during, end)
        other_peak = peak(others, end)
        mib = 1 << 20
        print(f"{path}: repetition 2: {len(r2)} calls, {len(inside)} blocks of {min_size >> 10} KiB or more "
              f"allocated and freed in it ({served / len(r2):.1%} of the calls); repetition 3 makes the same "
              f"calls: {same}")
        print(f"  those blocks' peak live {trans_peak / mib:.1f} MiB; region packed "
              + ", ".join(f"by {n} {r / mib:.1f} MiB ({r / trans_peak:.4f})" for n, r in regions.items()))
        period = smallest_period(tokens(r2, blocks))
        sizes = [blocks[b][0] for k, b in r2 if k == "a"]
        size_period = smallest_period(sizes)
        print(f"  its calls (sizes, and which block each free frees) repeat every {period} calls "
              f"({len(r2) / period:.2f} times in it); the sizes of its allocations alone every {size_period} "
              f"allocations ({len(sizes) / size_period:.2f} times)")
        print(f"  peak live of all blocks {all_peak / mib:.1f} MiB, of the others {other_peak / mib:.1f} MiB; "
              f"(others' peak + region) / peak live = {(other_peak + region) / all_peak:.4f}")


if __name__ == "__main__":
    main()
