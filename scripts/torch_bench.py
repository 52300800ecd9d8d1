"""PyTorch workloads on one GPU, repeated in one process, one JSON line per repetition.

usage: python3 scripts/torch_bench.py WORKLOAD [--alloc LIB.so | --timed-default SHIM.so | --ab SHIM.so [--ab-start I]]
                                    [--repeat N] [--shared PATH] [--trace OUT.jsonl.gz]

  WORKLOAD  bert_infer | gpt2_generate   the shared harness's workloads (../shared/bench/torch_workloads.py,
                                         their functions and models taken from that file unchanged), or
            train                        a GPT-style model trained with AdamW under bf16 autocast (backward on
                                         PyTorch's autograd threads), the same batches every repetition, a new
                                         optimizer in each (its state allocated at its first step), or
            train_loop                   the same computation with one optimizer for the whole process, its
                                         state zeroed in place between repetitions (a run's steps in a row), or
            serve                        a GPT-2 style model serving requests of random batch size, prompt
                                         length and answer length (greedy decoding, a KV cache that grows
                                         token by token), the same requests every repetition
  --alloc   gpu-arena's libgpu_arena.so as PyTorch's allocator (CUDAPluggableAllocator with
            gpu_arena_torch_alloc / gpu_arena_torch_free); default: PyTorch's caching allocator
  --timed-default  PyTorch's caching allocator behind the same CUDAPluggableAllocator wrapper, each call
            timed inside (scripts/torch_timed_default.cpp, built with `scripts/alloc_anchor.py build SHIM.so
            --src scripts/torch_timed_default.cpp`): its time per call next to gpu-arena's (label "default-timed")
  --ab      two builds of gpu-arena in this one process, switched repetition by repetition
            (scripts/ab_shim.c, built as SHIM.so; AB_LIB_0 and AB_LIB_1 name the two libgpu_arena.so files,
            AB_NAMES their labels, default "0 1"): repetition r allocates from build (r - 1 + I) % 2 (I:
            --ab-start, default 0), on that build's own copy of the model (each build holds one, made
            from the same seed), and its line is labelled "ab NAME" with that build's figures for the
            repetition (frees of the other build's blocks go to the other build: their calls are under
            "other"). The builds' times per call then come a few seconds apart on the same process and
            CPU (scripts/torch_ab_report.py pairs them); each build's first repetition lays out its memory.
  --tag-weights  with --alloc: the model is made with the thread's tag set to `weights` (gpu_arena_set_tag),
            the rest in the default tag, as an engine that tags its weights for sleep lays them out (label
            "gpu-arena tagged"; the figures are the whole process's, over both tags); ignored otherwise, so
            that `BENCH_ARGS=--tag-weights scripts/torch_alternate.sh` alternates PyTorch's default with it
  --prelude-mib M  allocate M MiB (rounded down to 512 bytes) first, before the model, and keep it to
            the end: what lies below the work moves where its blocks fall against the 2 MiB pages, as
            examples/layout_ensemble's preludes do on the host (docs/pytorch.md, "One trace, sixteen
            layouts"); with any allocator, in the default tag; not with --ab
  --repeat  run the workload N times in this process with the same inputs (first run cold)
  --shared  path of torch_workloads.py (default: ../shared/bench, else .gpu/extra)
  --profile time each repetition's GPU work with torch.profiler (CUDA activity only) and add to its line
            the GPU's busy time (the union of its kernels, copies and memsets) and their sums by kind, to tell
            a repetition slowed on the GPU from one slowed on the CPU (the profiler adds its own overhead)
  --trace   record the allocation trace (PyTorch's allocator only) in the format of shared/traces/README.md,
            from the model's creation to the end of the last repetition, as the shared harness records its
            traces (so that the host can replay train and serve: `gpu-arena replay`, tests/all/commit_engine.rs);
            with --repeat, a line `{"action": "rep_end", ...}` follows each repetition's last event

Each repetition prints one line `REP {json}`: time, checksum, and the allocator's figures for that
repetition alone: peak physical / peak live bytes and the driver calls that obtained or gave back device
memory. PyTorch's allocator: peak reserved / peak allocated and cudaMalloc + cudaFree calls
(memory_stats num_device_alloc / num_device_free). gpu-arena: peak committed / peak handed-out bytes
(the C ABI's own count of what PyTorch holds, sizes rounded to 512 as PyTorch rounds) and VMM calls
(create, map, set_access, unmap, release), from gpu_arena_epoch_json; with GPU_ARENA_CONF=report:1 also
the time inside the allocator's calls. Deterministic algorithms are on: the checksum is equal across
allocators and repetitions when the results are."""
import argparse, ast, ctypes, functools, gzip, json, os, sys, time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
import torch  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("workload", choices=["bert_infer", "gpt2_generate", "train", "train_loop", "serve"])
ap.add_argument("--alloc")
ap.add_argument("--timed-default")
ap.add_argument("--ab")
ap.add_argument("--ab-start", type=int, default=0)
ap.add_argument("--tag-weights", action="store_true")
ap.add_argument("--prelude-mib", type=float, default=0.0)
ap.add_argument("--repeat", type=int, default=1)
ap.add_argument("--shared")
ap.add_argument("--trace")
ap.add_argument("--profile", action="store_true")
a = ap.parse_args()
if sum(map(bool, (a.alloc, a.timed_default, a.ab))) > 1:
    sys.exit("--alloc, --timed-default and --ab each replace the allocator: give one")
