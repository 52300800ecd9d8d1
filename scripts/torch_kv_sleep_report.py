"""The table of a scripts/torch_kv_sleep_ab.sh log: for each GPU_ARENA_CONF setting, medians over its
processes (min–max in brackets) of the KV cache's allocation time, and for each sleep / wake cycle
the handles the KV tag held before the sleep, the adapter's sleep() and wake_up() in milliseconds
and the gpu_arena.sleep / wake calls inside them alone (where logged); whether every process's
checks passed.

usage: python3 scripts/torch_kv_sleep_report.py LOG"""
import json
import statistics
import sys

runs = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        j = json.loads(line)
        label = j["conf"] or "default"
        if j.get("fill") == "no":
            label += ", tensors never written"
        if j.get("gap_ms"):
            label += f", {j['gap_ms']:g} ms between sleep and wake"
        if j.get("collect") == "before":
            label += ", gc.collect() before sleep() (the adapter until 2026-11-28)"
        runs.setdefault(label, []).append(j)


def cell(xs, fmt="{:.1f}"):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def opt(xs):
    return "–" if None in xs else cell(xs)


print("| GPU_ARENA_CONF | processes | KV cache | allocation (ms) | cycle | handles before the sleep | committed / live | sleep() (ms) | of it, gpu_arena.sleep (ms) | wake_up() (ms) | of it, gpu_arena.wake (ms) | checks |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for conf, js in runs.items():
    for c in range(len(js[0]["cycles"])):
        cs = [j["cycles"][c] for j in js]
        print(
            f"| {conf} | {len(js)} | {js[0]['gib']:.1f} GiB in {js[0]['layers']} tensors "
            f"| {cell([j['alloc_s'] * 1e3 for j in js]) if c == 0 else ''} | {c + 1} "
            f"| {cell([x['handles'] for x in cs], '{:.0f}')} "
            f"| {cell([x['committed'] / x['live'] for x in cs], '{:.4f}')} "
            f"| {cell([x['sleep_ms'] for x in cs])} | {opt([x.get('arena_sleep_ms') for x in cs])} "
            f"| {cell([x['wake_ms'] for x in cs])} | {opt([x.get('arena_wake_ms') for x in cs])} "
            f"| {'all passed' if all(j['ok'] for j in js) else 'NOT all'} |"
        )
