"""SGLang's ``torch_memory_saver`` call names on gpu-arena::

    import gpu_arena.torch
    gpu_arena.torch.enable()
    from gpu_arena.memory_saver import torch_memory_saver

    with torch_memory_saver.region(tag="weights", enable_cpu_backup=True):
        model = load_model()
    with torch_memory_saver.region(tag="kv_cache"):
        cache = allocate_kv_cache()
    torch_memory_saver.pause()            # all regions; or pause("kv_cache")
    torch_memory_saver.resume()

A region is the gpu-arena tag ``tms:<tag>``; ``enable_cpu_backup`` makes
pause offload it to pinned host memory instead of discarding it, and the
pinned memory is obtained in the background when such a region's block
ends (:func:`gpu_arena.prepare_offload`), so that even the first pause
copies at full speed.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional

import gpu_arena

__all__ = ["TorchMemorySaver", "torch_memory_saver"]

PREFIX = "tms:"


class TorchMemorySaver:
    """``region`` / ``pause`` / ``resume`` over gpu-arena's tags."""

    def __init__(self) -> None:
        self._backup: Dict[str, bool] = {}

    @property
    def enabled(self) -> bool:
        import gpu_arena.torch

        return gpu_arena.torch.is_enabled()

    @contextlib.contextmanager
    def region(self, tag: str = "default", enable_cpu_backup: bool = False) -> Iterator[None]:
        """Tensors created on the calling thread inside the block belong to
        region ``tag``."""
        self._backup[tag] = self._backup.get(tag, False) or enable_cpu_backup
        with gpu_arena.tag(PREFIX + tag, process=False):
            yield
        if enable_cpu_backup and PREFIX + tag in self._held():
            # What the region now holds is what pause will offload.
            gpu_arena.prepare_offload(PREFIX + tag, background=True)

    def pause(self, tag: Optional[str] = None) -> None:
        """Gives the regions' memory back (``tag``, or all)."""
        names = self._existing(tag)
        if names:
            gpu_arena.sleep(
                offload=[PREFIX + t for t in names if self._backup[t]],
                discard=[PREFIX + t for t in names if not self._backup[t]],
            )

    def resume(self, tag: Optional[str] = None) -> None:
        """Brings the regions back at the same addresses (``tag``, or all)."""
        names = self._existing(tag)
        if names:
            gpu_arena.wake([PREFIX + t for t in names])

    @staticmethod
    def _held() -> set:
        have = set()
        for d in gpu_arena.devices():
            have.update(gpu_arena.tags(d))
        return have

    def _existing(self, tag: Optional[str]) -> list:
        have = self._held()
        names = [t for t in self._backup if PREFIX + t in have]
        if tag is not None:
            if tag not in names:
                raise gpu_arena.UnknownTagError(f"no memory-saver region `{tag}` holds memory")
            names = [tag]
        return names


torch_memory_saver = TorchMemorySaver()
