"""Does a VMM call cost more in a huge reservation, or among many mappings?

gpu-arena reserves eight times the device's memory in one range (640 GB on
an H100) and keeps thousands of one-page mappings in it; its VMM calls took
25-30 us each under PyTorch, where a probe on a small reservation saw 15-20.
This probe times an alias map, its set_access and its unmap (one 2 MiB
handle, mapped at a free page and unmapped again) in a small reservation
and in a 640 GB one, each empty or holding --mappings other one-page
mappings spread over it. Configurations alternate in rounds; medians in us.

    python3 scripts/map_cost_probe.py [--mappings 4000] [--rounds 5] [--iters 200]
"""
import argparse
import ctypes
import statistics
import time

import torch

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, size_t, u64  # noqa: E402





def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mappings", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--huge-gib", type=int, default=640)
    args = ap.parse_args()
    torch.cuda.init()
    dev = torch.cuda.current_device()
    torch.zeros(1, device="cuda")
    prop, access = device_memory(dev)


    probe = create_handle(prop)
    others = [create_handle(prop) for _ in range(args.mappings)]
    slots = 2 * args.mappings + 2 * args.iters + 64
    setups = {}
    for name, size in (("small", slots * PAGE), ("huge", args.huge_gib << 30)):
        va = u64()
        ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(size), size_t(0), u64(0), u64(0)), f"reserve {name}")
        setups[name] = (va.value, size)

    def populate(name, on):
        # The other mappings every second page of the first 2 x mappings pages
        # (so the probe's pages lie among them); or none.
        base, _ = setups[name]
        for i, h in enumerate(others):
            at = base + (2 * i + 1) * PAGE
            if on:
                ck(cu.cuMemMap(u64(at), size_t(PAGE), size_t(0), h, u64(0)), "map other")
                ck(cu.cuMemSetAccess(u64(at), size_t(PAGE), ctypes.byref(access), size_t(1)), "access other")
            else:
                ck(cu.cuMemUnmap(u64(at), size_t(PAGE)), "unmap other")

    def measure(name):
        base, _ = setups[name]
        t_map, t_acc, t_unmap = [], [], []
        for i in range(args.iters):
            at = base + 2 * (i % args.mappings if args.mappings else i) * PAGE
            t0 = time.perf_counter()
            ck(cu.cuMemMap(u64(at), size_t(PAGE), size_t(0), probe, u64(0)), "map")
            t1 = time.perf_counter()
            ck(cu.cuMemSetAccess(u64(at), size_t(PAGE), ctypes.byref(access), size_t(1)), "access")
            t2 = time.perf_counter()
            ck(cu.cuMemUnmap(u64(at), size_t(PAGE)), "unmap")
            t3 = time.perf_counter()
            t_map.append(t1 - t0)
            t_acc.append(t2 - t1)
            t_unmap.append(t3 - t2)
        return [statistics.median(v) * 1e6 for v in (t_map, t_acc, t_unmap)]

    configs = [(n, m) for n in setups for m in (0, args.mappings)]
    res = {c: [] for c in configs}
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        for name, m in order:
            if m:
                populate(name, True)
            res[(name, m)].append(measure(name))
            if m:
                populate(name, False)
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}; reservations: small "
          f"{setups['small'][1] >> 20} MiB, huge {setups['huge'][1] >> 30} GiB; {args.iters} alias map + set_access + "
          f"unmap of one 2 MiB handle per timing, {args.rounds} rounds alternating; us, median of the rounds' medians")
    for (name, m), v in res.items():
        cols = list(zip(*v))
        print(f"{name:5s} reservation, {m:5d} other mappings: map {statistics.median(cols[0]):6.1f}  "
              f"set_access {statistics.median(cols[1]):6.1f}  unmap {statistics.median(cols[2]):6.1f}  "
              f"(rounds: map {min(cols[0]):.1f}-{max(cols[0]):.1f})")
    for name, (base, size) in setups.items():
        ck(cu.cuMemAddressFree(u64(base), size_t(size)), "free")
    for h in [probe] + others:
        ck(cu.cuMemRelease(h), "release")


if __name__ == "__main__":
    main()
