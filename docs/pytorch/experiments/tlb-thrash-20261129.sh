#!/bin/bash
# Native host replays (backend:host) with other memory touched between calls: lines (THRASH_KIB=512)
# and, with TLB_PAGES, one line in each of that many distinct 4 KiB pages; the allocator's metadata
# on glibc's heap in huge pages (GLIBC_TUNABLES hugetlb, mmap threshold 32 MiB) or not.
# It ran as .gpu/extra/tlb.sh beside .gpu/extra/cabi_replay; kept here, it runs from the repository
# with BIN (default: target/release/examples/cabi_replay, `cargo build --release --example cabi_replay`).
cd "$(dirname "$0")/../../.."
bin=${BIN:-target/release/examples/cabi_replay}
echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled) defrag: $(cat /sys/kernel/mm/transparent_hugepage/defrag)"
lscpu | grep -E "Model name|L1d|L2|L3"
which perf && perf stat -e dTLB-load-misses true 2>&1 | tail -4
for t in train_loop-r3 bert_infer-r3; do
 for round in 1 2 3 4; do
  for tlb in 0 4096; do
   for huge in no yes; do
    if [ $huge = yes ]; then tun="glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432"; else tun=""; fi
    r=$(env GLIBC_TUNABLES=$tun GPU_ARENA_CONF=backend:host,report:1 THRASH_KIB=512 TLB_PAGES=$tlb RUN_ON=5 "$bin" 1 docs/pytorch/traces/$t.trace.jsonl.gz 2>&1 | grep -E "recorded repetition [2-4]\)" | grep -o "[0-9]* ns per call inside" | cut -d' ' -f1 | tr '\n' ' ')
    echo "$t round $round tlb $tlb huge $huge: $r"
   done
  done
 done
done
