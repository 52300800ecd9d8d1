"""Per run and rank of ddp.jsonl: median step time over steps 300-399 (ddp_train.py's step_ms), VMM
calls in all and in steps 300-399, the peaks, and the step where the two ranks' VMM calls per step
first differ. Prints what summary.txt keeps."""
import json
import pathlib

here = pathlib.Path(__file__).parent
print("| run | allocator | rank | median step ms (300-399) | VMM calls, steps 0-399 | VMM calls, steps 300-399 | peak physical / live |")
print("|---|---|---|---|---|---|---|")
diverge = []
for line in open(here / "ddp.jsonl"):
    d = json.loads(line)
    for r in d["ranks"]:
        vmm = r.get("vmm_per_step") or []
        ratio = r["peak_physical"] / r["peak_live"] if r.get("peak_live") else float("nan")
        print(f"| {d['run']} | {d['allocator']} | {r['rank']} | {r['step_ms']:.2f} | "
              f"{sum(vmm) if vmm else '-'} | {sum(vmm[300:]) if vmm else '-'} | {ratio:.4f} |")
    v = [r.get("vmm_per_step") for r in d["ranks"]]
    if all(v):
        first = next((i for i, (p, q) in enumerate(zip(*v)) if p != q), None)
        diverge.append(f"run {d['run']}: the ranks' VMM calls per step first differ at step {first}")
print()
print("\n".join(diverge))
