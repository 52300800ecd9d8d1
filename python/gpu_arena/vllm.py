"""A drop-in for vLLM's ``CuMemAllocator`` (``vllm.device_allocator.cumem``)
on gpu-arena: the same call names and meanings, so an engine swaps it in
with one import::

    import gpu_arena.torch
    gpu_arena.torch.enable()                       # first thing in the process
    from gpu_arena.vllm import CuMemAllocator      # instead of vLLM's

    allocator = CuMemAllocator.get_instance()
    with allocator.use_memory_pool(tag="weights"):
        model = load_model()
    with allocator.use_memory_pool(tag="kv_cache"):
        cache = allocate_kv_cache()
    allocator.sleep(offload_tags=("weights",))     # weights to pinned host memory, the rest discarded
    allocator.wake_up()                            # same addresses; CUDA graphs replay as before
    allocator.get_current_usage()                  # bytes allocated in the pools

What differs from vLLM's: every allocation of the process goes through
gpu-arena, and only those made inside ``use_memory_pool`` belong to a pool
(gpu-arena tag ``vllm:<tag>``); the rest (gpu-arena's ``default`` tag) never
sleeps, as memory outside the pools is PyTorch's own under vLLM. Sleep and
wake cost per large physical handle, not per tensor, and no free
synchronizes the device (vLLM's free callback calls ``torch.cuda.synchronize``).
``sleep()`` runs no garbage collection (vLLM's runs it after unmapping): a
tensor freed while its pool sleeps, whenever the collector gets to it, is
freed at once and is not woken. To have even the first ``sleep`` offload
at copy speed, obtain the pinned host memory in the background once the
weights are loaded:
``gpu_arena.prepare_offload(CuMemAllocator.arena_tag("weights"))`` (vLLM
itself obtains it at every sleep; gpu-arena keeps it between cycles).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple, Union

import gpu_arena

__all__ = ["CuMemAllocator"]

PREFIX = "vllm:"


class CuMemAllocator:
    """vLLM's ``CuMemAllocator`` interface over gpu-arena's tags (a
    singleton, as vLLM's: use :meth:`get_instance`)."""

    instance: Optional["CuMemAllocator"] = None
    default_tag: str = "default"

    @staticmethod
    def get_instance() -> "CuMemAllocator":
        """The allocator; makes gpu-arena PyTorch's allocator if it is not
        yet (which must happen before the first CUDA tensor)."""
        if CuMemAllocator.instance is None:
            import gpu_arena.torch

            gpu_arena.torch.enable()
            CuMemAllocator.instance = CuMemAllocator()
        return CuMemAllocator.instance

    def __init__(self) -> None:
        self.current_tag: str = CuMemAllocator.default_tag
        self._tags: List[str] = []

    @staticmethod
    def arena_tag(tag: str) -> str:
        """The gpu-arena tag holding vLLM pool ``tag``."""
        return PREFIX + tag

    @contextlib.contextmanager
    def use_memory_pool(self, tag: Optional[str] = None) -> Iterator[None]:
        """Tensors created on the calling thread inside the block belong to
        pool ``tag`` (default ``"default"``)."""
        if tag is None:
            tag = CuMemAllocator.default_tag
        assert isinstance(tag, str)
        if tag not in self._tags:
            self._tags.append(tag)
        old = self.current_tag
        self.current_tag = tag
        try:
            with gpu_arena.tag(self.arena_tag(tag), process=False):
                yield
        finally:
            self.current_tag = old

    def sleep(self, offload_tags: Union[Tuple[str, ...], str, None] = None) -> None:
        """Puts every pool to sleep: ``offload_tags`` (default: the default
        pool) keep their contents in pinned host memory, the others are
        discarded. Addresses stay valid."""
        if offload_tags is None:
            offload_tags = (CuMemAllocator.default_tag,)
        elif isinstance(offload_tags, str):
            offload_tags = (offload_tags,)
        assert isinstance(offload_tags, tuple)
        # No garbage collection here (vLLM's own allocator collects after
        # unmapping, and this adapter did before sleeping until 2026-11-28:
        # about 65 ms of a 64 GiB KV cache's sleep). A tensor that only a
        # reference cycle holds is freed whenever the collector runs, asleep
        # or not: a sleeping pool serves frees, and the wake neither
        # recommits nor restores its pages.
        known = self._known()
        offload = [self.arena_tag(t) for t in known if t in offload_tags]
        discard = [self.arena_tag(t) for t in known if t not in offload_tags]
        if offload or discard:
            gpu_arena.sleep(offload=offload, discard=discard)

    def wake_up(self, tags: Optional[List[str]] = None) -> None:
        """Wakes the pools in ``tags`` (default: all), restoring offloaded
        contents. On failure (out of memory, say) the failing pool stays
        asleep and the exception, a ``RuntimeError``, propagates."""
        names = [self.arena_tag(t) for t in self._known() if tags is None or t in tags]
        if names:
            gpu_arena.wake(names)

    def get_current_usage(self) -> int:
        """Bytes allocated in the pools (asleep or not)."""
        total = 0
        for d in gpu_arena.devices():
            for t in gpu_arena.stats(d)["tags"]:
                if t["tag"].startswith(PREFIX):
                    total += t["stats"]["live"]
        return total

    def _known(self) -> List[str]:
        """Pools that exist in gpu-arena (something was allocated in them)."""
        have = set()
        for d in gpu_arena.devices():
            have.update(gpu_arena.tags(d))
        return [t for t in self._tags if self.arena_tag(t) in have]
