"""How the two ranks' allocation traces of one DDP run differ (PyTorch's own allocator, 100 steps):
events in a different place, whether the frees between two allocations are the same sets (only
their order differing), and the first allocation-to-allocation stretch whose frees differ. Prints
what compare.log keeps."""
import pathlib
import sys

here = pathlib.Path(__file__).parent
sys.path.insert(0, str(here.parents[3] / "scripts"))
from trace_diff import normalized  # noqa: E402


def stretches(seq):
    """(first event, what): each allocation, and the set of frees (allocation number, size) between two."""
    out, cur, start = [], [], 0
    for i, e in enumerate(seq):
        if e[0] == "alloc":
            if cur:
                out.append((start, tuple(sorted(cur))))
                cur = []
            out.append((i, ("alloc", e[1])))
        else:
            if not cur:
                start = i
            cur.append((e[2], e[1]))
    if cur:
        out.append((start, tuple(sorted(cur))))
    return out


a = normalized(here / "ddp-r0-run1.trace.jsonl.gz", {"alloc", "free_requested"})
b = normalized(here / "ddp-r1-run1.trace.jsonl.gz", {"alloc", "free_requested"})
print(f"events (allocations and frees requested): rank 0 {len(a)}, rank 1 {len(b)}")
print(f"events in a different place: {sum(1 for x, y in zip(a, b) if x != y)}")
first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
print(f"first event in a different place: {first} (a free; the frees before and after it:)")
for name, s in (("rank 0", a), ("rank 1", b)):
    print(f"  {name}: " + ", ".join(f"{e[0]} #{e[2]} {e[1]} B" for e in s[first - 2:first + 3]))
sa, sb = stretches(a), stretches(b)
diff = [i for i, (x, y) in enumerate(zip(sa, sb)) if x[1] != y[1]]
print(f"stretches between allocations: {len(sa)} and {len(sb)}; with other frees (not only another order): {len(diff)}")
if diff:
    i = diff[0]
    print("the first such stretch and its neighbours:")
    for name, s in (("rank 0", sa), ("rank 1", sb)):
        print(f"  {name}: {s[i - 1:i + 2]}")

# Where each kept trace frees that large block (allocation number 83).
for name in ("ddp-r0-run0", "ddp-r0-run1", "ddp-r1-run1"):
    s = normalized(here / f"{name}.trace.jsonl.gz", {"alloc", "free_requested"})
    at = next(i for i, e in enumerate(s) if e[0] == "free_requested" and e[2] == 83)
    allocs = sum(1 for e in s[:at] if e[0] == "alloc")
    size = next(e[1] for e in s if e[0] == "alloc" and e[2] == 83)
    print(f"{name}: allocation #83 ({size} B) freed at event {at}, after {allocs} allocations")
