#!/usr/bin/env bash
# All four PyTorch workloads in one device call, on a machine of 4 GPUs (kind nvidia-h100-x4): each
# workload on a GPU of its own, the four at once, PyTorch's allocator and gpu-arena alternating process
# by process on that GPU (scripts/torch_alternate.sh, whose comments say how it runs them). One call of
# 10 minutes cannot hold the four one after the other on one GPU with 5 processes per allocator.
# After `bash scripts/gpu_pack.sh --cdylib --test all --extra ../shared/bench/torch_workloads.py`:
#
#   bash scripts/torch_four.sh [PROCESSES]     (default 5; logs: $OUT/torch-WORKLOAD.log)
#
# Repetitions: the training workload 16, bert_infer and gpt2_generate 3, serve SERVE_REPEAT (default
# 2: its processes are the longest). The training workload is train_loop, a training loop as it runs:
# one optimizer, its state zeroed between repetitions (settled from its second repetition).
# TRAIN=train runs the loop that makes its optimizer anew every repetition instead (it settles at its
# 15th; the calls of 2026-11-28 and before ran it). scripts/torch_report.py turns the logs into the
# tables of docs/pytorch.md.
set -u
cd "$(dirname "$0")/.."
procs=${1:-5}
gpu=0
for spec in "${TRAIN:-train_loop} 16" "bert_infer 3" "gpt2_generate 3" "serve ${SERVE_REPEAT:-2}"; do
  read -r w reps <<< "$spec"
  CUDA_VISIBLE_DEVICES=$gpu bash scripts/torch_alternate.sh "$procs" "$reps" "$w" &
  gpu=$((gpu + 1))
done
wait
