#!/usr/bin/env bash
# A KV cache put to sleep as vLLM does it (scripts/torch_kv_sleep.py) on a CUDA GPU machine, with the
# GPU_ARENA_CONF settings of CONFS alternating (space-separated, "-": unset, the default), ROUNDS times
# (default 3), each in a process of its own (ARGS: more arguments for it); one JSON line per process
# in $OUT/kv_sleep_ab.log.
#
#   bash scripts/python_h100.sh --build                               # here: the wheel → .whl/
#   CONFS="tag_bulk_streak:64 -" bash scripts/torch_kv_sleep_ab.sh    # there (device tool, carry [".whl"])
#   python3 scripts/torch_kv_sleep_report.py LOG                      # the table (medians, min–max)
set -u
cd "$(dirname "$0")/.."
exec bash scripts/torch_ab.sh scripts/torch_kv_sleep.py kv_sleep_ab.log
