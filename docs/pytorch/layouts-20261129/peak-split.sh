#!/usr/bin/env bash
# Where each layout's excess lies at its peak: examples/peak_anatomy over the sixteen preludes of
# scripts/layout_ensemble.sh, for each trace whole (all) and its work alone (work), printing the
# partly used pages of the blocks region and of the stitched ranges (a block's last page there) and
# their unused MiB. peak-split.py sums them.
#
#   cargo build --release --example peak_anatomy && bash docs/pytorch/layouts-20261129/peak-split.sh > docs/pytorch/layouts-20261129/peak-split.log
set -euo pipefail
cd "$(dirname "$0")/../../.."
bin=target/release/examples/peak_anatomy
for t in bert_infer gpt2_generate train_loop train serve; do
  trace=docs/pytorch/traces/$t-r3.trace.jsonl.gz
  run_on=
  case $t in
    serve) trace=docs/pytorch/traces/serve.trace.jsonl.gz ;;
    train) run_on=16 ;;
  esac
  for part in all work; do
    for m in 0 0.125 0.25 0.375 0.5 0.625 0.75 0.875 1 1.125 1.25 1.375 1.5 1.625 1.75 1.875; do
      RUN_ON=$run_on PRELUDE=$m "$bin" "$trace" "$part" | grep -E "ratio|partly used in (blocks|stitch)" \
        | tr '\n' ' ' | sed "s/^/$t $part prelude $m: /"
      echo
    done
  done
done
