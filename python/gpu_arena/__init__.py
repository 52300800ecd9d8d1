"""gpu-arena: a GPU memory allocator over virtual memory management.

One virtual address reservation per device; physical memory committed
lazily and given back without synchronizing the device; tagged arenas that
sleep (give all their physical memory back, offloading or discarding the
contents) and wake at the same addresses.

This package works without PyTorch::

    import gpu_arena
    gpu_arena.configure("backend:host")          # or GPU_ARENA_CONF; optional
    with gpu_arena.tag("weights"):
        p = gpu_arena.alloc(1 << 20)             # raw device (here: host) memory
    gpu_arena.sleep(offload=("weights",))
    gpu_arena.wake()
    gpu_arena.free(p)

With PyTorch, ``gpu_arena.torch.enable()`` makes it PyTorch's allocator
(see :mod:`gpu_arena.torch`); :mod:`gpu_arena.vllm` and
:mod:`gpu_arena.memory_saver` offer the call names of vLLM's
``CuMemAllocator`` and SGLang's ``torch_memory_saver``.

The process-wide arenas are configured once, before their first use, from
the string given to :func:`configure` / ``gpu_arena.torch.enable(conf)`` or
from the ``GPU_ARENA_CONF`` environment variable (``key:value`` pairs, e.g.
``limit:60GiB,decay_ms:5000``); an unknown key raises :class:`ConfigError`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _native
from ._native import (
    AsleepError,
    BadPointerError,
    ConfigError,
    DriverError,
    GpuArenaError,
    OutOfMemoryError,
    UnknownTagError,
)

__version__ = "0.1.0"

__all__ = [
    "AsleepError",
    "BadPointerError",
    "ConfigError",
    "DriverError",
    "GpuArenaError",
    "OutOfMemoryError",
    "UnknownTagError",
    "accounting",
    "alloc",
    "backend",
    "check_config",
    "configure",
    "current_tag",
    "devices",
    "free",
    "library_path",
    "memory_summary",
    "prepare_offload",
    "set_tag_limit",
    "sleep",
    "snapshot",
    "stats",
    "tag",
    "tags",
    "trim",
    "wake",
]

Tags = Union[str, Iterable[str], None]


def library_path() -> str:
    """Path of the shared object that is both this package's extension
    module and the library exporting gpu-arena's C ABI
    (``gpu_arena_torch_alloc``, ``gpu_arena_torch_free``, ...)."""
    return _native.__file__


def check_config(conf: str) -> None:
    """Raises :class:`ConfigError` if ``conf`` is not a valid
    ``GPU_ARENA_CONF`` string; applies nothing."""
    _native.parse_config(conf)


def configure(conf: Optional[str] = None) -> None:
    """Configures the process-wide arenas and creates device 0's arena.

    ``conf`` is a ``GPU_ARENA_CONF`` string; ``None`` reads the environment
    variable (or takes the defaults). Call it before the first allocation;
    a later call must name the same configuration, else
    :class:`ConfigError`. Without a call, the first use configures from the
    environment.
    """
    _native.configure(conf)


def devices() -> List[int]:
    """The devices whose arena exists."""
    return list(_native.devices())


def backend(device: int = 0) -> str:
    """The backend serving ``device``: ``"cuda"``, ``"hip"`` or ``"host"``."""
    return _native.backend(device)


def tags(device: int = 0) -> Dict[str, bool]:
    """Every tag of ``device`` and whether it is asleep, in creation order."""
    return _tag_states(device)


def _tag_states(device: int) -> Dict[str, bool]:
    return dict(_native.tags(device))


def current_tag() -> str:
    """The tag the calling thread allocates in now."""
    return _native.current_tag()


@contextlib.contextmanager
def tag(name: str, process: bool = True) -> Iterator[str]:
    """Routes allocations made inside the block to the tagged arena ``name``
    (created on first use).

    The calling thread allocates in ``name`` until the block ends. With
    ``process=True`` (the default), so does every thread that has not
    chosen a tag of its own: the threads a framework starts by itself, such
    as PyTorch's autograd threads, which run backward passes. Threads
    inside a ``tag`` block of their own keep theirs. There is one
    process-wide tag: blocks entered on several threads at once with
    ``process=True`` replace it in turn, each restoring at exit what it
    found at entry; pass ``process=False`` to route the calling thread only
    (what vLLM's ``use_memory_pool`` does).

    Blocks nest; leaving one restores the tags it replaced. Yields ``name``.
    """
    token = _native.enter_tag(name, process)
    try:
        yield name
    finally:
        _native.exit_tag(token)


def _names(t: Tags) -> Tuple[str, ...]:
    if t is None:
        return ()
    if isinstance(t, str):
        return (t,)
    return tuple(t)


def _stream(device: int, stream: Optional[int]) -> int:
    if stream is not None:
        return int(stream)
    from . import torch as _t

    return _t._current_stream(device)


def _devices(device: Optional[int]) -> List[int]:
    if device is not None:
        return [device]
    return devices() or [0]


def _add(total: Dict[str, float], r: Dict[str, float]) -> None:
    for k, v in r.items():
        total[k] = total.get(k, 0) + v


def sleep(
    offload: Tags = (),
    discard: Tags = (),
    *,
    device: Optional[int] = None,
    stream: Optional[int] = None,
) -> Dict[str, Dict[str, float]]:
    """Puts tags to sleep: their physical memory goes back to the device
    while every address stays valid for after :func:`wake`.

    ``offload`` tags have their contents copied to pinned host memory and
    restored on wake; ``discard`` tags lose them (woken memory is
    unspecified on a GPU, zero on the host backend). Sleep first waits for
    the work queued on the streams the tags' memory was used on and on
    ``stream`` (default: PyTorch's current stream where gpu-arena is
    PyTorch's allocator, else the default stream) — never on the whole
    device. Allocating in a sleeping tag raises :class:`AsleepError`
    (PyTorch reports it as an allocation failure); freeing is served (a
    tensor dropped while its tag sleeps): the freed bytes leave the stats
    at once and are neither recommitted nor restored by the wake.

    ``device=None`` means every device with an arena. A name that is no tag
    raises :class:`UnknownTagError` before anything sleeps; tags already
    asleep are left as they are. Returns what was done:
    ``{"offload": {...}, "discard": {...}}`` with ``bytes`` given back,
    ``copied`` bytes and seconds.
    """
    off, dis = _names(offload), _names(discard)
    both = set(off) & set(dis)
    if both:
        raise ValueError(f"tags both offloaded and discarded: {sorted(both)}")
    if not off and not dis:
        raise ValueError("name the tags to sleep: sleep(offload=(...), discard=(...))")
    devs = _devices(device)
    _check_known(off + dis, devs)
    out: Dict[str, Dict[str, float]] = {"offload": {}, "discard": {}}
    for d in devs:
        have = set(_tag_states(d))
        s = _stream(d, stream)
        for kind, names in (("offload", off), ("discard", dis)):
            here = [n for n in names if n in have]
            if here:
                _add(out[kind], _native.sleep(d, here, kind == "offload", s))
    return out


def wake(
    tags: Tags = None,
    *,
    device: Optional[int] = None,
    stream: Optional[int] = None,
) -> Dict[str, float]:
    """Wakes tags at the same addresses, restoring offloaded contents.

    ``tags=None`` wakes every sleeping tag. ``device=None`` means every
    device with an arena. A name that is no tag raises
    :class:`UnknownTagError` before anything wakes; on another error (out
    of memory, say) the failing tag stays asleep and consistent, and a
    later wake may succeed. Returns ``bytes`` recommitted, ``copied`` bytes
    and seconds.
    """
    names = _names(tags)
    devs = _devices(device)
    if names:
        _check_known(names, devs)
    out: Dict[str, float] = {}
    for d in devs:
        state = _tag_states(d)
        here = [n for n in names if n in state] if names else [n for n, a in state.items() if a]
        if here:
            _add(out, _native.wake(d, here, _stream(d, stream)))
    return out


def _check_known(names: Sequence[str], devs: Sequence[int]) -> None:
    known = set()
    for d in devs:
        known.update(_tag_states(d))
    for n in names:
        if n not in known:
            # The crate's own error and message.
            _native.sleep(devs[0], [n], False, 0)


def prepare_offload(
    tags: Tags,
    *,
    device: Optional[int] = None,
    background: bool = True,
) -> float:
    """Obtains ahead the pinned host memory that offloading ``tags`` will
    need, so that even their first :func:`sleep` with ``offload`` runs at
    copy speed: pinning host memory is the slow part of a first offload
    (seconds for tens of GiB). Call it once the tags hold what they will
    offload, e.g. right after loading a model's weights.

    With ``background`` (the default) it returns at once and a thread of
    its own pins the memory while the program goes on; an offloading sleep
    waits for that thread first. Otherwise it returns when done. The
    arena's locks are not held while memory is pinned, so allocations go
    on either way. The memory is kept across cycles (``stats()["stats"]
    ["staged"]``) until :func:`trim`. A name that is no tag raises
    :class:`UnknownTagError`. Returns the seconds spent (0 in background).
    """
    names = _names(tags)
    devs = _devices(device)
    _check_known(names, devs)
    secs = 0.0
    for d in devs:
        have = set(_tag_states(d))
        here = [n for n in names if n in have]
        if here:
            secs += _native.prepare_offload(d, here, background)
    return secs


def trim(device: Optional[int] = None) -> int:
    """Gives back every empty page whose work completed (and the pinned
    staging memory kept from the last offload); returns the bytes."""
    return sum(_native.trim(d) for d in _devices(device))


def set_tag_limit(tag: str, limit: Optional[int], device: int = 0) -> None:
    """Caps the physical memory tag ``tag`` may commit (bytes; ``None``:
    no cap). Creates the tag if needed."""
    _native.set_tag_limit(tag, limit, device)


def stats(device: int = 0) -> Dict[str, Any]:
    """Counters of ``device``: ``stats`` (reserved, committed, live, peaks,
    pending, per policy, driver calls, ...), ``peak_ratio``, ``backend``
    and ``tags`` (the same per tag, with ``asleep``)."""
    return json.loads(_native.stats_json(device))


def accounting(device: int = 0) -> Dict[str, Any]:
    """What an engine sizing its caches needs, exactly: ``total`` and per
    tag live, committed, reclaimable now, pending behind fences, limit, and
    the largest block that fits in committed memory."""
    return json.loads(_native.accounting_json(device))


def memory_summary(device: int = 0) -> str:
    """A human-readable table, like ``torch.cuda.memory_summary``."""
    from ._summary import summary

    return summary(stats(device), accounting(device))


def snapshot(device: Optional[int] = None, include_asleep: bool = False) -> Dict[str, Any]:
    """The arenas in the format of ``torch.cuda.memory._snapshot()``, which
    PyTorch's ``torch.cuda._memory_viz`` (and https://pytorch.org/memory_viz)
    renders.

    A segment is a run of committed pages of one tag's arena; its blocks are
    the live blocks there (``active_allocated``) and the gaps between them
    (``inactive``). Sleeping tags hold no physical memory and are left out
    unless ``include_asleep``. ``device_traces`` are empty: gpu-arena
    records no allocation history. Blocks kept in per-thread caches of
    small blocks count as allocated.
    """
    from ._snapshot import to_torch

    devs = _devices(device)
    return to_torch([json.loads(_native.snapshot_json(d)) for d in devs], include_asleep)


def alloc(size: int, device: int = 0, stream: int = 0) -> int:
    """Allocates ``size`` bytes (512-byte aligned) in the calling thread's
    tag; returns the address. For memory outside PyTorch."""
    return _native.alloc(size, device, stream)


def free(ptr: int, size: int = 0, device: int = 0, stream: int = 0) -> None:
    """Frees ``ptr`` (``size``: as allocated, or 0). Foreign, interior and
    double frees raise :class:`BadPointerError` and change nothing."""
    _native.free(ptr, size, device, stream)
