"""Convert a trained checkpoint (segmentor, detector, classifier or bare backbone) to deploy form.

Writes ``OUT_DIR/{config}_deploy.pth`` (weights + meta) and ``OUT_DIR/{config}_deploy.py``
(backbone ``deploy=True``), both usable by ``tools/test.py`` as they are, after checking that the
deploy form computes the training form. See docs/deploy.md.

Usage::

    python tools/deploy.py CONFIG CHECKPOINT OUT_DIR [--force] [--trust-checkpoint]
        [--shape H W] [--tolerance 1e-4] [--check-float64] [--runs 5] [--cfg-options k=v ...]
"""
import argparse
import sys

from mmengine.config import DictAction
from mmengine.logging import MMLogger

from replk_mm.checkpoint import UnsafeCheckpointError
from replk_mm.deploy import EquivalenceError, convert_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the training config')
    parser.add_argument('checkpoint', help='the trained checkpoint')
    parser.add_argument('out_dir', help='where the deploy checkpoint and config are written')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load the checkpoint with full pickle (can run code: only for files '
                        'you trust)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='check input size (default: 224 for classifiers / backbones, the crop '
                        'size or 512 for segmentors, 512 for detectors)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest accepted float32 relative error max|a-b|/max|a|')
    parser.add_argument('--check-float64', action='store_true',
                        help='also check float64 copies (error must be <= 1e-10)')
    parser.add_argument('--runs', type=int, default=5, help='timed CPU runs per form (median)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. model.backbone.arch=31B')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    logger = MMLogger.get_current_instance()
    try:
        result = convert_checkpoint(
            args.config, args.checkpoint, args.out_dir, force=args.force,
            trust=True if args.trust_checkpoint else None, tolerance=args.tolerance,
            input_shape=(1, 3, *args.shape) if args.shape else None,
            check_float64=args.check_float64, latency_runs=args.runs,
            cfg_options=args.cfg_options)
    except (UnsafeCheckpointError, EquivalenceError, FileExistsError, FileNotFoundError,
            KeyError, ValueError) as err:
        print(f'error: deploy failed: {err}', file=sys.stderr)
        return 1
    logger.info('deploy form written:\n' + result.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
