#!/usr/bin/env bash
# The GPU check, one prepared script (under 8 minutes on one GPU):
#   bash tools/analysis/gpu_check.sh        # logs and tables in $OUT or work_dirs/gpu_check/
#  1. every CUDA path against the CPU: pytest -m cuda (tests/*/*_cuda.py and friends)
#  2. the selective scan, forward + backward, per backend (torch, triton, mamba_ssm if
#     installed) on MobileMamba-B1's maps of two 1333x800 images
#  3. a Mask R-CNN training step at 1333x800, batch 2: MobileMamba-B1 against mmdet's
#     RegNetX-800MF and ResNet-50 Mask R-CNN (time, peak memory), and their latency
#  4. RetinaNet MobileMamba-B1 inference FPS at 1333x800 (fused)
# Steps 3-4 run mmdet's NMS and RoIAlign on the GPU: mmcv must be built with its CUDA ops
# (FORCE_CUDA=1, see the README); without them they are skipped with a message.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT_DIR=${OUT:-work_dirs/gpu_check}
mkdir -p "$OUT_DIR"
if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo 'gpu_check: no CUDA GPU visible to torch here' >&2
    exit 2
fi
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT_DIR/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! $name: exit code $rc" | tee -a "$OUT_DIR/$name.txt"
        status=1
    fi
}

step cuda_tests 200 $PY -m pytest tests -m cuda -q -rs -p no:cacheprovider
step scan 60 $PY tools/analysis/benchmark_scan.py --device cuda --repeats 20
if $PY -c 'import sys; from mmcv.ops import get_compiling_cuda_version as v; sys.exit(v() == "not available")'; then
    step mask_rcnn 170 $PY tools/analysis/benchmark.py --compare 'Mask R-CNN' --device cuda \
        --det-shape 800 1333 --num-iters 10 --train-iters 5 --markdown "$OUT_DIR/mask_rcnn.md"
    step retinanet_fps 60 $PY tools/analysis/benchmark.py \
        configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py --device cuda \
        --shape 800 1333 --num-iters 100 --fuse
else
    echo '!! mmcv has no CUDA ops (built without FORCE_CUDA=1): detector steps skipped' \
        | tee "$OUT_DIR/detectors_skipped.txt"
    status=1
fi
echo "gpu_check: done (exit $status); logs in $OUT_DIR"
exit $status
