#!/usr/bin/env bash
# Evaluation on a SLURM cluster: bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]
# GPUS (default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5) and SRUN_ARGS as in OpenMMLab repos.
source "$(dirname "${BASH_SOURCE[0]}")/misc/dist_common.sh"
need_args 4 "bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" "$@"
run_srun "$1" "$2" test.py "$3" "$4" --launcher slurm "${@:5}"
