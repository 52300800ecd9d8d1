"""The per-call anchor: PyTorch's caching allocator and gpu-arena timed on one recorded trace, in one
harness, on the GPU machine's CPU (scripts/alloc_anchor.cpp holds the timed loop).

The allocator time that `report:1` prints under PyTorch has no counterpart for PyTorch's own
allocator, whose calls are not timed. Here both allocators serve the same calls: a recorded trace
(docs/pytorch/traces/*-r3.trace.jsonl.gz, repetitions marked) is run on to N repetitions (its last
recorded repetition appended again, as `gpu_arena::replay::run_on` does) and replayed through
PyTorch's caching allocator (`c10::cuda::CUDACachingAllocator`, what tensors use) or gpu-arena's C
ABI (`gpu_arena_torch_alloc` / `gpu_arena_torch_free`, default settings), each call timed alone with
the time-stamp counter, with 512 KiB of other memory touched between calls (PyTorch's own work does
that between its calls) outside the timed interval. No kernel runs: the GPU only backs the memory.

    python3 scripts/alloc_anchor.py build OUT.so [--src FILE.cpp]  (g++ against this machine's torch)
    python3 scripts/alloc_anchor.py run --so OUT.so --allocator torch|gpu-arena [--lib libgpu_arena.so]
                                        --trace TRACE [--reps 6] [--thrash-kib 512]
    python3 scripts/alloc_anchor.py report LOG...                   (the table, from run's JSON lines)
    python3 scripts/alloc_anchor.py self-test                       (the trace reading and the report, on
                                                                     made-up data: CI runs it)

`run` prints one JSON line: per repetition, calls and nanoseconds inside allocations and frees.
scripts/alloc_anchor.sh alternates the two allocators process by process and keeps the log.
"""
import argparse
import ctypes
import gzip
import json
import os
import statistics
import subprocess
import sys


