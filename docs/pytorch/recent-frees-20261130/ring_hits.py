# How many large allocations (>= MIN bytes) a ring of K recent frees of the same exact size would serve,
# replaying a trace: python3 ring_hits.py TRACE K MIN FLUSH (FLUSH 1: the ring emptied at every miss).
import gzip, json, sys, collections
ev=[json.loads(l) for l in gzip.open(sys.argv[1])]
K=int(sys.argv[2]); MIN=int(sys.argv[3]); flush=sys.argv[4]=="1"
live={}; cache=collections.OrderedDict()
n=h=big=fl=0
for e in ev:
    a=e["action"]
    if a=="alloc":
        n+=1; s=e["size"]
        if s<MIN: continue
        big+=1
        hit=None
        for k,v in reversed(cache.items()):
            if v==s: hit=k; break
        if hit is not None: del cache[hit]; h+=1
        elif flush and cache: cache.clear(); fl+=1
        live[e["addr"]]=s
    elif a=="free_completed":
        s=live.pop(e["addr"],None)
        if s is None or s<MIN: continue
        cache[e["addr"]]=s
        while len(cache)>K: cache.popitem(last=False)
print(f"{sys.argv[1].split('/')[-1]} K={K} flush={flush}: large {big}, hits {h} ({h/max(big,1):.0%} of large), flushes {fl}")
