#!/usr/bin/env python3
"""Data-parallel training of a small GPT-style transformer with
DistributedDataParallel, with gpu-arena as PyTorch's CUDA allocator in every
rank against PyTorch's default allocator, in the same run
(docs/multi-gpu.md).

Each run (a fresh set of --world processes, one GPU each: the allocator can
only be chosen before a process's first CUDA allocation) trains the same
model from the same seed on the same data for --steps steps:

* model: token and position embeddings, --layers pre-norm blocks (causal
  self-attention written out with matmuls, GELU MLP), d_model --dim, tied
  output head; bf16 autocast; AdamW;
* data: sequences that repeat a random motif (tokens of a Zipf-like
  distribution), generated on the CPU from a fixed seed; each rank takes
  its own slice of every global batch;
* determinism: fixed seeds, ``torch.use_deterministic_algorithms(True)``,
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, no dropout, the same NCCL settings:
  the losses must be identical, bit for bit, whatever the allocator;
* per rank: the loss of every step, the median step time after --warmup
  steps, and the peaks: PyTorch's peak allocated / peak reserved
  (``torch.cuda.max_memory_*``) under the default allocator, gpu-arena's
  peak live / peak committed (``gpu_arena_stats_json``) under gpu-arena.

--runs lists the allocators in order (default: default, gpu-arena, default,
gpu-arena: alternating, so a drift of the machine shows). Rank 0 appends one
JSON line per run to --out; the parent prints whether the losses match and a
table of step times and peaks. A run that exceeds --run-timeout is killed
and the next one runs.

Usage, from the repository root, on a machine with N GPUs:

    python3 scripts/ddp_train.py --lib target/release/libgpu_arena.so --world N \\
        --out ddp.jsonl
"""

import os

