"""The vLLM `CuMemAllocator` and SGLang `torch_memory_saver` adapters on the
host backend, with raw allocations in place of tensors (test_cuda.py runs
vLLM's own test sequence with tensors on a GPU)."""

import ctypes
import gc

import pytest

import gpu_arena
from gpu_arena.memory_saver import TorchMemorySaver
from gpu_arena.vllm import CuMemAllocator


def test_cumem_allocator_sequence(host):
    allocator = CuMemAllocator()  # get_instance() also enables PyTorch's side
    outside = gpu_arena.alloc(1 << 20)
    ctypes.memset(outside, 1, 1 << 20)
    with allocator.use_memory_pool():
        assert allocator.current_tag == "default"
        assert gpu_arena.current_tag() == "vllm:default"
        w = gpu_arena.alloc(2 << 20)
    with allocator.use_memory_pool(tag="discard"):
        cache = gpu_arena.alloc(1 << 20)
    assert allocator.current_tag == "default" and gpu_arena.current_tag() == "default"
    ctypes.memset(w, 7, 2 << 20)
    ctypes.memset(cache, 9, 1 << 20)
    assert allocator.get_current_usage() >= 3 << 20

    allocator.sleep()  # the default pool offloaded, "discard" discarded
    state = gpu_arena.tags()
    assert state["vllm:default"] and state["vllm:discard"]
    assert not state["default"], "memory outside the pools never sleeps"
    assert allocator.get_current_usage() >= 3 << 20, "usage counts sleeping pools"
    allocator.wake_up()
    assert ctypes.string_at(w, 2 << 20) == b"\7" * (2 << 20)
    assert ctypes.string_at(outside, 1 << 20) == b"\1" * (1 << 20)
    # Discarded pools come back usable.
    ctypes.memset(cache, 3, 1 << 20)
    assert ctypes.string_at(cache, 16) == b"\3" * 16

    allocator.sleep(offload_tags="discard")
    allocator.wake_up(tags=["default"])
    assert gpu_arena.tags()["vllm:discard"] and not gpu_arena.tags()["vllm:default"]
    allocator.wake_up()
    assert ctypes.string_at(cache, 16) == b"\3" * 16, "offloaded this time"
    for p in (w, cache, outside):
        gpu_arena.free(p)


class _Cycle:
    """Holds a raw allocation as a tensor would, freed when collected; it
    refers to itself, so only the garbage collector frees it."""

    def __init__(self, p):
        self.p, self.me = p, self

    def __del__(self):
        gpu_arena.free(self.p)


def test_cumem_allocator_garbage_collected_while_asleep_is_freed(host):
    allocator = CuMemAllocator()
    gc.disable()  # the cycle must still be garbage when sleep() runs
    try:
        with allocator.use_memory_pool(tag="cycles"):
            keep = gpu_arena.alloc(1 << 20)
            _Cycle(gpu_arena.alloc(4 << 20))
        before = allocator.get_current_usage()
        allocator.sleep(offload_tags=("cycles",))
        assert allocator.get_current_usage() == before, "sleep() collects nothing"
        gc.collect()  # the collector frees the cycle's block while its pool sleeps
        assert before - allocator.get_current_usage() == 4 << 20
        allocator.wake_up()
        assert before - allocator.get_current_usage() == 4 << 20
    finally:
        gc.enable()
    gpu_arena.free(keep)


def test_memory_saver_regions(host):
    saver = TorchMemorySaver()
    with saver.region("weights", enable_cpu_backup=True):
        w = gpu_arena.alloc(1 << 20)
    with saver.region("kv"):
        kv = gpu_arena.alloc(1 << 20)
    ctypes.memset(w, 5, 1 << 20)
    # A backed-up region's pinned memory was obtained when its block ended
    # (in the background; an offloading sleep waits for that first).
    r = gpu_arena.sleep(offload="tms:weights")
    assert r["offload"]["stage_seconds"] == 0.0 and r["offload"]["copied"] >= 1 << 20
    gpu_arena.wake("tms:weights")
    saver.pause("kv")
    assert gpu_arena.tags()["tms:kv"] and not gpu_arena.tags()["tms:weights"]
    saver.pause()
    assert gpu_arena.tags()["tms:weights"]
    saver.resume()
    assert ctypes.string_at(w, 1 << 20) == b"\5" * (1 << 20)
    with pytest.raises(gpu_arena.UnknownTagError):
        saver.pause("nonesuch")
    gpu_arena.free(w)
    gpu_arena.free(kv)
