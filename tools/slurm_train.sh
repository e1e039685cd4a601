#!/usr/bin/env bash
# Training on a Slurm cluster, as mmdetection's tools/slurm_train.sh:
#   [GPUS=16] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#       tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]
# GPUS (default 8) is the total number of processes, one per GPU; GPUS_PER_NODE defaults to
# min(GPUS, 8). Older command lines that give GPUS as the 5th argument still work:
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR 16 [train.py options]
# See docs/distributed.md.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: [GPUS=N] $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
# train.py's options all start with "-": a bare number here is the old positional GPUS
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    export GPUS=$1
    shift
fi
TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$TOOLS/slurm_srun.sh" "$PARTITION" "$JOB_NAME" "$TOOLS/train.py" "$CONFIG" \
    --work-dir="$WORK_DIR" --launcher=slurm "$@"
