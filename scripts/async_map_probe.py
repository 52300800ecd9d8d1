"""Could gpu-arena map pages off the allocating thread? A feasibility probe.

A new stitched range costs one cuMemMap per page (about 30 us each) on the
thread that allocates, and training's transient and every first repetition
pay thousands of them. The GPU does not need the mapping when the allocation
returns, only when the stream reaches the work that uses it. So the
allocating thread could enqueue a wait on the stream (cuStreamWaitValue32 on
a flag in pinned host memory), hand the maps to a worker thread, and return;
the worker maps, sets access, then writes the flag, and the stream goes on.

Two questions, each answered by alternating variants in one process (ctypes
on libcuda, PyTorch for the GPU work):

A. Do a worker thread's VMM calls slow the launching thread's kernel
   launches (a driver lock shared with launches)? The main thread launches
   small kernels (launch-bound) while a worker idles, loops on a sleep of
   the same length as a VMM call (control: what the Python threads cost),
   or loops on alias map + set_access + unmap.
B. End to end: each round queues GPU work, "allocates" a range of --pages
   one-page handles (created once, up front, as idle units are) either
   synchronously (map + set_access on the main thread) or asynchronously
   (wait on the stream, hand the maps to the worker), writes the whole range
   on the stream (a PyTorch kernel on a tensor over the range, as an
   allocator's caller would), queues more work, then synchronizes and reads
   the first and last word of every page back.
   A third way, "access": the main thread maps every page itself (the
   cheap call) and leaves only the access (the costly one) to the worker,
   behind the same wait.
C. Is a cuMemsetD32Async or cuMemcpyDtoDAsync into the range refused at
   enqueue time while it is not mapped yet (the pointer lookups of
   cudaMemsetAsync / cudaMemcpyAsync), with no page, the first page, or the
   first and last pages mapped beforehand, or with every page mapped but no
   access given yet? Printed: the main thread's time to allocate, the
   round's wall time, and whether every page held the round's value.

    python3 scripts/async_map_probe.py [--pages 64] [--rounds 9] [--n 4096]
"""
import argparse
import ctypes
import queue
import statistics
import threading
import time

import torch

from cu_vmm import PAGE, ck, create_handle, cu, device_memory, size_t, tensor_over, u64  # noqa: E402

libc = ctypes.CDLL("libc.so.6")




