"""Sleep and wake on the host backend: contents, addresses, errors."""

import ctypes

import pytest

import gpu_arena


def fill(ptr, n, byte):
    ctypes.memset(ptr, byte, n)


def read(ptr, n):
    return ctypes.string_at(ptr, n)


def test_offload_keeps_contents_and_discard_zeroes(host):
    with gpu_arena.tag("weights"):
        w = gpu_arena.alloc(6 << 20)
        small = gpu_arena.alloc(200)
    with gpu_arena.tag("kv_cache"):
        kv = gpu_arena.alloc(4 << 20)
    fill(w, 6 << 20, 0x5A)
    fill(small, 200, 0x33)
    fill(kv, 4 << 20, 0x77)
    r = gpu_arena.sleep(offload=("weights",), discard="kv_cache")
    assert r["offload"]["copied"] >= 6 << 20 and r["discard"]["bytes"] >= 4 << 20
    assert gpu_arena.tags()["weights"] and gpu_arena.tags()["kv_cache"]
    acc = {t["tag"]: t["accounting"] for t in gpu_arena.accounting()["tags"]}
    assert acc["weights"]["committed"] == 0 and acc["weights"]["asleep"]
    r = gpu_arena.wake()  # every sleeping tag
    assert r["bytes"] >= 10 << 20
    assert not any(gpu_arena.tags().values())
    assert read(w, 6 << 20) == b"\x5a" * (6 << 20), "same address, same bytes"
    assert read(small, 200) == b"\x33" * 200
    assert read(kv, 4 << 20) == b"\0" * (4 << 20), "discarded: zero on the host backend"
    for p in (w, small, kv):
        gpu_arena.free(p)


def stats_of(tag):
    return next(t["stats"] for t in gpu_arena.stats()["tags"] if t["tag"] == tag)


def test_pinned_memory_obtained_ahead_serves_the_first_offload(host):
    with gpu_arena.tag("loaded"):
        w = gpu_arena.alloc(5 << 20)
    fill(w, 5 << 20, 0x6B)
    assert gpu_arena.prepare_offload("loaded") == 0.0, "in the background by default"
    r = gpu_arena.sleep(offload="loaded")  # waits for that thread first
    assert r["offload"]["stage_seconds"] == 0.0, "the sleep pinned nothing itself"
    assert r["offload"]["copied"] >= 5 << 20
    gpu_arena.wake("loaded")
    assert read(w, 5 << 20) == b"\x6b" * (5 << 20)
    assert stats_of("loaded")["staged"] >= 5 << 20, "kept for the next cycle"
    # Enough is held: nothing more to obtain, now or in the background.
    assert gpu_arena.prepare_offload("loaded", background=False) == 0.0
    gpu_arena.trim()
    assert stats_of("loaded")["staged"] == 0, "trim gives it back"
    assert gpu_arena.prepare_offload("loaded", background=False) > 0.0
    with pytest.raises(gpu_arena.UnknownTagError):
        gpu_arena.prepare_offload(("loaded", "nonesuch"))
    gpu_arena.free(w)


def test_a_sleeping_tag_refuses_allocations_and_serves_frees():
    with gpu_arena.tag("kv_cache"):
        p = gpu_arena.alloc(1 << 20)
        q = gpu_arena.alloc(1 << 20)
    gpu_arena.sleep(discard=["kv_cache"])
    with gpu_arena.tag("kv_cache"):
        with pytest.raises(gpu_arena.AsleepError, match="kv_cache"):
            gpu_arena.alloc(100)
    live = stats_of("kv_cache")["live"]
    gpu_arena.free(p)  # a tensor dropped while its tag sleeps
    assert stats_of("kv_cache")["live"] == live - (1 << 20)
    with pytest.raises(gpu_arena.BadPointerError):
        gpu_arena.free(p)
    gpu_arena.sleep(discard=["kv_cache"])  # already asleep: nothing happens
    gpu_arena.wake("kv_cache")
    assert stats_of("kv_cache")["live"] == live - (1 << 20)
    gpu_arena.free(q)


def test_unknown_tags_change_nothing():
    with gpu_arena.tag("weights"):
        p = gpu_arena.alloc(1 << 20)
    with pytest.raises(gpu_arena.UnknownTagError, match="no tag named `nonesuch`"):
        gpu_arena.sleep(offload=("weights", "nonesuch"))
    assert not gpu_arena.tags()["weights"], "nothing slept"
    with pytest.raises(gpu_arena.UnknownTagError):
        gpu_arena.wake(["nonesuch"])
    assert "nonesuch" not in gpu_arena.tags()
    gpu_arena.free(p)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="name the tags"):
        gpu_arena.sleep()
    with pytest.raises(ValueError, match="both"):
        gpu_arena.sleep(offload="weights", discard=("weights",))
    assert gpu_arena.wake() == {}, "nothing asleep: nothing to do"
