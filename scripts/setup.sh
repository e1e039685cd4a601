#!/usr/bin/env bash
# Idempotent set-up: creates .venv/ at the repo root and installs torch, mmcv 2.1.0 (built with
# ops from its source distribution), mmdet, mmsegmentation, this package (editable) and the test
# tools. A second run checks what is there and takes seconds.
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

# 3. mmcv with ops (skipped when mmcv's compiled ops already import)
# Checked from the package metadata: importing mmcv needs mmengine, installed in step 4.
mmcv_ok() {
    "$PY" - "$MMCV_VERSION" >/dev/null 2>&1 <<'PYEOF'
import importlib.metadata as md, sys
dist = md.distribution('mmcv')
assert dist.version == sys.argv[1]
assert any(str(f).startswith('mmcv/_ext') for f in dist.files)
PYEOF
}
if mmcv_ok; then
    say "mmcv $MMCV_VERSION with ops present"
else
    run_step build-tools "could not install the build tools in requirements/build.txt" \
        pip_install -r requirements/build.txt
    # The wheel depends on the torch it was compiled against: key the cache on it.
    TORCH_TAG="$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')"
    WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-torch$TORCH_TAG"
    mkdir -p "$WHEEL_DIR"
    if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
        say "building mmcv $MMCV_VERSION with ops from source (about 15 minutes on 2 cores; log: .venv/setup-logs/mmcv-build.log)"
        SRC="$(mktemp -d)"
        run_step mmcv-download "could not download the mmcv $MMCV_VERSION source distribution from PyPI" \
            "$PY" -m pip download --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
            -d "$SRC" "mmcv==$MMCV_VERSION"
        tar -xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$SRC"
        # torch >= 2.5 headers need C++20; mmcv 2.1.0 asks for C++14/17.
        sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/mmcv-$MMCV_VERSION/setup.py"
        run_step mmcv-build "mmcv failed to compile; a C++20 compiler (g++ >= 10) and the Python headers (python3-dev) are needed" \
            env MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "$PY" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation \
            -w "$WHEEL_DIR" "$SRC/mmcv-$MMCV_VERSION"
        rm -rf "$SRC"
    else
        say "reusing the mmcv wheel cached in $WHEEL_DIR"
    fi
    run_step mmcv-install "could not install the mmcv wheel from $WHEEL_DIR (delete that folder to rebuild)" \
        pip_install --no-deps --force-reinstall "$WHEEL_DIR"/mmcv-*.whl
    mmcv_ok || fail mmcv-check "$LOGS/mmcv-install.log" "the mmcv wheel in $WHEEL_DIR has no compiled ops; delete that folder and re-run"
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
say "ready: $VENV ($("$PY" -c 'import torch, mmcv, mmdet, mmseg; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")'))"
