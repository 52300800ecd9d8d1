# Hit-rate simulation of keep-recent-20261129.log: python3 THIS TRACE K [MIN [QUANTUM]] [--flush-on-miss]
# (merged from the two scripts that ran: qsim.py without, qsim2.py with flushing at every miss; qsim.py matched exact sizes)
import collections
import gzip
import json
import sys

args = [a for a in sys.argv[1:] if not a.startswith("--")]
flush = "--flush-on-miss" in sys.argv
path, K = args[0], int(args[1])
MIN = int(args[2]) if len(args) > 2 else 65536
Q = int(args[3]) if len(args) > 3 else 512
rnd = (lambda s: s) if not flush else (lambda s: (s + Q - 1) // Q * Q)
sizes, q = {}, collections.OrderedDict()
hits = miss = 0
for e in map(json.loads, gzip.open(path)):
    a = e["action"]
    if a == "alloc":
        s = e["size"]
        sizes[e["addr"]] = s
        if s < MIN:
            continue
        found = next((k for k, v in reversed(q.items()) if rnd(v) == rnd(s)), None)
        if found is not None:
            del q[found]
            hits += 1
        else:
            miss += 1
            if flush:
                q.clear()
    elif a == "free_completed":
        s = sizes.pop(e["addr"], None)
        if s is None or s < MIN:
            continue
        q[e["addr"]] = s
        if len(q) > K:
            q.popitem(last=False)
print(path.split("/")[-1], "K", K, "large", hits + miss, "hit %.1f%%" % (100 * hits / max(1, hits + miss)))
