"""snapshot(): PyTorch's `_snapshot()` format, checked without torch here
and with PyTorch's own `_memory_viz` where torch is installed."""

import pickle

import pytest

import gpu_arena
from gpu_arena._snapshot import check


@pytest.fixture
def blocks():
    with gpu_arena.tag("weights"):
        big = gpu_arena.alloc(5 << 20)
        small = [gpu_arena.alloc(300) for _ in range(3)]
    mid = gpu_arena.alloc(1 << 20)
    yield big, small, mid
    for p in [big, mid] + small:
        gpu_arena.free(p)


def segsum_invariants(snap):
    """What torch.cuda._memory_viz.segsum asserts, without torch."""
    total_reserved = total_allocated = free = 0
    for seg in snap["segments"]:
        total_reserved += seg["total_size"]
        allocated = sum(b["requested_size"] for b in seg["blocks"] if b["state"] == "active_allocated")
        internal = sum(b["size"] - b["requested_size"] for b in seg["blocks"] if b["state"] == "active_allocated")
        external = sum(b["size"] for b in seg["blocks"] if b["state"] != "active_allocated")
        assert allocated + internal + external == seg["total_size"]
        total_allocated += allocated
        free += internal + external
    assert total_allocated + free == total_reserved


def test_schema_and_blocks(blocks):
    big, small, mid = blocks
    snap = gpu_arena.snapshot()
    check(snap)
    segsum_invariants(snap)
    assert snap["device_traces"] == [[]]
    active = {b["address"]: b["size"] for s in snap["segments"] for b in s["blocks"] if b["state"] == "active_allocated"}
    assert active.get(big, 0) >= 5 << 20 and active.get(mid, 0) >= 1 << 20
    for p in small:
        assert p in active
    tags = {s["gpu_arena_tag"] for s in snap["segments"]}
    assert {"weights", "default"} <= tags
    committed = sum(s["total_size"] for s in snap["segments"])
    assert committed >= gpu_arena.stats()["stats"]["committed"] - gpu_arena.stats()["stats"]["pending_decommit"]
    pickle.loads(pickle.dumps(snap))  # memory_viz pickles it


def test_sleeping_tags_are_left_out_unless_asked(blocks):
    gpu_arena.sleep(offload="weights")
    try:
        assert all(s["gpu_arena_tag"] != "weights" for s in gpu_arena.snapshot()["segments"])
        snap = gpu_arena.snapshot(include_asleep=True)
        check(snap)
        assert any(s["gpu_arena_tag"] == "weights" and s["gpu_arena_asleep"] for s in snap["segments"])
    finally:
        gpu_arena.wake("weights")


def test_pytorch_memory_viz_renders_it(blocks):
    viz = pytest.importorskip("torch.cuda._memory_viz")
    snap = gpu_arena.snapshot()
    text = viz.segsum(snap)
    assert "total_reserved" in text
    viz.trace(snap)
    assert "stream_0" in viz.segments(snap, format_flamegraph=lambda lines: lines)
    assert "active_allocated" in viz.memory(snap, format_flamegraph=lambda lines: lines)
    if hasattr(viz, "segment_plot"):
        assert "<html>" in viz.segment_plot(snap).lower() or "html" in viz.segment_plot(snap).lower()
    assert "html" in viz.trace_plot(snap).lower()
