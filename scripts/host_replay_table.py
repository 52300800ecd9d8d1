#!/usr/bin/env python3
"""Markdown table of the cabi_replay sections of a host replay log (the "== GPU_ARENA_CONF=... cabi_replay
N TRACE" headers and their "rep" lines): VMM calls per 1000 allocations and peak committed / peak handed
out in each repetition, and the stitched ranges reused / repaired / made over repetitions 2..N.

usage: python3 scripts/host_replay_table.py LOG"""
import json, re, sys


def main():
    rows, head = [], None
    for line in open(sys.argv[1], encoding="utf-8"):
        m = re.match(r"== GPU_ARENA_CONF=(\S+) cabi_replay \d+ (\S+)", line)
        if m:
            conf = ",".join(c for c in m.group(1).split(",") if c not in ("backend:host", "report:1"))
            head = [m.group(2).replace(".trace.jsonl.gz", ""), conf or "default", [], [], [0, 0, 0]]
            rows.append(head)
            continue
        if line.startswith("== "):
            head = None
        m = re.match(r"rep (\d+): .*\(([\d.]+) per 1000 allocations.*peak handed out ([\d.]+); stitched ranges (\{.*\})", line)
        if m and head is not None:
            head[2].append(m.group(2))
            head[3].append(m.group(3))
            if int(m.group(1)) > 1:
                s = json.loads(m.group(4))
                for i, k in enumerate(("reused", "repaired", "made")):
                    head[4][i] += s[k]
    print("| trace | setting | VMM calls per 1000 allocations, each repetition | peak committed / peak handed out, each repetition | stitched ranges reused / repaired / made, repetitions 2..N |")
    print("|---|---|---|---|---|")
    for t, conf, calls, ratio, st in rows:
        print(f"| {t} | {conf} | {' / '.join(calls)} | {' / '.join(ratio)} | {st[0]} / {st[1]} / {st[2]} |")


if __name__ == "__main__":
    main()
