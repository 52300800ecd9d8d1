"""Checks of gpu-arena as PyTorch's allocator on a CUDA GPU, one per process.

usage: python cuda_checks.py NAME      (test_cuda.py runs each; NAME: see CHECKS)

Each check calls gpu_arena.torch.enable() first (PyTorch's allocator can be
swapped only before its first use), prints what it measured as one line
`RESULT {json}`, and exits non-zero on a failed check.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import gpu_arena  # noqa: E402
import gpu_arena.torch  # noqa: E402

MiB = 1 << 20


def result(**kw):
    print("RESULT " + json.dumps(kw, default=str), flush=True)


def tag_of(ptr: int) -> str | None:
    """The gpu-arena tag whose committed memory holds address ``ptr``."""
    for seg in gpu_arena.snapshot()["segments"]:
        if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return seg["gpu_arena_tag"]
    return None


def live(tag: str) -> int:
    return next(t["stats"]["live"] for t in gpu_arena.stats()["tags"] if t["tag"] == tag)


# --- checks ------------------------------------------------------------------


def basic():
    """Tensors live in gpu-arena; stats, summary and snapshot (rendered by
    PyTorch's own _memory_viz) follow them; errors are exceptions."""
    import torch
    from torch.cuda import _memory_viz as viz

    gpu_arena.torch.enable()
    assert gpu_arena.backend() == "cuda", gpu_arena.backend()
    x = torch.randn(1024, 1024, device="cuda")
    y = x @ x
    diff = float((y.cpu() - x.cpu() @ x.cpu()).abs().max())
    torch.cuda.synchronize()
    s = gpu_arena.stats()["stats"]
    assert s["live"] >= 8 * MiB, s
    assert tag_of(x.data_ptr()) == "default" and tag_of(y.data_ptr()) == "default"
    assert x.data_ptr() % 512 == 0
    snap = gpu_arena.snapshot()
    from gpu_arena._snapshot import check

    check(snap)
    text = viz.segsum(snap)
    html = viz.trace_plot(snap)
    seg_html = viz.segment_plot(snap) if hasattr(viz, "segment_plot") else ""
    flame = viz.memory(snap, format_flamegraph=lambda lines: lines)
    before = s["live"]
    del x, y
    torch.cuda.synchronize()
    after = gpu_arena.stats()["stats"]["live"]
    print(gpu_arena.memory_summary())
    try:
        with gpu_arena.tag("capped"):
            gpu_arena.set_tag_limit("capped", 64 * MiB)
            torch.empty(128 * MiB, dtype=torch.uint8, device="cuda")
        oom = "no error"
    except Exception as e:  # PyTorch wraps the allocator's failure
        oom = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    result(
        check="basic",
        live_before_MiB=before / MiB,
        live_after_del_MiB=after / MiB,
        matmul_max_abs_diff_vs_cpu=diff,
        segsum_head=text.splitlines()[:3],
        trace_plot_html_bytes=len(html),
        segment_plot_html_bytes=len(seg_html),
        flamegraph_lines=len(flame.splitlines()),
        capped_alloc=oom,
    )
    assert after < before, (before, after)
    assert oom != "no error"


def autograd_tags():
    """A backward pass inside `with tag(...)`: PyTorch's autograd engine
    allocates the gradients on its own device thread, which follows the
    process-wide tag (process=True, the default) and not a thread-only one."""
    import torch

    gpu_arena.torch.enable()
    torch.manual_seed(0)

    def run(tag: str, process: bool):
        model = torch.nn.Sequential(
            torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)
        ).cuda()
        x = torch.randn(64, 1024, device="cuda", requires_grad=True)
        threads = set()
        x.register_hook(lambda g: threads.add(threading.get_ident()))
        with gpu_arena.tag(tag, process=process):
            loss = model(x).square().mean()
            loss.backward()
        torch.cuda.synchronize()
        where = {tag_of(p.grad.data_ptr()) for p in model.parameters()}
        return where, threads, model, x

    main = threading.get_ident()
    where, threads, m1, x1 = run("train", True)
    backward_elsewhere = threads and main not in threads
    where_thread_only, _, m2, x2 = run("train_thread_only", False)
    result(
        check="autograd_tags",
        backward_ran_on_other_thread=bool(backward_elsewhere),
        grads_with_process_tag=sorted(map(str, where)),
        grads_with_thread_only_tag=sorted(map(str, where_thread_only)),
        train_live_MiB=live("train") / MiB,
    )
    assert backward_elsewhere, "backward ran on the calling thread: nothing to show"
    assert where == {"train"}, where
    assert where_thread_only == {"default"}, where_thread_only


def _gpt2(n_layer: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=1024, n_head=16, vocab_size=32000, n_positions=2048)
    with gpu_arena.tag("weights"):
        model = GPT2LMHeadModel(cfg).to("cuda", torch.float16).eval()
    torch.cuda.synchronize()
    return model


