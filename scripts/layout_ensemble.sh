#!/usr/bin/env bash
# The shared traces' host replays over sixteen layouts each (examples/layout_ensemble): every trace
# after a block of 0, 0.125, ..., 1.875 MiB allocated first and never freed, which moves where its
# blocks fall against the 2 MiB pages, played whole (`all`) and without the blocks that live through
# it (`work`: the default tag of an engine that keeps its weights in a tag of their own), and those
# blocks alone once (`weights`, laid out as a tag's arena). train runs on to 16 repetitions, serve
# five times (PLAYS=5: a second play settled, a third may not). Prints the raw lines, each prefixed with the trace and the part; scripts/layout_ensemble.py
# makes the table.
#
#   cargo build --release --example layout_ensemble
#   bash scripts/layout_ensemble.sh > LOG && python3 scripts/layout_ensemble.py LOG
#
# BIN=PATH replays with another build of the example (a patched library); PRELUDES=... other sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/examples/layout_ensemble}
preludes=${PRELUDES:-0,0.125,0.25,0.375,0.5,0.625,0.75,0.875,1,1.125,1.25,1.375,1.5,1.625,1.75,1.875}
traces=docs/pytorch/traces
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
one() { # NAME TRACE [RUN_ON]
  for part in weights all work; do
    p=$preludes
    if [ $part = weights ]; then p=0; fi
    PRELUDES=$p MODE=$part "$bin" "$traces/$2.trace.jsonl.gz" ${3:-} | sed "s/^/$1 $part /"
  done > "$tmp/$1"
}
# Two at a time (CI machines have two cores).
one bert_infer bert_infer-r3 &
one gpt2_generate gpt2_generate-r3 &
wait
one train_loop train_loop-r3 &
PLAYS=5 one serve serve &
wait
one train16 train-r3 16
cat "$tmp"/bert_infer "$tmp"/gpt2_generate "$tmp"/train_loop "$tmp"/serve "$tmp"/train16
