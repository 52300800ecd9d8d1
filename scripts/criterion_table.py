#!/usr/bin/env python3
"""Prints the markdown table of docs/BENCHMARKS.md's criterion section from
the raw log of `cargo bench --bench hot_paths` (the middle estimate of each
benchmark): python3 scripts/criterion_table.py docs/bench/host-criterion.log
"""
import re
import sys

# (row label, gpu-arena benchmark, anchor label, anchor benchmark)
ROWS = [
    ("slab, 64 B pair", "slab/gpu-arena/64", "system malloc", "slab/system-malloc/64"),
    ("slab, 256 B pair", "slab/gpu-arena/256", "system malloc", "slab/system-malloc/256"),
    ("slab, 4 KiB pair", "slab/gpu-arena/4096", "system malloc", "slab/system-malloc/4096"),
    ("large, 64 KiB pair", "large/gpu-arena/65536", "system malloc", "large/system-malloc/65536"),
    ("large, 1 MiB pair", "large/gpu-arena/1048576", "system malloc", "large/system-malloc/1048576"),
    ("scratch, 1000 allocs + reset", "scratch/gpu-arena", "bumpalo", "scratch/bumpalo"),
    ("grow, 2 MiB → 256 MiB (pages kept from the last iteration)", "grow/warm/2MiB-to-256MiB", None, None),
    ("grow, 2 MiB → 256 MiB then trim (commit and give back)", "grow/cold/2MiB-to-256MiB", None, None),
]


def parse(path):
    """Benchmark name -> (middle estimate, unit), from criterion's output."""
    text = open(path, encoding="utf-8").read()
    pat = re.compile(r"^(\S+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.M)
    return {m.group(1): (m.group(2), m.group(3)) for m in pat.finditer(text)}


def main():
    found = parse(sys.argv[1])
    print("| benchmark | gpu-arena | anchor |")
    print("|---|---|---|")
    for label, ours, anchor_label, anchor in ROWS:
        if ours not in found:
            sys.exit(f"{ours} is missing from {sys.argv[1]}: rerun cargo bench --bench hot_paths")
        v, u = found[ours]
        a = "—"
        if anchor is not None:
            av, au = found[anchor]
            a = f"{anchor_label} {av} {au}"
        print(f"| {label} | {v} {u} | {a} |")


if __name__ == "__main__":
    main()
