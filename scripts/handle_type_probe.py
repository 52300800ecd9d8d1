"""Do exportable handles cost more in every VMM call?

gpu-arena's CUDA backend creates every device handle with
CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR (so that any run could be exported
to another process), where the driver probes in scripts/ (cu_vmm.py) and
PyTorch's expandable segments by default create them with no handle type.
This probe times the life of N one-page handles, each phase for all N, in
both kinds, alternating kinds in rounds:

    create   cuMemCreate of each handle
    map      cuMemMap of each at its own page of a run
    access   one cuMemSetAccess over the run
    alias    cuMemMap of each at a second run, one cuMemSetAccess over it,
             one cuMemUnmap of it (what moving a page to a stitched range
             costs, and undoing it)
    unmap    one cuMemUnmap over the first run
    release  cuMemRelease of each handle

With --touch the first run is written (a memset, waited for) before the
alias phase, as memory in use is. Figures are the median over rounds of
each round's median over --iters cycles, in us per handle.

    python3 scripts/handle_type_probe.py [--handles 64] [--rounds 7] [--iters 5] [--touch]
"""
import argparse
import ctypes
import statistics
import time

import torch

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, size_t, u64, unmap_release_timed  # noqa: E402

KINDS = {"none": 0, "posix_fd": 1}  # CU_MEM_HANDLE_TYPE_NONE, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
PHASES = ("create", "map", "access", "alias", "unmap", "release")


def cycle(prop, access, base, n, touch):
    """One life of `n` one-page handles at `base` (and `base + n pages` for the alias); seconds per phase."""
    t = {}
    alias = base + n * PAGE
    t0 = time.perf_counter()
    hs = [create_handle(prop) for _ in range(n)]
    t["create"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, h in enumerate(hs):
        ck(cu.cuMemMap(u64(base + i * PAGE), size_t(PAGE), size_t(0), h, u64(0)), "map")
    t["map"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ck(cu.cuMemSetAccess(u64(base), size_t(n * PAGE), ctypes.byref(access), size_t(1)), "access")
    t["access"] = time.perf_counter() - t0
    if touch:
        ck(cu.cuMemsetD8_v2(u64(base), ctypes.c_ubyte(1), size_t(n * PAGE)), "memset")
        ck(cu.cuCtxSynchronize(), "synchronize")
    t0 = time.perf_counter()
    for i, h in enumerate(hs):
        ck(cu.cuMemMap(u64(alias + i * PAGE), size_t(PAGE), size_t(0), h, u64(0)), "alias map")
    ck(cu.cuMemSetAccess(u64(alias), size_t(n * PAGE), ctypes.byref(access), size_t(1)), "alias access")
    ck(cu.cuMemUnmap(u64(alias), size_t(n * PAGE)), "alias unmap")
    t["alias"] = time.perf_counter() - t0
    unmap_release_timed(base, n * PAGE, hs, t)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--handles", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--touch", action="store_true")
    args = ap.parse_args()
    torch.cuda.init()
    dev = torch.cuda.current_device()
    torch.zeros(1, device="cuda")
    props = {}
    for name, ty in KINDS.items():
        prop, access = device_memory(dev)
        prop.requestedHandleTypes = ty
        props[name] = prop
    n = args.handles
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(2 * n * PAGE), size_t(0), u64(0), u64(0)), "reserve")
    base = va.value
    names = list(KINDS)
    res = {k: {ph: [] for ph in PHASES} for k in names}
    for r in range(args.rounds):
        for k in names[r % 2:] + names[:r % 2]:
            runs = [cycle(props[k], access, base, n, args.touch) for _ in range(args.iters)]
            for ph in PHASES:
                res[k][ph].append(statistics.median(x[ph] for x in runs) * 1e6 / n)
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}; {n} one-page handles per cycle"
          f"{', written before the alias' if args.touch else ''}; {args.rounds} rounds alternating kinds, "
          f"{args.iters} cycles per kind and round; us per handle: median over rounds of the round's median "
          f"(min-max over rounds)")
    print("| handle type | " + " | ".join(PHASES) + " | all |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    for k in names:
        cols, total = [], 0.0
        for ph in PHASES:
            v = res[k][ph]
            m = statistics.median(v)
            total += m
            cols.append(f"{m:.1f} ({min(v):.1f}-{max(v):.1f})")
        print(f"| {k} | " + " | ".join(cols) + f" | {total:.1f} |")
    ck(cu.cuMemAddressFree(u64(base), size_t(2 * n * PAGE)), "free")


if __name__ == "__main__":
    main()
