#!/usr/bin/env bash
# Builds the stand-in libamdhip64 (see src/lib.rs) and prints the directory
# to put first on LD_LIBRARY_PATH:
#
#   dir=$(tests/support/hip-shim/build.sh [debug|release])
#   LD_LIBRARY_PATH=$dir cargo test --features hip --test all hip        # host mode
#   LD_LIBRARY_PATH=$dir GPU_ARENA_HIP_SHIM=cuda .../all hip             # on an NVIDIA GPU
#
# The directory holds one file, libamdhip64.so.5: the name the binaries built
# with `--features hip` against Debian's libamdhip64-dev (ROCm 5) ask for.
# It shares the repository's target directory, so gpu-arena's dependencies
# are built once.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
profile=${1:-debug}
case "$profile" in
    debug) flags=() ;;
    release) flags=(--release) ;;
    *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
esac
target=${CARGO_TARGET_DIR:-$root/target}
CARGO_TARGET_DIR=$target cargo build --manifest-path "$here/Cargo.toml" --locked "${flags[@]}" >&2
out=$target/hip-shim-$profile
mkdir -p "$out"
cp -f "$target/$profile/libamdhip64.so" "$out/libamdhip64.so.5"
if [ "$profile" = release ]; then strip --strip-debug "$out/libamdhip64.so.5"; fi
echo "$out"
