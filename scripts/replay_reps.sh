#!/usr/bin/env bash
# Host replays of the H100 traces recorded with several repetitions (docs/pytorch/traces/*-r3.trace.jsonl.gz,
# `scripts/torch_bench.py --repeat 3 --trace`): for each trace, one line with every recorded repetition's
# VMM calls per 1000 allocations and, in brackets, peak committed / peak handed out, through the C ABI as
# PyTorch calls it (examples/cabi_replay, backend:host, report:1). EXTRA=",key:value" adds settings;
# RUN_ON=N runs a trace whose last two recorded repetitions are the same events on to N repetitions.
#
#   cargo build --release --example cabi_replay && bash scripts/replay_reps.sh [TRACE...]
set -euo pipefail
cd "$(dirname "$0")/.."
traces=("$@")
[ ${#traces[@]} -gt 0 ] || traces=(docs/pytorch/traces/{bert_infer,gpt2_generate,train}-r3.trace.jsonl.gz)
for t in "${traces[@]}"; do
  printf "%-14s" "$(basename "$t" | sed 's/-r[0-9]*\.trace.*//')"
  GPU_ARENA_CONF="backend:host,report:1${EXTRA:-}" target/release/examples/cabi_replay 1 "$t" 2>/dev/null \
    | grep -E "^rep" \
    | sed -E 's/.*recorded repetition ([0-9]+).*\(([0-9.]+) per 1000.*peak handed out ([0-9.]+).*/r\1 \2 (\3)/' \
    | tr '\n' ' '
  echo
done
