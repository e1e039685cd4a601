#!/usr/bin/env bash
# The GPU check, one prepared script (under 8 minutes on one H200):
#   bash tools/analysis/gpu_check.sh   # report and log in $OUT or work_dirs/gpu_check/
#  1. every CUDA path against the CPU: pytest -m cuda (tests/*/*_cuda.py and friends)
#  2. the backbone table (tools/analysis/benchmark_gpu.py): B1 and T2 against RegNetX-800MF,
#     ResNet-18/50, MobileNetV2; eval fp32/bf16 eager, deployed (CUDA form, and the CPU form at
#     512² b32), compiled (B1, RegNetX, 512² b32 bf16); training step; kernels per forward;
#     batch-1 CUDA graphs; the targets of issue 15
#  3. whole models: Mask R-CNN (B1 against RegNetX-800MF, ResNet-50, 800x1333) and Semantic
#     FPN (B4 against ResNet-50, 512²): latency and training step
#  4. the selective scan, forward + backward, per backend, on B1's maps of two 1333x800 images
#  5. RetinaNet MobileMamba-B1 inference FPS at 1333x800 (fused)
#  6. one report, $OUT/gpu_report.md: targets, tables, the CUDA tests' summary
# Files in $OUT: gpu_report.md, gpu_check.log (every step's output), backbone.json and
# whole_model.json (the figures). Steps with mmdet's NMS/RoIAlign (Mask R-CNN, RetinaNet)
# run when mmcv.ops.nms and roi_align work on CUDA tensors (probed; mmcv's own CUDA build or a
# stand-in); Semantic FPN needs neither. Each step has its own time limit, and no step starts
# past the whole check's deadline (GPU_CHECK_BUDGET_S, default 470 s).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT_DIR=${OUT:-work_dirs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
RESERVE=20  # seconds kept for the report at the end
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{gpu_report.md,backbone.json,whole_model.json}  # no figures of a former run
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
    if [ "$left" -lt 15 ]; then
        log "!! $name: skipped, the check's deadline is near (${SECONDS}s spent)"
        NOTES+=("$name: skipped (deadline)")
        status=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "== $name (at most ${limit}s; ${SECONDS}s spent)"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    log "== $name: exit code $rc after $((SECONDS - start))s"
    if [ "$rc" -ne 0 ]; then
        NOTES+=("$name: exit code $rc after $((SECONDS - start))s$([ "$rc" -eq 124 ] && echo ' (time limit)')")
        status=1
    fi
}

# 1. correctness (96 s on an H200)
step cuda_tests 150 $PY -m pytest tests -m cuda -q -rs -p no:cacheprovider
CUDA_SUMMARY=$(grep -E '[0-9]+ (passed|failed|errors?)' "$LOG" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')

# 2. the backbone table: measurements in order of need, cut by --budget-s (a compile needs
# 60 s left); the JSON is rewritten after every measurement, so a kill keeps what was done
step backbones 215 $PY tools/analysis/benchmark_gpu.py --device cuda \
    --archs b1 t2 --references regnetx_800mf resnet18 resnet50 mobilenetv2 \
    --settings 256x256 32x512 8x1024 --dtypes fp32 bf16 \
    --forms eager deployed deployed-cpu-form compiled --cpu-form-at 32x512 \
    --compile-at 32x512 --compile-dtypes bf16 --compile-models b1 regnetx_800mf \
    --train-setting 16x512 --kernels-at 32x512 --kernel-models b1 regnetx_800mf \
    --graph-size 512 --graph-models b1 regnetx_800mf --repeats 10 --warmup 3 \
    --budget-s 175 --json "$OUT_DIR/backbone.json"

# 3. whole models; peak memory (a fresh process per model, ~30 s each) left out to fit
PROBE='import torch
from mmcv.ops import nms, roi_align
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]], device="cuda")
nms(boxes, torch.tensor([0.9, 0.8], device="cuda"), 0.5)
rois = torch.tensor([[0., 0., 0., 8., 8.]], device="cuda")
roi_align(torch.rand(1, 4, 16, 16, device="cuda"), rois, (2, 2))
torch.cuda.synchronize()'
if timeout 60 $PY -c "$PROBE" >> "$LOG" 2>&1; then
    DETECTORS=1
    TASKS=('Mask R-CNN' 'Semantic FPN')
else
    DETECTORS=0
    TASKS=('Semantic FPN')
    log '!! mmcv.ops nms/roi_align do not run on CUDA here: Mask R-CNN and RetinaNet skipped'
    NOTES+=('mmcv.ops nms/roi_align do not run on CUDA: Mask R-CNN and RetinaNet skipped')
    status=1
fi
step whole_models 150 $PY tools/analysis/benchmark.py --compare "${TASKS[@]}" --device cuda \
    --det-shape 800 1333 --num-iters 10 --warmup 2 --train-iters 5 --no-memory \
    --json "$OUT_DIR/whole_model.json"

# 4-5. the scan alone; RetinaNet FPS
step scan 45 $PY tools/analysis/benchmark_scan.py --device cuda --repeats 20
if [ "$DETECTORS" -eq 1 ]; then
    step retinanet_fps 50 $PY tools/analysis/benchmark.py \
        configs/mobilemamba/retinanet_mobilemamba-b1_fpn_1x_coco.py --device cuda \
        --shape 800 1333 --num-iters 50 --fuse
fi

# 6. the report
NOTE_ARGS=(--note "CUDA tests (pytest -m cuda): ${CUDA_SUMMARY:-no summary line}")
for note in ${NOTES[@]+"${NOTES[@]}"}; do NOTE_ARGS+=(--note "$note"); done
NOTE_ARGS+=(--note "gpu_check: $SECONDS s until the report; step logs in gpu_check.log")
timeout 60 $PY tools/analysis/benchmark_gpu.py --from-json "$OUT_DIR/backbone.json" \
    --whole-model-json "$OUT_DIR/whole_model.json" "${NOTE_ARGS[@]}" \
    --markdown "$OUT_DIR/gpu_report.md" >> "$LOG" 2>&1 || {
    log '!! the report could not be assembled'; status=1; }
log "gpu_check: done (exit $status) in ${SECONDS}s; report $OUT_DIR/gpu_report.md"
exit $status
