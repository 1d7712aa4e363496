"""Parameters, FLOPs and CPU latency of every UniRepLKNet preset, training vs deploy form.

    python tools/analysis_tools/unireplknet_table.py [--presets A F ...] [--latency-shape H W]
        [--threads T] [--repeats R] [--no-latency] [--no-traced-flops] [--out DIR]

Each preset is the authors' ImageNet classifier (backbone, pooling, LayerNorm, 1000-way head), and
is compared with the authors' figures (SPEC.md section 2). Parameters and FLOPs (multiply-adds) at
the paper's resolution (224 for A..S, 384 for the 22K fine-tuned S..XL) are counted on the meta
device, without computing anything: FLOPs by ``torch.utils.flop_counter`` (convolutions and matrix
products). At 224 the FLOPs are also counted by MMEngine's FlopAnalyzer on a real forward pass (it
adds norms and pooling). Latency: batch 1, forward in eval mode, the package's DW dispatch; the
training and the deploy form run interleaved after warm-up and each form's median is reported, so
load on a shared machine hits both alike. Writes ``unireplknet_table.md`` and ``.csv`` into ``--out``.
"""
import argparse
import copy
import csv
import io
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from replk_mm.deploy import reparameterize_model
from replk_mm.deploy.atomic import write_text_atomic
from replk_mm.models import UniRepLKNet
from replk_mm.ops import use_dw_impl

# name: (resolution, authors' params training / deploy, README GFLOPs); XL etc. are at 384.
PRESETS: Dict[str, Tuple[int, int, int, float]] = {
    'A': (224, 4_649_060, 4_437_300, 0.6), 'F': (224, 6_489_328, 6_235_216, 0.9),
    'P': (224, 11_080_520, 10_741_704, 1.6), 'N': (224, 18_818_880, 18_318_560, 2.8),
    'T': (224, 31_693_420, 31_037_980, 4.9), 'S': (224, 56_456_704, 55_645_984, 9.1),
    'S-384': (384, 56_456_704, 55_645_984, 26.7), 'B-384': (384, 99_089_416, 98_008_456, 47.2),
    'L-384': (384, 220_076_056, 218_454_616, 105.4),
    'XL-384': (384, 388_690_984, 386_529_064, 187.0),
}


class Classifier(nn.Module):
    """The authors' ImageNet model: backbone -> GAP -> LayerNorm (norm3) -> linear head."""

    def __init__(self, arch: str, deploy: bool = False) -> None:
        super().__init__()
        self.backbone = UniRepLKNet(
            arch, out_indices=(3, ), gap_before_final_norm=True, deploy=deploy)
        self.head = nn.Linear(self.backbone.dims[-1], 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[0])


def meta_gflops(arch: str, size: int, deploy: bool) -> Tuple[int, float]:
    """``(parameters, G multiply-adds)`` of the classifier, built and run on the meta device."""
    with torch.device('meta'):
        model = Classifier(arch, deploy).eval()
    with torch.no_grad(), use_dw_impl('torch'), FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device='meta'))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2e9


def traced_gflops(model: nn.Module, size: int) -> float:
    """G multiply-adds by MMEngine's FlopAnalyzer (one real forward pass)."""
    with torch.no_grad(), use_dw_impl('torch_channels_last'):
        analyzer = FlopAnalyzer(model, (torch.randn(1, 3, size, size), ))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return analyzer.total() / 1e9


def latency_ms(models: List[nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> List[float]:
    """Median forward latency of each model, run in turn after warm-up."""
    times: List[List[float]] = [[] for _ in models]
    with torch.no_grad():
        for _ in range(warmup):
            for model in models:
                model(x)
        for _ in range(repeats):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(x)
                times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--presets', nargs='+', default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument('--latency-shape', type=int, nargs=2, default=(224, 224),
                        metavar=('H', 'W'), help='input of the latency runs (batch 1)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--no-latency', action='store_true')
    parser.add_argument('--no-traced-flops', action='store_true',
                        help="skip MMEngine's FlopAnalyzer (real forward passes at 224)")
    parser.add_argument('--out', default='work_dirs/unireplknet_table')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    measured = set()
    x = torch.randn(1, 3, *args.latency_shape)
    for name in tqdm(args.presets, desc='presets'):
        arch = name.split('-')[0]
        size, ref_train, ref_deploy, ref_gflops = PRESETS[name]
        row = dict(preset=name, resolution=size)
        for form, ref in (('train', ref_train), ('deploy', ref_deploy)):
            params, gflops = meta_gflops(arch, size, deploy=form == 'deploy')
            row[f'params_{form}'] = params
            row[f'params_{form}_equal_authors'] = params == ref
            row[f'gflops_{form}'] = round(gflops, 3)
        row['gflops_readme'] = ref_gflops
        row['gflops_deploy_vs_readme_pct'] = round(
            100 * (row['gflops_deploy'] - ref_gflops) / ref_gflops, 1)
        if arch in measured:  # S-384: the latency of this arch is in the S row
            rows.append(row)
            continue
        measured.add(arch)
        train = Classifier(arch).eval()
        deploy = reparameterize_model(copy.deepcopy(train))
        if not args.no_traced_flops and size == 224:
            row['gflops_train_mmengine'] = round(traced_gflops(train, size), 3)
            row['gflops_deploy_mmengine'] = round(traced_gflops(deploy, size), 3)
        if not args.no_latency:
            t_train, t_deploy = latency_ms([train, deploy], x, args.warmup, args.repeats)
            row.update(latency_train_ms=round(t_train, 1), latency_deploy_ms=round(t_deploy, 1),
                       deploy_speedup=round(t_train / t_deploy, 2))
        rows.append(row)
        del train, deploy

    columns = list(dict.fromkeys(k for r in rows for k in r))
    header = (f'UniRepLKNet classifiers (1000 classes): params and FLOPs (multiply-adds) at the '
              f'resolution shown; CPU latency: batch 1, {args.latency_shape[0]}x'
              f'{args.latency_shape[1]}, {args.threads} threads, torch {torch.__version__}, median '
              f'of {args.repeats} interleaved runs after {args.warmup} warm-up')
    md = [header, '', 'Command: `python ' + ' '.join(sys.argv) + '`', '',
          '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    md += ['| ' + ' | '.join(str(r.get(c, '')) for c in columns) + ' |' for r in rows]
    text = '\n'.join(md) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, 'unireplknet_table.md'), text)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(os.path.join(args.out, 'unireplknet_table.csv'), buffer.getvalue())


if __name__ == '__main__':
    main()
