"""Do kernels run slower on memory mapped as many 2 MiB handles?

gpu-arena backs most pages with one handle each (2 MiB), and a stitched
range maps idle units from anywhere, in any order. PyTorch's allocator takes
its segments from cudaMalloc. If the GPU's address translation served
scattered 2 MiB mappings worse than cudaMalloc's memory (TLB reach, page
sizes the driver picks for large physically contiguous allocations), every
kernel on gpu-arena's memory would pay for it, whatever the allocator's own
time. This probe times the same kernels on the same number of bytes from:

- `cudaMalloc`: a tensor from PyTorch's allocator (a segment of its own);
- `one handle`: one cuMemCreate of the whole size, mapped once;
- `2 MiB in order`: one handle per 2 MiB page, mapped in creation order;
- `2 MiB shuffled`: one handle per page, handles mapped in a random order
  (a stitched range's units come from anywhere).

Kernels: a streaming copy (bandwidth), a gather at random 4-byte offsets over
the whole buffer (translation-bound), an in-place scale, a bf16 matmul whose
operands live in the buffer, and (--small) copies of activation-sized blocks
at random offsets. --pieces adds handle sizes between 2 MiB and the whole. Variants alternate in rounds; CUDA events time each kernel
batch, each round starting at another variant (the clocks drift within a
round); medians with min and max are printed.

    python3 scripts/mapping_speed_probe.py [--gib 4] [--rounds 7]
"""
import argparse
import ctypes
import random
import statistics

import torch

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, size_t, tensor_over, u64  # noqa: E402





class Vmm:
    """A reserved range of `size` bytes backed by handles of `piece` bytes,
    mapped in order or shuffled; `tensor()` views it as float32."""

    def __init__(self, size, piece, shuffle, dev):
        prop, access = device_memory(dev)
        self.size = size
        self.va = u64()
        ck(cu.cuMemAddressReserve(ctypes.byref(self.va), size_t(size), size_t(0), u64(0), u64(0)), "reserve")
        self.handles = [create_handle(prop, piece) for _ in range(size // piece)]
        order = list(range(len(self.handles)))
        if shuffle:
            random.Random(7).shuffle(order)
        for slot, i in enumerate(order):
            ck(cu.cuMemMap(u64(self.va.value + slot * piece), size_t(piece), size_t(0), self.handles[i], u64(0)), "map")
        ck(cu.cuMemSetAccess(u64(self.va.value), size_t(size), ctypes.byref(access), size_t(1)), "access")
        self.t = tensor_over(self.va.value, size, "<f4")

    def tensor(self):
        return self.t

    def close(self):
        del self.t
        torch.cuda.synchronize()
        ck(cu.cuMemUnmap(u64(self.va.value), size_t(self.size)), "unmap")
        for h in self.handles:
            ck(cu.cuMemRelease(h), "release")
        ck(cu.cuMemAddressFree(u64(self.va.value), size_t(self.size)), "free")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=4, help="bytes of each variant's buffer, GiB")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5, help="kernels per timed batch")
    ap.add_argument("--pieces", default="", help="more handle sizes in MiB, mapped in order (e.g. 8,32,128)")
    ap.add_argument("--small", type=int, default=0,
                    help="also stream-copy blocks of this many MiB, each at a random offset (activations)")
    args = ap.parse_args()
    torch.cuda.init()
    dev = torch.cuda.current_device()
    size = args.gib << 30
    n = size // 4
    bufs = {
        "cudaMalloc": (torch.empty(n, device="cuda", dtype=torch.float32), None),
    }
    variants = [("one handle", size, False), ("2 MiB in order", PAGE, False), ("2 MiB shuffled", PAGE, True)]
    variants += [(f"{p} MiB in order", p << 20, False) for p in map(int, filter(None, args.pieces.split(",")))]
    for name, piece, shuffle in variants:
        v = Vmm(size, piece, shuffle, dev)
        bufs[name] = (v.tensor(), v)
    for t, _ in bufs.values():
        t.normal_()
    g = torch.Generator(device="cuda")
    g.manual_seed(1)
    idx = torch.randint(0, n, (1 << 24,), device="cuda", generator=g)
    mm = 8192
    half = n // 2

    def stream(t):
        # read the first half, write the second: 2 x size / 2 bytes moved
        t[half:half * 2].copy_(t[:half])

    def gather(t):
        return t[idx].sum()

    def matmul(t):
        a = t[: mm * mm // 2].view(torch.bfloat16).view(mm, mm)
        b = t[mm * mm // 2: mm * mm].view(torch.bfloat16).view(mm, mm)
        return a @ b

    def scale(t):
        # read and write in place: size bytes each way
        t.mul_(1.0001)

    small = args.small << 18  # floats
    offs = [random.Random(3).randrange(0, n - 2 * small) // 512 * 512 for _ in range(16)] if small else []

    def small_copies(t):
        for o in offs:
            t[o + small: o + 2 * small].copy_(t[o: o + small])

    kernels = {"stream copy": stream, "in-place scale": scale, "random gather (16M x 4 B)": gather,
               "matmul 8192 bf16": matmul}
    if small:
        kernels[f"16 copies of {args.small} MiB"] = small_copies
    times = {(k, b): [] for k in kernels for b in bufs}
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    for k, f in kernels.items():
        for b, (t, _) in bufs.items():
            f(t)
    torch.cuda.synchronize()
    names = list(bufs)
    for r in range(args.rounds):
        # Each round starts at another variant: the GPU's clocks drift within
        # a round (power), and a fixed order would charge that to the last.
        order = names[r % len(names):] + names[:r % len(names)]
        for k, f in kernels.items():
            for b in order:
                t = bufs[b][0]
                ev[0].record()
                for _ in range(args.reps):
                    f(t)
                ev[1].record()
                ev[1].synchronize()
                times[(k, b)].append(ev[0].elapsed_time(ev[1]) / args.reps)
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}; buffers of {args.gib} GiB; "
          f"{args.rounds} rounds alternating, {args.reps} kernels per timing; ms per kernel")
    for k in kernels:
        base = statistics.median(times[(k, "cudaMalloc")])
        for b in bufs:
            v = times[(k, b)]
            m = statistics.median(v)
            print(f"{k:26s} {b:16s} median {m:8.3f} (min {min(v):.3f}, max {max(v):.3f}); "
                  f"vs cudaMalloc {m / base:.3f}x")
    for _, v in bufs.values():
        if v:
            v.close()


if __name__ == "__main__":
    main()