# Forced before torch is imported, here and (inherited) in every rank.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ["NVSHMEM_DISABLE_NVLS"] = "1"
# ProcessGroupNCCL keeps the tensors of a collective alive until it
# completed, instead of calling recordStream: a pluggable allocator loaded
# from Python (gpu-arena) gets no recordStream hook, so this is the setting
# under which any allocator is safe with NCCL's side stream.
os.environ["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "1"
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

ALLOC = "gpu_arena_torch_alloc"
FREE = "gpu_arena_torch_free"
ALLOCATORS = ("default", "gpu-arena")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(torch, args):
    nn = torch.nn
    F = torch.nn.functional

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.heads = heads
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.up = nn.Linear(d, 4 * d)
            self.down = nn.Linear(4 * d, d)

        def forward(self, x, mask):
            b, t, d = x.shape
            h = self.heads
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h))
            att = att.masked_fill(mask[:t, :t], float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(y)
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(args.vocab, args.dim)
            self.pos = nn.Embedding(args.seq, args.dim)
            self.blocks = nn.ModuleList(Block(args.dim, args.heads) for _ in range(args.layers))
            self.ln = nn.LayerNorm(args.dim)
            self.register_buffer(
                "mask", torch.triu(torch.ones(args.seq, args.seq, dtype=torch.bool), 1),
                persistent=False)
            # GPT-2's initialization of the embeddings (the head is tied to
            # the token embedding): a first loss near ln(vocabulary).
            nn.init.normal_(self.tok.weight, std=0.02)
            nn.init.normal_(self.pos.weight, std=0.02)

        def forward(self, idx):
            t = idx.shape[1]
            x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
            for blk in self.blocks:
                x = blk(x, self.mask)
            return self.ln(x) @ self.tok.weight.t()

    return GPT()


def next_token_loss(logits, batch):
    """Mean cross-entropy of the next tokens, in float32. Written as
    log_softmax + gather: PyTorch's nll_loss has no deterministic CUDA kernel
    (use_deterministic_algorithms lists it), gather's backward does."""
    logp = logits.float().log_softmax(dim=-1)
    return -logp.gather(-1, batch[:, 1:].unsqueeze(-1)).mean()


def make_data(torch, args):
    """Every global batch of the run: sequences repeating a random motif of
    tokens drawn from a Zipf-like distribution (so the loss falls within a
    few dozen steps: first the token frequencies, then the repeats)."""
    g = torch.Generator().manual_seed(1234)
    total = args.steps * args.batch * args.world
    period = torch.randint(4, 33, (total,), generator=g)
    freq = 1.0 / torch.arange(1, args.vocab + 1, dtype=torch.float64) ** 1.1
    seqs = torch.empty(total, args.seq + 1, dtype=torch.long)
    for i in range(total):
        motif = torch.multinomial(freq, int(period[i]), replacement=True, generator=g)
        seqs[i] = motif.repeat(args.seq // int(period[i]) + 2)[: args.seq + 1]
    return seqs.view(args.steps, args.world, args.batch, args.seq + 1)


def cpu_worker(rank, world, args, allocator, run, port):
    """--cpu: the same training on CPU processes over gloo, with no GPU and no
    allocator change (checks the script itself: data, model, determinism,
    the collection of results)."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(0)
    model = build_model(torch, args)
    ddp = DDP(model, broadcast_buffers=False)
    opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.1)
    data = make_data(torch, args)
    losses, times = [], []
    for step in range(args.steps):
        batch = data[step, rank]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = ddp(batch[:, :-1])
        loss = next_token_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    mine = {"rank": rank, "params": sum(p.numel() for p in model.parameters()),
            "losses": losses, "step_ms": statistics.median(times[args.warmup:]) * 1e3,
            "first_step_ms": times[0] * 1e3, "peak_live": -1, "peak_physical": -1,
            "device_used_at_end": 0, "nondeterministic_warnings": []}
    finish(dist, rank, world, args, allocator, run, mine)


def rank_file(args, run, rank):
    """Where a rank leaves its results (a temporary folder, not beside --out)."""
    return os.path.join(args.rank_dir, f"run{run}.rank{rank}.json")


def finish(dist, rank, world, args, allocator, run, mine):
    """Writes this rank's results to a file of its own (the parent collects
    them: a rank that fails leaves the others' results)."""
    with open(rank_file(args, run, rank), "w") as f:
        json.dump(mine, f)
    dist.barrier()
    dist.destroy_process_group()


def collect(args, allocator, run, status):
    """The run's record from the rank files; appended to --out and printed."""
    every = []
    for rank in range(args.world):
        try:
            with open(rank_file(args, run, rank)) as f:
                every.append(json.load(f))
        except (OSError, ValueError):
            every.append({"rank": rank, "error": f"no result ({status})"})
    record = {"world": args.world, "allocator": allocator, "run": run, "status": status,
              "config": {k: getattr(args, k) for k in
                         ("layers", "dim", "heads", "seq", "batch", "vocab", "steps", "warmup")},
              "ranks": every}
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    w = args.world
    for r in every:
        if "error" in r:
            print(f"DDP world={w} run={run} allocator={allocator} rank={r['rank']} "
                  f"error={r['error']}", flush=True)
            continue
        for step, loss in enumerate(r["losses"]):
            print(f"DDP world={w} run={run} allocator={allocator} rank={r['rank']} "
                  f"step={step} loss={loss!r}", flush=True)
        print(f"DDP world={w} run={run} allocator={allocator} rank={r['rank']} "
              f"step_ms={r['step_ms']:.3f} peak_live={r['peak_live']} "
              f"peak_physical={r['peak_physical']}", flush=True)
        vmm = r.get("vmm_per_step")
        if vmm:
            busy = [i for i, n in enumerate(vmm) if n != 0]
            print(f"DDP world={w} run={run} allocator={allocator} rank={r['rank']} "
                  f"vmm_calls={sum(vmm)} vmm_calls_after_warmup={sum(vmm[args.warmup:])} "
                  f"last_step_with_calls={busy[-1] if busy else -1}", flush=True)
        vms, ams = r.get("vmm_ms_per_step"), r.get("alloc_ms_per_step")
        if vms and any(ams):
            # report:1 only: the allocator's own time, and its VMM calls' share.
            print(f"DDP world={w} run={run} allocator={allocator} rank={r['rank']} "
                  f"vmm_ms_after_warmup={sum(vms[args.warmup:]):.1f} "
                  f"allocator_ms_after_warmup={sum(ams[args.warmup:]):.1f}", flush=True)


def write_trace(torch, path, rank, marks):
    """This device's allocation events (PyTorch's allocator) in the format of
    shared/traces/README.md, with a repetition mark after each block of steps
    (as scripts/torch_bench.py --trace writes them)."""
    import gzip
    snap = torch.cuda.memory._snapshot()
    kinds = ("alloc", "free_requested", "free_completed", "segment_alloc", "segment_free",
             "segment_map", "segment_unmap")
    events = snap["device_traces"][rank]
    with gzip.open(path, "wt") as f:
        for i, e in enumerate(events):
            if e["action"] in kinds:
                f.write(json.dumps({"action": e["action"], "addr": e["addr"], "size": e["size"],
                                    "stream": e["stream"]}) + "\n")
            if i + 1 in marks:
                f.write(json.dumps({"action": "rep_end", "addr": 0, "size": 0, "stream": 0}) + "\n")
    print(f"trace: {len(events)} events, {len(marks)} blocks of steps, to {path}", flush=True)


def worker(rank, world, args, allocator, run, port):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    lib = None
    if args.cpu:
        return cpu_worker(rank, world, args, allocator, run, port)
    if allocator == "gpu-arena":
        # Before any CUDA allocation of this process.
        torch.cuda.memory.change_current_allocator(
            torch.cuda.memory.CUDAPluggableAllocator(args.lib, ALLOC, FREE))
        lib = ctypes.CDLL(args.lib)
        lib.gpu_arena_stats_json.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.gpu_arena_stats_json.restype = ctypes.c_ssize_t
        lib.gpu_arena_epoch_json.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.gpu_arena_epoch_json.restype = ctypes.c_ssize_t

    epochs = []

    def end_epoch():
        """Ends gpu-arena's epoch (one per step): its VMM calls and peaks
        since the last call. The peaks restart then, so the run's peaks are
        the largest of the epochs'."""
        buf = ctypes.create_string_buffer(1 << 16)
        n = lib.gpu_arena_epoch_json(rank, buf, len(buf))
        e = json.loads(buf.value[:n].decode()) if 0 < n < len(buf) else {}
        epochs.append(e)
        return e.get("vmm_calls", -1)
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    # The host replays such a trace (examples/cabi_replay) to see, step block
    # by step block, what gpu-arena would decide.
    # A path with {rank} (and {run}) makes every rank of every default run
    # record its own, to compare ranks and runs.
    every = bool(args.trace) and "{rank}" in args.trace
    tracing = bool(args.trace) and allocator == "default" and (rank == 0 or every)
    trace_path = args.trace.format(rank=rank, run=run) if every else args.trace
    marks = []
    if tracing:
        torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python",
                                                 max_entries=4_000_000)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, device_id=dev,
                            timeout=datetime.timedelta(seconds=60))
    caught = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # warn_only: an op without a deterministic kernel is reported (in
            # the JSON) instead of ending the run; the loss check shows its effect.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.manual_seed(0)
            model = build_model(torch, args).to(dev)
            # The causal mask is a constant buffer: nothing to broadcast.
            ddp = DDP(model, device_ids=[rank], broadcast_buffers=False)
            opt = torch.optim.AdamW(ddp.parameters(), lr=args.lr, weight_decay=0.1)
            data = make_data(torch, args)
            losses, times, vmm = [], [], []
            if lib is not None:
                end_epoch()  # model and optimizer set-up
            for step in range(args.steps):
                batch = data[step, rank].to(dev, non_blocking=False)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = ddp(batch[:, :-1])
                loss = next_token_loss(logits, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                if lib is not None:
                    vmm.append(end_epoch())
                if tracing and (step + 1) % args.trace_every == 0:
                    marks.append(len(torch.cuda.memory._snapshot()["device_traces"][rank]))
            if tracing:
                write_trace(torch, trace_path, rank, marks)
        if lib is not None:
            buf = ctypes.create_string_buffer(1 << 16)
            n = lib.gpu_arena_stats_json(rank, buf, len(buf))
            s = json.loads(buf.value[:n].decode()).get("stats", {}) if 0 < n < len(buf) else {}
            peak_live, peak_physical = s.get("peak_live", -1), s.get("peak_committed", -1)
            peak_live = max([peak_live] + [e.get("peak_live", -1) for e in epochs])
            peak_physical = max([peak_physical] + [e.get("peak_committed", -1) for e in epochs])
        else:
            peak_live = torch.cuda.max_memory_allocated(dev)
            peak_physical = torch.cuda.max_memory_reserved(dev)
        free, total = torch.cuda.mem_get_info(dev)
        mine = {
            "rank": rank,
            "params": sum(p.numel() for p in model.parameters()),
            "losses": losses,
            "step_ms": statistics.median(times[args.warmup:]) * 1e3,
            "first_step_ms": times[0] * 1e3,
            # gpu-arena: VMM calls made in each step (the step's input copy included).
            "vmm_per_step": vmm if lib is not None else None,
            # gpu-arena: milliseconds inside its VMM calls and inside its
            # allocations and frees (VMM calls included; report:1 only,
            # else 0) in each step.
            "vmm_ms_per_step": [e.get("driver_calls", {}).get("vmm_nanos", 0) / 1e6
                                for e in epochs[1:]] if lib is not None else None,
            "alloc_ms_per_step": [(e.get("times", {}).get("alloc_nanos", 0)
                                   + e.get("times", {}).get("free_nanos", 0)) / 1e6
                                  for e in epochs[1:]] if lib is not None else None,
            "peak_live": peak_live,
            "peak_physical": peak_physical,
            "device_used_at_end": total - free,
            "nondeterministic_warnings": sorted({str(w.message)[:200] for w in caught
                                                 if "determinis" in str(w.message)}),
        }
    except Exception:
        traceback.print_exc()
        mine = {"rank": rank, "error": traceback.format_exc().splitlines()[-1][:300]}
    finish(dist, rank, world, args, allocator, run, mine)


def run_one(mp, args, allocator, run):
    start = time.monotonic()
    ctx = mp.start_processes(worker, args=(args.world, args, allocator, run, free_port()),
                             nprocs=args.world, join=False, start_method="spawn")
    status = "ok"
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() - start > args.run_timeout:
                status = "timeout"
                break
    except Exception as e:  # noqa: BLE001 - a failed rank ends the run
        print(str(e), flush=True)
        last = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        status = f"failed: {last[-1][:200] if last else type(e).__name__}"
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    for p in ctx.processes:
        p.join(5)
    print(f"RUN world={args.world} run={run} allocator={allocator} status={status} "
          f"seconds={time.monotonic() - start:.1f}", flush=True)
    collect(args, allocator, run, status)
    return status


def summary(records, world):
    """Prints the loss check and the table; returns False where losses differ."""
    runs = [r for r in records if r.get("world") == world and "ranks" in r]
    good = [r for r in runs if all("losses" in x for x in r["ranks"])]
    if not good:
        print("no complete run")
        return False
    ref = good[0]
    same = all([x["losses"] for x in r["ranks"]] == [x["losses"] for x in ref["ranks"]]
               for r in good)
    print(f"\nlosses of all {len(good)} complete runs (world {world}) identical bit for bit: "
          f"{'yes' if same else 'NO'}")
    if not same:
        for r in good:
            d = max(abs(a - b) for x, y in zip(r["ranks"], ref["ranks"])
                    for a, b in zip(x["losses"], y["losses"]))
            print(f"  run {r['run']} ({r['allocator']}): largest difference {d:.3g}")
    print("\n| run | allocator | rank | median step ms | peak live MiB | peak physical MiB | "
          "physical / live |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in good:
        for x in r["ranks"]:
            live, phys = x["peak_live"], x["peak_physical"]
            print(f"| {r['run']} | {r['allocator']} | {x['rank']} | {x['step_ms']:.2f} | "
                  f"{live / 2**20:.1f} | {phys / 2**20:.1f} | "
                  f"{phys / live if live > 0 else float('nan'):.3f} |")
    return same


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lib", default="target/release/libgpu_arena.so")
    p.add_argument("--world", type=int, default=2, help="processes (one GPU each)")
    p.add_argument("--runs", default="default,gpu-arena,default,gpu-arena",
                   help="allocators, one run each, in this order")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the median")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16, help="sequences per rank per step")
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--run-timeout", type=float, default=60, help="seconds per run")
    p.add_argument("--out", default=None, help="JSON lines output (default: a temp file)")
    p.add_argument("--trace", default=None,
                   help="rank 0 of default-allocator runs records its allocations to this .jsonl.gz "
                        "(the format of shared/traces/README.md), a repetition mark every --trace-every steps; "
                        "with {rank} (and {run}) in the path, every rank of every such run records its own")
    p.add_argument("--trace-every", type=int, default=100)
    p.add_argument("--cpu", action="store_true",
                   help="CPU processes over gloo, no allocator change: checks the script "
                        "without GPUs")
    args = p.parse_args()
    runs = [a for a in args.runs.split(",") if a]
    for a in runs:
        if a not in ALLOCATORS:
            sys.exit(f"unknown allocator {a!r}")
    if args.warmup >= args.steps:
        sys.exit("--warmup must be below --steps")
    args.lib = os.path.abspath(args.lib)
    lib = ctypes.CDLL(args.lib)
    for sym in (ALLOC, FREE, "gpu_arena_stats_json"):
        if not hasattr(lib, sym):
            sys.exit(f"{args.lib} does not export {sym}")

    import torch
    import torch.multiprocessing as mp

    gpus = torch.cuda.device_count()
    if gpus < args.world and not args.cpu:
        print(f"skipped: {args.world} GPUs needed, {gpus} found")
        return 0
    args.out = os.path.abspath(args.out or os.path.join(
        tempfile.mkdtemp(prefix="ddp_train_"), "results.jsonl"))
    args.rank_dir = tempfile.mkdtemp(prefix="ddp_ranks_")
    where = "CPU processes (gloo)" if args.cpu else f"{gpus} x {torch.cuda.get_device_name(0)}"
    print(f"torch {torch.__version__}, world {args.world} of {where}; {args.layers} layers, d {args.dim}, seq {args.seq}, "
          f"batch {args.batch}/rank, {args.steps} steps", flush=True)
    for i, allocator in enumerate(runs):
        run_one(mp, args, allocator, i)
    records = [json.loads(line) for line in open(args.out)]
    same = summary(records, args.world)
    print(f"\nresults: {args.out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
