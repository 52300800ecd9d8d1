"""How fast can pinned host memory for an offload be obtained, and do threads help?

gpu-arena's offload stages a sleeping tag's contents in pinned host memory: one host-located VMM
handle (cuMemCreate with CU_MEM_LOCATION_TYPE_HOST) mapped with host and device access. Obtaining
10 GiB of it took 2.75 s on an H100 (docs/BENCHMARKS.md), against about 0.2 s for the copy itself,
so a first offload that must obtain it runs at a tenth of the copy's speed. This probe obtains
--gib GiB as T handles of --gib/T GiB made by T threads at once (each its own cuMemCreate, map into
its slice of one reservation, and set_access), T in --threads, alternating in rounds, and reports
the wall time and GiB/s; then, as references, the same bytes through one cuMemHostAlloc and
through cuMemHostRegister of malloc'd memory touched by T threads first.

    python3 scripts/pin_speed_probe.py [--gib 8] [--threads 1,2,4,8,16] [--rounds 3]
"""
import argparse
import ctypes
import statistics
import threading
import time

import torch

from cu_vmm import AccessDesc, Loc, Prop, ck, cu, size_t, u64

GIB = 1 << 30


def host_prop():
    prop = Prop()
    prop.type = 1
    prop.location = Loc(2, 0)  # CU_MEM_LOCATION_TYPE_HOST
    return prop


def vmm_stage(nbytes, threads, dev, ctx):
    """Obtains `nbytes` as `threads` host handles made at once; returns (seconds, teardown)."""
    prop = host_prop()
    acc = (AccessDesc * 2)(AccessDesc(Loc(2, 0), 3), AccessDesc(Loc(1, dev), 3))
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(nbytes), size_t(0), u64(0), u64(0)), "reserve")
    part = nbytes // threads
    handles = [None] * threads
    errors = []

    def work(i):
        try:
            ck(cu.cuCtxSetCurrent(ctx), "ctx")
            h = u64()
            ck(cu.cuMemCreate(ctypes.byref(h), size_t(part), ctypes.byref(prop), u64(0)), "create")
            at = u64(va.value + i * part)
            ck(cu.cuMemMap(at, size_t(part), size_t(0), h, u64(0)), "map")
            ck(cu.cuMemSetAccess(at, size_t(part), acc, size_t(2)), "access")
            handles[i] = h
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    secs = time.perf_counter() - t
    if errors:
        raise errors[0]

    def teardown():
        ck(cu.cuMemUnmap(va, size_t(nbytes)), "unmap")
        for h in handles:
            ck(cu.cuMemRelease(h), "release")
        ck(cu.cuMemAddressFree(va, size_t(nbytes)), "free")

    return secs, teardown


def host_alloc(nbytes):
    p = ctypes.c_void_p()
    t = time.perf_counter()
    ck(cu.cuMemHostAlloc(ctypes.byref(p), size_t(nbytes), ctypes.c_uint(0)), "cuMemHostAlloc")
    secs = time.perf_counter() - t
    return secs, lambda: ck(cu.cuMemFreeHost(p), "cuMemFreeHost")


def host_register(nbytes, threads):
    libc = ctypes.CDLL("libc.so.6")
    libc.aligned_alloc.restype = ctypes.c_void_p
    p = libc.aligned_alloc(size_t(2 << 20), size_t(nbytes))
    part = nbytes // threads
    t = time.perf_counter()
    ts = [threading.Thread(target=lambda i=i: ctypes.memset(p + i * part, 0, part)) for i in range(threads)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    touched = time.perf_counter() - t
    ck(cu.cuMemHostRegister_v2(ctypes.c_void_p(p), size_t(nbytes), ctypes.c_uint(0)), "cuMemHostRegister")
    secs = time.perf_counter() - t

    def teardown():
        ck(cu.cuMemHostUnregister(ctypes.c_void_p(p)), "unregister")
        libc.free(ctypes.c_void_p(p))

    return secs, touched, teardown


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=8)
    ap.add_argument("--threads", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.zeros(1, device="cuda")
    dev = torch.cuda.current_device()
    ctx = u64()
    ck(cu.cuCtxGetCurrent(ctypes.byref(ctx)), "ctx")
    nbytes = args.gib * GIB
    threads = [int(x) for x in args.threads.split(",")]
    print(torch.cuda.get_device_name(dev), f"{args.gib} GiB", flush=True)
    res = {}
    for _ in range(args.rounds):
        for t in threads:
            secs, down = vmm_stage(nbytes, t, dev, ctx)
            down()
            res.setdefault(f"VMM host handles, {t} thread(s)", []).append(secs)
        secs, down = host_alloc(nbytes)
        down()
        res.setdefault("cuMemHostAlloc, 1 call", []).append(secs)
        for t in (1, max(threads)):
            secs, touched, down = host_register(nbytes, t)
            down()
            res.setdefault(f"malloc + touch by {t} thread(s) + cuMemHostRegister", []).append(secs)
            res.setdefault(f"  of it, the touch by {t} thread(s)", []).append(touched)
    print(f"\n{args.rounds} rounds, seconds for {args.gib} GiB: median (min-max), and GiB/s at the median")
    print("| way | seconds | GiB/s |")
    print("|---|---:|---:|")
    for k, v in res.items():
        m = statistics.median(v)
        print(f"| {k} | {m:.3f} ({min(v):.3f}-{max(v):.3f}) | {args.gib / m:.1f} |", flush=True)


if __name__ == "__main__":
    main()
