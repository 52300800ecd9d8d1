#!/usr/bin/env python3
"""NCCL all-reduce under torch.distributed with gpu-arena as PyTorch's CUDA
allocator in every rank, against PyTorch's default allocator in the same run;
then, optionally, what NCCL user-buffer registration does with gpu-arena
memory, and what a sleep/wake of registered memory does (docs/multi-gpu.md).

Phases, each a fresh set of --world processes (one GPU each; the allocator
can only be chosen before a process's first CUDA allocation):

* ``default`` and ``gpu-arena``: for each size from --min to --max (x4
  steps: 1 MiB ... 1 GiB) an exact correctness check (float32
  ``x[i] = i % 1024 + rank`` all-reduced and compared with the exact sum on
  every rank) and --trials timed trials of in-place all-reduces (enough
  iterations per trial to move about 1 GiB, within --min-iters and
  --max-iters);
  the slowest rank defines a trial, the median trial is reported as
  algorithm bandwidth (bytes / time) and bus bandwidth
  (2 (n - 1) / n x bytes / time, nccl-tests' definition);
* ``probe`` (--probe): PyTorch's default allocator, with memory pools
  (``torch.cuda.MemPool``) whose segments come from cudaMalloc (PyTorch's
  own), from NCCL's ``ncclMemAlloc`` and from gpu-arena (its pluggable
  allocator): for each pool, all-reduce time before and after
  ``ProcessGroupNCCL.register_mem_pool`` (``ncclCommRegister`` on every
  segment), correctness after, and the registration's outcome; a direct
  ``ncclCommRegister`` of one gpu-arena tensor through ctypes; then a
  gpu-arena tag holding registered memory put to sleep and woken, done the
  right way (deregister, sleep, wake, register) and the naive way (sleep and
  wake under a live registration), each followed by an all-reduce checked
  for the exact result, under a timeout that catches a hang.

Rank 0 appends one JSON line per measurement to --out as it goes (a phase
that crashes or hangs keeps what it measured), and the parent prints a
Markdown table with the gpu-arena / default ratio. A phase that runs past
--phase-timeout is killed and the next one runs.

Usage, on a machine with N GPUs, from the repository root:

    python3 scripts/nccl_allreduce.py --lib target/release/libgpu_arena.so \\
        --world N --probe --out nccl.jsonl

NVLink multicast stays off (the machine notes demand it): the three
variables below are forced before torch is imported, in this process and in
every child. Nothing here creates multicast objects.
"""

import os

