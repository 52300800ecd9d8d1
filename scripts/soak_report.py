#!/usr/bin/env python3
"""Tables for docs/soak.md from the JSON summaries of `gpu-arena soak` and
`gpu-arena pressure` (their --json-out files), with the raw logs beside them.

    python3 scripts/soak_report.py SECTION FILE_OR_DIR... [--write docs/soak.md]

SECTION names the block of docs/soak.md to fill: the text between
`<!-- SECTION:begin -->` and `<!-- SECTION:end -->` (`host` or `h100`).
FILE_OR_DIR: *.json summaries, or folders holding them (soak-*.json,
pressure-*.json; a session.log there gives the GPU's name). Without
--write the block is printed.
"""
import glob
import json
import os
import re
import sys


def gib(b):
    return b / (1 << 30)


def fmt_bytes(b):
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << shift:
            return f"{b / (1 << shift):.1f} {unit}"
    return f"{b} B"


def count(n):
    return f"{n:,}"


def soak_table(runs):
    rows = [
        ("workload (s) / teardown and checks (s)", lambda r: f"{r['seconds']:.0f} / {r['teardown_seconds']:.1f}"),
        ("threads x streams, shards", lambda r: f"{r['threads']} x {r['streams']}, {r['shards']}"),
        ("limit; most committed at once", lambda r: f"{fmt_bytes(r['limit'])}; {fmt_bytes(r['peak_committed'])}"),
        ("sizes", lambda r: f"trace sizes x{r['scale']} ({count(r['sizes'])} allocations)"),
        ("allocations (bytes)", lambda r: f"{count(r['tally']['allocs'])} ({fmt_bytes(r['tally']['alloc_bytes'])})"),
        ("frees: same stream / other stream / other thread",
         lambda r: f"{count(r['tally']['frees_same_stream'])} / {count(r['tally']['frees_other_stream'])} / {count(r['tally']['frees_other_thread'])}"),
        ("blocks checked, every word (bytes)", lambda r: f"{count(r['tally']['checks'])} ({fmt_bytes(r['tally']['checked_bytes'])})"),
        ("refused: out of memory / injected error",
         lambda r: f"{count(r['tally']['out_of_memory'])} / {count(r['tally']['injected_errors'])}"),
        ("trims (given back)", lambda r: f"{count(r['tally']['trims'])} ({fmt_bytes(r['tally']['trimmed_bytes'])})"),
        ("sleeps / wakes (bytes; offloaded)",
         lambda r: f"{count(r['tally']['sleeps'])} / {count(r['tally']['wakes'])} ({fmt_bytes(r['tally']['sleep_bytes'])}; {fmt_bytes(r['tally']['offloaded_bytes'])})"),
        # Runs before asleep_frees existed (2026-11-28) counted refused
        # frees with the refused allocations.
        ("asleep tag: refused allocations / served frees",
         lambda r: f"{count(r['tally']['asleep_refusals'])} / {count(r['tally']['asleep_frees'])}"
         if 'asleep_frees' in r['tally'] else f"{count(r['tally']['asleep_refusals'])} (allocations and frees refused)"),
        ("faults injected", lambda r: count(r['driver']['injected'])),
        ("driver: create = release", lambda r: f"{count(r['driver']['create'])} = {count(r['driver']['release'])}"),
        ("driver: bytes mapped = unmapped",
         lambda r: f"{fmt_bytes(r['driver']['bytes_mapped'])} = {fmt_bytes(r['driver']['bytes_unmapped'])}"),
        ("driver: reserve = free_reservation",
         lambda r: f"{count(r['driver']['reserve'])} = {count(r['driver']['free_reservation'])}"),
        ("refused by the rules", lambda r: count(r['driver']['refused'])),
        ("corrupted words", lambda r: count(r['corrupted_words'])),
        ("device free: before / lowest / after teardown", device_memory),
        ("result", lambda r: "PASSED" if not r['failures'] else "FAILED: " + "; ".join(r['failures'])),
    ]
    head = "| | " + " | ".join(r["_name"] for r in runs) + " |"
    out = [head, "|---" * (len(runs) + 1) + "|"]
    for name, f in rows:
        out.append(f"| {name} | " + " | ".join(f(r) for r in runs) + " |")
    return out


def device_memory(r):
    m = r.get("device_memory")
    if not m:
        return "— (host)"
    d = m["free_after"] - m["free_before"]
    sign = "+" if d >= 0 else "-"
    return (f"{fmt_bytes(m['free_before'])} / {fmt_bytes(m['free_lowest'])} / "
            f"{fmt_bytes(m['free_after'])} ({sign}{fmt_bytes(abs(d))}; tolerance {fmt_bytes(m['tolerance'])})")


