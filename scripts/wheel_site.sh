# Sourced by the scripts that run the Python package on a GPU machine (no Rust toolchain, no network):
# `wheel_site [pytest]` installs the carried wheel (.whl/gpu_arena-*.whl, from
# `bash scripts/python_h100.sh --build`) into a folder of its own, with pytest from .whl/deps if asked
# and missing, puts that folder on PYTHONPATH, and prints the GPU, Python and the wheel's commit.
# Without pip, a wheel is unzipped (it is a zip of the files as installed).
wheel_site() {
    local site=/tmp/gpu-arena-site whl w
    rm -rf "$site"
    whl=$(ls .whl/gpu_arena-*.whl | head -1)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 --version
    if python3 -m pip --version; then
        python3 -m pip install -q --no-index --no-deps --target "$site" "$whl" || return
    else
        python3 -m zipfile -e "$whl" "$site" || return
    fi
    if [ "${1:-}" = pytest ] && ! python3 -c 'import pytest' 2>/dev/null; then
        if python3 -m pip --version >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --find-links .whl/deps --target "$site" pytest || return
        else
            for w in .whl/deps/*.whl; do python3 -m zipfile -e "$w" "$site" || return; done
        fi
    fi
    echo "wheel: $whl, built from $(cat .whl/COMMIT 2>/dev/null)"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}
