#!/usr/bin/env bash
# The first offload with and without the pinned memory obtained ahead, on a CUDA GPU machine:
# scripts/torch_sleep_wake.py --prepare none and --prepare background alternating, ROUNDS times
# (default 3), each in a process of its own (ARGS: more arguments for it, e.g. "--cycles 4"); one JSON
# line per process in $OUT/sleep_wake_ab.log. MODES: the --prepare modes (default "none background");
# CONFS: GPU_ARENA_CONF settings to alternate as well, space-separated ("-": unset, the default).
#
#   bash scripts/python_h100.sh --build                # here: the release wheel → .whl/
#   bash scripts/torch_sleep_wake_ab.sh                # there (device tool, carry [".whl"])
#   python3 scripts/torch_sleep_wake_report.py LOG     # the table (medians, min–max)
set -u
cd "$(dirname "$0")/.."
sets=""
for m in ${MODES:-none background}; do sets="${sets:+$sets;}--prepare $m"; done
ARGSETS=$sets exec bash scripts/torch_ab.sh scripts/torch_sleep_wake.py sleep_wake_ab.log
