# One-call deferral of a large free, simulated on the recorded traces (docs/pytorch/experiments/same-size-retake-20261129.log):
#   python3 same-size-retake-20261129.py IN.trace.jsonl.gz OUT.trace.jsonl.gz
# Blocks get small synthetic ids, the smallest free one first, so that repetitions stay identical.
import gzip, json, sys
src, dst = sys.argv[1], sys.argv[2]
TH = 1 << 20
lines = [json.loads(l) for l in gzip.open(src, 'rt')]
out = []
live = {}  # trace addr -> synthetic id
import heapq
free_ids = []
nxt = 1 << 40
id_refs = {}
dropped = 0
pending = None
for d in lines:
    a = d.get('action')
    if a == 'free_completed':
        d = dict(d); d['addr'] = live.pop(d['addr'])
        heapq.heappush(free_ids, d['addr'])
        out.append(d)
        pending = len(out) - 1 if d['size'] > TH else None
    elif a == 'alloc':
        d = dict(d)
        if pending is not None and out[pending]['size'] == d['size'] and out[pending]['stream'] == d['stream']:
            live[d['addr']] = out[pending]['addr']
            free_ids.remove(out[pending]['addr']); heapq.heapify(free_ids)
            out[pending] = None
            dropped += 1
        else:
            if free_ids:
                i = heapq.heappop(free_ids)
            else:
                nxt += 512
                i = nxt
            live[d['addr']] = i
            d['addr'] = i
            out.append(d)
        pending = None
    elif a in ('rep_end',):
        out.append(d)
    else:
        pass
with gzip.open(dst, 'wt') as f:
    for d in out:
        if d is not None:
            f.write(json.dumps(d) + '\n')
print('pairs dropped', dropped, file=sys.stderr)
