#!/usr/bin/env bash
# The GPU check, one prepared script:
#   bash tools/analysis/gpu_check.sh [--quick]   # report and log in $OUT or work_dirs/gpu_check/
# First the targets (issue 19, item 6), each part with its own time limit; --quick stops after
# them (under 3 minutes on one GPU):
#  1. target_eval: B1 deployed for CUDA vs RegNetX-800MF eager (BN unfolded), 512² b32, fp32 and
#     bf16; the deployed form computing channels-last in bf16 (what its default layout,
#     CUDA_FORM_CHANNELS_LAST, is to follow)
#  2. target_train: training steps at 512² b16, fp32 and bf16 autocast, B1 and RegNetX-800MF
#     (eager, frozen BN statistics)
#  3. target_mask_rcnn / target_semantic_fpn: the whole models' training step (and latency):
#     Mask R-CNN B1 vs RegNetX-800MF at 800x1333 (when mmcv's nms/roi_align run on CUDA,
#     probed), Semantic FPN B4 vs ResNet-50 at 512²
#  4. target_compiled: torch.compile of B1's CUDA deploy form vs RegNetX-800MF eager, bf16
# Then (not with --quick): every CUDA path against the CPU (pytest -m cuda), the rest of the
# backbone table (tools/analysis/benchmark_gpu.py: B1 and T2 against RegNetX-800MF,
# ResNet-18/50, MobileNetV2 at 256² b256, 512² b32, 1024² b8; eager, deployed, the CPU form,
# RegNetX compiled; kernels per forward; batch-1 CUDA graphs), the scan alone, RetinaNet B1 FPS.
# One report, $OUT/gpu_report.md: the targets (PASS / FAIL / not measured, each naming the forms
# it compares), the tables, the CUDA tests' summary. Files in $OUT: gpu_report.md, gpu_check.log
# (every step's output), target_*.json, backbone.json (the figures). No step starts past the
# check's deadline (GPU_CHECK_BUDGET_S: 170 s with --quick, else 520 s); each is cut to it.
set -uo pipefail
cd "$(dirname "$0")/../.."
QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        *) echo "gpu_check: unknown argument $arg (usage: gpu_check.sh [--quick])" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT_DIR=${OUT:-work_dirs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-$([ "$QUICK" -eq 1 ] && echo 170 || echo 520)}
RESERVE=10  # seconds kept for the report at the end
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{gpu_report.md,backbone.json,target_*.json}  # no figures of a former run
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
log() { echo "$@" | tee -a "$LOG"; }
if ! $PY -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    log 'gpu_check: no CUDA GPU visible to torch here' >&2
    exit 2
fi
nvidia-smi >> "$LOG" 2>&1 || true
status=0
NOTES=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit (cut to the deadline), log it
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - RESERVE - SECONDS))
    if [ "$left" -lt 10 ]; then
        log "!! $name: skipped, the check's deadline is near (${SECONDS}s spent)"
        NOTES+=("$name: skipped (deadline)")
        status=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "== $name (at most ${limit}s; ${SECONDS}s spent)"
    local start=$SECONDS
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    log "== $name: exit code $rc after $((SECONDS - start))s"
    if [ "$rc" -ne 0 ]; then
        NOTES+=("$name: exit code $rc after $((SECONDS - start))s$([ "$rc" -eq 124 ] && echo ' (time limit)')")
        status=1
    fi
}

BENCH=(tools/analysis/benchmark_gpu.py --device cuda --repeats 10 --warmup 3)
# 1-4. the targets, each with its own time limit
step target_eval 25 $PY "${BENCH[@]}" --targets eval --json "$OUT_DIR/target_eval.json"
step target_train 30 $PY "${BENCH[@]}" --targets train --json "$OUT_DIR/target_train.json"
PROBE='import torch
from mmcv.ops import nms, roi_align
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]], device="cuda")
nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.5)
rois = torch.tensor([[0., 0., 0., 8., 8.]], device="cuda")
roi_align(torch.rand(1, 4, 16, 16, device="cuda"), rois, (2, 2))
torch.cuda.synchronize()'
if timeout 30 $PY -c "$PROBE" >> "$LOG" 2>&1; then
    DETECTORS=1
    step target_mask_rcnn 30 $PY tools/analysis/benchmark.py --compare 'Mask R-CNN' \
        --device cuda --det-shape 800 1333 --num-iters 5 --warmup 2 --train-iters 5 \
        --no-memory --json "$OUT_DIR/target_mask_rcnn.json"
