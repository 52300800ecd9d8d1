"""gpu-arena's snapshot (regions, committed pages, live blocks per tag and
shard) in the format of ``torch.cuda.memory._snapshot()``.

PyTorch's format (``torch/cuda/_memory_viz.py`` reads it)::

    {"segments": [{"device", "address", "total_size", "allocated_size",
                   "active_size", "requested_size", "stream",
                   "segment_type", "segment_pool_id", "is_expandable",
                   "frames", "blocks": [{"address", "size",
                   "requested_size", "state", "frames"}]}],
     "device_traces": [[...] per device]}

A PyTorch segment is memory obtained from the driver; its blocks tile it
exactly (``active_allocated`` or ``inactive``). Here a segment is a run of
committed pages of one arena, widened to cover any live block whose pages
are not committed (an arena asleep). Blocks tile each segment.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

SEGMENT_KEYS = (
    "device",
    "address",
    "total_size",
    "allocated_size",
    "active_size",
    "requested_size",
    "stream",
    "segment_type",
    "segment_pool_id",
    "is_expandable",
    "frames",
    "blocks",
)
BLOCK_KEYS = ("address", "size", "requested_size", "state", "frames")


def _runs(intervals: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Merges [start, end) intervals that overlap or touch."""
    out: List[List[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _shard_segments(device: int, tag: Dict[str, Any], shard: Dict[str, Any]) -> List[Dict[str, Any]]:
    base, page = shard["base"], shard["page"]
    spans = [(p["index"] * page, (p["index"] + 1) * page) for p in shard["pages"] if p["state"] != "free"]
    blocks = sorted((b["offset"], b["size"], b["policy"]) for b in shard["blocks"])
    for off, size, _ in blocks:
        spans.append((off // page * page, -(-(off + size) // page) * page))
    segments = []
    i = 0
    for start, end in _runs(spans):
        out_blocks: List[Dict[str, Any]] = []
        at = start
        allocated = 0
        small = True
        while i < len(blocks) and blocks[i][0] < end:
            off, size, policy = blocks[i]
            i += 1
            if off > at:
                out_blocks.append(_block(base + at, off - at, "inactive"))
            out_blocks.append(_block(base + off, size, "active_allocated"))
            allocated += size
            small &= policy == "slab"
            at = off + size
        if at < end:
            out_blocks.append(_block(base + at, end - at, "inactive"))
        segments.append(
            {
                "device": device,
                "address": base + start,
                "total_size": end - start,
                "allocated_size": allocated,
                "active_size": allocated,
                "requested_size": allocated,
                "stream": 0,
                "segment_type": "small" if small and allocated else "large",
                "segment_pool_id": (0, 0),
                "is_expandable": False,
                "frames": [],
                "blocks": out_blocks,
                # Not in PyTorch's format: which tagged arena, and its state.
                "gpu_arena_tag": tag["name"],
                "gpu_arena_asleep": tag["asleep"],
            }
        )
    return segments


def _block(address: int, size: int, state: str) -> Dict[str, Any]:
    return {
        "address": address,
        "size": size,
        "requested_size": size if state == "active_allocated" else 0,
        "state": state,
        "frames": [],
    }


def to_torch(devices: List[Dict[str, Any]], include_asleep: bool = False) -> Dict[str, Any]:
    """PyTorch's snapshot dict from the ``snapshot_json`` of each device."""
    segments: List[Dict[str, Any]] = []
    last = 0
    for dev in devices:
        d = dev["device"]
        last = max(last, d)
        for tag in dev["tags"]:
            if tag["asleep"] and not include_asleep:
                continue
            for shard in tag["shards"]:
                segments.extend(_shard_segments(d, tag, shard))
    return {"segments": segments, "device_traces": [[] for _ in range(last + 1)]}


def check(snap: Dict[str, Any]) -> None:
    """Raises ``ValueError`` unless ``snap`` has PyTorch's snapshot shape and
    the invariants ``torch.cuda._memory_viz`` relies on (blocks tile their
    segment; sizes add up)."""
    if set(snap) < {"segments", "device_traces"}:
        raise ValueError(f"missing keys: {sorted({'segments', 'device_traces'} - set(snap))}")
    for seg in snap["segments"]:
        missing = [k for k in SEGMENT_KEYS if k not in seg]
        if missing:
            raise ValueError(f"segment lacks {missing}")
        at = seg["address"]
        active = 0
        for b in seg["blocks"]:
            missing = [k for k in BLOCK_KEYS if k not in b]
            if missing:
                raise ValueError(f"block lacks {missing}")
            if b["state"] not in ("active_allocated", "inactive", "active_pending_free"):
                raise ValueError(f"block state {b['state']!r}")
            if b["address"] != at or b["size"] <= 0:
                raise ValueError(f"blocks do not tile segment {seg['address']:#x} at {at:#x}")
            if b["state"] == "active_allocated":
                active += b["size"]
            at += b["size"]
        if at != seg["address"] + seg["total_size"]:
            raise ValueError(f"blocks of segment {seg['address']:#x} end at {at:#x}")
        if active != seg["allocated_size"]:
            raise ValueError(f"allocated_size {seg['allocated_size']} != sum of active blocks {active}")
