"""What do VMM calls cost per handle, per mapping and per byte?

gpu-arena backs pages with one-page handles (2 MiB) so that any idle page
can move by aliasing; a sleep then gives back one handle per page, and a
new stitched range pays an access call per page. Two questions:

1. May a mapping cover part of a handle (cuMemMap's `size` below the
   handle's, or a non-zero `offset`)? Then a page could be a 2 MiB slice of
   a larger handle: pages that move one by one, handles given back by the
   dozen. The probe tries each on an 8 MiB handle and prints the CUresult.
2. What do the calls cost per handle and per byte? For N pages, three
   layouts of the same bytes, timing each phase:
   - handles:      N one-page handles, each mapped on its own page, one
                   set_access call over the run;
   - handles-each: the same, one set_access call per handle;
   - whole:        one N-page handle, one mapping.
   Phases: create (cuMemCreate), map (every cuMemMap), access
   (cuMemSetAccess), unmap (one cuMemUnmap over the run), release
   (cuMemRelease). Layouts alternate in rounds; each figure is the median
   over rounds of the round's median, in us.
3. Do threads give handles back faster? --give-back N handles of
   --give-back-pages P pages each (1: one-page handles), mapped side by
   side, unmapped and released by T threads at once (each its share: one
   cuMemUnmap over its run, then its releases), T in --threads,
   alternating in rounds: ms for all, median and range. With large
   handles most of a release is paid per byte, so this asks whether that
   part, unlike the per-handle part, spreads over threads.

    python3 scripts/handle_cost_probe.py [--pages 1,8,32,128] [--rounds 5] [--iters 8]
                                         [--give-back 256] [--give-back-pages 1] [--touch]
                                         [--threads 1,2,4,8]
"""
import argparse
import ctypes
import statistics
import threading
import time

import torch

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, size_t, u64, unmap_release_timed  # noqa: E402

LAYOUTS = ("handles", "handles-each", "whole")
PHASES = ("create", "map", "access", "unmap", "release")


def partial_maps(prop, base):
    """Tries mappings of part of an 8 MiB handle (and the whole, as a control): (size, offset, CUresult)."""
    h = create_handle(prop, 4 * PAGE)
    out = []
    for size, off in ((PAGE, 0), (PAGE, PAGE), (2 * PAGE, 0), (2 * PAGE, 2 * PAGE), (4 * PAGE, 0)):
        r = cu.cuMemMap(u64(base), size_t(size), size_t(off), h, u64(0))
        out.append((size, off, r))
        if r == 0:
            ck(cu.cuMemUnmap(u64(base), size_t(size)), "unmap")
    ck(cu.cuMemRelease(h), "release")
    return out


