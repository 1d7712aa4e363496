"""Parameters and FLOPs (multiply-accumulates, the papers' convention) of one or more models,
training form and deploy (re-parameterized) form, in one table.

    python tools/analysis_tools/get_flops.py CONFIG_OR_ARCH [CONFIG_OR_ARCH ...] [--shape H W]
        [--deploy] [--counter analyzer|meta] [--out DIR]

CONFIG_OR_ARCH is a config file (mmpretrain / mmseg / mmdet model) or a RepLKNet preset name
(e.g. 31B), which counts the authors' ImageNet classifier (backbone + BN + GAP + 1000-way head).
Several of them make a table (e.g. every UniRepLKNet classifier config: docs/unireplknet.md).
The input is ``--shape``, else the config's ``img_size`` (ImageNet) or ``crop_size``
(segmentation), else 224x224. ``--counter analyzer`` (default) traces one real forward pass with
MMEngine's FlopAnalyzer; ``--counter meta`` builds and runs the model on the meta device, computing
nothing, and counts with ``torch.utils.flop_counter`` (convolutions and matrix products, the
authors' convention; for large models and inputs; not for detectors, whose box ops need data).
Where a config has a ``paper`` entry in configs/benchmarks/official.py, its figures are shown
beside. ``--out`` also writes ``flops.md`` and ``flops.csv`` there.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from torch.utils.flop_counter import FlopCounterMode

import replk_mm
from replk_mm.deploy import reparameterize_model
from replk_mm.deploy.atomic import write_csv_atomic, write_text_atomic
from replk_mm.models.backbones.replknet import ARCH_SETTINGS
from replk_mm.ops import use_dw_impl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSIFIER_BASE = os.path.join(ROOT, 'configs', '_base_', 'models', 'replknet-31B_in1k.py')
OFFICIAL = os.path.join(ROOT, 'configs', 'benchmarks', 'official.py')
COLUMNS = ['config', 'input', 'form', 'params', 'gflops', 'paper_params', 'paper_gflops',
           'paper_form']


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


def input_shape(cfg: Config, shape: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    """``shape``, else the config's ``img_size`` or ``crop_size``, else 224x224."""
    if shape:
        return tuple(shape)
    size = cfg.get('img_size', cfg.get('crop_size', 224))
    return (size, size) if isinstance(size, int) else tuple(size)


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


def count_meta(model: nn.Module, shape: Tuple[int, int]) -> Tuple[int, int]:
    """:func:`count` for a model on the meta device: convolutions and matrix products only."""
    inputs = torch.empty(1, 3, *shape, device='meta')
    with torch.no_grad(), use_dw_impl('torch'), FlopCounterMode(display=False) as counter:
        model(inputs)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def paper_figures() -> Dict[str, dict]:
    """The ``paper`` figures of configs/benchmarks/official.py, by config path."""
    entries = Config.fromfile(OFFICIAL).benchmarks
    return {os.path.normpath(e['config']): e['paper'] for e in entries if e.get('paper')}


def table(config: str, shape: Optional[Tuple[int, int]], deploy: bool, counter: str,
          papers: Dict[str, dict]) -> List[dict]:
    """One row per form of one config."""
    cfg = load_config(config)
    hw = input_shape(cfg, shape)
    if counter == 'meta':
        with torch.device('meta'):
            model = build_model(cfg)
    else:
        model = build_model(cfg)
    counter_fn = count_meta if counter == 'meta' else count
    forms = [('training', model)] + ([('deploy', None)] if deploy else [])
    paper = papers.get(os.path.normpath(os.path.relpath(os.path.abspath(config), ROOT)), {})
    rows = []
    for form, m in forms:
        params, flops = counter_fn(m or reparameterize_model(model), hw)
        row = dict(config=config, input=f'{hw[0]}x{hw[1]}', form=form, params=params,
                   gflops=round(flops / 1e9, 3))
        if paper:
            row.update(paper_params=round(paper['params']), paper_gflops=paper['flops'] / 1e9,
                       paper_form=paper.get('form', 'training'))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+', metavar='CONFIG_OR_ARCH',
                        help='config files or RepLKNet arch names (e.g. 31B)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help="input size (default: the config's img_size / crop_size, or 224)")
    parser.add_argument('--deploy', action='store_true',
                        help='also count the re-parameterized (deploy) form')
    parser.add_argument('--counter', choices=('analyzer', 'meta'), default='analyzer',
                        help="MMEngine's FlopAnalyzer on a real pass, or the meta device")
    parser.add_argument('--out', help='folder for flops.md and flops.csv')
    args = parser.parse_args()

    papers = paper_figures()
    rows = [row for config in args.configs
            for row in table(config, args.shape, args.deploy, args.counter, papers)]
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    md = [f'FLOPs = multiply-adds, batch 1, counter: {args.counter}', '',
          'Command: `python ' + ' '.join(sys.argv) + '`', '',
          '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    md += ['| ' + ' | '.join(_cell(r.get(c, '')) for c in columns) + ' |' for r in rows]
    text = '\n'.join(md) + '\n'
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_text_atomic(os.path.join(args.out, 'flops.md'), text)
        write_csv_atomic(os.path.join(args.out, 'flops.csv'), columns, rows)


def _cell(value) -> str:
    return f'{value:,}' if isinstance(value, int) and not isinstance(value, bool) else str(value)


if __name__ == '__main__':
    sys.exit(main())