def errors_table(runs):
    kinds = sorted({k for r in runs for k in r["errors"]})
    if not kinds:
        return ["No error of any kind."]
    out = ["| error (expected: out of memory, injected faults) | " + " | ".join(r["_name"] for r in runs) + " |",
           "|---" * (len(runs) + 1) + "|"]
    for k in kinds:
        out.append(f"| {k} | " + " | ".join(count(r['errors'].get(k, 0)) for r in runs) + " |")
    return out


def pressure_table(p):
    out = [
        f"Device memory {fmt_bytes(p['device_memory'])}; A's soft limit {fmt_bytes(p['limit'])}; "
        f"A loads weights {fmt_bytes(p['weights'])} (offloaded on sleep), kv_cache {fmt_bytes(p['kv_cache'])} "
        f"(discarded), idle activations {fmt_bytes(p['idle'])} (trimmed), compute buffer {fmt_bytes(p['compute'])} "
        "(kernels keep running on it).",
        "",
        "| round | B asked (cuMemAlloc) | first try | A gave back | memory reached B after | "
        "A's release: discard / offload (copy, pinned memory) / trim | A's compute launches meanwhile | "
        "A's wake (copied back) | weights / cache words differing |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in p["rounds"]:
        given = r["discard"]["bytes"] + r["offload"]["bytes"] + r["trimmed"]
        out.append(
            f"| {r['round']} | {gib(r['asked']):.1f} GiB | {'refused' if r['first_try_refused'] else 'granted'} | "
            f"{gib(given):.1f} GiB | **{r['to_b_ms']:.0f} ms** ({r['b_tries']} tries) | "
            f"{r['discard_ms']:.0f} / {r['offload_ms']:.0f} ({r['offload']['copy_seconds'] * 1e3:.0f}, "
            f"{r['offload']['stage_seconds'] * 1e3:.0f}) / {r['trim_ms']:.0f} ms | {r['launches_during_handover']} | "
            f"{r['wake_ms']:.0f} ms ({fmt_bytes(r['wake']['copied'])}) | "
            f"{r['weights_words_differing']} / {r['cache_words_differing']} |")
    out.append("")
    out.append(
        f"The compute buffer counts all {count(p['compute_launches'])} launches "
        f"({p['compute_words_differing']} words differ). "
        + (f"Device free memory: {fmt_bytes(p['free_at_start'])} at the start, "
           f"{fmt_bytes(p['free_after_teardown'])} after A's teardown and B's exit. "
           if p.get("free_at_start") is not None else "")
        + ("**PASSED**." if not p["failures"] else "**FAILED**: " + "; ".join(p["failures"])))
    return out


def main(argv):
    write = None
    if "--write" in argv:
        i = argv.index("--write")
        write = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    section, inputs = argv[0], argv[1:]
    files, gpus = [], []
    for x in inputs:
        if os.path.isdir(x):
            files += sorted(glob.glob(os.path.join(x, "*.json")))
            s = os.path.join(x, "session.log")
            if os.path.exists(s):
                gpus += [l.strip() for l in open(s) if re.search(r"NVIDIA|H100|H200", l)]
        else:
            files.append(x)
    soaks, pressures = [], []
    for f in files:
        d = json.load(open(f))
        d["_name"] = os.path.basename(f)[:-5]
        (pressures if "rounds" in d else soaks).append(d)
    lines = []
    if gpus:
        lines += [f"GPU: {sorted(set(gpus))[0]}.", ""]
    if soaks:
        total = sum(r["seconds"] for r in soaks)
        lines += [f"Soak: {len(soaks)} run(s), {total / 60:.1f} minutes of workload in all, "
                  f"backend {soaks[0]['backend']}; blocks filled and checked by {soaks[0]['filler']}.", ""]
        lines += soak_table(soaks) + [""] + errors_table(soaks) + [""]
    for p in pressures:
        lines += [f"Pressure ({p['_name']}, backend {p['backend']}):", ""]
        if p["backend"] == "host":
            lines += ["On the host backend B has no device to take (it asks for nothing and is granted "
                      "at once): the rows show the protocol and A's sleep, trim and wake under running "
                      "compute, not a hand-over.", ""]
        lines += pressure_table(p) + [""]
    lines.append("Raw logs and JSON: " + ", ".join(f"`{os.path.basename(f)[:-5]}.log`/`.json`" for f in files) + ".")
    block = "\n".join(lines).rstrip() + "\n"
    if write is None:
        print(block, end="")
        return 0
    text = open(write).read()
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    if begin not in text or end not in text:
        print(f"{write} has no {begin} ... {end} block", file=sys.stderr)
        return 1
    a, rest = text.split(begin, 1)
    _, b = rest.split(end, 1)
    open(write, "w").write(a + begin + "\n" + block + end + b)
    print(f"wrote the {section} block of {write} from {len(files)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
