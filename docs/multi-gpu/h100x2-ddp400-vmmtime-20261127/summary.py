"""Per run and rank of ddp.jsonl: median step time over steps 300-399 (ddp_train.py's step_ms), and for
gpu-arena, over the same steps, the median per step of its VMM calls, of the milliseconds inside
them, and of the milliseconds inside its allocations and frees (VMM calls included), with the mean
microseconds per VMM call. Prints what summary.txt keeps."""
import json
import pathlib
import statistics

here = pathlib.Path(__file__).parent
print("| run | allocator | rank | median step ms | VMM calls per step | ms in VMM calls per step "
      "| ms in the allocator per step | µs per VMM call |")
print("|---|---|---|---|---|---|---|---|")
for line in open(here / "ddp.jsonl"):
    d = json.loads(line)
    for r in d["ranks"]:
        n, v, a = r.get("vmm_per_step"), r.get("vmm_ms_per_step"), r.get("alloc_ms_per_step")
        if not v:
            print(f"| {d['run']} | {d['allocator']} | {r['rank']} | {r['step_ms']:.2f} | | | | |")
            continue
        n, v, a = n[300:], v[300:], a[300:]
        per_call = sum(v) * 1e3 / max(1, sum(n))
        print(f"| {d['run']} | {d['allocator']} | {r['rank']} | {r['step_ms']:.2f} | {statistics.median(n):.0f} "
              f"| {statistics.median(v):.2f} | {statistics.median(a):.2f} | {per_call:.1f} |")
