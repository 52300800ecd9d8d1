#!/usr/bin/env bash
# The five host replays of scripts/decisions.sh with the blocks that live through each trace (the
# model's weights and cuBLAS's workspace: gpu_arena::replay::persistent) allocated in a tag of their
# own, `weights`, as an engine that tags its weights for sleep lays them out (examples/cabi_replay
# TAG_PERSISTENT=weights); then the same replays as recorded, for comparison. Per repetition: VMM calls
# (per 1000 allocations), the whole process's peak committed / peak handed out, and, tagged, each
# tag's peak committed / peak live.
#
#   cargo build --release --example cabi_replay && bash docs/pytorch/experiments/tagged-weights-20261129.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
bin=target/release/examples/cabi_replay
short() {
  grep -E "^rep|^tags" | sed -E 's/: [0-9]+ ns per event.*VMM calls ([0-9]+) \(([0-9.]+) per 1000.*peak committed \/ peak handed out ([0-9.]+).*/: VMM calls \1 (\2 per 1000), whole process \3/'
}
for tagged in 1 0; do
  if [ $tagged = 1 ]; then echo "### tagged: TAG_PERSISTENT=weights"; else echo "### as recorded (one tag)"; fi
  run() { if [ $tagged = 1 ]; then env TAG_PERSISTENT=weights "$@"; else env "$@"; fi; }
  for t in bert_infer gpt2_generate train_loop; do
    echo "== $t-r3"
    run GPU_ARENA_CONF=backend:host,report:1 "$bin" 1 "docs/pytorch/traces/$t-r3.trace.jsonl.gz" 2>/dev/null | short
  done
  echo "== train-r3, RUN_ON=16 (last repetition)"
  run RUN_ON=16 GPU_ARENA_CONF=backend:host,report:1 "$bin" 1 docs/pytorch/traces/train-r3.trace.jsonl.gz 2>/dev/null | short | tail -2
  echo "== serve, two passes"
  run GPU_ARENA_CONF=backend:host,report:1 "$bin" 2 docs/pytorch/traces/serve.trace.jsonl.gz 2>/dev/null | short
done
