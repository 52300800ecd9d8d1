"""The holds that keep a CUDA graph's memory, driven here by hand on the
default stream (the host backend knows no other); test_cuda.py captures
real graphs."""

import pytest

import gpu_arena
from gpu_arena import _native

S = 0  # the "captured" stream


def live():
    gpu_arena.trim()  # gives this thread's cache of small blocks back
    return gpu_arena.stats()["stats"]["live"]


def test_frees_of_captured_blocks_wait_for_the_release():
    base = live()
    h = _native.graph_begin(0, S)
    a = gpu_arena.alloc(3 << 20, stream=S)
    b = gpu_arena.alloc(4096, stream=S)
    gpu_arena.free(a, stream=S)  # PyTorch frees a temporary during the capture
    with pytest.raises(gpu_arena.BadPointerError):
        gpu_arena.free(a, stream=S)
    _native.graph_end(h)
    c = gpu_arena.alloc(4096, stream=S)  # after the capture: not noted
    gpu_arena.free(c, stream=S)
    assert _native.graph_stats(h) == (2, (3 << 20) + 4096, 1, 3 << 20)
    assert live() >= base + (3 << 20) + 4096, "the freed block is still allocated"
    assert _native.graph_release(h) == 3 << 20
    assert _native.graph_stats(h) is None
    gpu_arena.free(b, stream=S)  # never freed while held: the ordinary path
    assert live() == base
    assert _native.graph_release(h) == 0
