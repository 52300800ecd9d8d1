#!/usr/bin/env bash
# ../shared/tools/gpu-pack, plus a record of what was packed: .gpu/BUILD names the commit, whether the
# working tree differed from it (changed and untracked files, and a hash of the diff), the gpu-pack
# arguments and the time; .gpu/run copies it into $OUT, so every device log says which build made it
# (the device copy's own `git log` can name an older commit than the carried binaries).
#
#   bash scripts/gpu_pack.sh [gpu-pack arguments...]     e.g. --test all --bin gpu-arena --cdylib
set -euo pipefail
cd "$(dirname "$0")/.."
../shared/tools/gpu-pack "$@"
{
  echo "commit $(git rev-parse HEAD) ($(git log -1 --format=%s))"
  changes=$(git status --porcelain --untracked-files=normal -- . ':!.gpu')
  if [ -z "$changes" ]; then
    echo "tree: clean"
  else
    echo "tree: differs from the commit (diff sha256 $(git diff HEAD | sha256sum | cut -c1-16)):"
    echo "$changes" | sed 's/^/  /'
  fi
  echo "gpu-pack $*"
  echo "packed $(date -u +%FT%TZ)"
} > .gpu/BUILD
# .gpu/run writes its logs to $OUT: the record goes beside them.
if ! grep -q "BUILD" .gpu/run; then
  sed -i 's|^out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"$|&\ncp .gpu/BUILD "$out/BUILD"|' .gpu/run
  grep -q "BUILD" .gpu/run || echo "gpu_pack.sh: .gpu/run has another shape now; copy .gpu/BUILD to \$OUT yourself" >&2
fi
echo "gpu_pack.sh: wrote .gpu/BUILD:"
sed 's/^/  /' .gpu/BUILD
