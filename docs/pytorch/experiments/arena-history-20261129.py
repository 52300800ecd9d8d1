"""A recorded trace without the blocks that are never freed (arena-history-20261129.sh): `all` of them
(the model's weights, and what the first repetition leaves: cuBLAS's workspace, 33 MiB for BERT), or
`work`: only those allocated once the work began (after the first allocation of a block that is freed
later), the weights kept. What an arena sees when such blocks live in another arena (an engine's
weights in a tag of their own) or in another build (a within-process A/B, docs/pytorch.md).

`prelude:M`: all of them left out, and one block of M MiB allocated first and never freed in their
place (where the work starts, against the pages).

usage: python3 arena-history-20261129.py TRACE OUT {all|work|prelude:M}"""
import gzip
import json
import sys

src, out, mode = sys.argv[1:4]
ev = [json.loads(line) for line in gzip.open(src)]
open_ = {}
for i, e in enumerate(ev):
    if e["action"] == "alloc":
        open_[e["addr"]] = i
    elif e["action"] == "free_completed":
        open_.pop(e["addr"], None)
never = set(open_.values())
if mode == "work":
    start = min(i for i, e in enumerate(ev) if e["action"] == "alloc" and i not in never)
    never = {i for i in never if i > start}
with gzip.open(out, "wt") as f:
    if mode.startswith("prelude:"):
        size = int(float(mode[8:]) * 2**20) // 512 * 512
        f.write(json.dumps({"action": "alloc", "addr": 1, "size": size, "stream": 0}) + "\n")
    for i, e in enumerate(ev):
        if i not in never:
            f.write(json.dumps(e) + "\n")
print(f"{src.split('/')[-1]} ({mode}): left out {len(never)} blocks never freed, "
      f"{sum(ev[i]['size'] for i in never) / 2**20:.1f} MiB")
