#!/usr/bin/env bash
# Shared by tools/slurm_train.sh and tools/slurm_test.sh (mmdetection's interface):
#   tools/slurm_srun.sh PARTITION JOB_NAME SCRIPT.py [SCRIPT.py arguments]
# runs SCRIPT.py with srun in GPUS processes (default 8), GPUS_PER_NODE a node (default
# min(GPUS, 8)), CPUS_PER_TASK cores each (default 5), SRUN_ARGS added to srun's options.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: [GPUS=N] $0 PARTITION JOB_NAME SCRIPT.py [arguments]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
PYTHON=${PYTHON:-python}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# shellcheck disable=SC2086  # SRUN_ARGS is a list of options
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
exec srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$SCRIPT" "$@"
