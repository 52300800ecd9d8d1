"""stats(), accounting(), memory_summary() and the exceptions."""

import pytest

import gpu_arena


def test_stats_and_accounting_shape():
    p = gpu_arena.alloc(1 << 20)
    s = gpu_arena.stats()
    assert s["device"] == 0 and s["backend"] == gpu_arena.backend()
    for k in ("reserved", "committed", "live", "peak_live", "peak_committed", "pending_decommit", "slab", "large", "driver_calls"):
        assert k in s["stats"], k
    assert s["stats"]["live"] >= 1 << 20
    assert s["tags"][0]["tag"] == "default"
    a = gpu_arena.accounting()
    for k in ("live", "committed", "reclaimable", "pending", "limit", "largest_free_committed", "asleep"):
        assert k in a["total"], k
    gpu_arena.free(p)
    assert isinstance(gpu_arena.trim(), int)


def test_memory_summary_reads_like_pytorchs():
    text = gpu_arena.memory_summary()
    assert "gpu-arena memory summary, device 0" in text
    for row in ("Live (allocated) memory", "Committed (physical) memory", "Cur Usage", "Peak Usage", "| default"):
        assert row in text, row
    widths = {len(line) for line in text.splitlines()}
    assert len(widths) == 1, "a rectangular table"


def test_out_of_memory_names_the_tag():
    gpu_arena.set_tag_limit("capped", 8 << 20)
    with gpu_arena.tag("capped"):
        p = gpu_arena.alloc(6 << 20)
        with pytest.raises(gpu_arena.OutOfMemoryError) as e:
            gpu_arena.alloc(6 << 20)
    msg = str(e.value)
    assert "out of memory" in msg and "capped" in msg and "Hint:" in msg, msg
    assert isinstance(e.value, RuntimeError)
    gpu_arena.free(p)
    gpu_arena.set_tag_limit("capped", None)


def test_bad_pointers_and_sizes():
    p = gpu_arena.alloc(4096)
    gpu_arena.free(p)
    with pytest.raises(gpu_arena.BadPointerError, match="already freed"):
        gpu_arena.free(p)
    with pytest.raises(gpu_arena.BadPointerError, match="not allocated by this arena"):
        gpu_arena.free(0x1000)
    with pytest.raises(gpu_arena.GpuArenaError, match="zero-size"):
        gpu_arena.alloc(0)
    with pytest.raises(gpu_arena.UnknownTagError):
        gpu_arena.wake("nonesuch")
