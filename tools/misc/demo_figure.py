"""Tile the pictures that tools/infer.py drew for the demo models (``make demo``) into one figure:
a row per model (UperNet segmentation, FCOS boxes, Cascade Mask R-CNN boxes and masks), a titled
strip above each row. The figure in the README is this script's output.

    python tools/misc/demo_figure.py work_dirs/demo_vis --out docs/figures/demo_predictions.jpg
"""
import argparse
import os
import os.path as osp
import sys
from typing import List

import cv2
import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from replk_mm.apis.inference import IMAGE_EXTENSIONS  # noqa: E402
from replk_mm.deploy.atomic import atomic_outputs  # noqa: E402

ROWS = (('seg', 'UperNet: semantic segmentation'), ('fcos', 'FCOS: boxes'),
        ('cascade', 'Cascade Mask R-CNN: boxes and masks'))
GAP = 4  # white pixels between pictures
TITLE = 26  # height of a row's title strip


def row(folder: str, title: str, columns: int, scale: int) -> np.ndarray:
    """The first ``columns`` pictures of ``folder`` side by side, ``scale`` times enlarged."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))[:columns]
    if not names:
        raise SystemExit(f'error: no pictures in {folder}; run `make demo` (tools/infer.py) first')
    tiles: List[np.ndarray] = []
    for name in names:
        img = cv2.imread(osp.join(folder, name))
        tiles += [cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST),
                  np.full((img.shape[0] * scale, GAP, 3), 255, np.uint8)]
    pictures = np.hstack(tiles[:-1])
    strip = np.full((TITLE, pictures.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, title, (4, TITLE - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                cv2.LINE_AA)
    return np.vstack([strip, pictures])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('vis_dir', help='tools/infer.py outputs: VIS_DIR/{seg,fcos,cascade}/')
    parser.add_argument('--out', required=True, help='figure file (.jpg or .png)')
    parser.add_argument('--columns', type=int, default=4, help='pictures per row')
    parser.add_argument('--scale', type=int, default=2, help='enlargement of each picture')
    args = parser.parse_args()
    rows = [row(osp.join(args.vis_dir, sub), title, args.columns, args.scale)
            for sub, title in ROWS]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    with atomic_outputs([args.out], force=True) as (tmp, ):
        if not cv2.imwrite(tmp, np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85]):
            raise SystemExit(f'error: cannot write {args.out} (use a .jpg or .png name)')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
