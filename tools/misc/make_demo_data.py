"""Write small synthetic datasets in the real ADE20K and COCO layouts (deterministic, seeded).

Layouts (what mmseg's ``ADE20KDataset`` and mmdet's ``CocoDataset`` read, unchanged)::

    OUT/ade20k/images/{training,validation}/*.jpg
    OUT/ade20k/annotations/{training,validation}/*.png   # uint8, 0 = unlabeled, 1..150 = ADE classes
    OUT/coco/{train2017,val2017}/*.jpg
    OUT/coco/annotations/instances_{train2017,val2017}.json  # boxes (xywh) + polygons

The scenes are learnable: a "wall" above a "floor" with a random horizon, and coloured shapes whose
class is given by both their form and their hue (ADE20K: person = disc, car = box, tree = triangle;
COCO: categories ``circle``, ``square``, ``triangle``). Object outlines are left unlabeled (0) in the
ADE20K maps, as in the real annotations, so ``reduce_zero_label`` has something to ignore.

Usage::

    python tools/misc/make_demo_data.py [--out data/demo] [--seed 0] [--size 128]
"""
import argparse
import json
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import cv2
import numpy as np

# ADE20K's 150-class convention: label value = class index + 1 (0 is "unlabeled").
ADE_WALL, ADE_FLOOR, ADE_TREE, ADE_PERSON, ADE_CAR = 1, 4, 5, 13, 21
ADE_SHAPES = {'disc': ADE_PERSON, 'box': ADE_CAR, 'triangle': ADE_TREE}
COCO_CATEGORIES = [
    dict(id=1, name='circle', supercategory='shape'),
    dict(id=2, name='square', supercategory='shape'),
    dict(id=3, name='triangle', supercategory='shape'),
]
COCO_SHAPES = {'disc': 1, 'box': 2, 'triangle': 3}
# Base BGR colour per shape; each object jitters it.
SHAPE_COLOURS = {'disc': (60, 60, 220), 'box': (220, 90, 40), 'triangle': (50, 190, 60)}
SPLITS = {'train': ('training', 'train2017'), 'val': ('validation', 'val2017')}


def _shape_polygon(rng: np.random.Generator, kind: str, cx: float, cy: float,
                   r: float) -> np.ndarray:
    """Outline of one shape as an ``(P, 2)`` float array of (x, y) points."""
    if kind == 'disc':
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if kind == 'box':
        a = rng.uniform(0.6, 1.0) * r
        b = rng.uniform(0.6, 1.0) * r
        return np.array([[cx - a, cy - b], [cx + a, cy - b], [cx + a, cy + b], [cx - a, cy + b]])
    t = rng.uniform(0, 2 * np.pi / 3) + np.array([0, 2, 4]) * np.pi / 3
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _background(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, int]:
    """A wall above a floor: ``(H, W, 3)`` uint8 image and the horizon row."""
    horizon = int(rng.integers(size // 3, 2 * size // 3))
    img = np.empty((size, size, 3), np.float32)
    wall = np.array([200, 200, 190]) + rng.normal(0, 12, 3)
    floor = np.array([70, 110, 140]) + rng.normal(0, 12, 3)
    img[:horizon] = wall
    img[horizon:] = floor
    img += np.linspace(-15, 15, size)[None, :, None]
    return img, horizon


def _scene(rng: np.random.Generator, size: int, max_objects: int = 4):
    """One image with non-overlapping shapes.

    Returns:
        ``(image (H, W, 3) uint8 BGR, [(kind, polygon (P, 2)), ...], horizon)``.
    """
    img, horizon = _background(rng, size)
    objects: List[Tuple[str, np.ndarray]] = []
    taken: List[Tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(20):
            r = rng.uniform(0.09, 0.22) * size
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 3) ** 2 for x, y, q in taken):
                break
        else:
            continue
        kind = str(rng.choice(list(SHAPE_COLOURS)))
        poly = _shape_polygon(rng, kind, cx, cy, r)
        colour = np.clip(np.array(SHAPE_COLOURS[kind]) + rng.normal(0, 18, 3), 0, 255)
        cv2.fillPoly(img, [np.round(poly).astype(np.int32)], colour.tolist(), cv2.LINE_AA)
        taken.append((cx, cy, r))
        objects.append((kind, poly))
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), objects, horizon


