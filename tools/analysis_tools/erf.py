"""Effective receptive field (ERF) of a backbone, as the RepLKNet paper measures it (appendix).

For each image (resized to SIZE x SIZE, normalized as the config's data preprocessor does), the
backbone runs to its last stage; the central point of that feature map (ReLU, summed over the
channels) is back-propagated to the input; the ReLU of the input gradient, summed over the
colour channels, is that image's contribution map. The ERF matrix is the mean map over the
images. For reading and comparing it is log-scaled and rescaled to [0, 1] (``log10(x + 1) / max``);
the high-contribution area ratio at threshold t is the area of the smallest centred square whose
sum exceeds t of the total, divided by the image area (thresholds 0.2 / 0.3 / 0.5 / 0.99).

Writes into OUT_DIR (all or nothing): ``{name}_erf.npy`` (the mean map), ``{name}_erf.png``
(heatmap of the scaled map), ``{name}_erf.md`` and ``{name}_erf.csv`` (the area ratios).

Usage::

    python tools/analysis_tools/erf.py CONFIG [--checkpoint CKPT] [--images DIR]
        [--num-images 50] [--size 1024] [--out-dir work_dirs/erf] [--name NAME]
        [--cfg-options model.backbone.arch=3-3-3-3]
"""
import argparse
import csv
import glob
import os.path as osp
import sys
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import DictAction
from tqdm import tqdm

from replk_mm.checkpoint import extract_state_dict, load_checkpoint_file, load_state_dict_checked
from replk_mm.deploy import build_model
from replk_mm.deploy.atomic import atomic_outputs
from replk_mm.deploy.converter import load_config

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
DEFAULT_IMAGES = 'data/demo/ade20k/images/validation'
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp')


