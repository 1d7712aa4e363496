#!/usr/bin/env bash
# Training on a SLURM cluster: bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]
# GPUS (default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5) and SRUN_ARGS as in OpenMMLab repos.
source "$(dirname "${BASH_SOURCE[0]}")/misc/dist_common.sh"
need_args 3 "bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]" "$@"
EXTRA=("${@:5}")
if [ -n "${4:-}" ]; then EXTRA=(--work-dir "$4" "${EXTRA[@]}"); fi
run_srun "$1" "$2" train.py "$3" --launcher slurm "${EXTRA[@]}"
