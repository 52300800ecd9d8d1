#!/usr/bin/env bash
# Fuzz every target in fuzz/fuzz_targets for a bounded time (CI entry point).
#
#   FUZZ_SECONDS        seconds per target (default 60)
#   FUZZ_TOTAL_SECONDS  cap on the fuzzing time of all targets together (default 120)
#   FUZZ_NO_CARGO_FUZZ  set to 1 to build with plain cargo + RUSTFLAGS instead of cargo-fuzz
#   FUZZ_TOOLCHAIN      set to "stable" to use stable + RUSTC_BOOTSTRAP=1 even where nightly exists
#
# Uses the nightly toolchain where rustup has one, else stable with
# RUSTC_BOOTSTRAP=1 (libFuzzer instrumentation and the address sanitizer need
# -Z flags). Installs cargo-fuzz when missing (about 30 s on 2 cores); if that
# fails, builds the targets directly with the flags cargo-fuzz would pass.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
# See docs/fuzzing.md.
set -euo pipefail

cd "$(dirname "$0")"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TOTAL_SECONDS=${FUZZ_TOTAL_SECONDS:-120}
started=$SECONDS

if [[ "${FUZZ_TOOLCHAIN:-}" != stable ]] && cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    echo "fuzz: nightly toolchain ($(cargo +nightly --version))"
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
    echo "fuzz: stable toolchain with RUSTC_BOOTSTRAP=1 ($(cargo --version))"
fi

use_cargo_fuzz=1
if [[ "${FUZZ_NO_CARGO_FUZZ:-0}" == 1 ]]; then
    use_cargo_fuzz=0
elif ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    t=$SECONDS
    if cargo install cargo-fuzz --locked; then
        echo "fuzz: cargo-fuzz installed in $((SECONDS - t)) s"
    else
        echo "fuzz: cargo-fuzz did not install; building with plain cargo"
        use_cargo_fuzz=0
    fi
fi

targets=()
for f in fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
done
per_target=$((FUZZ_TOTAL_SECONDS / ${#targets[@]}))
((per_target > FUZZ_SECONDS)) && per_target=$FUZZ_SECONDS
echo "fuzz: targets ${targets[*]}, ${per_target} s each"

# What cargo-fuzz passes (cargo-fuzz 0.13, src/project.rs), for the plain build.
triple=$(rustc "${toolchain[@]}" -vV | sed -n 's/^host: //p')
rustflags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions -Ccodegen-units=1 -Zsanitizer=address"

t=$SECONDS
for target in "${targets[@]}"; do
    if ((use_cargo_fuzz)); then
        cargo "${toolchain[@]}" fuzz build "$target"
    else
        # --target keeps the flags off build scripts and proc macros.
        RUSTFLAGS="$rustflags" cargo "${toolchain[@]}" build --release \
            --config 'profile.release.debug="line-tables-only"' \
            --target "$triple" --bin "$target"
    fi
done
echo "fuzz: built in $((SECONDS - t)) s"

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    echo "fuzz: running $target for ${per_target} s"
    t=$SECONDS
    args=(-max_total_time="$per_target" -timeout=10 -print_final_stats=1
        -artifact_prefix="artifacts/$target/")
    if ((use_cargo_fuzz)); then
        cargo "${toolchain[@]}" fuzz run "$target" -- "${args[@]}"
    else
        ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0" \
            "target/$triple/release/$target" "${args[@]}" "corpus/$target"
    fi
    echo "fuzz: $target ran $((SECONDS - t)) s"
done
echo "fuzz: done in $((SECONDS - started)) s"
