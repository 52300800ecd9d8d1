"""A picture of the logs of scripts/torch_alternate.sh (or torch_four.sh): one column per workload,
one row per figure of the goals, every repetition on the x axis.

usage: python3 scripts/torch_report_svg.py OUT.svg LOG...   (needs matplotlib: `pip install --target DIR
       matplotlib`, then PYTHONPATH=DIR)

Rows: peak physical / peak live (highest over processes; the goal's 1.02 dashed), VMM driver calls per
1000 allocations (highest over processes; the goal's 1 dashed), the repetition's time (median over
processes, min-max shaded) and gpu-arena's own time per allocator call (median, min-max shaded; the
goal's 0.3 us dashed). PyTorch's default allocator in grey, each gpu-arena label in colour. The figures
are those of scripts/torch_report.py's tables (same parsing), drawn."""
import math
import statistics as st
import sys

import matplotlib

matplotlib.use("svg")
# Fixed ids in the file: the same logs give the same bytes.
matplotlib.rcParams["svg.hashsalt"] = "gpu-arena"
import matplotlib.pyplot as plt  # noqa: E402

from torch_report import labels, load, ordered  # noqa: E402

ROWS = [
    # (title, value of one repetition record or None, how processes combine, goal, y scale, ticks of a
    # log scale: those within the row's range are shown, as plain numbers)
    ("peak physical / peak live", lambda r: r["ratio"], "max", 1.02, "log", [1, 1.02, 1.05, 1.1, 1.2, 1.5, 2, 3]),
    ("VMM calls per 1000 allocations", lambda r: r["driver_calls"] * 1000 / max(r["allocs"], 1), "max", 1.0,
     "symlog", None),
    ("time of the repetition (s)", lambda r: r["time_s"], "band", None, "linear", None),
    ("allocator time per call (µs)", lambda r: r.get("us_per_call"), "band", 0.3, "log",
     [0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 20, 50]),
]


def spaced(ticks, lo, hi):
    """The ticks within lo..hi, each at least 6 % of the axis (log scale) above the last one kept."""
    span = math.log(hi / lo)
    kept = []
    for t in ticks:
        if lo <= t <= hi and (not kept or math.log(t / kept[-1]) > 0.06 * span):
            kept.append(t)
    return kept


def series(procs, value, how):
    """Per repetition: (x, centre, low, high) over the processes that have it."""
    n = max(len(p) for p in procs)
    out = []
    for i in range(n):
        xs = [value(p[i]) for p in procs if len(p) > i]
        xs = [x for x in xs if x is not None]
        if not xs:
            continue
        centre = max(xs) if how == "max" else st.median(xs)
        out.append((i + 1, centre, min(xs), max(xs)))
    return out


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    runs = load(paths)
    workloads = ordered({w for w, _ in runs})
    fig, axes = plt.subplots(len(ROWS), len(workloads), figsize=(4.2 * len(workloads), 2.9 * len(ROWS)),
                             squeeze=False)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for col, w in enumerate(workloads):
        allocs = labels(runs, w)
        for row, (title, value, how, goal, scale, ticks) in enumerate(ROWS):
            ax = axes[row][col]
            for k, a in enumerate(allocs):
                procs = [p for p in runs.get((w, a), []) if p]
                if not procs:
                    continue
                pts = series(procs, value, how)
                if not pts:
                    continue
                colour = "grey" if a == "default" else colours[(k - 1) % len(colours)]
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], marker="o", markersize=3, color=colour,
                        label=f"{a} ({len(procs)} processes)")
                if how == "band":
                    ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=colour, alpha=0.2,
                                    linewidth=0)
            if goal is not None:
                ax.axhline(goal, color="black", linestyle="--", linewidth=0.8, label=f"goal {goal:g}")
            ax.set_yscale(scale)
            if ticks:
                ax.set_yticks(spaced(ticks, *ax.get_ylim()))
                ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            else:
                ax.set_ylim(bottom=0)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            ax.set_xlabel("repetition")
            if row == 0:
                ax.set_title(w)
            if col == 0:
                ax.set_ylabel(title)
            if row == 0 or (row == len(ROWS) - 1 and col == 0):
                ax.legend(fontsize=7)
    fig.tight_layout()
    # No date in the file either.
    fig.savefig(out, metadata={"Date": None})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