def _generate(model):
    import torch

    torch.manual_seed(1234)
    with torch.no_grad():
        ids = torch.randint(0, 32000, (4, 128), device="cuda")
        out = model.generate(ids, max_new_tokens=48, min_new_tokens=48, do_sample=True, top_k=50, pad_token_id=0)
    torch.cuda.synchronize()
    return out.cpu()


def sleep_wake():
    """A generating model sleeps (weights offloaded, the rest discarded),
    the memory goes back to the device, it wakes and generates the same.
    A tensor of the offloaded tag dropped while it sleeps is freed at once
    (PyTorch's free cannot fail) and is not woken: the wake's restore does
    not touch its pages, and a tensor beside it comes back intact."""
    import torch

    gpu_arena.torch.enable()
    torch.use_deterministic_algorithms(True)
    model = _gpt2(4)
    first = _generate(model)
    with gpu_arena.tag("weights"):
        dropped = torch.full((16 * MiB // 4,), 7.0, device="cuda")
        kept = torch.full((12 * MiB // 4,), 3.0, device="cuda")
    torch.cuda.synchronize()
    free0, _ = torch.cuda.mem_get_info()
    t = time.perf_counter()
    r = gpu_arena.sleep(offload="weights", discard="default")
    t_sleep = time.perf_counter() - t
    free1, _ = torch.cuda.mem_get_info()
    with gpu_arena.tag("default"):
        try:
            torch.empty(1 << 20, device="cuda")
            refused = "no error"
        except Exception as e:
            refused = type(e).__name__
    asleep_live = live("weights")
    del dropped
    freed_asleep = asleep_live - live("weights")
    t = time.perf_counter()
    w = gpu_arena.wake()
    t_wake = time.perf_counter() - t
    second = _generate(model)
    kept_intact = bool((kept == 3.0).all())
    torch.cuda.synchronize()
    result(
        check="sleep_wake",
        identical_output=bool(torch.equal(first, second)),
        freed_MiB=(free1 - free0) / MiB,
        offloaded_MiB=r["offload"].get("copied", 0) / MiB,
        restored_MiB=w.get("copied", 0) / MiB,
        sleep_s=t_sleep,
        wake_s=t_wake,
        woken_MiB=w.get("bytes", 0) / MiB,
        alloc_while_asleep=refused,
        freed_while_asleep_MiB=freed_asleep / MiB,
        kept_beside_it_intact=kept_intact,
    )
    assert torch.equal(first, second)
    assert free1 - free0 >= r["offload"]["bytes"], "the memory went back to the device"
    assert refused != "no error"
    assert freed_asleep == 16 * MiB, freed_asleep
    assert kept_intact
    # Its pages not shared with a neighbour (at least 14 of its 16 MiB in
    # 2 MiB pages) are not restored.
    assert w["copied"] <= r["offload"]["copied"] - 14 * MiB, (w, r)


def graphs():
    """CUDA graph capture and replay with gpu-arena as the allocator: the
    capture's memory is held (no reuse by later tensors, no return to the
    device) until the graph is reset; graphs survive sleep and wake."""
    import torch

    gpu_arena.torch.enable()
    torch.manual_seed(0)
    with gpu_arena.tag("weights"):
        model = torch.nn.Sequential(
            torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024), torch.nn.LayerNorm(1024)
        ).cuda().eval()
    static_x = torch.randn(256, 1024, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(g):
        static_y = model(static_x)
    held = gpu_arena.torch.graph_memory(g)

    def check_replay(label):
        x = torch.randn(256, 1024, device="cuda")
        static_x.copy_(x)
        g.replay()
        with torch.no_grad():
            ref = model(x)
        torch.cuda.synchronize()
        return label, float((static_y - ref).abs().max())

    diffs = [check_replay("first")]
    # Fill the device with new tensors: none may land on the graph's memory.
    junk = [torch.full((MiB,), 7.0, device="cuda") for _ in range(256)]
    diffs.append(check_replay("after 1 GiB of new tensors"))
    junk_intact = all(bool((j == 7.0).all()) for j in junk)
    del junk
    gpu_arena.trim()
    diffs.append(check_replay("after trim"))
    # Sleep everything (weights offloaded, the rest — the graph's memory
    # included — discarded); wake; the same graph replays.
    gpu_arena.sleep(offload="weights", discard="default")
    gpu_arena.wake()
    diffs.append(check_replay("after sleep and wake"))
    live_before = gpu_arena.stats()["stats"]["live"]
    g.reset()
    torch.cuda.synchronize()
    released = live_before - gpu_arena.stats()["stats"]["live"]
    result(
        check="graphs",
        held=held,
        max_abs_diff=dict(diffs),
        junk_intact=junk_intact,
        released_on_reset_MiB=released / MiB,
    )
    assert held and held["deferred_blocks"] > 0, held
    assert all(d < 1e-3 for _, d in diffs), diffs
    assert junk_intact
    assert released >= held["deferred_bytes"], (released, held)


def vllm_sequence():
    """vLLM's CuMemAllocator tests (test_basic_cumem, test_cumem_with_cudagraph)
    through gpu_arena.vllm.CuMemAllocator."""
    import torch

    from gpu_arena.vllm import CuMemAllocator

    allocator = CuMemAllocator.get_instance()
    # test_basic_cumem
    shape = (1024, 1024)
    x = torch.empty(shape, device="cuda")
    x.zero_()
    with allocator.use_memory_pool():
        y = torch.empty(shape, device="cuda")
        y.zero_()
        y += 1
        z = torch.empty(shape, device="cuda")
        z.zero_()
        z += 2
    output = x + y + z
    assert torch.allclose(output, torch.ones_like(output) * 3)
    free_bytes = torch.cuda.mem_get_info()[0]
    allocator.sleep()
    free_after_sleep = torch.cuda.mem_get_info()[0]
    basic_freed = free_after_sleep - free_bytes
    assert free_after_sleep > free_bytes
    allocator.wake_up()
    output = x + y + z
    assert torch.allclose(output, torch.ones_like(output) * 3)
    usage = allocator.get_current_usage()

    # test_cumem_with_cudagraph
    with allocator.use_memory_pool():
        weight = torch.eye(1024, device="cuda")
    with allocator.use_memory_pool(tag="discard"):
        cache = torch.empty(1024, 1024, device="cuda")

    def model(x):
        out = x @ weight
        cache[: out.size(0)].copy_(out)
        return out + 1

    x = torch.empty(128, 1024, device="cuda")
    model(x)  # warmup
    model_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(model_graph):
        y = model(x)
    free_bytes = torch.cuda.mem_get_info()[0]
    allocator.sleep()
    free_after_sleep = torch.cuda.mem_get_info()[0]
    assert free_after_sleep > free_bytes
    allocator.wake_up()
    x.random_()
    model_graph.replay()
    assert torch.allclose(x, cache[: x.size(0)])
    assert torch.allclose(y, x + 1)
    result(
        check="vllm_sequence",
        basic_cumem="passed",
        basic_freed_MiB=basic_freed / MiB,
        current_usage_MiB=usage / MiB,
        cumem_with_cudagraph="passed",
        graph_freed_MiB=(free_after_sleep - free_bytes) / MiB,
    )


def vllm_oom():
    """vLLM's test_python_error: waking pools that no longer fit raises a
    RuntimeError. Here also: the pool that fails stays asleep, the others
    wake, and it wakes once memory is back. (A large pool is discarded
    rather than offloaded, so the check needs no 56 GB of pinned memory.)"""
    import torch

    from gpu_arena.vllm import CuMemAllocator

    allocator = CuMemAllocator.get_instance()
    total = torch.cuda.mem_get_info()[1]
    n = int(total * 0.7)
    with allocator.use_memory_pool():
        small = torch.full((MiB,), 5, dtype=torch.uint8, device="cuda")
    with allocator.use_memory_pool(tag="big"):
        x = torch.empty(n, dtype=torch.uint8, device="cuda")
    allocator.sleep(offload_tags=("default",))
    y = torch.empty(n, dtype=torch.uint8, device="cuda")  # outside the pools: fits now
    try:
        allocator.wake_up()
        err = None
    except RuntimeError as e:
        err = e
    state = gpu_arena.tags()
    del y
    torch.cuda.synchronize()
    for _ in range(20):  # the freed memory goes back once its fence is seen complete
        gpu_arena.trim()
        try:
            allocator.wake_up()
            break
        except RuntimeError:
            time.sleep(0.05)
    x[:16] = 1
    result(
        check="vllm_oom",
        wake_error=f"{type(err).__name__}: {str(err)[:400]}" if err else None,
        big_stayed_asleep=state["vllm:big"],
        default_woke=not state["vllm:default"],
        small_restored=bool((small == 5).all()),
        big_woke_after_retry=not gpu_arena.tags()["vllm:big"],
    )
    assert isinstance(err, RuntimeError), err
    assert state["vllm:big"] and not state["vllm:default"]
    assert bool((small == 5).all())
    assert not gpu_arena.tags()["vllm:big"]


CHECKS = {f.__name__: f for f in (basic, autograd_tags, sleep_wake, graphs, vllm_sequence, vllm_oom)}

if __name__ == "__main__":
    name = sys.argv[1]
    if name not in CHECKS:
        sys.exit(f"unknown check {name}; one of {sorted(CHECKS)}")
    CHECKS[name]()
    print(f"check {name}: passed", flush=True)
