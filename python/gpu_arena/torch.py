"""gpu-arena as PyTorch's CUDA allocator.

::

    import gpu_arena.torch
    gpu_arena.torch.enable()                  # before the first CUDA tensor
    import torch
    with gpu_arena.torch.tag("weights"):
        model = build_model().cuda()
    with gpu_arena.torch.tag("kv_cache"):
        cache = torch.empty(..., device="cuda")
    gpu_arena.sleep(offload=("weights",), discard=("kv_cache", "default"))
    ...                                       # the GPU is free for something else
    gpu_arena.wake()                          # same addresses: model and cache work again

Importing this module does not import PyTorch; :func:`enable` does.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Optional

from . import _native, tag  # noqa: F401  (tag: re-exported as gpu_arena.torch.tag)

__all__ = ["enable", "graph_memory", "is_enabled", "library_path", "tag"]

_lock = threading.Lock()
_enabled = False
_graphs = False


def library_path() -> str:
    """The shared object PyTorch loads: this package's extension module,
    which exports ``gpu_arena_torch_alloc`` and ``gpu_arena_torch_free``."""
    return _native.__file__


def is_enabled() -> bool:
    """Whether :func:`enable` made gpu-arena PyTorch's allocator."""
    return _enabled


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "gpu_arena.torch needs PyTorch (pip install torch); "
            "the rest of gpu_arena works without it"
        ) from e
    return torch


def enable(conf: Optional[str] = None, *, graphs: bool = True) -> None:
    """Makes gpu-arena PyTorch's CUDA allocator for this process.

    ``conf`` configures the process-wide arenas like ``GPU_ARENA_CONF``
    (``None``: that variable, or the defaults). Call it before the first
    CUDA tensor: PyTorch refuses to swap an allocator it has used. Calling
    it again does nothing (a different ``conf`` raises
    :class:`gpu_arena.ConfigError`).

    With ``graphs=True``, CUDA graphs captured from now on keep the memory
    their capture allocated (see :mod:`gpu_arena.torch` docs: "CUDA
    graphs"): ``torch.cuda.CUDAGraph`` is wrapped so that blocks allocated
    on the captured stream stay allocated, even once PyTorch frees them,
    until the graph is reset or garbage-collected.
    """
    global _enabled
    torch = _torch()
    with _lock:
        _native.configure(conf)
        if _enabled:
            return
        if _native.backend(0) not in ("cuda", "hip") and torch.cuda.is_available():
            raise _native.ConfigError(
                f"gpu-arena runs on the {_native.backend(0)} backend, whose memory CUDA kernels "
                "cannot use: configure backend:cuda (or hip, or auto) for PyTorch"
            )
        alloc = torch.cuda.memory.CUDAPluggableAllocator(
            library_path(), _native.TORCH_ALLOC, _native.TORCH_FREE
        )
        try:
            torch.cuda.memory.change_current_allocator(alloc)
        except RuntimeError as e:
            raise RuntimeError(
                f"{e}: call gpu_arena.torch.enable() before the first CUDA tensor of the process"
            ) from e
        _enabled = True
        if graphs:
            _wrap_graphs(torch)


def _current_stream(device: int) -> int:
    """PyTorch's current stream on ``device`` where gpu-arena is its
    allocator (and CUDA is initialized), else 0 (the default stream)."""
    if not _enabled:
        return 0
    import torch

    try:
        return int(torch.cuda.current_stream(device).cuda_stream)
    except Exception:
        return 0


# --- CUDA graphs -------------------------------------------------------------
#
# A graph's replays touch the addresses its capture allocated. PyTorch's own
# allocator keeps them in a private pool; a pluggable allocator is told
# nothing. So capture_begin starts a hold in gpu-arena for the captured
# stream (frees of blocks allocated there are deferred), capture_end stops
# noting, and reset() or the graph's garbage collection releases the hold:
# the device's queued work is waited for (a replay may still run), then the
# deferred blocks are freed.


def _release(hold: int) -> None:
    try:
        import torch

        torch.cuda.synchronize()
    except Exception:
        pass
    try:
        _native.graph_release(hold)
    except Exception as e:  # in a finalizer: report, never raise
        import sys

        print(f"gpu-arena: releasing a CUDA graph's memory failed: {e}", file=sys.stderr)


def _wrap_graphs(torch: Any) -> None:
    global _graphs
    if _graphs:
        return
    G = torch.cuda.CUDAGraph
    begin, end, reset = G.capture_begin, G.capture_end, G.reset

    def capture_begin(self: Any, *args: Any, **kwargs: Any) -> Any:
        device = torch.cuda.current_device()
        hold = _native.graph_begin(device, int(torch.cuda.current_stream(device).cuda_stream))
        try:
            r = begin(self, *args, **kwargs)
        except BaseException:
            _native.graph_end(hold)
            _native.graph_release(hold)
            raise
        old = getattr(self, "_gpu_arena_release", None)
        if old is not None:
            old()
        self._gpu_arena_hold = hold
        self._gpu_arena_release = weakref.finalize(self, _release, hold)
        return r

    def capture_end(self: Any) -> Any:
        try:
            return end(self)
        finally:
            hold = getattr(self, "_gpu_arena_hold", None)
            if hold is not None:
                _native.graph_end(hold)

    def reset_(self: Any) -> Any:
        r = reset(self)
        fin = getattr(self, "_gpu_arena_release", None)
        if fin is not None:
            fin()
        return r

    capture_begin.__doc__ = begin.__doc__
    capture_end.__doc__ = end.__doc__
    reset_.__doc__ = reset.__doc__
    G.capture_begin, G.capture_end, G.reset = capture_begin, capture_end, reset_
    _graphs = True


def graph_memory(graph: Any) -> Optional[dict]:
    """What gpu-arena keeps for a captured ``torch.cuda.CUDAGraph``:
    ``blocks`` / ``bytes`` allocated by its capture and ``deferred_blocks``
    / ``deferred_bytes`` of them that PyTorch already freed (kept until the
    graph is reset). ``None`` for a graph gpu-arena holds nothing for."""
    hold = getattr(graph, "_gpu_arena_hold", None)
    s = _native.graph_stats(hold) if hold is not None else None
    if s is None:
        return None
    return dict(zip(("blocks", "bytes", "deferred_blocks", "deferred_bytes"), s))
