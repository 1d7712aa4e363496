#!/usr/bin/env bash
# Distributed evaluation with torchrun: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT as in OpenMMLab repos.
source "$(dirname "${BASH_SOURCE[0]}")/misc/dist_common.sh"
need_args 3 "bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [--out FILE.pkl] [--show-dir DIR] ..." "$@"
run_torchrun "$3" test.py "$1" "$2" --launcher pytorch "${@:4}"
