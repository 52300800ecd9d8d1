"""Do VMM driver calls get slower when several processes make them at once?

Under DDP on 2 H100s each of gpu-arena's VMM calls took 68-80 us
(docs/multi-gpu/h100x2-ddp400-vmmtime-20261127/), about twice what one call
took alone. This probe separates one cause: W processes, one GPU each, make
the calls of a new 64-page stitched range at the same moment (64 alias maps
of one 2 MiB handle into adjacent pages, one set_access over them, one
unmap), again and again, with no kernel running. Worlds of 1 and of W
processes alternate over several rounds; each process prints its
microseconds per call, and the medians per world come last.

    python3 scripts/vmm_concurrency.py [--worlds 1,2] [--rounds 5] [--ranges 40]
"""
import argparse
import ctypes
import multiprocessing as mp
import statistics
import time

from vmm_stall import PAGE, AccessDesc, Loc, Prop

PAGES = 64


def worker(rank, ranges, barrier, out):
    import torch

    torch.cuda.set_device(rank)
    torch.zeros(1, device="cuda")  # the primary context, current on this thread
    cu = ctypes.CDLL("libcuda.so.1")
    u64 = ctypes.c_uint64

    def ck(r, what):
        if r != 0:
            raise RuntimeError(f"{what} failed: CUresult {r}")

    prop = Prop()
    prop.type = 1  # CU_MEM_ALLOCATION_TYPE_PINNED
    prop.location = Loc(1, rank)  # CU_MEM_LOCATION_TYPE_DEVICE
    access = AccessDesc(Loc(1, rank), 3)  # CU_MEM_ACCESS_FLAGS_PROT_READWRITE
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), ctypes.c_size_t((PAGES + 1) * PAGE), ctypes.c_size_t(0), u64(0), u64(0)),
       "reserve")
    keep = u64()
    ck(cu.cuMemCreate(ctypes.byref(keep), ctypes.c_size_t(PAGE), ctypes.byref(prop), u64(0)), "create")
    ck(cu.cuMemMap(u64(va.value), ctypes.c_size_t(PAGE), ctypes.c_size_t(0), keep, u64(0)), "map")
    ck(cu.cuMemSetAccess(u64(va.value), ctypes.c_size_t(PAGE), ctypes.byref(access), ctypes.c_size_t(1)), "access")
    first = va.value + PAGE
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(ranges):
        for i in range(PAGES):
            ck(cu.cuMemMap(u64(first + i * PAGE), ctypes.c_size_t(PAGE), ctypes.c_size_t(0), keep, u64(0)), "alias map")
        ck(cu.cuMemSetAccess(u64(first), ctypes.c_size_t(PAGES * PAGE), ctypes.byref(access), ctypes.c_size_t(1)),
           "access")
        ck(cu.cuMemUnmap(u64(first), ctypes.c_size_t(PAGES * PAGE)), "unmap")
    dt = time.perf_counter() - t0
    out.put((rank, dt * 1e6 / (ranges * (PAGES + 2))))
    ck(cu.cuMemUnmap(u64(va.value), ctypes.c_size_t(PAGE)), "unmap")
    ck(cu.cuMemRelease(keep), "release")
    ck(cu.cuMemAddressFree(u64(va.value), ctypes.c_size_t((PAGES + 1) * PAGE)), "free")


def world(w, ranges):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(w), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, ranges, barrier, out)) for r in range(w)]
    for p in procs:
        p.start()
    res = sorted(out.get() for _ in procs)
    for p in procs:
        p.join()
    return [us for _, us in res]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--worlds", default="1,2", help="process counts, alternated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ranges", type=int, default=40, help="64-page ranges mapped and unmapped per process")
    a = ap.parse_args()
    worlds = [int(x) for x in a.worlds.split(",")]
    got = {w: [] for w in worlds}
    for r in range(a.rounds):
        for w in worlds:
            us = world(w, a.ranges)
            got[w] += us
            print(f"round {r} world {w}: us per call by process {', '.join(f'{x:.1f}' for x in us)}", flush=True)
    for w in worlds:
        v = got[w]
        print(f"world {w}: median {statistics.median(v):.1f} us per call (min {min(v):.1f}, max {max(v):.1f}), "
              f"{len(v)} process runs of {a.ranges} ranges x {PAGES + 2} calls")


if __name__ == "__main__":
    main()
