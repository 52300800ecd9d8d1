"""Sleep and wake a PyTorch model's memory with gpu-arena (docs/sleep-wake.md).

usage: python3 torch_sleep_wake.py [--prepare none|background]
       (the gpu_arena package importable: pip install ./python)

Loads the gpt2_generate model of ../shared/bench/torch_workloads.py with its
weights tagged `weights`, generates with a fixed seed, sleeps (weights
offloaded to pinned host memory, everything else discarded), shows that the
memory went back to the device, fills a large buffer allocated outside
gpu-arena (cuMemAlloc), wakes, reseeds and generates again: the outputs must
be identical. Prints one JSON line with the figures.

--prepare background calls gpu_arena.prepare_offload("weights") right after
the weights are loaded: the pinned host memory for the offload is obtained
on a thread of its own while the model generates, so the first sleep's
offload need not obtain it (--prepare none, the default: the first sleep
obtains it). Each cycle records what gpu_arena.sleep / wake returned (the
seconds spent obtaining pinned memory, copying and in VMM calls)."""
import argparse, ctypes, json, os, subprocess, time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
ap = argparse.ArgumentParser()
ap.add_argument("--prepare", choices=("none", "background"), default="none")
ap.add_argument("--cycles", type=int, default=2, help="sleep / wake cycles (the first fills the gap)")
ap.add_argument("--gap", choices=("yes", "no"), default="yes",
                help="whether the first cycle fills the gap with a buffer outside gpu-arena")
ap.add_argument("--settle-ms", type=int, default=0, help="wait after the gap buffer's free, before the wake")
args = ap.parse_args()

import gpu_arena  # noqa: E402
import gpu_arena.torch  # noqa: E402

gpu_arena.torch.enable()
import torch  # noqa: E402


def smi_used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout.strip().splitlines()
    return int(out[0]) if out else -1


from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

torch.use_deterministic_algorithms(True)
GiB = 1 << 30

torch.manual_seed(0)
with gpu_arena.torch.tag("weights"):
    model = GPT2LMHeadModel(GPT2Config(n_layer=8, n_embd=1024, n_head=16, vocab_size=32000, n_positions=2048))
    model = model.to("cuda", torch.float16).eval()
    torch.cuda.synchronize()
weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
if args.prepare == "background":
    gpu_arena.prepare_offload("weights")  # returns at once


def generate():
    torch.manual_seed(1234)
    with torch.no_grad():
        ids = torch.randint(0, 32000, (4, 256), device="cuda")
        out = model.generate(ids, max_new_tokens=96, min_new_tokens=96, do_sample=True, top_k=50, pad_token_id=0)
    torch.cuda.synchronize()
    return out.cpu()


t = time.perf_counter()
first = generate()
first_generate_s = time.perf_counter() - t
stats_before = gpu_arena.stats()

cuda = ctypes.CDLL("libcuda.so.1")


def weights_tag():
    return next(t for t in gpu_arena.stats()["tags"] if t["tag"] == "weights")["stats"]


