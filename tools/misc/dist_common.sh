# The shared body of tools/dist_train.sh / dist_test.sh (torchrun) and tools/slurm_train.sh /
# slurm_test.sh (srun), sourced by them; their headers list the environment variables.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python}

# need_args MIN USAGE ARGS...: exit 2 with "usage: USAGE" when there are fewer than MIN ARGS
need_args() {
  local min=$1 usage=$2
  shift 2
  if [ $# -lt "$min" ]; then
    echo "usage: $usage" >&2
    exit 2
  fi
}

# run_torchrun PROCS TOOL ARGS...: tools/TOOL ARGS in PROCS processes on each of NNODES nodes
run_torchrun() {
  local procs=$1 tool=$2
  shift 2
  PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
      --nnodes="${NNODES:-1}" \
      --node_rank="${NODE_RANK:-0}" \
      --master_addr="${MASTER_ADDR:-127.0.0.1}" \
      --nproc_per_node="$procs" \
      --master_port="${PORT:-29500}" \
      "$ROOT/tools/$tool" "$@"
}

# run_srun PARTITION JOB_NAME TOOL ARGS...: tools/TOOL ARGS in GPUS SLURM tasks
run_srun() {
  local partition=$1 job_name=$2 tool=$3 gpus_per_node=${GPUS_PER_NODE:-8}
  shift 3
  # SRUN_ARGS is split into words on purpose (several srun options)
  # shellcheck disable=SC2086
  PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec srun -p "$partition" \
      --job-name="$job_name" \
      --gres=gpu:"$gpus_per_node" \
      --ntasks="${GPUS:-8}" \
      --ntasks-per-node="$gpus_per_node" \
      --cpus-per-task="${CPUS_PER_TASK:-5}" \
      --kill-on-bad-exit=1 \
      ${SRUN_ARGS:-} \
      "$PYTHON" -u "$ROOT/tools/$tool" "$@"
}