# Forced, not defaulted: NVLink SHARP / multicast can take a shared host's
# GPUs out of service. Keep these set in every process this script starts.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"
# ProcessGroupNCCL keeps the tensors of a collective alive until it
# completed, instead of calling recordStream: a pluggable allocator loaded
# from Python (gpu-arena) gets no recordStream hook, so this is the setting
# under which any allocator is safe with NCCL's side stream.
os.environ["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "1"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

ALLOC = "gpu_arena_torch_alloc"
FREE = "gpu_arena_torch_free"
PHASES = ("default", "gpu-arena", "probe")
MiB = 1 << 20


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sizes(lo, hi, factor):
    n = lo
    while n <= hi:
        yield n
        n *= factor


def emit(out_path, rank, record):
    """Rank 0 appends `record` (a dict) to the JSON lines file and prints it."""
    if rank != 0:
        return
    line = json.dumps(record)
    print("NCCL " + line, flush=True)
    with open(out_path, "a") as f:
        f.write(line + "\n")


def gather_all(dist, torch, dev, values):
    """Every rank's `values` (floats) as a list of lists, on every rank."""
    t = torch.tensor(values, device=dev, dtype=torch.float64)
    got = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(got, t)
    return [[float(v) for v in g.tolist()] for g in got]


def wait_guarded(work, seconds):
    """Waits for an async collective; False if it did not complete in time
    (a hang: the caller reports it and exits the process)."""
    deadline = time.monotonic() + seconds
    while not work.is_completed():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    work.wait()
    return True


def exact_check(dist, torch, dev, x, world):
    """Fills `x` with i % 1024 + rank, all-reduces it, and compares with the
    exact sum. Returns (ok, work-completed-in-time)."""
    n = x.numel()
    base = torch.arange(n, device=dev, dtype=torch.int64) % 1024
    x.copy_((base + dist.get_rank()).to(x.dtype))
    work = dist.all_reduce(x, async_op=True)
    if not wait_guarded(work, 30):
        return False, False
    want = (base * world + world * (world - 1) // 2).to(x.dtype)
    ok = bool(torch.equal(x, want))
    del base, want
    return ok, True


def sync(torch, t):
    """Waits for the device's queued work (nothing to wait for on the CPU)."""
    if t.is_cuda:
        torch.cuda.synchronize()


def time_allreduce(dist, torch, t, trials, min_iters, max_iters, warmup):
    """Median over `trials` of the slowest rank's seconds per all-reduce of `t`."""
    nbytes = t.numel() * t.element_size()
    # About 1 GiB moved per trial, within the bounds.
    iters = max(min_iters, min(max_iters, (1024 * MiB) // max(nbytes, 1)))
    for _ in range(warmup):
        dist.all_reduce(t)
    sync(torch, t)
    per_trial = []
    for _ in range(trials):
        dist.barrier()
        sync(torch, t)
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        sync(torch, t)
        per_trial.append((time.perf_counter() - start) / iters)
    dev = t.device
    every = gather_all(dist, torch, dev, per_trial)
    slowest = [max(r[i] for r in every) for i in range(trials)]
    return statistics.median(slowest), iters


def bandwidth(nbytes, secs, world):
    algbw = nbytes / secs / 1e9
    return algbw, algbw * 2 * (world - 1) / world


def sweep(dist, torch, dev, rank, world, args, phase):
    for nbytes in sizes(args.min, args.max, args.factor):
        n = nbytes // 4
        x = torch.empty(n, device=dev, dtype=torch.float32)
        ok, done = exact_check(dist, torch, dev, x, world)
        del x
        if not done:
            emit(args.out, rank, {"phase": phase, "world": world, "bytes": nbytes,
                                  "error": "all-reduce did not complete in 30 s"})
            os._exit(3)
        oks = gather_all(dist, torch, dev, [1.0 if ok else 0.0])
        t = torch.zeros(n, device=dev, dtype=torch.float32)
        secs, iters = time_allreduce(dist, torch, t, args.trials, args.min_iters,
                                     args.max_iters, args.warmup)
        del t
        algbw, busbw = bandwidth(nbytes, secs, world)
        emit(args.out, rank, {
            "phase": phase, "world": world, "allocator": phase, "bytes": nbytes,
            "ok": all(o[0] == 1.0 for o in oks), "us": secs * 1e6, "iters": iters,
            "trials": args.trials, "algbw_GBps": algbw, "busbw_GBps": busbw,
        })


def arena_stats(lib, dev):
    buf = ctypes.create_string_buffer(1 << 16)
    n = lib.gpu_arena_stats_json(dev, buf, len(buf))
    return json.loads(buf.value[:n].decode()) if 0 < n < len(buf) else {}


def load_lib(path):
    lib = ctypes.CDLL(path)
    lib.gpu_arena_last_error.restype = ctypes.c_char_p
    lib.gpu_arena_set_tag.argtypes = [ctypes.c_char_p]
    lib.gpu_arena_sleep.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    lib.gpu_arena_wake.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p]
    lib.gpu_arena_stats_json.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    lib.gpu_arena_stats_json.restype = ctypes.c_ssize_t
    return lib


def nccl_lib():
    """libnccl as loaded by torch (the same soname resolves to it), or None."""
    for name in ("libnccl.so.2", "libnccl.so"):
        try:
            lib = ctypes.CDLL(name)
            lib.ncclCommRegister.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_void_p)]
            lib.ncclCommRegister.restype = ctypes.c_int
            lib.ncclCommDeregister.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.ncclCommDeregister.restype = ctypes.c_int
            lib.ncclGetErrorString.argtypes = [ctypes.c_int]
            lib.ncclGetErrorString.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


def probe(dist, torch, dev, rank, world, args):
    """Registration and sleep/wake probes (default allocator current)."""
    phase = "probe"
    backend = dist.distributed_c10d._get_default_group()._get_backend(dev)
    lib = load_lib(args.lib)
    arena = torch.cuda.memory.CUDAPluggableAllocator(args.lib, ALLOC, FREE)

    def record(what, **fields):
        emit(args.out, rank, {"phase": phase, "world": world, "probe": what, **fields})

    def try_call(f):
        try:
            f()
            return "ok"
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            return f"{type(e).__name__}: {e}".splitlines()[0][:300]

    # 1. Pools of three origins; each: time unregistered, register, time and
    #    check registered, deregister.
    pools = [("cudaMalloc", lambda: torch.cuda.MemPool())]
    if hasattr(backend, "mem_allocator"):
        pools.append(("ncclMemAlloc", lambda: torch.cuda.MemPool(backend.mem_allocator)))
    pools.append(("gpu-arena", lambda: torch.cuda.MemPool(arena.allocator())))
    for origin, make in pools:
        try:
            pool = make()
        except Exception as e:  # noqa: BLE001
            record("register_mem_pool", pool=origin, error=f"MemPool: {e}"[:300])
            continue
        for nbytes in (16 * MiB, 256 * MiB):
            with torch.cuda.use_mem_pool(pool):
                t = torch.zeros(nbytes // 4, device=dev, dtype=torch.float32)
                x = torch.empty(nbytes // 4, device=dev, dtype=torch.float32)
            before, _ = time_allreduce(dist, torch, t, 3, args.min_iters, args.max_iters, 2)
            reg = try_call(lambda: backend.register_mem_pool(pool))
            regs = gather_all(dist, torch, dev, [1.0 if reg == "ok" else 0.0])
            ok, done = exact_check(dist, torch, dev, x, world)
            if not done:
                record("register_mem_pool", pool=origin, bytes=nbytes, registered=reg,
                       error="all-reduce on registered memory did not complete in 30 s")
                os._exit(3)
            oks = gather_all(dist, torch, dev, [1.0 if ok else 0.0])
            after, _ = time_allreduce(dist, torch, t, 3, args.min_iters, args.max_iters, 2)
            dereg = try_call(lambda: backend.deregister_mem_pool(pool))
            _, bus_before = bandwidth(nbytes, before, world)
            _, bus_after = bandwidth(nbytes, after, world)
            record("register_mem_pool", pool=origin, bytes=nbytes, registered=reg,
                   registered_on_all_ranks=all(r[0] == 1.0 for r in regs),
                   correct_after=all(o[0] == 1.0 for o in oks), deregistered=dereg,
                   busbw_unregistered_GBps=bus_before, busbw_registered_GBps=bus_after,
                   gain=bus_after / bus_before)
            del t, x
        pool = None

    # 2. Sleep and wake of a gpu-arena tag holding registered memory.
    dev_index = dev.index
    stream = ctypes.c_void_p(torch.cuda.current_stream(dev).cuda_stream)
    pool = torch.cuda.MemPool(arena.allocator())
    prev = lib.gpu_arena_set_tag(b"comm")
    with torch.cuda.use_mem_pool(pool):
        x = torch.empty(64 * MiB // 4, device=dev, dtype=torch.float32)
    lib.gpu_arena_set_tag(b"default")
    if prev < 0:
        record("sleep_wake", error=lib.gpu_arena_last_error().decode())
        return
    committed = arena_stats(lib, dev_index).get("tags", [])
    comm_bytes = next((t.get("stats", {}).get("committed") for t in committed
                       if t.get("tag") == "comm"), None)
    reg = try_call(lambda: backend.register_mem_pool(pool))
    ok0, _ = exact_check(dist, torch, dev, x, world)

    def sleep_wake():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        rc = lib.gpu_arena_sleep(dev_index, b"comm", 1, stream)
        t1 = time.perf_counter()
        rc2 = lib.gpu_arena_wake(dev_index, b"comm", stream) if rc == 0 else -1
        t2 = time.perf_counter()
        err = "" if rc == 0 and rc2 == 0 else lib.gpu_arena_last_error().decode()
        return rc, rc2, (t1 - t0) * 1e3, (t2 - t1) * 1e3, err

    # The right way first: no registration across the sleep.
    dereg = try_call(lambda: backend.deregister_mem_pool(pool)) if reg == "ok" else "skipped"
    rc, rc2, sleep_ms, wake_ms, err = sleep_wake()
    rereg = try_call(lambda: backend.register_mem_pool(pool)) if reg == "ok" else "skipped"
    ok1, done = exact_check(dist, torch, dev, x, world)
    oks = gather_all(dist, torch, dev, [1.0 if ok0 else 0.0, 1.0 if ok1 else 0.0])
    record("sleep_wake", order="deregister,sleep,wake,register", tag_committed_bytes=comm_bytes,
           registered=reg, deregistered=dereg, sleep_rc=rc, wake_rc=rc2, error=err,
           sleep_ms=sleep_ms, wake_ms=wake_ms, reregistered=rereg,
           correct_before=all(o[0] == 1.0 for o in oks), correct_after=all(o[1] == 1.0 for o in oks),
           completed=done)
    if not done:
        os._exit(3)
    # 3. ncclCommRegister on one gpu-arena tensor (a range inside a segment,
    #    not the segment), straight through ctypes.
    nccl = nccl_lib()
    comm = getattr(backend, "_comm_ptr", None)
    if nccl is None or comm is None:
        record("ncclCommRegister", error="libnccl symbols or ProcessGroupNCCL._comm_ptr missing")
    else:
        pool3 = torch.cuda.MemPool(arena.allocator())
        with torch.cuda.use_mem_pool(pool3):
            # A tensor inside the segment, not at its start.
            _pad = torch.empty(3 * MiB // 4, device=dev, dtype=torch.float32)
            x3 = torch.empty(64 * MiB // 4, device=dev, dtype=torch.float32)
        handle = ctypes.c_void_p()
        rc = nccl.ncclCommRegister(ctypes.c_void_p(int(comm())), ctypes.c_void_p(x3.data_ptr()),
                                   x3.numel() * 4, ctypes.byref(handle))
        msg = nccl.ncclGetErrorString(rc).decode() if rc else "ok"
        ok, done = exact_check(dist, torch, dev, x3, world)
        if not done:
            record("ncclCommRegister", bytes=x3.numel() * 4, rc=rc, result=msg,
                   error="all-reduce on registered memory did not complete in 30 s")
            os._exit(3)
        oks = gather_all(dist, torch, dev, [1.0 if ok else 0.0])
        drc = nccl.ncclCommDeregister(ctypes.c_void_p(int(comm())), handle) if rc == 0 else None
        record("ncclCommRegister", bytes=x3.numel() * 4, rc=rc, result=msg,
               correct_after=all(o[0] == 1.0 for o in oks), deregister_rc=drc)
        del _pad, x3, pool3

    # The naive way last (it may hang or corrupt): sleep and wake while
    # NCCL still holds the registration.
    rc, rc2, sleep_ms, wake_ms, err = sleep_wake()
    ok2, done = exact_check(dist, torch, dev, x, world)
    if not done:
        record("sleep_wake", order="sleep,wake under registration", registered=rereg,
               sleep_rc=rc, wake_rc=rc2, error=err, completed=False,
               hang="the all-reduce after wake did not complete in 30 s")
        os._exit(3)
    oks = gather_all(dist, torch, dev, [1.0 if ok2 else 0.0])
    record("sleep_wake", order="sleep,wake under registration", registered=rereg,
           sleep_rc=rc, wake_rc=rc2, error=err, sleep_ms=sleep_ms, wake_ms=wake_ms,
           correct_after=all(o[0] == 1.0 for o in oks), completed=True)
    try_call(lambda: backend.deregister_mem_pool(pool))
    x = pool = None


def worker(rank, world, args, phase, port):
    import torch
    import torch.distributed as dist

    if phase == "probe":
        # Registration messages only, one file per rank.
        os.environ["NCCL_DEBUG"] = "INFO"
        os.environ["NCCL_DEBUG_SUBSYS"] = "REG"
        os.environ["NCCL_DEBUG_FILE"] = os.path.join(args.nccl_debug_dir, "nccl.%h.%p.log")
    if args.cpu:
        # --cpu: gloo on CPU tensors, no allocator change (checks the script).
        dev = torch.device("cpu")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=60))
    else:
        if phase == "gpu-arena":
            # Before any CUDA allocation of this process.
            torch.cuda.memory.change_current_allocator(
                torch.cuda.memory.CUDAPluggableAllocator(args.lib, ALLOC, FREE))
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, device_id=dev,
                                timeout=datetime.timedelta(seconds=60))
    try:
        if phase == "probe":
            probe(dist, torch, dev, rank, world, args)
        else:
            sweep(dist, torch, dev, rank, world, args, phase)
            if phase == "gpu-arena" and not args.cpu:
                s = arena_stats(load_lib(args.lib), rank).get("stats", {})
                peaks = gather_all(dist, torch, dev, [float(s.get("peak_live", 0)),
                                                      float(s.get("peak_committed", 0))])
                emit(args.out, rank, {"phase": phase, "world": world, "arena_peaks": [
                    {"rank": r, "peak_live": int(p[0]), "peak_committed": int(p[1])}
                    for r, p in enumerate(peaks)]})
    except Exception:
        emit(args.out, rank, {"phase": phase, "world": world,
                              "error": traceback.format_exc().splitlines()[-1][:300]})
        traceback.print_exc()
        sys.stdout.flush()
        os._exit(4)
    dist.barrier()
    dist.destroy_process_group()


def run_phase(mp, world, args, phase):
    """Runs one phase; kills it at --phase-timeout. Returns a status word."""
    start = time.monotonic()
    ctx = mp.start_processes(worker, args=(world, args, phase, free_port()), nprocs=world,
                             join=False, start_method="spawn")
    status = "ok"
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() - start > args.phase_timeout:
                status = "timeout"
                break
    except Exception as e:  # noqa: BLE001 - a failed rank ends the phase
        print(str(e), flush=True)
        last = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        status = f"failed: {last[-1][:200] if last else type(e).__name__}"
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    for p in ctx.processes:
        p.join(5)
    secs = time.monotonic() - start
    print(f"PHASE world={world} phase={phase} status={status} seconds={secs:.1f}", flush=True)
    return status


def table(rows, world, args):
    by = {(r["allocator"], r["bytes"]): r for r in rows
          if r.get("world") == world and "allocator" in r and "busbw_GBps" in r}
    print(f"\n| size (world {world}) | default busbw GB/s | gpu-arena busbw GB/s | ratio | correct |")
    print("|---:|---:|---:|---:|---|")
    bad = False
    for nbytes in sizes(args.min, args.max, args.factor):
        d, g = by.get(("default", nbytes)), by.get(("gpu-arena", nbytes))
        ratio = (g["busbw_GBps"] / d["busbw_GBps"]) if d and g else float("nan")
        ok = bool(d and g) and all(r["ok"] for r in (d, g))
        bad |= not ok
        fmt = lambda r: f"{r['busbw_GBps']:.1f}" if r else "-"  # noqa: E731
        print(f"| {nbytes // MiB} MiB | {fmt(d)} | {fmt(g)} | {ratio:.3f} | "
              f"{'yes' if ok else 'NO'} |")
    return bad


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", default="target/release/libgpu_arena.so",
                   help="the gpu-arena cdylib exporting gpu_arena_torch_alloc/free")
    p.add_argument("--world", type=int, default=2, help="processes (one GPU each)")
    p.add_argument("--min", type=int, default=1 * MiB, help="smallest size in bytes")
    p.add_argument("--max", type=int, default=1024 * MiB, help="largest size in bytes")
    p.add_argument("--factor", type=int, default=4, help="size step factor")
    p.add_argument("--trials", type=int, default=5, help="timed trials per size (median)")
    p.add_argument("--min-iters", type=int, default=20, help="all-reduces per trial, at least")
    p.add_argument("--max-iters", type=int, default=1000, help="all-reduces per trial, at most")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--phases", default="default,gpu-arena",
                   help="comma list of: " + ", ".join(PHASES))
    p.add_argument("--probe", action="store_true", help="add the probe phase")
    p.add_argument("--phase-timeout", type=float, default=90, help="seconds per phase")
    p.add_argument("--out", default=None, help="JSON lines output (default: a temp file)")
    p.add_argument("--cpu", action="store_true",
                   help="CPU processes over gloo, no allocator change, no probe: checks the "
                        "script without GPUs")
    args = p.parse_args()

    phases = [a for a in args.phases.split(",") if a]
    if args.probe and "probe" not in phases:
        phases.append("probe")
    if args.cpu and "probe" in phases:
        sys.exit("the probe needs GPUs (not with --cpu)")
    for a in phases:
        if a not in PHASES:
            sys.exit(f"unknown phase {a!r}")
    lib = ctypes.CDLL(os.path.abspath(args.lib))
    for sym in (ALLOC, FREE):
        if not hasattr(lib, sym):
            sys.exit(f"{args.lib} does not export {sym}")
    args.lib = os.path.abspath(args.lib)

    import torch
    import torch.multiprocessing as mp

    gpus = torch.cuda.device_count()
    if gpus < args.world and not args.cpu:
        print(f"skipped: {args.world} GPUs needed, {gpus} found")
        return 0
    args.out = os.path.abspath(args.out or os.path.join(
        tempfile.mkdtemp(prefix="nccl_allreduce_"), "results.jsonl"))
    args.nccl_debug_dir = tempfile.mkdtemp(prefix="nccl_reg_")
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
    gpu = "CPU processes (gloo)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__}, NCCL {nccl}, world {args.world} of {gpus} x {gpu}; "
          f"NCCL_NVLS_ENABLE={os.environ['NCCL_NVLS_ENABLE']}", flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"phase": "setup", "world": args.world, "torch": torch.__version__,
                            "nccl": nccl, "gpus": gpus, "gpu": gpu}) + "\n")
    for phase in phases:
        status = run_phase(mp, args.world, args, phase)
        with open(args.out, "a") as f:
            f.write(json.dumps({"phase": phase, "world": args.world, "status": status}) + "\n")
    # What NCCL said about registration (NCCL_DEBUG_SUBSYS=REG), rank files.
    if "probe" in phases:
        for path in sorted(glob.glob(os.path.join(args.nccl_debug_dir, "*.log")))[:1]:
            lines = [ln.rstrip() for ln in open(path, errors="replace") if ln.strip()]
            print(f"NCCL debug (REG) of one rank: {len(lines)} lines; first 20:")
            for ln in lines[:20]:
                print("  " + ln[:300])

    rows = [json.loads(line) for line in open(args.out)]
    bad = table(rows, args.world, args)
    print(f"\nresults: {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