# --tag-weights tags gpu-arena's memory only; PyTorch's own allocators ignore it, so that
# scripts/torch_alternate.sh can pass it to every process (BENCH_ARGS) and alternate them as usual.
a.tag_weights = a.tag_weights and bool(a.alloc)
if a.prelude_mib and a.ab:
    sys.exit("--prelude-mib lays one arena out: leave --ab out")
if a.trace and (a.alloc or a.timed_default or a.ab):
    sys.exit("--trace records PyTorch's own allocator: leave --alloc out")
if a.trace:
    torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=3_000_000)


def pluggable(path, alloc, free, epoch, argtypes):
    """Makes the library at `path` PyTorch's allocator (CUDAPluggableAllocator with its `alloc` and
    `free` entry points) and returns it, its `epoch` function typed with `argtypes`."""
    torch.cuda.memory.change_current_allocator(torch.cuda.memory.CUDAPluggableAllocator(path, alloc, free))
    so = ctypes.CDLL(path)
    getattr(so, epoch).restype = ctypes.c_ssize_t
    getattr(so, epoch).argtypes = argtypes
    return so


lib = timed = ab = None
if a.alloc:
    lib = pluggable(a.alloc, "gpu_arena_torch_alloc", "gpu_arena_torch_free", "gpu_arena_epoch_json",
                    [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t])
if a.ab:
    ab = pluggable(a.ab, "ab_alloc", "ab_free", "ab_epoch_json",
                   [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t])
    ab.ab_select.argtypes = [ctypes.c_int]
    ab_names = os.environ.get("AB_NAMES", "0 1").split()
if a.timed_default:
    timed = pluggable(a.timed_default, "timed_alloc", "timed_free", "timed_epoch_json",
                      [ctypes.c_char_p, ctypes.c_size_t])

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

torch.manual_seed(0)
torch.use_deterministic_algorithms(True)