else
    DETECTORS=0
    log '!! mmcv.ops nms/roi_align do not run on CUDA here: Mask R-CNN and RetinaNet skipped'
    NOTES+=('mmcv.ops nms/roi_align do not run on CUDA: Mask R-CNN and RetinaNet skipped')
    status=1
fi
step target_semantic_fpn 20 $PY tools/analysis/benchmark.py --compare 'Semantic FPN' \
    --device cuda --num-iters 5 --warmup 2 --train-iters 5 --no-memory \
    --json "$OUT_DIR/target_semantic_fpn.json"
step target_compiled 60 $PY "${BENCH[@]}" --targets compiled \
    --json "$OUT_DIR/target_compiled.json"

if [ "$QUICK" -eq 0 ]; then
    # 5. correctness (96 s on an H200 before this work)
    step cuda_tests 150 $PY -m pytest tests -m cuda -q -rs -p no:cacheprovider
    # 6. the rest of the backbone table, in order of need, cut by --budget-s (a compile needs
    # 60 s left); the JSON is rewritten after every measurement, so a kill keeps what was done
    step backbones 200 $PY "${BENCH[@]}" \
        --archs b1 t2 --references regnetx_800mf resnet18 resnet50 mobilenetv2 \
        --settings 256x256 32x512 8x1024 --dtypes fp32 bf16 \
        --forms eager deployed deployed-cpu-form compiled --cpu-form-at 32x512 \
        --compile-at 32x512 --compile-dtypes bf16 --compile-models regnetx_800mf \
        --train-setting none --kernels-at 32x512 --kernel-models b1 regnetx_800mf \
        --graph-size 512 --graph-models b1 regnetx_800mf \
        --budget-s 180 --json "$OUT_DIR/backbone.json"
    # 7-8. the scan alone; RetinaNet FPS
    step scan 40 $PY tools/analysis/benchmark_scan.py --device cuda --repeats 20
    if [ "$DETECTORS" -eq 1 ]; then
        step retinanet_fps 45 $PY tools/analysis/benchmark.py \
            configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py --device cuda \
            --shape 800 1333 --num-iters 50 --fuse
    fi
fi
CUDA_SUMMARY=$(grep -E '[0-9]+ (passed|failed|errors?)' "$LOG" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')

# the report: every run's figures, merged
NOTE_ARGS=()
if [ "$QUICK" -eq 1 ]; then
    NOTE_ARGS+=(--note "gpu_check --quick: the targets only (no CUDA tests, no full table)")
else
    NOTE_ARGS+=(--note "CUDA tests (pytest -m cuda): ${CUDA_SUMMARY:-no summary line}")
fi
for note in ${NOTES[@]+"${NOTES[@]}"}; do NOTE_ARGS+=(--note "$note"); done
NOTE_ARGS+=(--note "gpu_check: $SECONDS s until the report; step logs in gpu_check.log")
RUNS=("$OUT_DIR"/target_eval.json "$OUT_DIR"/target_train.json "$OUT_DIR"/target_compiled.json)
[ "$QUICK" -eq 0 ] && RUNS+=("$OUT_DIR"/backbone.json)
WHOLE=("$OUT_DIR"/target_semantic_fpn.json)
[ "$DETECTORS" -eq 1 ] && WHOLE=("$OUT_DIR"/target_mask_rcnn.json "${WHOLE[@]}")
timeout 30 $PY tools/analysis/benchmark_gpu.py --from-json "${RUNS[@]}" \
    --whole-model-json "${WHOLE[@]}" "${NOTE_ARGS[@]}" \
    --markdown "$OUT_DIR/gpu_report.md" >> "$LOG" 2>&1 || {
    log '!! the report could not be assembled'; status=1; }
log "gpu_check: done (exit $status) in ${SECONDS}s; report $OUT_DIR/gpu_report.md"
exit $status
