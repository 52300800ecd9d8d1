"""The results section of docs/python.md from the logs of scripts/python_h100.sh.

usage: python3 scripts/python_h100_report.py LOGDIR > section.md

Reads env.log, pytest.log, workloads.log, sleep_wake.log and summary.log
from LOGDIR and prints markdown: where it ran, the test outcomes, each CUDA
check's measured figures, the workloads under both allocators, and the
sleep/wake timings. Every figure is copied from the logs; nothing is
computed but medians and ratios, which say so.
"""

import json
import os
import re
import statistics
import sys

d = sys.argv[1]


def read(name):
    p = os.path.join(d, name)
    return open(p, errors="replace").read() if os.path.exists(p) else ""


env, pytest_log, work, sleep_log, summary = (read(n) for n in ("env.log", "pytest.log", "workloads.log", "sleep_wake.log", "summary.log"))
out = []
w = out.append

w("### Where it ran\n")
w("```text")
for line in env.splitlines():
    if re.search(r"H100|H200|NVIDIA|Python 3|^torch |wheel:", line):
        w(line.strip())
w("```\n")

w("### pytest python/tests (host-side suite on the host backend, CUDA checks each in its own process)\n")
# pytest -rA's short summary: "PASSED path::test", "SKIPPED [1] path:line: reason".
outcomes = [(n, o) for o, n in re.findall(r"^(PASSED|FAILED|ERROR) (\S+::\S+)", pytest_log, re.M)]
outcomes += [(n, "SKIPPED") for n in re.findall(r"^SKIPPED \[\d+\] (.*)$", pytest_log, re.M)]
final = [line for line in pytest_log.splitlines() if re.search(r"\d+ (passed|failed)", line)]
w("| test | outcome |\n|---|---|")
for name, o in outcomes:
    w(f"| `{name.split('/')[-1]}` | {o} |")
if final:
    w(f"\npytest's closing line: `{final[-1].strip('= ')}`\n")

results = [json.loads(m) for m in re.findall(r"^RESULT (\{.*\})$", pytest_log, re.M)]
if results:
    w("Figures the CUDA checks printed (`RESULT` lines of pytest.log):\n")
    for r in results:
        name = r.pop("check", "?")
        w(f"- **{name}**: " + "; ".join(f"{k} = `{v}`" for k, v in r.items()))
    w("")

w("### Shared workloads (torch_workloads.py): PyTorch's allocator vs gpu_arena.torch.enable()\n")
runs = {}
for m in re.finditer(r"^(\w+) allocator=(\S+) time_s=([\d.]+) checksum=(\S+)(.*)$", work, re.M):
    wl, alloc, t, cs, rest = m.groups()
    key = (wl, "PyTorch default" if alloc != "pluggable" else "gpu-arena (enable())")
    ratio = re.search(r"reserved/alloc=([\d.]+)", rest)
    runs.setdefault(key, []).append((float(t), cs, ratio.group(1) if ratio else None))
ratios = {}
for m in re.finditer(r"^== (\w+) run \d+: gpu_arena.*?\n(?:.*\n)*?gpu-arena via .*peak committed / peak live ([\d.]+)", work, re.M):
    ratios.setdefault(m.group(1), []).append(m.group(2))
w("| workload | allocator | times (s) | median (s) | checksums | peak physical / peak live |\n|---|---|---|---|---|---|")
for (wl, alloc), rs in sorted(runs.items()):
    ts = [r[0] for r in rs]
    cs = sorted({r[1] for r in rs})
    pr = [r[2] for r in rs if r[2]] if alloc.startswith("PyTorch") else ratios.get(wl, [])
    w(f"| {wl} | {alloc} | {', '.join(f'{t:.2f}' for t in ts)} | {statistics.median(ts):.2f} | {', '.join(cs)} | {', '.join(sorted(set(pr))) or '—'} |")
w("")

w("### The README's example (python/examples/sleep_wake.py)\n")
w("```text")
for line in sleep_log.split("== scripts/torch_sleep_wake.py")[0].splitlines():
    if line.startswith(("asleep:", "same tokens")):
        w(line)
w("```\n")
w("### GPT-2 sleep / wake (scripts/torch_sleep_wake.py)\n")
js = [line for line in sleep_log.splitlines() if line.startswith("{")]
if js:
    s = json.loads(js[-1])
    w(f"- identical output after two cycles: **{s['identical_output']}** (checksum {s['output_checksum']})")
    w(f"- weights committed {s['committed_weights'] / 2**20:.0f} MiB, default tag {s['committed_default'] / 2**20:.0f} MiB")
    for c in ("cycle1_cold", "cycle2_warm"):
        x = s[c]
        w(
            f"- {c}: sleep weights (offload) {x['sleep_weights_offload_s'] * 1e3:.1f} ms ({x['offload_GiB_per_s']:.1f} GiB/s), "
            f"sleep default (discard) {x['sleep_default_discard_s'] * 1e3:.1f} ms, wake default {x['wake_default_s'] * 1e3:.2f} ms, "
            f"wake weights (restore) {x['wake_weights_restore_s'] * 1e3:.1f} ms ({x['restore_GiB_per_s']:.1f} GiB/s); "
            f"free MiB before/asleep/awake {x['mem_get_info_free_MiB']}; gap buffer {x['gap_buffer_GiB']} GiB"
        )
    pc = s["pinned_copy_GiB_per_s"]
    w(f"- pinned copy in the same run: h2d {pc['h2d']:.1f}, d2h {pc['d2h']:.1f} GiB/s")
else:
    w("(no JSON line in sleep_wake.log)")
w("\n### Exit status of each part (summary.log)\n")
w("```text")
w("\n".join(line for line in summary.splitlines() if ": exit " in line))
w("```")
print("\n".join(out))
