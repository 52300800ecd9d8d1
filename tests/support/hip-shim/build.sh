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
# It builds in a target directory of its own (target/hip-shim): gpu-arena is
# an rlib + cdylib package, whose artifacts have no hash in their names, so a
# build with other features in the main target directory would replace them.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
profile=${1:-debug}
case "$profile" in
    debug) flags=() ;;
    release) flags=(--release) ;;
    *) echo "usage: $0 [debug|release]" >&2; exit 2 ;;
esac
target=${HIP_SHIM_TARGET_DIR:-$root/target/hip-shim}
CARGO_TARGET_DIR=$target cargo build --manifest-path "$here/Cargo.toml" --locked "${flags[@]}" >&2
out=$target/libamdhip64-$profile
mkdir -p "$out"
# Linked here rather than by cargo, so that the symbols carry ROCm's version
# nodes (hip.map) and nothing but them is exported.
cc -shared -o "$out/libamdhip64.so.5" \
    -Wl,--whole-archive "$target/$profile/libamdhip64.a" -Wl,--no-whole-archive \
    -Wl,--version-script="$here/hip.map" -Wl,-soname,libamdhip64.so.5 -Wl,--gc-sections \
    -ldl -lgcc_s -lutil -lrt -lpthread -lm -lc
if [ "$profile" = release ]; then strip --strip-debug "$out/libamdhip64.so.5"; fi
echo "$out"
