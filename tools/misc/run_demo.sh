#!/usr/bin/env bash
# What `make demo` runs after the set-up: writes the synthetic datasets, trains the UperNet demo
# (tiny RepLKNet) and the FCOS demo on the CPU, evaluates both with tools/test.py and prints their
# mIoU / box mAP, then converts both to deploy form (tools/deploy.py) and checks that it evaluates
# identically. PY selects the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-.venv/bin/python}
# Idle threads sleep instead of spinning: much faster on a CPU shared with other jobs.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
SEG=configs/demo/upernet_replknet-demo_ade20k-demo.py
DET=configs/demo/fcos_replknet-demo_coco-demo.py

"$PY" tools/misc/make_demo_data.py --out data/demo
"$PY" tools/train.py "$SEG" --work-dir work_dirs/demo_seg
"$PY" tools/train.py "$DET" --work-dir work_dirs/demo_fcos
"$PY" tools/test.py "$SEG" "$(cat work_dirs/demo_seg/last_checkpoint)" --work-dir work_dirs/demo_seg \
    | tee work_dirs/demo_seg/test.txt
"$PY" tools/test.py "$DET" "$(cat work_dirs/demo_fcos/last_checkpoint)" --work-dir work_dirs/demo_fcos \
    | tee work_dirs/demo_fcos/test.txt
# Deploy form: re-parameterize both trained checkpoints (tools/deploy.py checks the equivalence and
# prints params / size / CPU latency of both forms), evaluate them the same way: identical metrics.
for run in "$SEG:work_dirs/demo_seg" "$DET:work_dirs/demo_fcos"; do
  cfg=${run%%:*} dir=${run#*:}
  name=$(basename "$cfg" .py)
  "$PY" tools/deploy.py "$cfg" "$(cat "$dir/last_checkpoint")" "$dir/deploy" --force
  "$PY" tools/test.py "$dir/deploy/${name}_deploy.py" "$dir/deploy/${name}_deploy.pth" \
      --work-dir "$dir/deploy" | tee "$dir/deploy/test.txt"
  if [ "$(tail -n1 "$dir/test.txt")" != "$(tail -n1 "$dir/deploy/test.txt")" ]; then
    echo "error: the deploy form of $name evaluates differently from its training form" >&2
    exit 1
  fi
done
echo "UperNet + RepLKNet demo, ADE20K-layout val: $(tail -n1 work_dirs/demo_seg/test.txt)"
echo "FCOS + RepLKNet demo, COCO-layout val:      $(tail -n1 work_dirs/demo_fcos/test.txt)"
echo "deploy forms: identical metrics (work_dirs/demo_{seg,fcos}/deploy/test.txt)"
