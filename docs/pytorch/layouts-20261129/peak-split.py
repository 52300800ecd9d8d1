"""Sums peak-split.log: per trace and part, over its layouts, the mean number of partly used pages
and their unused MiB at the peak, in the blocks region and in stitched ranges.

usage: python3 docs/pytorch/layouts-20261129/peak-split.py docs/pytorch/layouts-20261129/peak-split.log"""
import re
import sys

rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (\S+) prelude \S+: .*partly used in blocks: (\d+) pages, ([0-9.]+) MiB unused"
                 r".*partly used in stitch: (\d+) pages, ([0-9.]+) MiB unused", line)
    if m:
        rows.setdefault((m[1], m[2]), []).append([float(x) for x in m.groups()[2:]])
print("| trace | part | layouts | blocks region: pages, MiB unused | stitched ranges: pages, MiB unused |")
print("|---|---|---:|---:|---:|")
for (t, part), v in rows.items():
    mean = [sum(x[i] for x in v) / len(v) for i in range(4)]
    print(f"| {t} | {part} | {len(v)} | {mean[0]:.1f}, {mean[1]:.2f} | {mean[2]:.1f}, {mean[3]:.2f} |")
