#!/usr/bin/env bash
# What `make demo` runs after the set-up: writes the synthetic datasets, trains the UperNet demo
# (tiny RepLKNet), the FCOS demo and the Cascade Mask R-CNN demo on the CPU, evaluates them with
# tools/test.py and prints their mIoU / box mAP / box and mask mAP, converts each to deploy form
# (tools/deploy.py) and checks that it evaluates identically, then draws each deploy model's
# predictions on 4 validation images with tools/infer.py into work_dirs/demo_vis/.
# PY selects the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-.venv/bin/python}
# Idle threads sleep instead of spinning: much faster on a CPU shared with other jobs.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
SEG=configs/demo/upernet_replknet-demo_ade20k-demo.py
DET=configs/demo/fcos_replknet-demo_coco-demo.py
INS=configs/demo/cascade-mask-rcnn_replknet-demo_coco-demo.py
RUNS=("$SEG:work_dirs/demo_seg" "$DET:work_dirs/demo_fcos" "$INS:work_dirs/demo_cascade")

"$PY" tools/misc/make_demo_data.py --out data/demo
for run in "${RUNS[@]}"; do
  "$PY" tools/train.py "${run%%:*}" --work-dir "${run#*:}"
done
for run in "${RUNS[@]}"; do
  cfg=${run%%:*} dir=${run#*:}
  "$PY" tools/test.py "$cfg" "$(cat "$dir/last_checkpoint")" --work-dir "$dir" | tee "$dir/test.txt"
done
# Deploy form: re-parameterize the trained checkpoints (tools/deploy.py checks the equivalence and
# prints params / size / CPU latency of both forms), evaluate them the same way: identical metrics.
for run in "${RUNS[@]}"; do
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
# Pictures: each deploy model on the first 4 validation images.
rm -rf work_dirs/demo_vis
for run in "${RUNS[@]}"; do
  cfg=${run%%:*} dir=${run#*:}
  name=$(basename "$cfg" .py)
  case $cfg in
    *ade20k*) images=data/demo/ade20k/images/validation/ADE_demo_validation_0000[0-3].jpg ;;
    *) images=data/demo/coco/val2017/00000000000[1-4].jpg ;;
  esac
  # shellcheck disable=SC2086  # the glob expands to the 4 images
  "$PY" tools/infer.py "$dir/deploy/${name}_deploy.py" "$dir/deploy/${name}_deploy.pth" $images \
      --out-dir "work_dirs/demo_vis/${dir#work_dirs/demo_}"
done
"$PY" tools/misc/demo_figure.py work_dirs/demo_vis --out work_dirs/demo_vis/demo_predictions.jpg
echo "UperNet + RepLKNet demo, ADE20K-layout val:   $(tail -n1 work_dirs/demo_seg/test.txt)"
echo "FCOS + RepLKNet demo, COCO-layout val:        $(tail -n1 work_dirs/demo_fcos/test.txt)"
echo "Cascade Mask R-CNN + RepLKNet demo, COCO val: $(tail -n1 work_dirs/demo_cascade/test.txt)"
echo "deploy forms: identical metrics (work_dirs/demo_{seg,fcos,cascade}/deploy/test.txt)"
echo "pictures of the predictions: work_dirs/demo_vis/ (seg, fcos, cascade; demo_predictions.jpg)"
