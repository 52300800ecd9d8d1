"""Per file, run and rank (in the order the call ran them): median step time over steps 300-399 and,
for gpu-arena, over the same steps the median VMM calls, milliseconds in VMM calls and in the
allocator per step, and the run's peak physical / peak live. Prints what summary.txt keeps."""
import json
import pathlib
import statistics

here = pathlib.Path(__file__).parent
print("| file | allocator | rank | median step ms | VMM calls per step | ms in VMM calls per step "
      "| ms in the allocator per step | peak live MiB | peak physical / live |")
print("|---|---|---|---|---|---|---|---|---|")
for name in ["ddp-stitchmin16-1", "ddp-base-1", "ddp-stitchmin16-2", "ddp-base-2"]:
    for line in open(here / f"{name}.jsonl"):
        d = json.loads(line)
        for r in d["ranks"]:
            n, v, a = r.get("vmm_per_step"), r.get("vmm_ms_per_step"), r.get("alloc_ms_per_step")
            cells = (f"{statistics.median(n[300:]):.0f} | {statistics.median(v[300:]):.2f} | "
                     f"{statistics.median(a[300:]):.2f}") if v else " | | "
            print(f"| {name} | {d['allocator']} | {r['rank']} | {r['step_ms']:.2f} | {cells} | "
                  f"{r['peak_live'] / 2**20:.1f} | {r['peak_physical'] / r['peak_live']:.4f} |")
