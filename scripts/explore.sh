#!/usr/bin/env bash
# Random exploration beyond CI's fixed seeds, for a scheduled job or by hand. CI runs the model tests
# (tests/all/arena_model.rs, tests/all/driver_model.rs) from fixed seeds, so every CI run checks the
# same programs; this runs them from a fresh random seed (printed first: GPU_ARENA_PROPTEST_SEED=<it>
# reruns the same programs) with many more cases, then fuzzes every target for longer than CI does.
# A failing proptest prints its shrunk program; a fuzz crash leaves its input in fuzz/artifacts/.
#
#   bash scripts/explore.sh [CASES (5000)] [FUZZ_MINUTES per target (10)]
#   SEED=<u64> bash scripts/explore.sh ...       (a chosen seed instead of a random one)
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-5000}
minutes=${2:-10}
seed=${SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}
echo "explore: GPU_ARENA_PROPTEST_SEED=$seed GPU_ARENA_PROPTEST_CASES=$cases"
GPU_ARENA_PROPTEST_SEED=$seed GPU_ARENA_PROPTEST_CASES=$cases \
  cargo test --release --locked --test all -- arena_model driver_model
# 0 minutes: no fuzzing (libFuzzer would read a time limit of 0 as none).
if [ "$minutes" -gt 0 ]; then
  targets=$(ls fuzz/fuzz_targets/*.rs | wc -l)
  FUZZ_SECONDS=$((minutes * 60)) FUZZ_TOTAL_SECONDS=$((minutes * 60 * targets)) bash fuzz/ci.sh
fi
echo "explore: nothing found (seed $seed, $cases cases, $minutes min of fuzzing per target)"
