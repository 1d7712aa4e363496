#!/usr/bin/env bash
# Distributed training with torchrun: bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT as in OpenMMLab repos. Without GPUs the
# processes train on the CPU over gloo.
source "$(dirname "${BASH_SOURCE[0]}")/misc/dist_common.sh"
need_args 2 "bash tools/dist_train.sh CONFIG GPUS [--work-dir DIR] [--resume [CKPT]] ..." "$@"
run_torchrun "$2" train.py "$1" --launcher pytorch "${@:3}"