def med(v):
    return f"median {statistics.median(v):9.1f} (min {min(v):.1f}, max {max(v):.1f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=64, help="pages (2 MiB handles) of the range allocated each round")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=4096, help="matmul size of the queued GPU work")
    ap.add_argument("--before", type=int, default=8, help="matmuls queued before the allocation")
    ap.add_argument("--after", type=int, default=8, help="matmuls queued after the allocation's write")
    ap.add_argument("--launches", type=int, default=2000, help="small kernels per timing in part A")
    args = ap.parse_args()

    torch.cuda.init()
    dev = torch.cuda.current_device()
    torch.zeros(1, device="cuda")
    ctx = ctypes.c_void_p()
    ck(cu.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    prop, access = device_memory(dev)
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}")

    # ---- part A: a worker's VMM calls against the main thread's launches
    keep = create_handle(prop)
    ava = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(ava), size_t(2 * PAGE), size_t(0), u64(0), u64(0)), "reserve")
    ck(cu.cuMemMap(u64(ava.value), size_t(PAGE), size_t(0), keep, u64(0)), "map")
    ck(cu.cuMemSetAccess(u64(ava.value), size_t(PAGE), ctypes.byref(access), size_t(1)), "access")
    alias_at = ava.value + PAGE

    def alias_cycle():
        ck(cu.cuMemMap(u64(alias_at), size_t(PAGE), size_t(0), keep, u64(0)), "alias map")
        ck(cu.cuMemSetAccess(u64(alias_at), size_t(PAGE), ctypes.byref(access), size_t(1)), "alias access")
        ck(cu.cuMemUnmap(u64(alias_at), size_t(PAGE)), "alias unmap")

    t = time.perf_counter()
    for _ in range(200):
        alias_cycle()
    cycle_us = (time.perf_counter() - t) / 200 * 1e6
    print(f"A: one alias map + set_access + unmap on an idle GPU: {cycle_us:.1f} us")

    x = torch.zeros(256, device="cuda")
    mode = {"v": "idle"}
    stop = threading.Event()
    worker_cycles = {"n": 0}

    def worker_a():
        ck(cu.cuCtxSetCurrent(ctx), "worker cuCtxSetCurrent")
        while not stop.is_set():
            m = mode["v"]
            if m == "vmm":
                alias_cycle()
                worker_cycles["n"] += 1
            elif m == "sleep":
                libc.usleep(ctypes.c_uint(int(cycle_us)))
                worker_cycles["n"] += 1
            else:
                time.sleep(0.001)

    w = threading.Thread(target=worker_a, daemon=True)
    w.start()
    timesA = {"idle": [], "sleep": [], "vmm": []}
    cyclesA = {"idle": [], "sleep": [], "vmm": []}
    for _ in range(args.rounds):
        for m in timesA:
            mode["v"] = m
            time.sleep(0.02)
            torch.cuda.synchronize()
            c0 = worker_cycles["n"]
            t = time.perf_counter()
            for _ in range(args.launches):
                x.add_(1.0)
            dt = time.perf_counter() - t
            cyclesA[m].append(worker_cycles["n"] - c0)
            torch.cuda.synchronize()
            timesA[m].append(dt / args.launches * 1e6)
    mode["v"] = "idle"
    stop.set()
    w.join()
    for m, v in timesA.items():
        print(f"A: main thread, us per launch, worker {m:5s}: {med(v)}; worker cycles meanwhile "
              f"{statistics.median(cyclesA[m]):.0f}")
    ck(cu.cuMemUnmap(u64(ava.value), size_t(PAGE)), "unmap")
    ck(cu.cuMemAddressFree(u64(ava.value), size_t(2 * PAGE)), "free va")
    ck(cu.cuMemRelease(keep), "release")

    # ---- part B: a range mapped on the main thread, or by the worker with a stream wait
    n = args.pages
    handles = [create_handle(prop) for _ in range(n)]
    va = u64()
    ck(cu.cuMemAddressReserve(ctypes.byref(va), size_t(n * PAGE), size_t(0), u64(0), u64(0)), "reserve")
    flag_host = ctypes.c_void_p()
    ck(cu.cuMemHostAlloc(ctypes.byref(flag_host), size_t(64), ctypes.c_uint(0x02)), "cuMemHostAlloc")  # DEVICEMAP
    flag = ctypes.c_uint32.from_address(flag_host.value)
    flag.value = 0
    flag_dev = u64()
    ck(cu.cuMemHostGetDevicePointer_v2(ctypes.byref(flag_dev), flag_host, ctypes.c_uint(0)), "host device ptr")

    def map_all(maps=True, give_access=True):
        if maps:
            for i, h in enumerate(handles):
                ck(cu.cuMemMap(u64(va.value + i * PAGE), size_t(PAGE), size_t(0), h, u64(0)), "map")
        if give_access:
            ck(cu.cuMemSetAccess(u64(va.value), size_t(n * PAGE), ctypes.byref(access), size_t(1)), "access")

    jobs = queue.Queue()
    worker_ms = []

    def worker_b():
        ck(cu.cuCtxSetCurrent(ctx), "worker cuCtxSetCurrent")
        while True:
            job = jobs.get()
            if job is None:
                return
            r, maps = job
            t = time.perf_counter()
            map_all(maps=maps)
            worker_ms.append((time.perf_counter() - t) * 1e3)
            flag.value = r  # the stream's wait sees it and goes on

    wb = threading.Thread(target=worker_b, daemon=True)
    wb.start()
    a = torch.randn(args.n, args.n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(args.n, args.n, device="cuda", dtype=torch.bfloat16)
    torch.mm(a, b)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.before):
        torch.mm(a, b)
    torch.cuda.synchronize()
    gpu_before_ms = (time.perf_counter() - t) * 1e3
    # A tensor over the range, made while it is mapped (PyTorch's view of
    # memory an allocator handed out): its kernels take the raw pointer.
    map_all()
    tv = tensor_over(va.value, n * PAGE, "<i4")

    def ends():
        # The first and last word of every page, read now.
        return tv.view(n, PAGE // 4)[:, [0, -1]].cpu()
    torch.cuda.synchronize()
    ck(cu.cuMemUnmap(u64(va.value), size_t(n * PAGE)), "unmap")
    res = {m: {"alloc": [], "cpu": [], "wall": [], "bad": 0} for m in ("sync", "async", "access")}
    r = 0
    for _ in range(args.rounds):
        for m in ("sync", "async", "access"):
            r += 1
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.before):
                torch.mm(a, b)
            t1 = time.perf_counter()
            if m == "sync":
                map_all()
            else:
                if m == "access":
                    map_all(give_access=False)
                # CU_STREAM_WAIT_VALUE_GEQ = 0
                ck(cu.cuStreamWaitValue32_v2(stream, flag_dev, ctypes.c_uint32(r), ctypes.c_uint(0)), "wait value")
                jobs.put((r, m == "async"))
            t2 = time.perf_counter()
            tv.fill_(r)
            for _ in range(args.after):
                torch.mm(a, b)
            t3 = time.perf_counter()
            torch.cuda.synchronize()
            t4 = time.perf_counter()
            got = ends()
            res[m]["bad"] += int((got != r).any(dim=1).sum())
            ck(cu.cuMemUnmap(u64(va.value), size_t(n * PAGE)), "unmap")
            res[m]["alloc"].append((t2 - t1) * 1e6)
            res[m]["cpu"].append((t3 - t0) * 1e3)
            res[m]["wall"].append((t4 - t0) * 1e3)
    # Does the driver refuse a memset or a copy into a range not mapped yet
    # at enqueue time (the pointer lookups of cudaMemsetAsync /
    # cudaMemcpyAsync)? With no page mapped, with the first page mapped
    # (on the main thread), and with the first and last pages mapped.
    src = torch.full((n * PAGE // 4,), -1, device="cuda", dtype=torch.int32)
    enqueue = []
    cases = (("none", [], True), ("first", [0], True), ("first and last", [0, n - 1], True),
             ("all, no access", list(range(n)), False))
    for what, pre, pre_access in cases:
        for op in ("memset", "copy"):
            r += 1
            for i in pre:
                ck(cu.cuMemMap(u64(va.value + i * PAGE), size_t(PAGE), size_t(0), handles[i], u64(0)), "map")
                if pre_access:
                    ck(cu.cuMemSetAccess(u64(va.value + i * PAGE), size_t(PAGE), ctypes.byref(access), size_t(1)),
                       "access")
            ck(cu.cuStreamWaitValue32_v2(stream, flag_dev, ctypes.c_uint32(r), ctypes.c_uint(0)), "wait value")
            if op == "memset":
                rc = cu.cuMemsetD32Async(u64(va.value), ctypes.c_uint(r), size_t(n * PAGE // 4), stream)
            else:
                src.fill_(r)
                rc = cu.cuMemcpyDtoDAsync_v2(u64(va.value), u64(src.data_ptr()), size_t(n * PAGE), stream)
            # The worker maps the rest.
            rest = [i for i in range(n) if i not in pre]
            for i in rest:
                ck(cu.cuMemMap(u64(va.value + i * PAGE), size_t(PAGE), size_t(0), handles[i], u64(0)), "map")
            ck(cu.cuMemSetAccess(u64(va.value), size_t(n * PAGE), ctypes.byref(access), size_t(1)), "access")
            flag.value = r
            torch.cuda.synchronize()
            ok = int((ends() == r).all(dim=1).sum())
            ck(cu.cuMemUnmap(u64(va.value), size_t(n * PAGE)), "unmap")
            enqueue.append((what, op, rc, ok))
    jobs.put(None)
    wb.join()
    print(f"B: {n} one-page handles mapped per round, {args.rounds} rounds each way alternating; "
          f"{args.before} + {args.after} matmuls {args.n}x{args.n} bf16 around it "
          f"({gpu_before_ms:.2f} ms of GPU work before the allocation, measured alone)")
    for m, v in res.items():
        print(f"B: {m:5s} main thread's allocation us: {med(v['alloc'])}")
        print(f"B: {m:5s} main thread's launches ms:   {med(v['cpu'])}")
        print(f"B: {m:5s} round wall ms:               {med(v['wall'])}")
        print(f"B: {m:5s} pages with a wrong value:    {v['bad']} of {n * args.rounds}")
    print(f"B: worker's maps (async) and accesses (access) of a round, ms: {med(worker_ms)}")
    for what, op, rc, ok in enqueue:
        print(f"C: {op:6s} of the whole range enqueued (behind the wait) with {what:14s} page(s) mapped: "
              f"CUresult {rc}; pages holding its value after the maps and the sync: {ok} of {n}")
    ck(cu.cuMemAddressFree(u64(va.value), size_t(n * PAGE)), "free va")
    for h in handles:
        ck(cu.cuMemRelease(h), "release")


if __name__ == "__main__":
    main()
