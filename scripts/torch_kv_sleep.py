"""A KV cache put to sleep as vLLM's sleep mode does it, through gpu-arena's vLLM adapter
(docs/sleep-wake.md, "A tag's memory in few handles").

usage: python3 torch_kv_sleep.py [--gib 64] [--layers 32] [--cycles 3] [--fill yes|no]
                                [--collect none|before] [--gap-ms 0]
       (the gpu_arena package importable; GPU_ARENA_CONF as the run wants it)

Allocates one KV tensor per layer, (2, blocks, 16, 8, 128) float16 as vLLM lays a paged cache out,
`--gib` GiB in all, in vLLM's `kv_cache` pool (`gpu_arena.vllm.CuMemAllocator`, gpu-arena tag
`vllm:kv_cache`), fills it, then runs `--cycles` sleep / wake cycles: the adapter's `sleep()`
discards the pool, `wake_up()` recommits it, and a kernel then writes every tensor and reads it
back (`--fill no`: the tensors are never written, as in the bench's section g). The adapter's
calls are timed whole, and the gpu-arena calls inside them alone (`gpu_arena.sleep` / `wake`
with what they report). `--collect before` runs Python's garbage collector right before each
`sleep()`, inside its timing, as the adapter's `sleep()` itself did until 2026-11-28. `--gap-ms`
waits that long between each sleep and its wake (0: none). Prints one
JSON line: the allocation's time, the tag's handles and committed bytes before each sleep, each
sleep's and wake's times, and whether every check passed."""
import argparse, gc, json, os, time

ap = argparse.ArgumentParser()
ap.add_argument("--gib", type=float, default=64)
ap.add_argument("--layers", type=int, default=32)
ap.add_argument("--cycles", type=int, default=3)
ap.add_argument("--fill", choices=("yes", "no"), default="yes")
ap.add_argument("--collect", choices=("none", "before"), default="none")
ap.add_argument("--gap-ms", type=float, default=0)
args = ap.parse_args()

import gpu_arena  # noqa: E402
import gpu_arena.torch  # noqa: E402

gpu_arena.torch.enable()
import torch  # noqa: E402
from gpu_arena.vllm import CuMemAllocator  # noqa: E402

BLOCK = 2 * 16 * 8 * 128 * 2  # bytes of one block in the (2, blocks, 16, 8, 128) float16 layout
blocks = int(args.gib * (1 << 30)) // args.layers // BLOCK
allocator = CuMemAllocator.get_instance()
tag = CuMemAllocator.arena_tag("kv_cache")


def kv_stats():
    return next(t for t in gpu_arena.stats()["tags"] if t["tag"] == tag)["stats"]


torch.cuda.synchronize()
t = time.perf_counter()
with allocator.use_memory_pool(tag="kv_cache"):
    kv = [torch.empty((2, blocks, 16, 8, 128), dtype=torch.float16, device="cuda") for _ in range(args.layers)]
torch.cuda.synchronize()
alloc_s = time.perf_counter() - t
fill = args.fill == "yes"
if fill:
    for i, x in enumerate(kv):
        x.fill_(i + 1)
torch.cuda.synchronize()

# What the adapter's sleep() and wake_up() call, timed alone.
arena_calls = []


def timed(name, f):
    def call(*a, **k):
        t = time.perf_counter()
        r = f(*a, **k)
        arena_calls.append((name, time.perf_counter() - t, r))
        return r
    return call


gpu_arena.sleep, gpu_arena.wake = timed("sleep", gpu_arena.sleep), timed("wake", gpu_arena.wake)

cycles, ok = [], True
for c in range(args.cycles):
    s = kv_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if args.collect == "before":
        gc.collect()
    allocator.sleep(offload_tags=())  # nothing offloaded: the pool is discarded
    t1 = time.perf_counter()
    asleep = kv_stats()
    if args.gap_ms:
        time.sleep(args.gap_ms / 1e3)
    tw = time.perf_counter()
    allocator.wake_up()
    t2 = time.perf_counter()
    (_, sleep_s, sleep_report), (_, wake_s, wake_report) = arena_calls[-2:]
    if fill:
        for i, x in enumerate(kv):
            x.fill_(c + i + 2)
        torch.cuda.synchronize()
        ok &= all(bool((x[0, 0, 0, 0, :4] == c + i + 2).all()) for i, x in enumerate(kv))
    ok &= asleep["handles"] == 0
    cycles.append({"handles": s["handles"], "committed": s["committed"], "live": s["live"],
                   "sleep_ms": (t1 - t0) * 1e3, "wake_ms": (t2 - tw) * 1e3,
                   "arena_sleep_ms": sleep_s * 1e3, "arena_wake_ms": wake_s * 1e3,
                   "sleep_report": sleep_report, "wake_report": wake_report})

print(json.dumps({
    "conf": os.environ.get("GPU_ARENA_CONF", ""),
    "fill": args.fill,
    "collect": args.collect,
    "gap_ms": args.gap_ms,
    "gib": sum(x.numel() * x.element_size() for x in kv) / (1 << 30),
    "layers": args.layers,
    "alloc_s": alloc_s,
    "cycles": cycles,
    "ok": ok,
}), flush=True)