def shared_workloads():
    """The shared harness's workload functions and model constructors, taken from its source (it runs
    its own command line when imported, so it is parsed, not imported)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for p in [a.shared, os.path.join(here, "../../shared/bench/torch_workloads.py"),
              os.path.join(here, "../.gpu/extra/torch_workloads.py")]:
        if p and os.path.exists(p):
            src = open(p).read()
            break
    else:
        sys.exit("torch_workloads.py not found (--shared PATH)")
    tree = ast.parse(src)
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("gpt2_generate", "bert_infer")
            or isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "MODELS" for t in n.targets)
            or isinstance(n, (ast.Import, ast.ImportFrom))]
    ns = {"torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), p, "exec"), ns)
    return ns


def train_model():
    cfg = GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=32000, n_positions=1024)
    return GPT2LMHeadModel(cfg).to("cuda")


def train_steps(m, opt):
    """24 training steps of three batch shapes, the same batches every time; the sum of the losses."""
    g = torch.Generator().manual_seed(2)
    total = 0.0
    m.train()
    for step in range(24):
        b, s = [(8, 512), (4, 1024), (16, 256)][step % 3]
        ids = torch.randint(0, m.config.vocab_size, (b, s), generator=g).to("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += float(loss)
    return round(total, 4)


def restore_weights(m, state):
    """The model's first weights, copied back in place (kept in `state` at the first call)."""
    if "init" not in state:
        state["init"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
    m.load_state_dict(state["init"])


def train(m, state={}):
    # The same batches, model and optimizer state every repetition: a new optimizer each time, whose
    # state is allocated at its first step and freed at the end.
    restore_weights(m, state)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    total = train_steps(m, opt)
    del opt
    return total


def train_loop(m, state={}):
    # The same computation as `train`, but one optimizer for the whole process, as a training run
    # keeps it from step to step: each repetition zeroes its state in place (moments and step counts:
    # what a new AdamW starts from), so no repetition after the first allocates or frees optimizer
    # state, and the repetitions follow one another as a run's steps do.
    restore_weights(m, state)
    if "opt" not in state:
        state["opt"] = torch.optim.AdamW(m.parameters(), lr=1e-4)
    for moments in state["opt"].state.values():
        for v in moments.values():
            if torch.is_tensor(v):
                v.zero_()
    return train_steps(m, state["opt"])


def serve_model():
    cfg = GPT2Config(n_layer=8, n_embd=1024, n_head=16, vocab_size=32000, n_positions=2048)
    return GPT2LMHeadModel(cfg).to("cuda", torch.float16).eval()


def serve(m):
    g = torch.Generator().manual_seed(3)
    total = 0
    with torch.no_grad():
        for _ in range(12):
            b = int(torch.randint(1, 17, (1,), generator=g))
            p = int(torch.randint(16, 513, (1,), generator=g))
            n = int(torch.randint(8, 97, (1,), generator=g))
            ids = torch.randint(0, m.config.vocab_size, (b, p), generator=g).to("cuda")
            out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            total += int(out.sum())
    return total


if a.workload in ("bert_infer", "gpt2_generate"):
    ns = shared_workloads()
    run = ns[a.workload]
else:
    run = {"train": train, "train_loop": train_loop, "serve": serve}[a.workload]


def make_model():
    if a.workload in ("bert_infer", "gpt2_generate"):
        return ns["MODELS"][a.workload]().to("cuda", torch.float16).eval()
    return {"train": train_model, "train_loop": train_model, "serve": serve_model}[a.workload]()


if ab:
    # Each build holds its own copy of the model, made from the same seed (the same weights, so the
    # same checksums), and runs on it: a build's arena then sees what one allocator's does, the
    # weights first, then the work (an arena without the weights below its work lays BERT out
    # otherwise: 1.0298 and 43 % more instructions per call, docs/pytorch.md, "Two builds in one
    # process"). train and train_loop keep their state (first weights, optimizer) per copy. Each
    # build also runs on a stream of its own, so that what PyTorch keeps per stream from a first use
    # on (cuBLAS's workspace, 33 MiB) is allocated by each build, not only by the first to run.
    models, runs, streams = [], [], [torch.cuda.Stream(), torch.cuda.Stream()]
    for i in (0, 1):
        ab.ab_select(i)
        torch.manual_seed(0)
        with torch.cuda.stream(streams[i]):
            models.append(make_model())
        runs.append(functools.partial(run, state={}) if a.workload in ("train", "train_loop") else run)
    torch.cuda.synchronize()
else:
    prelude_bytes = int(a.prelude_mib * 2**20) // 512 * 512
    prelude = torch.empty(prelude_bytes, dtype=torch.uint8, device="cuda") if prelude_bytes else None
    if a.tag_weights:
        lib.gpu_arena_set_tag.argtypes = [ctypes.c_char_p]
        lib.gpu_arena_set_tag(b"weights")
    models, runs, streams = [make_model()], [run], [torch.cuda.current_stream()]
    if a.tag_weights:
        lib.gpu_arena_set_tag(b"default")


def epoch(which=0):
    """gpu-arena's figures since the last call (of build `which` with --ab)."""
    buf = ctypes.create_string_buffer(1 << 16)
    n = ab.ab_epoch_json(which, 0, buf, len(buf)) if ab else lib.gpu_arena_epoch_json(0, buf, len(buf))
    return json.loads(buf.value.decode()) if n > 0 else {}


def us_per_call(t):
    """Microseconds per allocator call (alloc or free) of an epoch's `times` figures."""
    return (t["alloc_nanos"] + t["free_nanos"]) / max(t["allocs"] + t["frees"], 1) / 1e3


def timed_epoch():
    buf = ctypes.create_string_buffer(1 << 12)
    timed.timed_epoch_json(buf, len(buf))
    return json.loads(buf.value.decode())


def gpu_busy(prof):
    """The GPU's busy time (ms: the union of its activity intervals) and the sums by kind."""
    spans, kinds = [], {"kernel_ms": 0.0, "memcpy_ms": 0.0, "memset_ms": 0.0}
    for e in prof.events():
        if str(getattr(e, "device_type", "")).split(".")[-1] != "CUDA":
            continue
        start, end = e.time_range.start, e.time_range.end
        spans.append((start, end))
        name = e.name.lower()
        kind = "memcpy_ms" if "memcpy" in name else "memset_ms" if "memset" in name else "kernel_ms"
        kinds[kind] += (end - start) / 1e3
    busy, last = 0.0, None
    for start, end in sorted(spans):
        if last is None or start > last:
            busy += end - start
            last = end
        elif end > last:
            busy += end - last
            last = end
    out = {"busy_ms": round(busy / 1e3, 2), "events": len(spans)}
    out.update({k: round(v, 2) for k, v in kinds.items()})
    return out


rng = (torch.get_rng_state(), torch.cuda.get_rng_state())
label = ("gpu-arena tagged" if a.tag_weights else "gpu-arena") if a.alloc else "default-timed" if timed \
    else os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "default")
