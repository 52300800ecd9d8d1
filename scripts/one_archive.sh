#!/usr/bin/env bash
# The device tool brings back at most 8 files from $OUT and leaves the rest out (a run of the packed
# tests writes one log per test binary, torch_alternate.sh one per workload): this runs COMMAND with
# $OUT pointed at a staging folder and then puts everything it wrote into one archive, $OUT/out.tar.gz,
# with its listing beside it ($OUT/files.txt). COMMAND runs under `timeout LIMIT`, so that the archive
# is still written when the work runs long: give LIMIT some seconds less than the device call's limit.
#
#   bash scripts/one_archive.sh LIMIT 'bash .gpu/run; OUT=$OUT bash scripts/torch_alternate.sh 6 8 train_loop'
#
# Unpack here with `tar xzf FILES_AT/out.tar.gz -C DIR`.
set -u
limit=$1; command=$2
real=${OUT:?one_archive.sh: OUT must name the folder the device tool brings back}
stage=$(mktemp -d)
OUT=$stage timeout "$limit" bash -c "$command"
rc=$?
[ "$rc" = 124 ] && echo "one_archive.sh: the command ran past ${limit} s and was stopped" | tee "$stage/TIMED_OUT"
(cd "$stage" && find . -type f -printf '%s\t%p\n' | sort -k2) > "$real/files.txt"
tar czf "$real/out.tar.gz" -C "$stage" .
exit "$rc"
