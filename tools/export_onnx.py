"""Export a backbone, an mmpretrain classifier, an mmseg segmentor or an mmdet detector to ONNX in
inference form (opset >= 17, dynamic batch), verified against PyTorch with onnxruntime before the
file is written. See docs/onnx.md.

Usage::

    python tools/export_onnx.py CONFIG CHECKPOINT OUT.onnx [--shape H W] [--opset 18]
        [--force] [--trust-checkpoint] [--tolerance 1e-4] [--cfg-options k=v ...]

CONFIG is a classifier, segmentor or detector config, or any config whose ``model`` is a backbone;
with ``--backbone`` only ``model.backbone`` is exported. A segmentor's graph outputs the logits at
the input size, a detector's the raw dense-head outputs before NMS (docs/onnx.md). CHECKPOINT may
be in training or deploy form (with the matching config); ``none`` exports the initial weights.
"""
import argparse
import sys

from mmengine.config import DictAction
from mmengine.logging import MMLogger

from replk_mm.checkpoint import (UnsafeCheckpointError, extract_state_dict, load_checkpoint_file,
                                 load_state_dict_checked)
from replk_mm.deploy import build_model
from replk_mm.deploy.converter import load_config
from replk_mm.deploy.onnx_export import DEFAULT_OPSET, OnnxCheckError, export_onnx


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint', help="trained or deploy checkpoint, or 'none'")
    parser.add_argument('out_file', help='the .onnx file')
    parser.add_argument('--backbone', action='store_true', help='export model.backbone only')
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='>= 17')
    parser.add_argument('--tolerance', type=float, default=1e-4)
    parser.add_argument('--force', action='store_true', help='overwrite an existing file')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load the checkpoint with full pickle (only for files you trust)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logger = MMLogger.get_current_instance()
    try:
        model = build_model(load_config(args.config, args.cfg_options))
        if args.checkpoint.lower() != 'none':
            state_dict = extract_state_dict(load_checkpoint_file(
                args.checkpoint, trust=True if args.trust_checkpoint else None))
            load_state_dict_checked(model, state_dict, strict=True, source=args.checkpoint,
                                    logger=logger)
        if args.backbone:
            model = model.backbone
        result = export_onnx(model, args.out_file, (1, 3, *args.shape), opset=args.opset,
                             tolerance=args.tolerance, force=args.force,
                             kind='backbone' if args.backbone else None)
    except (UnsafeCheckpointError, OnnxCheckError, FileExistsError, FileNotFoundError, KeyError,
            ValueError) as err:
        print(f'error: ONNX export failed: {err}', file=sys.stderr)
        return 1
    ops = ', '.join(f'{op} x{n}' for op, n in sorted(result.node_counts.items()))
    logger.info(
        f'wrote {result.path}: {result.kind}, opset {result.opset}, input (batch, 3, '
        f'{args.shape[0]}, {args.shape[1]}) with dynamic batch, outputs {result.output_names}\n'
        f'onnxruntime vs PyTorch (batches 1 and 3): max relative error {result.error:.3e} <= '
        f'{args.tolerance:.0e}\n' +
        ('OpenVINO not installed: not checked (pip install -e .[deploy])\n'
         if result.openvino_error is None else
         f'OpenVINO vs PyTorch (batch 1): max relative error {result.openvino_error:.3e}\n') +
        f'graph: {ops}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