which = 0
marks = []  # with --trace: trace events recorded when each repetition ended
for r in range(a.repeat):
    torch.set_rng_state(rng[0]); torch.cuda.set_rng_state(rng[1])
    torch.cuda.synchronize()
    if ab:
        which = (r + a.ab_start) % 2
        ab.ab_select(which)
        label = "ab " + ab_names[which]
        epoch(1 - which)
    if lib or ab:
        epoch(which)
    elif timed:
        t0e = timed_epoch()
    else:
        torch.cuda.reset_peak_memory_stats()
        st0 = torch.cuda.memory_stats()
    prof = None
    if a.profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
        prof.__enter__()
    t0 = time.perf_counter()
    with torch.cuda.stream(streams[which]):
        checksum = runs[which](models[which])
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    rec = {"workload": a.workload, "allocator": label, "rep": r + 1, "time_s": round(dt, 4), "checksum": checksum}
    if prof is not None:
        prof.__exit__(None, None, None)
        try:
            rec["gpu"] = gpu_busy(prof)
        except Exception as err:  # the profiler's event API moves between torch versions
            rec["gpu"] = {"error": repr(err)}
    if lib or ab:
        e = epoch(which)
        t = e.get("times", {})
        live = t.get("peak_handed") or e["peak_live"]
        rec.update(peak_physical=e["peak_committed"], peak_live=live, ratio=e["peak_committed"] / max(live, 1),
                   arena_peak_live=e["peak_live"], driver_calls=e["vmm_calls"], allocs=e["allocs"],
                   frees=e["frees"], calls=e["driver_calls"], stitch=e.get("stitch"),
                   us_per_call=us_per_call(t) if t.get("allocs") else None)
        if ab:
            o = epoch(1 - which)
            ot = o.get("times", {})
            rec["other"] = {"allocs": o.get("allocs"), "frees": o.get("frees"), "vmm_calls": o.get("vmm_calls"),
                            "us_per_call": us_per_call(ot) if ot.get("allocs") or ot.get("frees") else None}
    elif timed:
        e = timed_epoch()
        t = e["times"]
        rec.update(peak_physical=e["peak_reserved"], peak_live=e["peak_allocated"],
                   ratio=e["peak_reserved"] / max(e["peak_allocated"], 1),
                   driver_calls=e["device_allocs"] - t0e["device_allocs"] + e["device_frees"] - t0e["device_frees"],
                   allocs=e["allocations"] - t0e["allocations"],
                   us_per_call=us_per_call(t))
    else:
        st = torch.cuda.memory_stats()
        pa, pr = st["allocated_bytes.all.peak"], st["reserved_bytes.all.peak"]
        rec.update(peak_physical=pr, peak_live=pa, ratio=pr / max(pa, 1),
                   driver_calls=st["num_device_alloc"] - st0["num_device_alloc"]
                   + st["num_device_free"] - st0["num_device_free"],
                   allocs=st["allocation.all.allocated"] - st0["allocation.all.allocated"])
    print("REP " + json.dumps(rec), flush=True)
    if a.trace:
        marks.append(len(torch.cuda.memory._snapshot()["device_traces"][0]))
if a.trace:
    snap = torch.cuda.memory._snapshot()
    kinds = ("alloc", "free_requested", "free_completed", "segment_alloc", "segment_free", "segment_map", "segment_unmap")
    with gzip.open(a.trace, "wt") as f:
        for i, e in enumerate(snap["device_traces"][0]):
            if e["action"] in kinds:
                f.write(json.dumps({"action": e["action"], "addr": e["addr"], "size": e["size"], "stream": e["stream"]}) + "\n")
            if i + 1 in marks:
                # The end of a repetition (replays may report each one apart).
                f.write(json.dumps({"action": "rep_end", "addr": 0, "size": 0, "stream": 0}) + "\n")
    print(f"trace: {len(snap['device_traces'][0])} events to {a.trace}", flush=True)
