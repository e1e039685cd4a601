#!/usr/bin/env bash
# Idempotent set-up: creates .venv/ at the repo root and installs torch, mmcv 2.1.0 (built with
# ops from its source distribution), mmdet, mmsegmentation, this package (editable), the test
# tools and ExecuTorch (the phone export). A second run checks what is there and takes seconds.
#
# Each step writes its output to .venv/setup-logs/<step>.log; on failure the step is named, the
# end of its log is shown and the script exits non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
LOGS="$VENV/setup-logs"
CACHE="${MMM_CACHE:-$HOME/.cache/mmmobilemamba}"
MMCV_VERSION=2.1.0

say() { printf '[setup] %s\n' "$*"; }

fail() {
    local step="$1" log="$2" hint="$3"
    printf '\n[setup] FAILED: %s\n' "$step" >&2
    if [ -f "$log" ]; then
        printf '[setup] last lines of %s:\n' "$log" >&2
        grep -v '^WARNING: Location' "$log" | tail -n 15 | sed 's/^/    /' >&2
    fi
    printf '[setup] %s\n' "$hint" >&2
    exit 1
}

# run_step NAME HINT CMD...: run CMD with its output in a log, fail clearly.
run_step() {
    local name="$1" hint="$2"
    shift 2
    local log="$LOGS/$name.log"
    if ! "$@" >"$log" 2>&1; then
        fail "$name" "$log" "$hint"
    fi
}

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

