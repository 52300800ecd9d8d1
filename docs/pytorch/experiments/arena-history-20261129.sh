#!/usr/bin/env bash
# What BERT's layout and time per call owe to the blocks below its work (host replays, backend:host):
# the recorded traces replayed whole, without the blocks never freed (arena-history-20261129.py all),
# and BERT without only those its work leaves (work: cuBLAS's workspace) or with one block of 1, 2, 3,
# 242 or 243 MiB in the weights' place (prelude:M); then the instructions per
# settled call by function (scripts/cache_profile.sh INSTR_ONLY=1 BY_SYMBOL=1), and, with WALK_BIN (a
# cabi_replay built with arena-history-walks-20261129.patch), how many mappings each walk over a
# unit's other mappings visits (Commit::walk_aliases, which marks their pages blocked or free).
#
#   cargo build --release --example cabi_replay && bash docs/pytorch/experiments/arena-history-20261129.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
here=docs/pytorch/experiments
bin=target/release/examples/cabi_replay
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
traces=()
for t in bert_infer gpt2_generate train_loop; do
  python3 $here/arena-history-20261129.py docs/pytorch/traces/$t-r3.trace.jsonl.gz "$tmp/$t-without-all.trace.jsonl.gz" all
  traces+=(docs/pytorch/traces/$t-r3.trace.jsonl.gz "$tmp/$t-without-all.trace.jsonl.gz")
done
python3 $here/arena-history-20261129.py docs/pytorch/traces/bert_infer-r3.trace.jsonl.gz "$tmp/bert_infer-without-work.trace.jsonl.gz" work
traces+=("$tmp/bert_infer-without-work.trace.jsonl.gz")
# One block in the weights' place: where the work starts against the 2 MiB pages.
for mib in 1 2 3 242 243; do
  python3 $here/arena-history-20261129.py docs/pytorch/traces/bert_infer-r3.trace.jsonl.gz "$tmp/bert_infer-prelude-$mib.trace.jsonl.gz" prelude:$mib
  traces+=("$tmp/bert_infer-prelude-$mib.trace.jsonl.gz")
done
echo "# per recorded repetition: ns per call inside the allocator, VMM calls (per 1000 allocations), peak committed / peak handed out; then the run's peaks"
for t in "${traces[@]}"; do
  echo "== $(basename "$t")"
  GPU_ARENA_CONF=backend:host,report:1 "$bin" 1 "$t" 2>&1 | grep -E "^rep|^gpu-arena: device" \
    | grep -oE "recorded repetition [0-9]+|[0-9]+ ns per call inside|VMM calls [0-9]+ \([0-9.]+|peak committed / peak handed out [0-9.]+|peak live [0-9.]+ MiB, peak committed [0-9.]+ MiB" \
    | sed -E 's/ \(([0-9.]+)$/ (\1 per 1000)/' | paste -sd' ' | sed 's/recorded repetition/\nrep/g'
done
for t in docs/pytorch/traces/bert_infer-r3.trace.jsonl.gz "$tmp/bert_infer-without-all.trace.jsonl.gz"; do
  echo "== INSTR_ONLY=1 BY_SYMBOL=1 bash scripts/cache_profile.sh $(basename "$t") 4"
  INSTR_ONLY=1 BY_SYMBOL=1 bash scripts/cache_profile.sh "$t" 4 | sed -n '2,32p'
done
if [ -n "${WALK_BIN:-}" ]; then
  for t in docs/pytorch/traces/bert_infer-r3.trace.jsonl.gz "$tmp/bert_infer-without-all.trace.jsonl.gz"; do
    echo "== walks over a unit's other mappings, whole replay (cumulative): $(basename "$t")"
    GPU_ARENA_CONF=backend:host "$WALK_BIN" 1 "$t" 2>&1 | grep "^walks" | tail -1
  done
fi