def build(out, src=None):
    import torch
    from torch.utils import cpp_extension as ce

    try:
        incs = ce.include_paths(device_type="cuda")
    except TypeError:
        incs = ce.include_paths(cuda=True)
    cuda_inc = os.path.join(ce.CUDA_HOME or "/usr/local/cuda", "include")
    incs = list(incs) + ([] if cuda_inc in incs else [cuda_inc])
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    src = src or os.path.join(os.path.dirname(os.path.abspath(__file__)), "alloc_anchor.cpp")
    cmd = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", src,
           *[f"-I{i}" for i in incs], f"-L{lib}", "-lc10_cuda", "-lc10", f"-Wl,-rpath,{lib}", "-o", out]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def load_trace(path, total):
    """(kind, addr, size) events run on to `total` repetitions, and each event's repetition (0-based;
    the first also holds what precedes the first mark: the weights)."""
    events, marks = [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            d = json.loads(line)
            a = d.get("action")
            if a == "alloc":
                events.append((0, d["addr"], d["size"]))
            elif a == "free_completed":
                events.append((1, d["addr"], d["size"]))
            elif a == "rep_end":
                marks.append(len(events))
    if len(marks) < 2:
        raise SystemExit(f"{path}: fewer than two recorded repetitions")
    start = marks[-3] if len(marks) >= 3 else 0
    prev, last = events[start:marks[-2]], events[marks[-2]:marks[-1]]
    if prev != last:
        raise SystemExit(f"{path}: the last two recorded repetitions differ")
    seq = events[:marks[-1]]
    while len(marks) < total:
        seq.extend(last)
        marks.append(len(seq))
    reps, r = [], 0
    for i in range(len(seq)):
        while r < len(marks) and i >= marks[r]:
            r += 1
        reps.append(r)
    return seq, reps, len(marks)


def run(args):
    import torch

    torch.cuda.init()
    torch.zeros(1, device="cuda")  # the primary context, current on this thread
    seq, rep_of, reps = load_trace(args.trace, args.reps)
    n = len(seq)
    kind = (ctypes.c_uint8 * n)()
    slot = (ctypes.c_int64 * n)()
    size = (ctypes.c_int64 * n)()
    rep = (ctypes.c_int32 * n)()
    live, free_slots, slots = {}, [], 0
    for i, (k, addr, sz) in enumerate(seq):
        kind[i], size[i], rep[i] = k, max(sz, 1), rep_of[i]
        if k == 0:
            s = free_slots.pop() if free_slots else slots
            slots = max(slots, s + 1)
            live[addr] = (s, sz)
            slot[i] = s
        else:
            s, asz = live.pop(addr)
            slot[i], size[i] = s, max(asz, 1)
            free_slots.append(s)
    so = ctypes.CDLL(args.so)
    ga_alloc = ga_free = None
    which = 0
    if args.allocator == "gpu-arena":
        ga = ctypes.CDLL(args.lib)
        ga_alloc = ctypes.cast(ga.gpu_arena_torch_alloc, ctypes.c_void_p)
        ga_free = ctypes.cast(ga.gpu_arena_torch_free, ctypes.c_void_p)
        which = 1
    out = {k: (t * reps)() for k, t in (("ns_alloc", ctypes.c_double), ("ns_free", ctypes.c_double),
                                        ("n_alloc", ctypes.c_int64), ("n_free", ctypes.c_int64))}
    so.anchor_replay.restype = ctypes.c_int
    status = so.anchor_replay(
        ctypes.c_int(which), ga_alloc, ga_free, kind, slot, size, rep, ctypes.c_int64(n),
        ctypes.c_int64(slots), ctypes.c_int64(reps), ctypes.c_int64(args.thrash_kib),
        out["ns_alloc"], out["ns_free"], out["n_alloc"], out["n_free"])
    rows = [{"allocs": out["n_alloc"][r], "frees": out["n_free"][r], "alloc_ns": out["ns_alloc"][r],
             "free_ns": out["ns_free"][r]} for r in range(reps)]
    print(json.dumps({"allocator": args.allocator, "trace": os.path.basename(args.trace),
                      "thrash_kib": args.thrash_kib, "status": status, "reps": rows}), flush=True)
    if status != 0:
        raise SystemExit(f"allocation of event {-status - 1} failed")


def per_call(row):
    calls = row["allocs"] + row["frees"]
    return (row["alloc_ns"] + row["free_ns"]) / max(calls, 1)


def report(paths, settled_from):
    """Per trace and allocator: ns per call in repetition 1 and in the settled repetitions (median
    over processes of each process's median, min-max), and gpu-arena / PyTorch paired by round."""
    runs = []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{") and '"allocator"' in line:
                    runs.append(json.loads(line))
    traces = sorted({(r["trace"], r["thrash_kib"]) for r in runs})
    print(f"| trace | touched between calls (KiB) | allocator | processes | ns per call, repetition 1 | ns per call, settled "
          f"(repetitions {settled_from + 1}..N) | ns per alloc / per free, settled | gpu-arena / PyTorch, "
          f"settled (paired by round) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for t, k in traces:
        by = {a: [r for r in runs if (r["trace"], r["thrash_kib"]) == (t, k) and r["allocator"] == a
                  and r["status"] == 0]
              for a in ("torch", "gpu-arena")}
        settled = {a: [statistics.median(per_call(x) for x in r["reps"][settled_from:]) for r in rs]
                   for a, rs in by.items()}
        pairs = [g / p for g, p in zip(settled["gpu-arena"], settled["torch"])]
        for a, rs in by.items():
            if not rs:
                continue
            first = [per_call(r["reps"][0]) for r in rs]
            s = settled[a]
            al = [statistics.median(x["alloc_ns"] / max(x["allocs"], 1) for x in r["reps"][settled_from:])
                  for r in rs]
            fr = [statistics.median(x["free_ns"] / max(x["frees"], 1) for x in r["reps"][settled_from:])
                  for r in rs]
            ratio = ""
            if a == "gpu-arena" and pairs:
                ratio = f"{statistics.median(pairs):.3f} ({min(pairs):.3f}–{max(pairs):.3f})"
            name = "PyTorch's caching allocator" if a == "torch" else "gpu-arena"
            print(f"| {t} | {k} | {name} | {len(rs)} | {statistics.median(first):.0f} ({min(first):.0f}–"
                  f"{max(first):.0f}) | {statistics.median(s):.0f} ({min(s):.0f}–{max(s):.0f}) | "
                  f"{statistics.median(al):.0f} / {statistics.median(fr):.0f} | {ratio} |")


def self_test():
    """Checks load_trace and report on a made-up trace and log (no GPU, no torch)."""
    import contextlib
    import io
    import tempfile

    d = tempfile.mkdtemp()
    trace = os.path.join(d, "t.trace.jsonl.gz")
    rep = [("alloc", 16, 1024), ("alloc", 32, 4 << 20), ("free_completed", 16, 1024),
           ("free_completed", 32, 4 << 20)]
    with gzip.open(trace, "wt") as f:
        f.write(json.dumps({"action": "alloc", "addr": 8, "size": 512, "stream": 0}) + "\n")  # weights
        for _ in range(3):
            for a, addr, size in rep:
                f.write(json.dumps({"action": a, "addr": addr, "size": size, "stream": 0}) + "\n")
            f.write(json.dumps({"action": "rep_end", "addr": 0, "size": 0, "stream": 0}) + "\n")
    seq, reps, n = load_trace(trace, 4)
    assert n == 4 and len(seq) == 1 + 4 * len(rep), (n, len(seq))  # 3 recorded, 1 run on
    assert reps == [0] * 5 + [1] * 4 + [2] * 4 + [3] * 4, reps
    assert seq[-4:] == [(0, 16, 1024), (0, 32, 4 << 20), (1, 16, 1024), (1, 32, 4 << 20)]
    log = os.path.join(d, "anchor.log")
    with open(log, "w") as f:
        for rnd in range(2):
            for alloc, ns in (("torch", 500.0), ("gpu-arena", 250.0 + 50 * rnd)):
                rows = [{"allocs": 10, "frees": 10, "alloc_ns": ns * 10 * (3 if r == 0 else 1),
                         "free_ns": ns * 10} for r in range(3)]
                f.write(f"== round {rnd + 1} t {alloc}\n")
                f.write(json.dumps({"allocator": alloc, "trace": "t", "thrash_kib": 512, "status": 0,
                                    "reps": rows}) + "\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        report([log], 1)
    text = out.getvalue()
    assert "| t | 512 | PyTorch's caching allocator | 2 | 1000 (1000–1000) | 500 (500–500) | 500 / 500 |" in text, text
    assert "| t | 512 | gpu-arena | 2 | 550 (500–600) | 275 (250–300) | 275 / 275 | 0.550 (0.500–0.600) |" in text, text
    print("alloc_anchor.py self-test: ok")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out")
    b.add_argument("--src", help="another C++ file to build the same way (scripts/torch_timed_default.cpp)")
    r = sub.add_parser("run")
    r.add_argument("--so", required=True)
    r.add_argument("--allocator", choices=("torch", "gpu-arena"), required=True)
    r.add_argument("--lib")
    r.add_argument("--trace", required=True)
    r.add_argument("--reps", type=int, default=6)
    r.add_argument("--thrash-kib", type=int, default=512)
    p = sub.add_parser("report")
    p.add_argument("logs", nargs="+")
    sub.add_parser("self-test")
    p.add_argument("--settled-from", type=int, default=1,
                   help="first settled repetition, 0-based (1: the second; BERT and train_loop make no "
                        "VMM call from their second)")
    args = ap.parse_args()
    if args.cmd == "build":
        build(args.out, args.src)
    elif args.cmd == "run":
        if args.allocator == "gpu-arena" and not args.lib:
            ap.error("--lib is needed for gpu-arena")
        run(args)
    elif args.cmd == "self-test":
        self_test()
    else:
        report(args.logs, args.settled_from)


if __name__ == "__main__":
    main()
