"""Tags: the calling thread's, and the process-wide one that threads
without their own follow (PyTorch's autograd threads)."""

import threading

import gpu_arena


def tag_of(ptr):
    """The tag whose segment holds ``ptr`` (from the snapshot)."""
    for seg in gpu_arena.snapshot()["segments"]:
        if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return seg["gpu_arena_tag"]
    return None


def in_thread(f):
    out = []
    t = threading.Thread(target=lambda: out.append(f()))
    t.start()
    t.join()
    return out[0]


def test_blocks_nest_and_restore():
    assert gpu_arena.current_tag() == "default"
    with gpu_arena.tag("weights") as name:
        assert name == "weights" and gpu_arena.current_tag() == "weights"
        with gpu_arena.tag("kv_cache"):
            assert gpu_arena.current_tag() == "kv_cache"
        assert gpu_arena.current_tag() == "weights"
    assert gpu_arena.current_tag() == "default"
    assert {"default", "weights", "kv_cache"} <= set(gpu_arena.tags())


def test_restored_after_an_exception():
    try:
        with gpu_arena.tag("weights"):
            raise KeyError
    except KeyError:
        pass
    assert gpu_arena.current_tag() == "default"
    assert in_thread(gpu_arena.current_tag) == "default"


def test_allocations_land_in_the_tag():
    with gpu_arena.tag("weights"):
        p = gpu_arena.alloc(3 << 20)
    q = gpu_arena.alloc(3 << 20)
    assert tag_of(p) == "weights" and tag_of(q) == "default"
    live = {t["tag"]: t["stats"]["live"] for t in gpu_arena.stats()["tags"]}
    assert live["weights"] >= 3 << 20
    gpu_arena.free(p)
    gpu_arena.free(q)


def test_threads_without_a_tag_follow_the_process_tag():
    def untagged():
        p = gpu_arena.alloc(2 << 20)
        return gpu_arena.current_tag(), p

    with gpu_arena.tag("weights"):
        name, p = in_thread(untagged)
    assert name == "weights" and tag_of(p) == "weights"
    gpu_arena.free(p)
    # After the block: default again, for every thread.
    assert in_thread(gpu_arena.current_tag) == "default"


def test_process_false_routes_this_thread_only():
    with gpu_arena.tag("weights", process=False):
        assert gpu_arena.current_tag() == "weights"
        assert in_thread(gpu_arena.current_tag) == "default"


def test_a_thread_with_its_own_tag_keeps_it():
    started, release = threading.Event(), threading.Event()
    seen = []

    def own():
        with gpu_arena.tag("kv_cache", process=False):
            started.set()
            release.wait(5)
            seen.append(gpu_arena.current_tag())

    t = threading.Thread(target=own)
    t.start()
    started.wait(5)
    with gpu_arena.tag("weights"):
        release.set()
        t.join()
    assert seen == ["kv_cache"]
