#!/usr/bin/env python3
"""All-reduce on 2 GPUs through torch.distributed (NCCL), with gpu-arena as
the CUDA allocator in each process, against PyTorch's default allocator in
the same run (docs/multi-gpu.md).

For each allocator (a fresh pair of processes each, since the allocator can
only be changed before the first CUDA allocation of a process) and each size
from --min to --max bytes (x4 steps by default: 1 MiB, 4 MiB, ... 1 GiB):

* correctness: every rank all-reduces float32 x[i] = (i % 1024) + rank and
  checks the exact sum (sum over ranks, no rounding: small integers);
* timing: --warmup then --iters in-place all-reduces of a second tensor,
  bracketed by torch.cuda.synchronize(); algorithm bandwidth = bytes / time,
  bus bandwidth = 2 (n - 1) / n * bytes / time (nccl-tests' definition).

Rank 0 writes one JSON line per (allocator, size) to --out and the parent
prints a table with the gpu-arena / default ratio.

Usage (on a machine with 2 GPUs, from the repository root, after
`cargo build --release`):

    python3 scripts/nccl_allreduce.py --lib target/release/libgpu_arena.so \
        --out nccl_allreduce.jsonl

NVLink multicast stays off (the machine notes demand it): the three
variables below are forced before torch is imported, in this process and in
every child.
"""

import os

# Forced, not defaulted: NVLink SHARP / multicast can take a shared host's
# GPUs out of service. Keep these set in every process this script starts.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ALLOC = "gpu_arena_torch_alloc"
FREE = "gpu_arena_torch_free"
ALLOCATORS = ("default", "gpu-arena")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sizes(lo, hi, factor):
    n = lo
    while n <= hi:
        yield n
        n *= factor


def worker(rank, world, args, allocator, port, out_path):
    import torch
    import torch.distributed as dist

    if allocator == "gpu-arena":
        # Before any CUDA allocation of this process.
        torch.cuda.memory.change_current_allocator(
            torch.cuda.memory.CUDAPluggableAllocator(args.lib, ALLOC, FREE)
        )
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group(
        "nccl",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        device_id=dev,
    )
    results = []
    for nbytes in sizes(args.min, args.max, args.factor):
        n = nbytes // 4
        # Correctness: exact small-integer sums.
        base = torch.arange(n, device=dev, dtype=torch.int64) % 1024
        x = (base + rank).to(torch.float32)
        dist.all_reduce(x)
        want = (base * world + world * (world - 1) // 2).to(torch.float32)
        ok = bool(torch.equal(x, want))
        del base, x, want
        # Timing: in-place all-reduce of zeros (values stay finite).
        t = torch.zeros(n, device=dev, dtype=torch.float32)
        for _ in range(args.warmup):
            dist.all_reduce(t)
        torch.cuda.synchronize()
        dist.barrier()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(t)
        torch.cuda.synchronize()
        secs = (time.perf_counter() - start) / args.iters
        del t
        # Every rank's figures: the slowest rank defines the collective.
        fig = torch.tensor([secs, 1.0 if ok else 0.0], device=dev, dtype=torch.float64)
        gathered = [torch.zeros_like(fig) for _ in range(world)]
        dist.all_gather(gathered, fig)
        secs = max(float(g[0]) for g in gathered)
        ok = all(float(g[1]) == 1.0 for g in gathered)
        algbw = nbytes / secs / 1e9
        busbw = algbw * 2 * (world - 1) / world
        results.append(
            {
                "allocator": allocator,
                "bytes": nbytes,
                "ok": ok,
                "us": secs * 1e6,
                "algbw_GBps": algbw,
                "busbw_GBps": busbw,
            }
        )
        if rank == 0:
            print(
                f"{allocator:>9} {nbytes:>11} B  {secs * 1e6:10.1f} us  "
                f"algbw {algbw:7.1f} GB/s  busbw {busbw:7.1f} GB/s  {'ok' if ok else 'WRONG'}",
                flush=True,
            )
    if rank == 0:
        with open(out_path, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    dist.barrier()
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", default="target/release/libgpu_arena.so",
                   help="the gpu-arena cdylib exporting gpu_arena_torch_alloc/free")
    p.add_argument("--min", type=int, default=1 << 20, help="smallest size in bytes")
    p.add_argument("--max", type=int, default=1 << 30, help="largest size in bytes")
    p.add_argument("--factor", type=int, default=4, help="size step factor")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--world", type=int, default=2, help="processes (one GPU each)")
    p.add_argument("--allocators", default=",".join(ALLOCATORS),
                   help="comma list of: " + ", ".join(ALLOCATORS))
    p.add_argument("--out", default=None, help="JSON lines output (default: a temp file)")
    args = p.parse_args()

    import torch
    import torch.multiprocessing as mp

    allocators = [a for a in args.allocators.split(",") if a]
    for a in allocators:
        if a not in ALLOCATORS:
            sys.exit(f"unknown allocator {a!r}")
    if "gpu-arena" in allocators:
        lib = ctypes.CDLL(os.path.abspath(args.lib))
        for sym in (ALLOC, FREE):
            if not hasattr(lib, sym):
                sys.exit(f"{args.lib} does not export {sym}")
        args.lib = os.path.abspath(args.lib)
    gpus = torch.cuda.device_count()
    if gpus < args.world:
        print(f"skipped: {args.world} GPUs needed, {gpus} found")
        return 0
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="nccl_allreduce_"), "results.jsonl")
    if os.path.exists(out):
        os.remove(out)
    print(f"torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, "
          f"{gpus} x {torch.cuda.get_device_name(0)}; "
          f"NCCL_NVLS_ENABLE={os.environ['NCCL_NVLS_ENABLE']}", flush=True)
    for allocator in allocators:
        mp.spawn(worker, args=(args.world, args, allocator, free_port(), out),
                 nprocs=args.world, join=True)

    rows = [json.loads(line) for line in open(out)]
    by = {(r["allocator"], r["bytes"]): r for r in rows}
    print("\n| size | default busbw GB/s | gpu-arena busbw GB/s | ratio | correct |")
    print("|---:|---:|---:|---:|---|")
    bad = False
    for nbytes in sizes(args.min, args.max, args.factor):
        d, g = by.get(("default", nbytes)), by.get(("gpu-arena", nbytes))
        ratio = (g["busbw_GBps"] / d["busbw_GBps"]) if d and g else float("nan")
        ok = all(r["ok"] for r in (d, g) if r)
        bad |= not ok
        fmt = lambda r: f"{r['busbw_GBps']:.1f}" if r else "-"  # noqa: E731
        print(f"| {nbytes >> 20} MiB | {fmt(d)} | {fmt(g)} | {ratio:.3f} | {'yes' if ok else 'NO'} |")
    print(f"\nresults: {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
