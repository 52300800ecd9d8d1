# Counts, in the recorded traces (three repetitions each), frees that come right after their own block's allocation
# (an exact undo: the arena's state after the free is the one before the allocation) and that are followed at
# once by an allocation of the same size: the only case where handing the block back whole would keep every
# placement decision. usage: python3 exact-undo-count-20261130.py TRACE...
# Frees are counted where the program made them (free_requested), as a pluggable allocator receives them.
import gzip, json, sys, collections
for path in sys.argv[1:]:
    ev=[]
    with gzip.open(path,'rt') as f:
        for line in f:
            e=json.loads(line)
            a=e['action']
            if a=='alloc': ev.append(('a',e['addr'],e['size'],e.get('stream',0)))
            elif a=='free_requested': ev.append(('f',e['addr'],None,e.get('stream',0)))
    size={}
    undo=0; undo_retake=0; retake_any=0; frees=0
    bysize=collections.Counter()
    for i,(k,addr,sz,st) in enumerate(ev):
        if k=='a': size[addr]=sz; continue
        frees+=1
        s=size.get(addr)
        prev=ev[i-1] if i>0 else None
        nxt=ev[i+1] if i+1<len(ev) else None
        is_undo = prev and prev[0]=='a' and prev[1]==addr
        retake = nxt and nxt[0]=='a' and nxt[2]==s
        if is_undo: undo+=1
        if retake: retake_any+=1
        if is_undo and retake:
            undo_retake+=1; bysize[s]+=1
    print(path, 'calls',len(ev),'frees',frees,'free right after its alloc',undo,'... and followed by same size alloc',undo_retake,'free followed by same-size alloc',retake_any)
    print(' top sizes', bysize.most_common(5))
