#!/usr/bin/env bash
# Two builds of examples/cabi_replay (backend:host, report:1), alternating run by run, on recorded
# traces run on past where they settle: for each run, the median over its settled repetitions of the
# time per call measured inside the allocator, warm (THRASH_KIB=0) and with cold caches
# (THRASH_KIB=512). For a machine whose CPU is the one that matters (the GPU machine's), where only
# times can be had; here, scripts/cache_profile.sh counts instead.
#
#   bash scripts/replay_ab.sh ROUNDS A_BIN B_BIN TRACE:RUN_ON:FIRST_SETTLED...
#
# Prints one line per run: "trace thrash label median_ns", then a summary per trace and thrash:
# medians over runs, with min-max.
set -euo pipefail
rounds=$1 a=$2 b=$3; shift 3
res=$(mktemp)
for r in $(seq "$rounds"); do
  for spec in "$@"; do
    IFS=: read -r trace runon first <<< "$spec"
    for th in 0 512; do
      for label in A B; do
        bin=$a; [ $label = B ] && bin=$b
        ns=$(GPU_ARENA_CONF=backend:host,report:1 THRASH_KIB=$th RUN_ON=$runon "$bin" 1 "$trace" 2>&1 \
          | python3 -c "
import sys, re, statistics
v = [int(re.search(r'(\d+) ns per call inside', l).group(1)) for l in sys.stdin
     if l.startswith('rep ') and int(re.search(r'repetition (\d+)', l).group(1)) >= $first]
print(statistics.median(v))")
        echo "$(basename "$trace" .trace.jsonl.gz) thrash=$th $label $ns" | tee -a "$res"
      done
    done
  done
done
echo "== summary: median ns per call inside the allocator over settled repetitions; median (min-max) over $rounds runs"
python3 - "$res" <<'PY'
import sys, collections, statistics
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    t, th, label, ns = line.split()
    d[(t, th, label)].append(float(ns))
for (t, th) in sorted({k[:2] for k in d}):
    a, b = d[(t, th, "A")], d[(t, th, "B")]
    fmt = lambda v: f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"
    print(f"{t} {th}: A {fmt(a)}  B {fmt(b)}  B/A {statistics.median(b) / statistics.median(a):.3f}")
PY
rm -f "$res"