# 1. virtual environment
if [ ! -x "$PY" ]; then
    command -v "$PYTHON" >/dev/null || { echo "[setup] FAILED: '$PYTHON' not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
    say "creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV" || { echo "[setup] FAILED: python -m venv (install the venv module, e.g. apt-get install python3-venv)" >&2; exit 1; }
fi
mkdir -p "$LOGS" "$CACHE/wheels"

# 2. torch + torchvision (skipped when they already import)
if "$PY" -c 'import torch, torchvision' >/dev/null 2>&1; then
    say "torch $("$PY" -c 'import torch; print(torch.__version__)') present"
else
    say "installing torch and torchvision (requirements/torch.txt)"
    run_step torch "could not install torch; with your own torch/CUDA build, install it into .venv first and re-run" \
        pip_install -r requirements/torch.txt
fi

# 3. mmcv with ops. scripts/mmcv_build_plan.py decides (it needs torch): CUDA ops for the GPUs
# present when torch sees one, else CPU ops; FORCE_CUDA=1 / FORCE_CUDA=0 override. Without an
# nvcc of torch's CUDA major version, NVIDIA's compiler wheels come from PyPI into .venv; the
# headers torch's CUDA headers need and the toolkit lacks (cuSPARSE, cuBLAS, ... in a minimal
# toolkit) come from torch's own nvidia-* wheels through CPATH. When CUDA ops cannot be built
# after all, the CPU ops are built and the fix is printed.
PIP_CUDA_HOME="$VENV/cuda-toolkit"
# The cache key of the installed mmcv build ('fallback:KEY': CUDA ops for KEY failed, CPU ops
# installed instead; only FORCE_CUDA=1 tries again).
MMCV_STAMP="$VENV/.mmcv-build"

# plan_mmcv [--cpu-fallback]: set MMCV_OPS, MMCV_CACHE_KEY, MMCV_BUILD_ENV (...) from the plan.
plan_mmcv() {
    local out
    out="$("$PY" scripts/mmcv_build_plan.py --shell --pip-cuda-home "$PIP_CUDA_HOME" "$@" 2>"$LOGS/mmcv-plan.log")" \
        || fail mmcv-plan "$LOGS/mmcv-plan.log" "scripts/mmcv_build_plan.py could not tell how to build mmcv"
    eval "$out"
    if [ -n "$MMCV_PLAN_ERROR" ]; then
        printf '\n[setup] FAILED: mmcv-plan\n[setup] %s\n' "$MMCV_PLAN_ERROR" >&2
        exit 1
    fi
    WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$MMCV_CACHE_KEY"
}

# Checked from the package metadata and the compiled file: importing mmcv needs mmengine,
# installed in step 4. A CUDA plan also needs the installed build to hold CUDA code (nvcc's
# objects register themselves through __cudaRegisterFatBinary) and, when setup.sh built it, to
# be that plan's (stamp: same CUDA version and GPU architectures).
mmcv_ok() {
    "$PY" - "$MMCV_VERSION" "$MMCV_OPS" "$MMCV_CACHE_KEY" "$MMCV_STAMP" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as md, os, sys
version, ops, key, stamp = sys.argv[1:]
dist = md.distribution('mmcv')
assert dist.version == version
ext = [f for f in dist.files if str(f).startswith('mmcv/_ext')]
assert ext
if ops == 'cuda':
    # no stamp: built by hand or before the plan existed; any CUDA build is taken then
    assert not os.path.isfile(stamp) or open(stamp).read().strip() == key
    with open(dist.locate_file(ext[0]), 'rb') as f:
        assert b'__cudaRegisterFatBinary' in f.read()
PYEOF
}

has_wheel() { ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; }

# build_mmcv LOG: compile the mmcv sdist into $WHEEL_DIR with the plan's environment (status of
# the build; its output in LOG: a failed CUDA build's log is kept apart from the CPU build after it).
build_mmcv() {
    local log="$1" src rc=0
    src="$(mktemp -d)"
    mkdir -p "$WHEEL_DIR"
    run_step mmcv-download "could not download the mmcv $MMCV_VERSION source distribution from PyPI" \
        "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
        -d "$src" "mmcv==$MMCV_VERSION"
    tar -xzf "$src/mmcv-$MMCV_VERSION.tar.gz" -C "$src"
    # torch >= 2.5 headers need C++20; mmcv 2.1.0 asks for C++14/17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$src/mmcv-$MMCV_VERSION/setup.py"
    env "${MMCV_BUILD_ENV[@]}" "$PY" -m pip wheel --disable-pip-version-check --no-deps \
        --no-build-isolation -w "$WHEEL_DIR" "$src/mmcv-$MMCV_VERSION" >"$log" 2>&1 || rc=$?
    rm -rf "$src"
    [ "$rc" -eq 0 ] || rm -rf "$WHEEL_DIR"  # no half-built cache entry
    return "$rc"
}

# cuda_failed STEP LOG: CUDA ops cannot be built. FORCE_CUDA=1 stops here; otherwise the plan
# becomes CPU ops, and the fix is printed now and at the end.
cuda_failed() {
    local step="$1" log="$2"
    if [ "${FORCE_CUDA:-}" = 1 ]; then
        fail "$step" "$log" "FORCE_CUDA=1 but CUDA ops cannot be built: $MMCV_PLAN_FIX"
    fi
    printf '[setup] WARNING: mmcv CUDA ops could not be built (%s; log: %s); building CPU ops instead\n' \
        "$step" "${log#"$ROOT"/}" >&2
    FALLBACK_OF="$MMCV_CACHE_KEY"
    plan_mmcv --cpu-fallback
}

plan_mmcv
FALLBACK_OF=""
if mmcv_ok; then
    if [ "$MMCV_OPS" = cuda ]; then say "mmcv $MMCV_VERSION with CUDA ops (compute capability $MMCV_ARCH_LIST) present"
    else say "mmcv $MMCV_VERSION with ops present"; fi
elif [ "$MMCV_OPS" = cuda ] && [ "${FORCE_CUDA:-}" != 1 ] && MMCV_OPS=cpu mmcv_ok \
        && [ "$(cat "$MMCV_STAMP" 2>/dev/null)" = "fallback:$MMCV_CACHE_KEY" ]; then
    say "mmcv $MMCV_VERSION with CPU ops present: its CUDA ops could not be built by an earlier run"
    say "$MMCV_PLAN_FIX"
else
    run_step build-tools "could not install the build tools in requirements/build.txt" \
        pip_install -r requirements/build.txt
    if [ "$MMCV_NEEDS_PIP_TOOLKIT" = 1 ] && ! has_wheel; then
        say "$MMCV_PLAN_MESSAGE"
        if pip_install "${MMCV_PIP_PACKAGES[@]}" >"$LOGS/cuda-toolkit.log" 2>&1 &&
            "$PY" scripts/mmcv_build_plan.py --assemble-cuda-home "$PIP_CUDA_HOME" \
                --cuda-version "$MMCV_CUDA_VERSION" >>"$LOGS/cuda-toolkit.log" 2>&1; then
            plan_mmcv  # finds the nvcc assembled in $PIP_CUDA_HOME
        fi
        if [ "$MMCV_NEEDS_PIP_TOOLKIT" = 1 ]; then
            cuda_failed cuda-toolkit "$LOGS/cuda-toolkit.log"
        fi
    fi
    # torch's CUDA headers need a header found neither in the toolkit nor in torch's wheels
    if [ "$MMCV_OPS" = cuda ] && [ -n "$MMCV_PLAN_BLOCKED" ] && ! has_wheel; then
        say "$MMCV_PLAN_MESSAGE"
        printf '%s\n' "$MMCV_PLAN_BLOCKED" >"$LOGS/cuda-headers.log"
        cuda_failed cuda-headers "$LOGS/cuda-headers.log"
    fi
    if [ "$MMCV_OPS" = cuda ] && ! has_wheel; then
        say "$MMCV_PLAN_MESSAGE (log: .venv/setup-logs/mmcv-build-cuda.log)"
        build_mmcv "$LOGS/mmcv-build-cuda.log" || cuda_failed mmcv-build-cuda "$LOGS/mmcv-build-cuda.log"
    fi
    if has_wheel; then
        say "reusing the mmcv wheel cached in $WHEEL_DIR"
    else  # CPU ops
        say "$MMCV_PLAN_MESSAGE (log: .venv/setup-logs/mmcv-build.log)"
        build_mmcv "$LOGS/mmcv-build.log" || fail mmcv-build "$LOGS/mmcv-build.log" \
            "mmcv failed to compile; a C++20 compiler (g++ >= 10) and the Python headers (python3-dev) are needed"
    fi
    run_step mmcv-install "could not install the mmcv wheel from $WHEEL_DIR (delete that folder to rebuild)" \
        pip_install --no-deps --force-reinstall "$WHEEL_DIR"/mmcv-*.whl
    if [ -n "$FALLBACK_OF" ]; then echo "fallback:$FALLBACK_OF" >"$MMCV_STAMP"
    else echo "$MMCV_CACHE_KEY" >"$MMCV_STAMP"; fi
    mmcv_ok || fail mmcv-check "$LOGS/mmcv-install.log" "the mmcv wheel in $WHEEL_DIR has no compiled ops; delete that folder and re-run"
    if [ -n "$FALLBACK_OF" ]; then say "WARNING: mmcv has CPU ops only; $MMCV_PLAN_FIX"; fi
fi

# 4. everything else + this package, skipped when the requirement files did not change
STAMP="$VENV/.mmm-setup-stamp"
WANT="$(cat requirements/runtime.txt requirements/deploy.txt requirements/tests.txt setup.py | sha1sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c 'import mmmobilemamba, mmdet, mmseg, pytest' >/dev/null 2>&1; then
    say "packages up to date"
else
    say "installing mmdet, mmsegmentation, timm, onnxruntime, test tools and mmmobilemamba (editable)"
    run_step requirements "could not install requirements/runtime.txt + deploy.txt + tests.txt" \
        pip_install -r requirements/runtime.txt -r requirements/deploy.txt -r requirements/tests.txt
    run_step package "could not install this package in editable mode" \
        pip_install --no-deps --no-build-isolation -e .
    "$PY" -c 'import mmmobilemamba, mmdet, mmseg; from mmcv import _ext; from mmcv.ops import nms' \
        >"$LOGS/import-check.log" 2>&1 \
        || fail import-check "$LOGS/import-check.log" "the packages installed but do not import together (mmcv ops: delete $CACHE/wheels and re-run)"
    echo "$WANT" >"$STAMP"
fi
# 5. ExecuTorch (phone export; requirements/executorch.txt), skipped when present. Optional: a
# failure is reported, not fatal (everything else works without it and its tests skip).
ET_STAMP="$VENV/.mmm-executorch-stamp"
ET_WANT="$(cat requirements/executorch.txt requirements/torch.txt | sha1sum | cut -d' ' -f1)"
ET_CHECK='from executorch.runtime import Runtime; import executorch.exir, torchao, mmdet, mmseg
assert Runtime.get().backend_registry.is_available("XnnpackBackend"), "no XNNPACK backend"'
if [ -f "$ET_STAMP" ] && [ "$(cat "$ET_STAMP")" = "$ET_WANT" ] && "$PY" -c "$ET_CHECK" >/dev/null 2>&1; then
    say "executorch present"
else
    say "installing executorch (requirements/executorch.txt; log: .venv/setup-logs/executorch.log)"
    # the torch pin as a constraint: nothing ExecuTorch brings may replace torch
    if pip_install -r requirements/executorch.txt -c requirements/torch.txt >"$LOGS/executorch.log" 2>&1 \
            && "$PY" -c "$ET_CHECK" >>"$LOGS/executorch.log" 2>&1; then
        echo "$ET_WANT" >"$ET_STAMP"
    else
        rm -f "$ET_STAMP"
        printf '[setup] WARNING: executorch could not be installed or does not run (log: .venv/setup-logs/executorch.log);\n' >&2
        printf '[setup]   everything but the ExecuTorch export works. It needs the ExecuTorch release made for this torch\n' >&2
        printf '[setup]   (requirements/executorch.txt pins the one for torch 2.14.1); `make setup` tries again.\n' >&2
    fi
fi

say "ready: $VENV ($("$PY" -c 'import torch, mmcv, mmdet, mmseg; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")'))"