def cycle(layout, prop, access, base, n):
    """One create-map-access-unmap-release of `n` pages at `base` in `layout`; seconds per phase."""
    t = {}
    t0 = time.perf_counter()
    if layout == "whole":
        hs = [create_handle(prop, n * PAGE)]
    else:
        hs = [create_handle(prop) for _ in range(n)]
    t["create"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if layout == "whole":
        ck(cu.cuMemMap(u64(base), size_t(n * PAGE), size_t(0), hs[0], u64(0)), "map")
    else:
        for i, h in enumerate(hs):
            ck(cu.cuMemMap(u64(base + i * PAGE), size_t(PAGE), size_t(0), h, u64(0)), "map")
    t["map"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if layout == "handles-each":
        for i in range(n):
            ck(cu.cuMemSetAccess(u64(base + i * PAGE), size_t(PAGE), ctypes.byref(access), size_t(1)), "access")
    else:
        ck(cu.cuMemSetAccess(u64(base), size_t(n * PAGE), ctypes.byref(access), size_t(1)), "access")
    t["access"] = time.perf_counter() - t0
    unmap_release_timed(base, n * PAGE, hs, t)
    return t


def give_back(prop, access, base, n, threads, pages=1, touch=False):
    """Maps `n` handles of `pages` pages side by side at `base`, then unmaps and releases them with
    `threads` threads at once (each a contiguous share); seconds from the threads' start to the last
    one's end. `touch`: the memory is written (a memset, waited for) before it is given back."""
    size = pages * PAGE
    hs = [create_handle(prop, size) for _ in range(n)]
    for i, h in enumerate(hs):
        ck(cu.cuMemMap(u64(base + i * size), size_t(size), size_t(0), h, u64(0)), "map")
    ck(cu.cuMemSetAccess(u64(base), size_t(n * size), ctypes.byref(access), size_t(1)), "access")
    if touch:
        ck(cu.cuMemsetD8_v2(u64(base), ctypes.c_ubyte(1), size_t(n * size)), "memset")
        ck(cu.cuCtxSynchronize(), "synchronize")
    shares = [range(n * t // threads, n * (t + 1) // threads) for t in range(threads)]
    go = threading.Barrier(threads + 1)

    def work(share):
        go.wait()
        if len(share):
            ck(cu.cuMemUnmap(u64(base + share.start * size), size_t(len(share) * size)), "unmap")
        for i in share:
            ck(cu.cuMemRelease(hs[i]), "release")

    ts = [threading.Thread(target=work, args=(sh,)) for sh in shares]
    for t in ts:
        t.start()
    go.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", default="1,8,32,128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--give-back", type=int, default=256)
    ap.add_argument("--give-back-pages", type=int, default=1)
    ap.add_argument("--touch", action="store_true")
    ap.add_argument("--threads", default="1,2,4,8")
    args = ap.parse_args()
    sizes = [int(x) for x in args.pages.split(",")]
    torch.cuda.init()
    dev = torch.cuda.current_device()
    torch.zeros(1, device="cuda")
    prop, access = device_memory(dev)
    threads = [int(x) for x in args.threads.split(",")]
    span = max(2 * max(sizes), args.give_back * args.give_back_pages) * PAGE
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(span), size_t(0), u64(0), u64(0)), "reserve")
    base = va.value
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}; {args.rounds} rounds alternating "
          f"layouts, {args.iters} cycles per layout and round; us per phase (median over rounds of the round's "
          f"median), and per page in brackets")
    for size, off, r in partial_maps(prop, base):
        print(f"map {size >> 20} MiB at offset {off >> 20} MiB of an 8 MiB handle: CUresult {r}"
              f"{' (CUDA_ERROR_NOT_SUPPORTED)' if r == 801 else ''}")
    for n in sizes:
        res = {lay: {ph: [] for ph in PHASES} for lay in LAYOUTS}
        for r in range(args.rounds):
            order = LAYOUTS[r % len(LAYOUTS):] + LAYOUTS[:r % len(LAYOUTS)]
            for lay in order:
                runs = [cycle(lay, prop, access, base, n) for _ in range(args.iters)]
                for ph in PHASES:
                    res[lay][ph].append(statistics.median(x[ph] for x in runs) * 1e6)
        print(f"-- {n} pages ({n * PAGE >> 20} MiB)")
        for lay in LAYOUTS:
            cols = []
            total = 0.0
            for ph in PHASES:
                v = statistics.median(res[lay][ph])
                total += v
                cols.append(f"{ph} {v:8.1f} ({v / n:5.1f})")
            print(f"{lay:16s} " + "  ".join(cols) + f"  all {total:8.1f} ({total / n:5.1f})")
    res = {t: [] for t in threads}
    for r in range(args.rounds):
        for t in threads[r % len(threads):] + threads[:r % len(threads)]:
            res[t].append(give_back(prop, access, base, args.give_back, t, args.give_back_pages, args.touch) * 1e3)
    print(f"-- giving back {args.give_back} handles of {args.give_back_pages} pages "
          f"({args.give_back * args.give_back_pages * PAGE >> 20} MiB, mapped side by side"
          f"{', written first' if args.touch else ''}) from T threads at once, "
          f"{args.rounds} rounds alternating: ms for all")
    for t in threads:
        v = res[t]
        print(f"threads {t}: median {statistics.median(v):7.2f} ms (min {min(v):.2f}, max {max(v):.2f}), "
              f"{statistics.median(v) * 1e3 / args.give_back:.1f} us per handle")
    ck(cu.cuMemAddressFree(u64(base), size_t(span)), "free")


if __name__ == "__main__":
    main()
