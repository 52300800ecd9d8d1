#!/usr/bin/env python3
"""Per pass of a diagnosis log (diagnosis.patch applied, `GA_TRACE_MAP=1 PLAYS=5 VERBOSE=1 PRELUDES=0
layout_ensemble serve.trace.jsonl.gz 2>&1`): the blocks placed in the blocks region where their pages
would need a driver call (PLACE lines), how many were on fresh pages at the region's top, their sizes,
and the units mapped in each region (MAP lines).

    python3 summarize.py diagnosis-before.log diagnosis-after.log
"""
import re
import sys
from collections import Counter

for path in sys.argv[1:]:
    print(f"## {path}")
    rep = 1
    stats = {}
    for line in open(path):
        if "after repetition" in line:
            rep += 1
            continue
        s = stats.setdefault(rep, Counter())
        m = re.match(r"PLACE size=(\d+) off=\d+ cost=Cost \{ unmapped: (\d+), blocked: (\d+) \} stitch=(\w+) top=(\w+)", line)
        if m:
            size, unmapped, blocked, stitch, top = m.groups()
            s["placed needing a call"] += 1
            if top == "true" and int(unmapped) > 0:
                s["at the top on fresh pages"] += 1
                if stitch == "true":
                    s["... of them stitchable"] += 1
                    lo, hi = s.get("min size", 1 << 62), s.get("max size", 0)
                    s["min size"], s["max size"] = min(lo, int(size)), max(hi, int(size))
            continue
        m = re.match(r"MAP u=\d+ first=\d+ pages=(\d+) stitched=(\w+)", line)
        if m:
            region = "stitch region" if m.group(2) == "true" else "blocks region"
            s[f"pages mapped, {region}"] += int(m.group(1))
    for r in range(1, 6):
        items = ", ".join(f"{k} {v}" for k, v in sorted(stats.get(r, Counter()).items()))
        print(f"pass {r}: {items or 'nothing'}")
