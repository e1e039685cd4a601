#!/usr/bin/env bash
# Testing on a Slurm cluster, as mmdetection's tools/slurm_test.sh:
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] \
#       tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]
# GPUS (default 8) is the total number of processes, one per GPU; GPUS_PER_NODE defaults to
# min(GPUS, 8). See docs/distributed.md.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: [GPUS=N] $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]" >&2
    exit 2
fi
TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$TOOLS/slurm_srun.sh" "$1" "$2" "$TOOLS/test.py" "$3" "$4" --launcher=slurm "${@:5}"
