"""Does what a handle went through change what giving it back costs?

Under PyTorch, the second sleep of GPT-2's weights (260 MiB in one handle, recommitted by the first
wake, restored by a copy and read by the model since) spent 30-52 ms in its VMM calls, where the
first sleep (the same bytes in the handles made as the weights were loaded) spent 3.8-4.8 ms and a
bench sleep of 10 GiB in 1 GiB handles that nothing wrote 3.45-9.17 ms on an H100
(docs/sleep-wake.md). This probe makes one handle of --mib MiB, maps it with access, puts it
through one history, then times cuMemUnmap and cuMemRelease on their own:

    fresh      nothing
    memset     cuMemsetD8 over it (synchronized)
    h2d        a copy into it from pinned host memory (torch, cudaHostAlloc)
    d2h        a copy out of it into pinned host memory
    h2d-vmm    a copy into it from host memory of a VMM host handle mapped with device access
               (what gpu-arena's offload stage is: a restore)
    d2h-vmm    a copy out of it into that host memory (an offload)
    kernel     a torch kernel writing it (add_ over a tensor on the mapping)
    gap        made right after a buffer of --gap-gib GiB (default: 90 % of the free memory) was
               cuMemAlloc'd, filled with cuMemsetD8 and cuMemFree'd, all synchronized (what the
               memory used outside gpu-arena between a sleep and a wake leaves behind), then
               written by a copy from pinned host memory, as a wake restores
    gap-later  the same, and 300 ms pass before the unmap

The copies of h2d and gap are timed too (GiB/s).

Histories alternate within each round; figures are medians over --rounds, in ms, with min-max.

    python3 scripts/release_history_probe.py [--mib 260,1024] [--rounds 5]
"""
import argparse
import ctypes
import statistics
import time

import torch

from cu_vmm import AccessDesc, Loc, PAGE, Prop, ck, create_handle, cu, device_memory, size_t, tensor_over, u64

HISTORIES = ("fresh", "memset", "h2d", "d2h", "h2d-vmm", "d2h-vmm", "kernel", "gap", "gap-later")


def gap_buffer(nbytes):
    """cuMemAlloc + cuMemsetD8 + cuMemFree of `nbytes`, synchronized."""
    p = u64()
    ck(cu.cuMemAlloc_v2(ctypes.byref(p), size_t(nbytes)), "gap alloc")
    ck(cu.cuMemsetD8_v2(p, ctypes.c_ubyte(0x5A), size_t(nbytes)), "gap memset")
    ck(cu.cuCtxSynchronize(), "gap sync")
    ck(cu.cuMemFree_v2(p), "gap free")


def host_vmm(nbytes, dev):
    """A host-located VMM handle mapped with host and device access: (va, handle)."""
    prop = Prop()
    prop.type = 1
    prop.location = Loc(2, 0)  # CU_MEM_LOCATION_TYPE_HOST
    h = create_handle(prop, nbytes)
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(nbytes), size_t(0), u64(0), u64(0)), "reserve host")
    ck(cu.cuMemMap(va, size_t(nbytes), size_t(0), h, u64(0)), "map host")
    acc = (AccessDesc * 2)(AccessDesc(Loc(2, 0), 3), AccessDesc(Loc(1, dev), 3))
    ck(cu.cuMemSetAccess(va, size_t(nbytes), acc, size_t(2)), "access host")
    return va.value, h


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", default="260,1024")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gap-gib", type=int, default=0)
    args = ap.parse_args()
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    dev = torch.cuda.current_device()
    prop, access = device_memory(dev)
    print(torch.cuda.get_device_name(dev), flush=True)
    for mib in (int(x) for x in args.mib.split(",")):
        nbytes = -(-(mib << 20) // PAGE) * PAGE
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        hva, hh = host_vmm(nbytes, dev)
        base = u64()
        ck(cu.cuMemAddressReserve(ctypes.byref(base), size_t(nbytes), size_t(0), u64(0), u64(0)), "reserve")
        times = {h: {"unmap": [], "release": [], "copy": []} for h in HISTORIES}
        free, _ = torch.cuda.mem_get_info()
        gap = (args.gap_gib << 30) or int((free - 2 * nbytes) * 0.9) // PAGE * PAGE
        print(f"gap buffer: {gap / 2**30:.1f} GiB", flush=True)
        for _ in range(args.rounds):
            for hist in HISTORIES:
                if hist.startswith("gap"):
                    gap_buffer(gap)
                h = create_handle(prop, nbytes)
                ck(cu.cuMemMap(base, size_t(nbytes), size_t(0), h, u64(0)), "map")
                ck(cu.cuMemSetAccess(base, size_t(nbytes), ctypes.byref(access), size_t(1)), "access")
                if hist == "memset":
                    ck(cu.cuMemsetD8_v2(base, ctypes.c_ubyte(0x5A), size_t(nbytes)), "memset")
                elif hist in ("h2d", "gap", "gap-later"):
                    tc = time.perf_counter()
                    ck(cu.cuMemcpyHtoD_v2(base, ctypes.c_void_p(pinned.data_ptr()), size_t(nbytes)), "h2d")
                    times[hist]["copy"].append(nbytes / 2**30 / (time.perf_counter() - tc))
                elif hist == "d2h":
                    ck(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(pinned.data_ptr()), base, size_t(nbytes)), "d2h")
                elif hist == "h2d-vmm":
                    ck(cu.cuMemcpyHtoD_v2(base, ctypes.c_void_p(hva), size_t(nbytes)), "h2d-vmm")
                elif hist == "d2h-vmm":
                    ck(cu.cuMemcpyDtoH_v2(ctypes.c_void_p(hva), base, size_t(nbytes)), "d2h-vmm")
                elif hist == "kernel":
                    tensor_over(base.value, nbytes, "<i4").add_(1)
                if hist == "gap-later":
                    time.sleep(0.3)
                torch.cuda.synchronize()
                ck(cu.cuCtxSynchronize(), "sync")
                t0 = time.perf_counter()
                ck(cu.cuMemUnmap(base, size_t(nbytes)), "unmap")
                t1 = time.perf_counter()
                ck(cu.cuMemRelease(h), "release")
                t2 = time.perf_counter()
                times[hist]["unmap"].append((t1 - t0) * 1e3)
                times[hist]["release"].append((t2 - t1) * 1e3)
        ck(cu.cuMemAddressFree(base, size_t(nbytes)), "free")
        ck(cu.cuMemUnmap(u64(hva), size_t(nbytes)), "unmap host")
        ck(cu.cuMemRelease(hh), "release host")
        print(f"\n{mib} MiB in one handle, {args.rounds} rounds: ms, median (min-max)")
        print("| history | unmap | release | copy into it (GiB/s) |")
        print("|---|---:|---:|---:|")
        for hist in HISTORIES:
            def cell(xs, f="{:.3f}"):
                return f"{f.format(statistics.median(xs))} ({f.format(min(xs))}-{f.format(max(xs))})" if xs else "-"
            t = times[hist]
            print(f"| {hist} | {cell(t['unmap'])} | {cell(t['release'])} | {cell(t['copy'], '{:.1f}')} |", flush=True)


if __name__ == "__main__":
    main()
