"""The table of a scripts/torch_sleep_wake_ab.sh log: for each --prepare mode (and GPU_ARENA_CONF,
where one was set), medians over its processes (min–max in brackets) of the weights' offload and
restore in each cycle (the whole call, and the copy part alone), the milliseconds the sleep spent
obtaining pinned memory and in its VMM calls, the handles the weights tag held before the sleep,
the first generation's time, and whether every process generated identical output; then the
weights tag's committed bytes over its parameters' bytes.

usage: python3 scripts/torch_sleep_wake_report.py LOG"""
import json
import statistics
import sys

runs = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        j = json.loads(line)
        label = j["prepare"]
        if j.get("conf"):
            label += f", GPU_ARENA_CONF={j['conf']}"
        if j.get("gap") == "no":
            label += ", no gap buffer"
        elif j.get("settle_ms"):
            label += f", wake {j['settle_ms']} ms after the gap buffer's free"
        runs.setdefault(label, []).append(j)


def cell(xs, fmt="{:.1f}"):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


print("| prepare | processes | cycle | sleep `weights` (ms) | of it, obtaining pinned memory (ms) | of it, VMM calls (ms) | weights' handles | offload, whole sleep (GiB/s) | offload, copy part (GiB/s) | restore, whole wake (GiB/s) | restore, copy part (GiB/s) | first generation (s) | identical output |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for mode, js in runs.items():
    for c in sorted((k for k in js[0] if k.startswith("cycle")), key=lambda k: int(k[5:].split("_")[0])):
        cs = [j[c] for j in js]
        print(
            f"| {mode} | {len(js)} | {c.split('_')[0]} "
            f"| {cell([x['sleep_weights_offload_s'] * 1e3 for x in cs])} "
            f"| {cell([x['sleep_weights_report']['stage_seconds'] * 1e3 for x in cs])} "
            f"| {cell([x['sleep_weights_report']['vmm_seconds'] * 1e3 for x in cs])} "
            f"| {cell([x.get('weights_handles') for x in cs], '{:.0f}')} "
            f"| {cell([x['offload_GiB_per_s'] for x in cs])} "
            f"| {cell([x['offload_copy_GiB_per_s'] for x in cs])} "
            f"| {cell([x['restore_GiB_per_s'] for x in cs])} "
            f"| {cell([x['restore_copy_GiB_per_s'] for x in cs])} "
            f"| {cell([j['first_generate_s'] for j in js], '{:.2f}') if c == 'cycle1_cold' else ''} "
            f"| {'all' if all(j['identical_output'] for j in js) else 'NOT all'} |"
        )
print()
for mode, js in runs.items():
    print(f"{mode}: weights committed / parameter bytes "
          f"{cell([j['committed_weights'] / j['weights_param_bytes'] for j in js], '{:.4f}')}")
all_copy = [x for j in runs.values() for x in j]
print()
print(
    "pinned host ↔ device copy in the same processes (1 GiB, torch tensors): "
    f"d2h {cell([j['pinned_copy_GiB_per_s']['d2h'] for j in all_copy])}, "
    f"h2d {cell([j['pinned_copy_GiB_per_s']['h2d'] for j in all_copy])} GiB/s"
)
