"""Does giving a handle back cost less when it is released before it is unmapped?

A sleep (and every decommit) gives each handle back as cuMemUnmap of its
mappings, then cuMemRelease of the handle: about 30 us per one-page handle
on an H200, per handle whatever the batching (docs/pytorch.md, "Per handle,
not per byte"). The driver also accepts the other order: a handle released
while still mapped is freed when its last mapping goes. If the release then
only drops a reference and the unmap frees the memory in the same pass, the
pair may cost less. This probe maps N handles of P pages side by side (given
read-write access, written once and waited for, as memory in use is) and
gives them all back in each order, alternating orders in rounds:

    unmap-first    one cuMemUnmap over the run, then cuMemRelease of each
    release-first  cuMemRelease of each, then one cuMemUnmap over the run

and prints ms for all (median, min-max over rounds) and us per handle.

    python3 scripts/release_order_probe.py [--layouts 192x1,10x512,245x1] [--rounds 9]
"""
import argparse
import ctypes
import statistics
import time

import torch

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, size_t, u64  # noqa: E402

ORDERS = ("unmap-first", "release-first")


def give_back(prop, access, base, n, pages, order):
    """Maps `n` handles of `pages` pages at `base`, writes them, gives them back in `order`; seconds."""
    size = pages * PAGE
    hs = [create_handle(prop, size) for _ in range(n)]
    for i, h in enumerate(hs):
        ck(cu.cuMemMap(u64(base + i * size), size_t(size), size_t(0), h, u64(0)), "map")
    ck(cu.cuMemSetAccess(u64(base), size_t(n * size), ctypes.byref(access), size_t(1)), "access")
    ck(cu.cuMemsetD8_v2(u64(base), ctypes.c_ubyte(1), size_t(n * size)), "memset")
    ck(cu.cuCtxSynchronize(), "synchronize")
    t0 = time.perf_counter()
    if order == "unmap-first":
        ck(cu.cuMemUnmap(u64(base), size_t(n * size)), "unmap")
        for h in hs:
            ck(cu.cuMemRelease(h), "release")
    else:
        for h in hs:
            ck(cu.cuMemRelease(h), "release")
        ck(cu.cuMemUnmap(u64(base), size_t(n * size)), "unmap")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layouts", default="192x1,10x512,245x1")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    layouts = [tuple(int(v) for v in x.split("x")) for x in args.layouts.split(",")]
    torch.cuda.init()
    dev = torch.cuda.current_device()
    torch.zeros(1, device="cuda")
    prop, access = device_memory(dev)
    span = max(n * p for n, p in layouts) * PAGE
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(span), size_t(0), u64(0), u64(0)), "reserve")
    base = va.value
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{args.rounds} rounds alternating orders; handles written once before they are given back")
    for n, p in layouts:
        res = {o: [] for o in ORDERS}
        for r in range(args.rounds):
            for o in ORDERS[r % 2:] + ORDERS[:r % 2]:
                res[o].append(give_back(prop, access, base, n, p, o) * 1e3)
        for o in ORDERS:
            v = res[o]
            m = statistics.median(v)
            print(f"{n} handles of {p} pages ({n * p * PAGE >> 20} MiB), {o}: median {m:.2f} ms "
                  f"(min {min(v):.2f}, max {max(v):.2f}), {m * 1e3 / n:.1f} us per handle")
    ck(cu.cuMemAddressFree(u64(base), size_t(span)), "free")


if __name__ == "__main__":
    main()
