"""Do VMM driver calls stall the GPU's own work, beyond their CPU time?

Keeps the GPU busy with PyTorch matmuls (GPU-bound: the CPU launches them far
faster than they run) and, between batches, makes one kind of VMM call
sequence through the CUDA driver API (ctypes on libcuda), on memory that no
kernel touches. If a call only costs CPU time, the queue of launched work
hides it and the GPU's total time does not change; if the driver stalls the
GPU (page-table updates, TLB invalidation waiting for work in flight), the
total grows by the stall times the number of calls. A CPU spin of the same
length is the control. Variants alternate, several rounds; medians printed.
With --nccl W, W processes (one GPU each) keep the GPUs busy with NCCL
all-reduces instead of matmuls, each making the same VMM calls on its own GPU
between batches: do the calls stall collectives (a peer waits for a stalled
rank)?

    python3 scripts/vmm_stall.py [--iters 400] [--batch 20] [--rounds 5] [--n 2048]
    python3 scripts/vmm_stall.py --nccl 2 [--mib 32] ...
"""
import argparse
import ctypes
import os
import statistics
import time

import torch
import torch.distributed as dist

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, u64  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=2048, help="matmul size")
    ap.add_argument("--nccl", type=int, default=0, help="world size: all-reduces instead of matmuls")
    ap.add_argument("--mib", type=int, default=32, help="all-reduce size (MiB)")
    args = ap.parse_args()
    if args.nccl:
        torch.multiprocessing.spawn(probe, args=(args,), nprocs=args.nccl)
    else:
        probe(0, args)


def probe(rank, args):
    if args.nccl:
        torch.cuda.set_device(rank)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=rank, world_size=args.nccl, device_id=torch.device("cuda", rank))
    torch.cuda.init()
    dev = torch.cuda.current_device()
    a = torch.randn(args.n, args.n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(args.n, args.n, device="cuda", dtype=torch.bfloat16)
    buf = torch.ones(args.mib << 19, device="cuda", dtype=torch.bfloat16) if args.nccl else None
    if args.nccl:
        dist.all_reduce(buf)
    torch.cuda.synchronize()

    def work():
        if args.nccl:
            dist.all_reduce(buf)
        else:
            torch.mm(a, b)

    prop, access = device_memory(dev)
    slots = 64
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t(slots * PAGE), ctypes.c_size_t(0), u64(0), u64(0)), "reserve")
    # A handle kept mapped at slot 0, for aliases at other slots.
    keep = create_handle(prop)
    ck(cu.cuMemMap(u64(va.value), ctypes.c_size_t(PAGE), ctypes.c_size_t(0), keep, u64(0)), "map")
    ck(cu.cuMemSetAccess(u64(va.value), ctypes.c_size_t(PAGE), ctypes.byref(access), ctypes.c_size_t(1)), "access")
    state = {"i": 0}

    def teardown():
        ck(cu.cuMemUnmap(u64(va.value), ctypes.c_size_t(PAGE)), "unmap")
        ck(cu.cuMemRelease(keep), "release")
        ck(cu.cuMemAddressFree(u64(va.value), ctypes.c_size_t(slots * PAGE)), "free")
        if args.nccl:
            dist.destroy_process_group()

    def slot():
        state["i"] = state["i"] % (slots - 1) + 1
        return va.value + state["i"] * PAGE

    def commit_and_give_back():
        # create + map + set_access, then unmap + release (5 calls)
        p = slot()
        h = create_handle(prop)
        ck(cu.cuMemMap(u64(p), ctypes.c_size_t(PAGE), ctypes.c_size_t(0), h, u64(0)), "map")
        ck(cu.cuMemSetAccess(u64(p), ctypes.c_size_t(PAGE), ctypes.byref(access), ctypes.c_size_t(1)), "access")
        ck(cu.cuMemUnmap(u64(p), ctypes.c_size_t(PAGE)), "unmap")
        ck(cu.cuMemRelease(h), "release")

    def alias():
        # map + set_access of the kept handle at a second address, then unmap (3 calls)
        p = slot()
        ck(cu.cuMemMap(u64(p), ctypes.c_size_t(PAGE), ctypes.c_size_t(0), keep, u64(0)), "map")
        ck(cu.cuMemSetAccess(u64(p), ctypes.c_size_t(PAGE), ctypes.byref(access), ctypes.c_size_t(1)), "access")
        ck(cu.cuMemUnmap(u64(p), ctypes.c_size_t(PAGE)), "unmap")

    def event_pair():
        # what a fenced free records and polls (2 calls): no page-table change
        e = ctypes.c_void_p()
        ck(cu.cuEventCreate(ctypes.byref(e), ctypes.c_uint(2)), "event")  # DISABLE_TIMING
        ck(cu.cuEventRecord(e, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)), "record")
        cu.cuEventQuery(e)
        ck(cu.cuEventDestroy_v2(e), "destroy")

    def timed_cpu(fn):
        t = time.perf_counter()
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / 50

    cpu_cost = {"commit+give back (5 calls)": timed_cpu(commit_and_give_back),
                "alias map+access+unmap (3 calls)": timed_cpu(alias),
                "event record+query (no VMM)": timed_cpu(event_pair)}
    spin_s = cpu_cost["commit+give back (5 calls)"]

    def spin():
        t = time.perf_counter()
        while time.perf_counter() - t < spin_s:
            pass

    variants = {"none": None, "cpu spin (control)": spin, "commit+give back (5 calls)": commit_and_give_back,
                "alias map+access+unmap (3 calls)": alias, "event record+query (no VMM)": event_pair}

    def run(op):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(args.iters):
            for _ in range(args.batch):
                work()
            if op:
                op()
        torch.cuda.synchronize()
        if args.nccl:
            dist.barrier()
        return time.perf_counter() - t

    run(None)
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, op in variants.items():
            times[k].append(run(op))
    what = (f"all-reduces of {args.mib} MiB (NCCL, {args.nccl} ranks; rank {rank} shown)" if args.nccl
            else f"matmuls ({args.n}x{args.n} bf16)")
    if rank != 0:
        teardown()
        return
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.iters} iterations of "
          f"{args.batch} {what} and one op; {args.rounds} rounds alternating")
    for k, v in cpu_cost.items():
        print(f"cpu time of one op alone (GPU idle): {k}: {v * 1e6:.1f} us")
    base = statistics.median(times["none"])
    for k, v in times.items():
        m = statistics.median(v)
        extra = (m - base) / args.iters
        print(f"{k:36s} median {m * 1e3:8.2f} ms (min {min(v) * 1e3:.2f}, max {max(v) * 1e3:.2f}); "
              f"vs none {m / base:.3f}x, {extra * 1e6:+.1f} us per op")
    teardown()


if __name__ == "__main__":
    main()