def list_images(folder: str, num: int) -> List[str]:
    """The first ``num`` images under ``folder`` (recursive, sorted)."""
    files = sorted(f for f in glob.glob(osp.join(folder, '**', '*'), recursive=True)
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise FileNotFoundError(f'no images under {folder}; generate the demo images with '
                                '`python tools/misc/make_demo_data.py` or pass --images DIR')
    return files[:num]


def load_image(path: str, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(1, 3, size, size)`` RGB, bicubic-resized, ``(x - mean) / std``."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot read image {path}')
    img = cv2.resize(img[..., ::-1], (size, size), interpolation=cv2.INTER_CUBIC)
    img = (img.astype(np.float32) - np.float32(mean)) / np.float32(std)
    return torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()


def contribution_map(backbone: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``(H, W)``: ReLU of the gradient of the central point of the last feature map (ReLU,
    summed over channels) w.r.t. the input ``x`` ``(1, 3, H, W)``, summed over channels."""
    x = x.clone().requires_grad_(True)
    feat = backbone(x)[-1]
    h, w = feat.shape[-2:]
    central = F.relu(feat[:, :, h // 2, w // 2]).sum()
    grad, = torch.autograd.grad(central, x)
    return F.relu(grad).sum((0, 1)).numpy()


def mean_erf(backbone: nn.Module, images: Sequence[torch.Tensor]) -> Tuple[np.ndarray, int]:
    """The mean contribution map over ``images`` (NaN maps skipped) and how many were used."""
    total: Optional[np.ndarray] = None
    used = 0
    for x in tqdm(images, desc='ERF', leave=False):
        grad_map = contribution_map(backbone, x)
        if np.isnan(grad_map).any():
            continue
        total = grad_map.astype(np.float64) if total is None else total + grad_map
        used += 1
    if total is None:
        raise RuntimeError('every contribution map was NaN: check the checkpoint')
    return total / used, used


def scaled_erf(erf: np.ndarray) -> np.ndarray:
    """``log10(erf + 1)`` rescaled to max 1 (the paper's readable, comparable form)."""
    data = np.log10(erf + 1)
    peak = data.max()
    return data / peak if peak > 0 else data


def area_ratio(data: np.ndarray, threshold: float) -> Tuple[int, float]:
    """Side and area ratio of the smallest centred square holding more than ``threshold`` of
    ``data``'s sum (clipped to the map; the whole map when none does)."""
    h, w = data.shape
    total = data.sum()
    for half in range(max(h, w) // 2 + 1):
        window = data[max(h // 2 - half, 0):h // 2 + half + 1, max(w // 2 - half, 0):w // 2 + half + 1]
        if window.sum() > threshold * total:
            return min(window.shape), window.size / (h * w)
    return min(h, w), 1.0


def save_heatmap(data: np.ndarray, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5.4), dpi=100)
    image = ax.imshow(data, cmap='RdYlGn', vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, orientation='horizontal', fraction=0.05, pad=0.03)
    fig.savefig(path, format='png', bbox_inches='tight')
    plt.close(fig)


def build_backbone(config: str, checkpoint: Optional[str],
                   cfg_options: Optional[dict]) -> Tuple[nn.Module, Sequence[float], Sequence[float]]:
    """The (eval-mode) backbone of the config's model and the preprocessor's mean / std."""
    cfg = load_config(config, cfg_options)
    model = build_model(cfg)
    if checkpoint:
        load_state_dict_checked(model, extract_state_dict(load_checkpoint_file(checkpoint)),
                                strict=True, source=checkpoint)
    backbone = getattr(model, 'backbone', model).eval()
    for param in backbone.parameters():
        param.requires_grad_(False)
    # The map is torch.autograd.grad w.r.t. the input, which re-entrant activation checkpointing
    # (with_cp=True in the segmentation configs) does not support; it would save nothing here.
    for module in backbone.modules():
        if getattr(module, 'with_cp', False):
            module.with_cp = False
    # mmseg / mmdet keep it in the model; mmpretrain configs at the top level.
    preprocessor = cfg.model.get('data_preprocessor') or cfg.get('data_preprocessor') or {}
    return (backbone, preprocessor.get('mean', IMAGENET_MEAN), preprocessor.get('std', IMAGENET_STD))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Effective receptive field (RepLKNet appendix)')
    parser.add_argument('config', help='any config with a replk_mm backbone (or a backbone model)')
    parser.add_argument('--checkpoint', help='weights (default: the initialization)')
    parser.add_argument('--images', default=DEFAULT_IMAGES, help='image folder (recursive)')
    parser.add_argument('--num-images', type=int, default=50)
    parser.add_argument('--size', type=int, default=1024, help='input side (the paper: 1024)')
    parser.add_argument('--out-dir', default='work_dirs/erf')
    parser.add_argument('--name', help='output file prefix (default: the config name)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initialization')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.manual_seed(args.seed)
    backbone, mean, std = build_backbone(args.config, args.checkpoint, args.cfg_options)
    paths = list_images(args.images, args.num_images)
    images = [load_image(p, args.size, mean, std) for p in paths]
    erf, used = mean_erf(backbone, images)
    data = scaled_erf(erf)
    rows = [(t, *area_ratio(data, t)) for t in THRESHOLDS]

    name = args.name or osp.splitext(osp.basename(args.config))[0]
    outputs = [osp.join(args.out_dir, f'{name}_erf{ext}') for ext in ('.npy', '.png', '.md', '.csv')]
    table = [f'ERF of {name} ({used} images from {args.images}, {args.size}x{args.size})', '',
             '| threshold t | side of the square | high-contribution area ratio |',
             '|---|---|---|'] + [f'| {t} | {side} | {ratio:.4f} |' for t, side, ratio in rows]
    with atomic_outputs(outputs, force=args.force) as (tmp_npy, tmp_png, tmp_md, tmp_csv):
        np.save(tmp_npy, erf)
        save_heatmap(data, tmp_png, f'ERF of {name}, log scale ({used} images, {args.size} px)')
        with open(tmp_md, 'w') as f:
            f.write('\n'.join(table) + '\n')
        with open(tmp_csv, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['threshold', 'side', 'area_ratio'])
            writer.writerows((t, side, f'{ratio:.6f}') for t, side, ratio in rows)
    print('\n'.join(table))
    print('wrote ' + ', '.join(outputs))
    return 0


if __name__ == '__main__':
    sys.exit(main())
