#!/usr/bin/env bash
# The soak and the two-process pressure test on a GPU machine (docs/soak.md).
#
# Here (the GPU machine has no Rust toolchain):
#   ../shared/tools/gpu-pack --bin gpu-arena --extra ../shared/traces
# then on the GPU machine (device tool, carry [".gpu"]), from the repository root:
#   bash scripts/soak_h100.sh soak 300 pressure
#
# Parts run in the order given:
#   soak SECONDS   gpu-arena soak on CUDA for SECONDS of workload (teardown
#                  and checks follow: count about 20 s more)
#   pressure       gpu-arena pressure: process B takes most of the device
#                  from process A, twice
# Each part writes its log and JSON summary to $OUT (named after the part
# and the time, so that the files of several calls do not collide) and a
# line to $OUT/session.log. Exit status: 0 when every part passed.
#
# The device tool stops a command after 10 minutes: a 10-minute soak is two
# calls, `soak 300` and `soak 300 pressure` (or one 9-minute call,
# `soak 540`, then `pressure`).
# scripts/soak_report.py turns the files into the H100 section of docs/soak.md.
# SOAK_BACKEND=host runs the same parts on the host backend (a dry run of
# this script where there is no GPU).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
bin=.gpu/bin/gpu-arena
traces=.gpu/extra/traces
if [ ! -x "$bin" ]; then
  echo "no $bin: run ../shared/tools/gpu-pack --bin gpu-arena --extra ../shared/traces here first" >&2
  exit 2
fi
backend=${SOAK_BACKEND:-cuda}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
{
  echo "=== $(date -u +%FT%TZ) soak_h100.sh $*"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>&1
  echo "cpus: $(nproc), backend: $backend, binary: $(sha256sum "$bin" | cut -c1-16)"
} | tee -a "$out/session.log"
status=0
while [ $# -gt 0 ]; do
  case $1 in
    soak)
      secs=${2:-300}; shift 2
      log=$out/soak-${secs}s-$stamp.log
      # The workload, plus traces, teardown and checks; killed past 60 s more.
      timeout $((secs + 60)) "$bin" --backend "$backend" soak --seconds "$secs" \
        --traces "$traces/bert_infer.trace.jsonl.gz" --traces "$traces/gpt2_generate.trace.jsonl.gz" \
        --json-out "$out/soak-${secs}s-$stamp.json" > "$log" 2>&1
      rc=$?
      [ $rc -eq 0 ] || status=1
      echo "soak ${secs}s: rc=$rc $(grep -E '^result:' "$log")" | tee -a "$out/session.log" ;;
    pressure)
      shift
      log=$out/pressure-$stamp.log
      timeout 300 "$bin" --backend "$backend" pressure --json-out "$out/pressure-$stamp.json" > "$log" 2>&1
      rc=$?
      [ $rc -eq 0 ] || status=1
      echo "pressure: rc=$rc $(grep -E '^result:' "$log")" | tee -a "$out/session.log"
      grep -E '^\|' "$log" | tee -a "$out/session.log" ;;
    *)
      echo "unknown part $1 (soak SECONDS | pressure)" >&2
      exit 2 ;;
  esac
done
exit $status
