"""``memory_summary()``: a text table in the manner of
``torch.cuda.memory_summary``."""

from __future__ import annotations

from typing import Any, Dict, List

W = 75


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _limit(n: int) -> str:
    return "none" if n >= (1 << 64) - 1 else _size(n)


def _row(*cells: str) -> str:
    widths = (29, 14, 14, 14)
    body = " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return f"| {body} |"


def summary(stats: Dict[str, Any], accounting: Dict[str, Any]) -> str:
    s = stats["stats"]
    acc = accounting["total"]
    rule = "|" + "=" * (len(_row("", "", "", "")) - 2) + "|"
    thin = "|" + "-" * (len(rule) - 2) + "|"
    lines: List[str] = [
        rule,
        "| " + f"gpu-arena memory summary, device {stats['device']} ({stats['backend']} backend)".center(len(rule) - 4) + " |",
        rule,
        _row("Metric", "Cur Usage", "Peak Usage", ""),
        thin,
        _row("Live (allocated) memory", _size(s["live"]), _size(s["peak_live"]), ""),
        _row("Committed (physical) memory", _size(s["committed"]), _size(s["peak_committed"]), ""),
        _row("Reserved address space", _size(s["reserved"]), "", ""),
        _row("Idle committed memory", _size(s["pending_decommit"]), "", ""),
        _row("  of which reclaimable now", _size(s["reclaimable"]), "", ""),
        _row("Largest free committed block", _size(acc["largest_free_committed"]), "", ""),
        _row("Live blocks: slab / large", f"{s['slab']['blocks']}", f"{s['large']['blocks']}", ""),
        _row("Physical handles / mappings", f"{s['handles']}", f"{s['mappings']}", ""),
        _row("Allocations / frees", f"{s['allocs']}", f"{s['frees']}", ""),
        _row("Pending fences", f"{s['pending_fences']}", "", ""),
        _row("Peak committed / peak live", f"{stats['peak_ratio']:.4f}", "", ""),
        rule,
        _row("Tag", "Live", "Committed", "Limit / state"),
        thin,
    ]
    limits = {t["tag"]: t["accounting"]["limit"] for t in accounting.get("tags", [])}
    for t in stats["tags"]:
        ts = t["stats"]
        state = "asleep" if t["asleep"] else _limit(limits.get(t["tag"], (1 << 64) - 1))
        lines.append(_row(t["tag"], _size(ts["live"]), _size(ts["committed"]), state))
    lines.append(rule)
    return "\n".join(lines) + "\n"