def cycle(fill_gap):
    """Sleep (weights offloaded, the rest discarded), use the memory outside
    gpu-arena, wake. Returns the timings and memory readings."""
    torch.cuda.synchronize()
    free_before, _ = torch.cuda.mem_get_info()
    smi_before = smi_used_mib()
    before = weights_tag()
    t0 = time.perf_counter()
    sleep_report = gpu_arena.sleep(offload="weights")["offload"]
    t1 = time.perf_counter()
    after = weights_tag()
    gpu_arena.sleep(discard="default")
    t2 = time.perf_counter()
    free_asleep, _ = torch.cuda.mem_get_info()
    smi_asleep = smi_used_mib()
    gap = 0
    if fill_gap:
        # A large buffer outside gpu-arena, filled and freed, in the gap.
        gap = int(free_asleep * 0.9) // GiB * GiB
        dptr = ctypes.c_uint64()
        rc = cuda.cuMemAlloc_v2(ctypes.byref(dptr), ctypes.c_size_t(gap))
        if rc != 0:
            raise RuntimeError(f"cuMemAlloc of the gap buffer failed: {rc}")
        rc = cuda.cuMemsetD8_v2(dptr, ctypes.c_ubyte(0x5A), ctypes.c_size_t(gap))
        cuda.cuCtxSynchronize()
        rc2 = cuda.cuMemFree_v2(dptr)
        if rc or rc2:
            raise RuntimeError(f"gap buffer fill/free failed: {rc} {rc2}")
        time.sleep(args.settle_ms / 1e3)
    t3 = time.perf_counter()
    gpu_arena.wake("default")
    t4 = time.perf_counter()
    wake_report = gpu_arena.wake("weights")
    t5 = time.perf_counter()
    free_awake, _ = torch.cuda.mem_get_info()
    return {
        "mem_get_info_free_MiB": {"before_sleep": free_before >> 20, "asleep": free_asleep >> 20, "awake": free_awake >> 20},
        "nvidia_smi_used_MiB": {"before_sleep": smi_before, "asleep": smi_asleep},
        "gap_buffer_GiB": gap / GiB,
        "sleep_weights_offload_s": t1 - t0, "sleep_default_discard_s": t2 - t1,
        "wake_default_s": t4 - t3, "wake_weights_restore_s": t5 - t4,
        "sleep_weights_report": sleep_report, "wake_weights_report": wake_report,
        # The weights tag's handles and mappings before the sleep, and the calls it made.
        "weights_handles": before["handles"], "weights_mappings": before["mappings"],
        "sleep_weights_calls": {k: after["driver_calls"][k] - v for k, v in before["driver_calls"].items()},
    }


# First cycle: also obtains the pinned host memory for the offload; the
# arena keeps it, so the second cycle shows the steady state.
c1 = cycle(fill_gap=args.gap == "yes")
second = generate()
c2 = cycle(fill_gap=False)
third = generate()
outs, more = [second, third], []
for _ in range(args.cycles - 2):
    more.append(cycle(fill_gap=False))
    outs.append(generate())

# Pinned host <-> device copy bandwidth in the same run (1 GiB each way).
h = torch.empty(GiB, dtype=torch.uint8, pin_memory=True)
d = torch.empty(GiB, dtype=torch.uint8, device="cuda")
for _ in range(2):
    d.copy_(h, non_blocking=True); torch.cuda.synchronize()
t = time.perf_counter(); d.copy_(h, non_blocking=True); torch.cuda.synchronize(); h2d = 1 / (time.perf_counter() - t)
t = time.perf_counter(); h.copy_(d, non_blocking=True); torch.cuda.synchronize(); d2h = 1 / (time.perf_counter() - t)
del h, d

weights_stats = next(t for t in stats_before["tags"] if t["tag"] == "weights")["stats"]
default_stats = next(t for t in stats_before["tags"] if t["tag"] == "default")["stats"]
wgib = weights_stats["committed"] / GiB
for c in (c1, c2, *more):
    c["offload_GiB_per_s"] = wgib / c["sleep_weights_offload_s"]
    c["restore_GiB_per_s"] = wgib / c["wake_weights_restore_s"]
    # The copy part alone (the wait on the copy's fence included).
    sr, wr = c["sleep_weights_report"], c["wake_weights_report"]
    c["offload_copy_GiB_per_s"] = sr["copied"] / GiB / sr["copy_seconds"] if sr["copy_seconds"] else None
    c["restore_copy_GiB_per_s"] = wr["copied"] / GiB / wr["copy_seconds"] if wr["copy_seconds"] else None
print(json.dumps({
    "prepare": args.prepare,
    "conf": os.environ.get("GPU_ARENA_CONF", ""),
    "gap": args.gap,
    "settle_ms": args.settle_ms,
    "first_generate_s": first_generate_s,
    "identical_output": all(bool(torch.equal(first, o)) for o in outs),
    "output_checksum": int(first.sum()),
    "weights_param_bytes": weights_bytes,
    "committed_weights": weights_stats["committed"],
    "committed_default": default_stats["committed"],
    "cycle1_cold": c1,
    "cycle2_warm": c2,
    **{f"cycle{i + 3}_warm": c for i, c in enumerate(more)},
    "pinned_copy_GiB_per_s": {"h2d": h2d, "d2h": d2h},
}), flush=True)
