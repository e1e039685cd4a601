#!/usr/bin/env bash
# `make demo`: detection with MobileMamba from scratch on a CPU, in a few minutes.
#
#   1. generate the built-in shapes data set (data/demo_coco; skipped when already there)
#   2. train the quickstart RetinaNet (configs/quickstart/retinanet_mobilemamba_demo-coco.py)
#   3. evaluate the last checkpoint on the validation split (COCO AP table) and draw its
#      predictions on every validation image
#   4. print the metrics and where everything went
#
# Environment (all optional):
#   DEMO_CONFIG    config to train (default: the RetinaNet quickstart)
#   DEMO_WORK_DIR  checkpoints and logs (default: work_dirs/<config name>)
#   DEMO_OUT       metrics and drawings (default: outputs/demo_det)
#   PYTHON         interpreter (default: .venv/bin/python)
#   OMP_NUM_THREADS  CPU threads (default: the idle cores, see below)
# Extra arguments are passed to tools/train.py, e.g.
#   bash scripts/demo.sh --cfg-options train_cfg.max_epochs=4
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CONFIG="${DEMO_CONFIG:-configs/quickstart/retinanet_mobilemamba_demo-coco.py}"
NAME="$(basename "$CONFIG" .py)"
WORK_DIR="${DEMO_WORK_DIR:-work_dirs/$NAME}"
OUT="${DEMO_OUT:-outputs/demo_det}"
VIS="$OUT/vis"

STEP="start-up"
say() { printf '\n[demo] %s\n' "$*"; }
on_error() {
    local code=$?
    printf '\n[demo] FAILED at step: %s (exit code %s)\n' "$STEP" "$code" >&2
    printf '[demo] the output above shows why; logs of the run are under %s\n' "$WORK_DIR" >&2
    exit "$code"
}
trap on_error ERR

[ -x "$PY" ] || { echo "[demo] FAILED at step: start-up: $PY not found; run 'make setup' first" >&2; exit 1; }
[ -f "$CONFIG" ] || { echo "[demo] FAILED at step: start-up: config $CONFIG not found" >&2; exit 1; }

# Threads: torch uses one per core. When other jobs already keep cores busy, its spinning
# OpenMP threads compete with them and a training step gets 5-10x slower; so use only the
# cores found idle over one second (at least one). An OMP_NUM_THREADS set by the caller is kept.
cpu_ticks() { awk '/^cpu /{ idle = $5 + $6; total = 0; for (i = 2; i <= NF; i++) total += $i; print idle, total }' /proc/stat; }
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -r /proc/stat ]; then
    CORES=$(nproc 2>/dev/null || echo 1)
    read -r IDLE0 TOTAL0 < <(cpu_ticks); sleep 1; read -r IDLE1 TOTAL1 < <(cpu_ticks)
    FREE=$(awk -v c="$CORES" -v i=$((IDLE1 - IDLE0)) -v t=$((TOTAL1 - TOTAL0)) \
        'BEGIN { f = (t > 0 ? int(c * i / t + 0.3) : c); print (f < 1 ? 1 : (f > c ? c : f)) }')
    if [ "$FREE" -lt "$CORES" ]; then
        export OMP_NUM_THREADS="$FREE"
        say "other jobs keep $((CORES - FREE)) of $CORES cores busy: training with $FREE thread(s) (set OMP_NUM_THREADS to choose)"
    fi
fi

START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

STEP="1/4 generate the demo data"
say "$STEP (data/demo_coco)"
"$PY" tools/misc/generate_demo_data.py --task det

STEP="2/4 train $CONFIG"
say "$STEP -> $WORK_DIR (a progress line every few iterations)"
mkdir -p "$OUT"
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
[ -f "$WORK_DIR/last_checkpoint" ] || { echo "[demo] no $WORK_DIR/last_checkpoint after training" >&2; false; }
CHECKPOINT="$(cat "$WORK_DIR/last_checkpoint")"
[ -f "$CHECKPOINT" ] || { echo "[demo] checkpoint $CHECKPOINT is missing" >&2; false; }
TRAIN_DONE=$(elapsed)

STEP="3/4 evaluate $CHECKPOINT"
say "$STEP (COCO box AP on data/demo_coco/val; drawings -> $VIS)"
rm -rf "$VIS"
"$PY" tools/test.py "$CONFIG" "$CHECKPOINT" --work-dir "$WORK_DIR" --show-dir "$VIS" \
    2>&1 | tee "$OUT/test.log"

STEP="4/4 report"
RESULTS="$(grep -a '^Evaluation results:' "$OUT/test.log" | tail -n 1 || true)"
[ -n "$RESULTS" ] || { echo "[demo] tools/test.py printed no 'Evaluation results:' line" >&2; false; }
metric() { sed -n "s/.*coco\/$1: \([0-9.-]*\).*/\1/p" <<<"$RESULTS"; }
BBOX_MAP="$(metric bbox_mAP)"
NUM_VIS=$(find "$VIS" -type f \( -name '*.jpg' -o -name '*.png' \) | wc -l)
TOTAL=$(elapsed)
{
    echo "config:      $CONFIG"
    echo "checkpoint:  $CHECKPOINT"
    echo "box mAP:     $BBOX_MAP   (AP50 $(metric bbox_mAP_50), AP75 $(metric bbox_mAP_75))"
    echo "time:        ${TOTAL}s in total, ${TRAIN_DONE}s up to the end of training"
    echo "date:        $(date '+%Y-%m-%d %H:%M %Z')"
} > "$OUT/metrics.txt"

say "done"
cat "$OUT/metrics.txt"
echo "predictions: $NUM_VIS drawings (ground truth left, prediction right) in $VIS/"
echo "logs:        $WORK_DIR/ (training), $OUT/test.log (evaluation)"
