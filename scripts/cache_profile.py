"""Per-call instructions and L1 data misses of one settled repetition, by layer, from two cachegrind
outputs of examples/cabi_replay (repetitions N-1 and N); see scripts/cache_profile.sh."""
import collections
import gzip
import json
import os
import sys

LAYERS = [  # (label, function-name prefixes), first match wins
    ("C ABI and global arena (locks, shard, thread cache, timing)", ("gpu_arena_", "gpu_arena::api::", "gpu_arena::global::")),
    ("arena (block routing, slabs' callers)", ("gpu_arena::arena::",)),
    ("policy (TLSF placement, slabs)", ("gpu_arena::policy::",)),
    ("commit: stitched ranges", ("gpu_arena::commit::stitch",)),
    ("commit: pages, units, mappings, fences", ("gpu_arena::commit::", "<gpu_arena::commit")),
    ("other (sync, clock, stamps)", ("gpu_arena::", "<gpu_arena::")),
]


def load(path, by_file=False):
    ev, fl, fn, acc = None, "", None, collections.defaultdict(lambda: [0, 0])
    for line in open(path):
        if line.startswith("events:"):
            ev = line.split()[1:]
        elif line.startswith("fl="):
            fl = line[3:].strip()
        elif line.startswith("fn="):
            fn = line[3:].strip()
            if by_file:
                fn = f"{fn}\t{fl}"
        elif line[:1].isdigit() and fn:
            v = [int(x) for x in line.split()[1:]] + [0] * len(ev)
            a = acc[fn]
            a[0] += v[ev.index("Ir")]
            # Without cache simulation (INSTR_ONLY) there are no misses to count.
            if "D1mr" in ev:
                a[1] += v[ev.index("D1mr")] + v[ev.index("D1mw")]
    return acc


def layer(fn):
    if "gpu_arena" not in fn or "driver::" in fn or "replay" in fn:
        return None
    # Generic impls print as `<impl ... for gpu_arena::commit::Commit<D>>::f` or
    # `gpu_arena::commit::live::<impl gpu_arena::commit::Commit<D>>::f`.
    name = fn.split(" as ")[0]
    for label, prefixes in LAYERS:
        if any(name.startswith(p) for p in prefixes):
            return label
    return LAYERS[-1][0]


def last_rep_calls(trace):
    """Allocations and frees between the trace's last two repetition marks: the repetition that
    RUN_ON repeats (gpu_arena::replay::run_on), as gpu_arena::replay::read_trace_marked reads it;
    with WHOLE set, all of them (one pass of a trace without marks)."""
    marks, n = [], 0
    if os.environ.get("WHOLE"):
        with gzip.open(trace, "rt") as f:
            return sum(json.loads(line).get("action") in ("alloc", "free_completed") for line in f)
    with gzip.open(trace, "rt") as f:
        for line in f:
            action = json.loads(line).get("action")
            if action in ("alloc", "free_completed"):
                n += 1
            elif action == "rep_end":
                marks.append(n)
    return marks[-1] - marks[-2]


def main():
    a, b, trace = load(sys.argv[1]), load(sys.argv[2]), sys.argv[3]
    calls = last_rep_calls(trace)
    rows = collections.defaultdict(lambda: [0, 0])
    for fn in set(a) | set(b):
        lab = layer(fn)
        if lab is None:
            continue
        rows[lab][0] += b[fn][0] - a[fn][0]
        rows[lab][1] += b[fn][1] - a[fn][1]
    total = [sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())]
    how = "caches cold between calls" if total[1] else "instructions only"
    print(f"{trace}: one settled repetition, {calls} allocator calls, {how}")
    unit = "4 KiB pages touched" if os.environ.get("PAGES") else "lines touched"
    print(f"| layer | instructions per call | L1 data misses ({unit}) per call |")
    print(f"|:---|---:|---:|")
    def lines(ms):  # no misses at all: counted without cache simulation (INSTR_ONLY)
        return f"{ms / calls:.1f}" if total[1] else "–"
    for lab, _ in LAYERS:
        ir, ms = rows.get(lab, (0, 0))
        print(f"| {lab} | {ir / calls:.0f} | {lines(ms)} |")
    print(f"| **all** | **{total[0] / calls:.0f}** | **{lines(total[1])}** |")
    # Library code the allocator calls (memcpy, locks) counts in no layer above, and stack lines a
    # call touches count in whichever function touches them first. The whole process's figures
    # include the harness and the touching of other memory, the same for any build of the
    # allocator: compare builds by their difference.
    whole = [sum(b[fn][k] - a[fn][k] for fn in set(a) | set(b)) for k in (0, 1)]
    misses = f", {whole[1] / calls:.2f} L1 data misses" if total[1] else ""
    print(f"whole process (harness and other memory included), per call: {whole[0] / calls:.0f} "
          f"instructions{misses}")
    if os.environ.get("BY_SYMBOL"):
        # Per function as compiled (inlined code counts in the function it was inlined into), by
        # instructions: where a call's instructions go.
        rows = sorted(((b[fn][0] - a[fn][0]) / calls, fn) for fn in set(a) | set(b) if layer(fn))
        print("instr/call  function (top 20 by instructions)")
        for ir, fn in reversed(rows[-20:]):
            print(f"{ir:10.1f}  {fn}")
    if os.environ.get("BY_FUNCTION"):
        # Where inside the layers: function and the source file its code came from (inlined
        # code counts under the function it was inlined into, by the file it was written in).
        a, b = load(sys.argv[1], True), load(sys.argv[2], True)
        rows = []
        for key in set(a) | set(b):
            fn, fl = key.split("\t")
            if layer(fn) is None:
                continue
            d = (b[key][0] - a[key][0], b[key][1] - a[key][1])
            rows.append((d[1] / calls, d[0] / calls, fl, fn))
        print("lines/call  instr/call  file: function (top 40 by lines)")
        for ms, ir, fl, fn in sorted(rows, reverse=True)[:40]:
            print(f"{ms:8.2f} {ir:10.1f}  {fl}: {fn}")


main()
