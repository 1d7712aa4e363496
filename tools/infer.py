"""Run a checkpoint (training or deploy form) on your own images: segmentation (mmseg), detection /
instance segmentation (mmdet) or classification (mmpretrain), by the config's ``default_scope``.
Writes, per image, the picture with the predictions drawn and the predictions as JSON into
``--out-dir``; an unreadable image is skipped with a warning and makes the exit status 1.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] --out-dir DIR
        [--device cpu|cuda[:N]] [--batch-size 1] [--score-thr 0.3] [--optimize]
        [--cfg-options k=v ...]

INPUT: image files, folders (their image files) and glob patterns (quote them: "imgs/*.jpg").
"""
import argparse
import sys

import replk_mm  # noqa: F401  (first: safe checkpoint loading for everything below)
from mmengine.config import DictAction
from tqdm import tqdm

from replk_mm.apis import Inferencer, find_images, iter_inference
from replk_mm.engine.cli import run_tool


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file (the *_deploy.py one for a converted '
                        'checkpoint)')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image files, folders and glob patterns')
    parser.add_argument('--out-dir', required=True, help='folder for the drawings and JSON files')
    parser.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward pass')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: lowest score drawn and written (default 0.3)')
    parser.add_argument('--optimize', action='store_true',
                        help='run the inference form (replk_mm.deploy.optimize_for_inference: '
                        'BNs folded, fused oneDNN convs; faster on CPUs, same predictions)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    images = find_images(args.inputs)
    inferencer = Inferencer(args.config, args.checkpoint, args.device, args.cfg_options,
                            args.optimize)
    results = iter_inference(inferencer, images, args.out_dir, args.batch_size, args.score_thr)
    failed = [r.image for r in tqdm(results, total=len(images), desc='infer', unit='img')
              if r.error]
    print(f'wrote {len(images) - len(failed)} drawings and JSON files to {args.out_dir}')
    if failed:
        print(f'{len(failed)} of {len(images)} inputs could not be read: {", ".join(failed)}',
              file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    run_tool(main)