def _ade_label(size: int, objects, horizon: int) -> np.ndarray:
    """``(H, W)`` uint8 map in ADE20K's convention (0 unlabeled, class index + 1 otherwise)."""
    label = np.full((size, size), ADE_WALL, np.uint8)
    label[horizon:] = ADE_FLOOR
    for kind, poly in objects:
        pts = [np.round(poly).astype(np.int32)]
        cv2.fillPoly(label, pts, ADE_SHAPES[kind])
        cv2.polylines(label, pts, True, 0, 1)  # unlabeled outline
    return label


def _coco_annotation(kind: str, poly: np.ndarray, size: int, image_id: int,
                     ann_id: int) -> Dict:
    poly = np.clip(poly, 0, size - 1)
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    return dict(id=ann_id, image_id=image_id, category_id=COCO_SHAPES[kind],
                bbox=[round(float(x0), 2), round(float(y0), 2),
                      round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                area=round(float(area), 2), iscrowd=0,
                segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]])


def write_ade20k(root: str, rng: np.random.Generator, counts: Dict[str, int], size: int) -> None:
    """ADE20K layout under ``root``."""
    for split, n in counts.items():
        ade_split = SPLITS[split][0]
        img_dir = os.path.join(root, 'images', ade_split)
        ann_dir = os.path.join(root, 'annotations', ade_split)
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        for i in range(n):
            img, objects, horizon = _scene(rng, size)
            name = f'ADE_demo_{ade_split}_{i:05d}'
            cv2.imwrite(os.path.join(img_dir, name + '.jpg'), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(os.path.join(ann_dir, name + '.png'), _ade_label(size, objects, horizon))


def write_coco(root: str, rng: np.random.Generator, counts: Dict[str, int], size: int) -> None:
    """COCO instances layout under ``root``."""
    os.makedirs(os.path.join(root, 'annotations'))
    ann_id = 1
    for split, n in counts.items():
        coco_split = SPLITS[split][1]
        img_dir = os.path.join(root, coco_split)
        os.makedirs(img_dir)
        images, annotations = [], []
        for i in range(n):
            img, objects, _ = _scene(rng, size)
            image_id = i + 1
            file_name = f'{image_id:012d}.jpg'
            cv2.imwrite(os.path.join(img_dir, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=image_id, file_name=file_name, height=size, width=size))
            for kind, poly in objects:
                annotations.append(_coco_annotation(kind, poly, size, image_id, ann_id))
                ann_id += 1
        with open(os.path.join(root, 'annotations', f'instances_{coco_split}.json'), 'w') as f:
            json.dump(dict(info=dict(description='replk_mm synthetic demo'), licenses=[],
                           images=images, annotations=annotations,
                           categories=COCO_CATEGORIES), f)


def make_demo_data(out: str, seed: int = 0, size: int = 128, num_train: int = 240,
                   num_val: int = 60) -> None:
    """Write ``out/ade20k`` and ``out/coco``; replaces them atomically (temp dir + rename)."""
    counts = {'train': num_train, 'val': num_val}
    os.makedirs(out, exist_ok=True)
    for name, writer, offset in (('ade20k', write_ade20k, 0), ('coco', write_coco, 1)):
        tmp = tempfile.mkdtemp(prefix=f'.{name}.', dir=out)
        try:
            writer(tmp, np.random.default_rng([seed, offset]), counts, size)
            target = os.path.join(out, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder (default: data/demo)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--size', type=int, default=128, help='image side in pixels')
    parser.add_argument('--num-train', type=int, default=240)
    parser.add_argument('--num-val', type=int, default=60)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.size < 32:
        raise SystemExit(f'error: --size {args.size} is too small; use 32 or more')
    make_demo_data(args.out, args.seed, args.size, args.num_train, args.num_val)
    print(f'wrote {args.out}/ade20k and {args.out}/coco '
          f'({args.num_train} train / {args.num_val} val images each, {args.size}px)')


if __name__ == '__main__':
    main()
