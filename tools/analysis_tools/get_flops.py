"""Parameters and FLOPs (multiply-accumulates, the papers' convention) of a model, training form and
deploy (re-parameterized) form.

    python tools/analysis_tools/get_flops.py CONFIG_OR_ARCH [--shape H W] [--deploy]

CONFIG_OR_ARCH is a config file (mmpretrain / mmseg / mmdet model) or a RepLKNet preset name
(e.g. 31B), which counts the authors' ImageNet classifier (backbone + BN + GAP + 1000-way head).
Counting traces one forward pass with MMEngine's FlopAnalyzer (``mmengine.analysis``).
"""
import argparse
import os
import sys
from typing import Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

import replk_mm
from replk_mm.deploy import reparameterize_model
from replk_mm.models.backbones.replknet import ARCH_SETTINGS
from replk_mm.ops import use_dw_impl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSIFIER_BASE = os.path.join(ROOT, 'configs', '_base_', 'models', 'replknet-31B_in1k.py')


def load_config(config_or_arch: str) -> Config:
    """A config file, or the RepLKNet ImageNet classifier of a preset name."""
    if os.path.isfile(config_or_arch):
        cfg = Config.fromfile(config_or_arch)
        cfg.setdefault('default_scope', 'mmpretrain')
        return cfg
    if config_or_arch not in ARCH_SETTINGS:
        raise SystemExit(f'{config_or_arch!r} is neither a config file nor a RepLKNet arch '
                         f'({", ".join(ARCH_SETTINGS)})')
    cfg = Config.fromfile(CLASSIFIER_BASE)
    cfg.model.backbone.arch = config_or_arch
    cfg.model.head.in_channels = ARCH_SETTINGS[config_or_arch]['channels'][-1]
    cfg.model.train_cfg = None
    cfg.default_scope = 'mmpretrain'
    return cfg


def build_model(cfg: Config) -> nn.Module:
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    return model.eval()


def count(model: nn.Module, shape: Tuple[int, int]) -> Tuple[int, int]:
    """``(parameters, multiply-accumulates)`` of one ``(1, 3, H, W)`` forward pass in eval mode."""
    inputs = torch.randn(1, 3, *shape)
    # Every depth-wise path traces the same conv; channels_last is the fast one for large kernels.
    with torch.no_grad(), use_dw_impl('torch_channels_last'):
        analyzer = FlopAnalyzer(model, (inputs, ))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = analyzer.total()
    return parameter_count(model)[''], flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config file or RepLKNet arch name (e.g. 31B)')
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--deploy', action='store_true',
                        help='also count the re-parameterized (deploy) form')
    args = parser.parse_args()

    model = build_model(load_config(args.config))
    rows = [('training', *count(model, args.shape))]
    if args.deploy:
        rows.append(('deploy', *count(reparameterize_model(model), args.shape)))
    print(f'{args.config}, input 1x3x{args.shape[0]}x{args.shape[1]}, FLOPs = multiply-adds')
    print(f'| form | params | FLOPs |\n|---|---|---|')
    for form, params, flops in rows:
        print(f'| {form} | {params:,} ({params / 1e6:.2f} M) | {flops / 1e9:.3f} G |')


if __name__ == '__main__':
    sys.exit(main())
