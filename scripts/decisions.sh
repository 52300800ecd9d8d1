#!/usr/bin/env bash
# What a build decides on the host replays, as checksums: for each recorded trace (docs/pytorch/traces),
# the md5 of examples/cabi_replay's report:1 lines (backend:host) with the timings cut, so that two
# builds meant to make the same decisions (VMM calls by kind, peaks, stitched ranges, per repetition)
# can be compared exactly. train runs on to 16 repetitions, serve twice. The counts of how stitched
# ranges' and blocks' groups were parked, taken back and flushed are cut too: they say what a call
# cost, not what it decided (parking changes no decision: tests/all/commit_engine.rs).
#
#   cargo build --release --example cabi_replay && bash scripts/decisions.sh [BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/examples/cabi_replay}
untimed() {
  grep -E "^rep" | sed -E 's/: [0-9]+ ns per event \(harness included\), [0-9]+ ns per call inside the allocator, /: /; s/"vmm_nanos":[0-9]+,//; s/"(blocks_parked|blocks_retaken|flushed|parked|retaken)":[0-9]+,?//g'
}
# The checksum of one replay: `decide TIMES TRACE` (environment settings before it pass through).
decide() {
  GPU_ARENA_CONF=backend:host,report:1 "$bin" "$1" "docs/pytorch/traces/$2" 2>/dev/null | untimed | md5sum | head -c 32
}
for t in bert_infer gpt2_generate train_loop; do
  echo "$t $(decide 1 "$t-r3.trace.jsonl.gz")"
done
echo "train RUN_ON=16 $(RUN_ON=16 decide 1 train-r3.trace.jsonl.gz)"
echo "serve x2 $(decide 2 serve.trace.jsonl.gz)"
