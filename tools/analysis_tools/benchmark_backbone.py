"""Latency and peak memory of RepLKNet / UniRepLKNet backbones: training vs deploy form, the
package's depth-wise dispatch vs plain NCHW PyTorch, side by side with mmpretrain's RepLKNet on the
same input.

    python tools/analysis_tools/benchmark_backbone.py CONFIG_OR_ARCH [CONFIG_OR_ARCH ...]
        [--shape H W] [--batch N] [--threads T] [--repeats R]
        [--modes forward forward_backward] [--out DIR]

CONFIG_OR_ARCH is a RepLKNet preset name (31B, 31L, XL, ...) or a config whose ``model.backbone``
is a ``replk_mm.RepLKNet`` or a ``replk_mm.UniRepLKNet`` (e.g. ``configs/unireplknet/*.py``; it has
no mmpretrain counterpart, so only the replk_mm variants run); several of them make one table, one
model after the other. Every variant outputs the last stage with a norm on it (mmpretrain's
default ``out_indices=(3,)``). Runs are interleaved (A, B, C, A, B, C, ...) after warm-up, and each
variant's median is reported, so load on a shared machine hits every variant alike. Peak memory: what one
pass allocates at its peak beyond the weights and input (CUDA: the allocator's statistics; CPU: the
profiler's allocation events). Writes ``benchmark.md`` and ``benchmark.csv`` into ``--out``.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from tqdm import tqdm

from replk_mm.deploy import reparameterize_model
from replk_mm.deploy.atomic import write_csv_atomic, write_text_atomic
from replk_mm.models import RepLKNet, UniRepLKNet
from replk_mm.models.backbones.replknet import ARCH_SETTINGS
from replk_mm.ops import dw_impl_choices, use_bn_impl, use_dw_impl

MMPRETRAIN_ARCHS = ('31B', '31L', 'XL')
BACKBONES = {'replk_mm.RepLKNet': RepLKNet, 'RepLKNet': RepLKNet,
             'replk_mm.UniRepLKNet': UniRepLKNet, 'UniRepLKNet': UniRepLKNet}
VARIANTS = {
    # name: (description, builder key, deploy, DW impl, channels_last, BN impl)
    'ours-train-auto': ('replk_mm, training form, DW dispatch', 'ours', False, 'auto', False,
                        'auto'),
    'ours-train-torchbn': ("replk_mm, training form, DW dispatch, PyTorch's BN kernel", 'ours',
                           False, 'auto', False, 'torch'),
    'ours-train-nchw': ('replk_mm, training form, plain NCHW', 'ours', False, 'torch', False,
                        'torch'),
    'ours-deploy-auto': ('replk_mm, deploy form, DW dispatch', 'ours', True, 'auto', False, 'auto'),
    'ours-deploy-nchw': ('replk_mm, deploy form, plain NCHW', 'ours', True, 'torch', False, 'torch'),
    'ours-deploy-auto-cl': ('replk_mm, deploy form, DW dispatch, channels_last model', 'ours',
                            True, 'auto', True, 'auto'),
    'mmpretrain-default': ("mmpretrain RepLKNet, default (training form)", 'mmpretrain', False,
                           'torch', False, 'torch'),
    'mmpretrain-deploy-cl': ('mmpretrain RepLKNet, deploy form, channels_last model',
                             'mmpretrain', True, 'torch', True, 'torch'),
}


def backbone_kwargs(config_or_arch: str) -> dict:
    """RepLKNet arguments of a preset name or of a config's ``model.backbone``."""
    if config_or_arch in ARCH_SETTINGS:
        return dict(arch=config_or_arch)
    if not os.path.isfile(config_or_arch):
        raise SystemExit(f'{config_or_arch!r} is neither a config file nor a RepLKNet arch '
                         f'({", ".join(ARCH_SETTINGS)})')
    backbone = Config.fromfile(config_or_arch).model.get('backbone', {})
    if backbone.get('type') not in BACKBONES:
        raise SystemExit(f'{config_or_arch}: model.backbone is {backbone.get("type")!r}, '
                         'not replk_mm.RepLKNet or replk_mm.UniRepLKNet')
    kwargs = {k: v for k, v in backbone.items() if k in ('arch', 'norm_cfg', 'act_cfg')}
    if BACKBONES[backbone['type']] is UniRepLKNet:
        kwargs['type'] = 'UniRepLKNet'
    if kwargs.get('norm_cfg', {}).get('type') == 'SyncBN':
        kwargs['norm_cfg'] = dict(kwargs['norm_cfg'], type='BN')  # one process: plain BN
    return kwargs


def mmpretrain_kwargs(arch: Union[str, dict, None]) -> Optional[dict]:
    """``arch`` (and ``ffn_ratio``) for mmpretrain's RepLKNet of the same architecture as ours, or
    None when mmpretrain has no such preset."""
    if isinstance(arch, dict):  # mmpretrain needs every key of its arch dicts
        arch = dict(dict(small_kernel=None, dw_ratio=1), **arch)
        ffn_ratio = arch.pop('ffn_ratio', 4)
        return dict(arch=arch, ffn_ratio=ffn_ratio)
    return dict(arch=arch) if arch in MMPRETRAIN_ARCHS else None


def build(variant: str, kwargs: dict, device: torch.device) -> Optional[nn.Module]:
    """The variant's model, in eval mode, or None when it does not apply to this arch."""
    _, builder, deploy, _, channels_last, _ = VARIANTS[variant]
    torch.manual_seed(0)
    if kwargs.get('type') == 'UniRepLKNet':
        if builder != 'ours':
            return None
        model = UniRepLKNet(**{k: v for k, v in kwargs.items() if k != 'type'},
                            out_indices=(3, ), drop_path_rate=0.0)
        if deploy:
            reparameterize_model(model.eval())
    elif builder == 'ours':
        model = RepLKNet(**kwargs, out_indices=(3, ), norm_intermediate_features=True,
                         drop_path_rate=0.0)
        if deploy:
            reparameterize_model(model.eval())
    else:
        theirs = mmpretrain_kwargs(kwargs.get('arch'))
        if theirs is None:
            return None
        from mmpretrain.models.backbones import RepLKNet as MMPretrainRepLKNet
        model = MMPretrainRepLKNet(**theirs, out_indices=(3, ), drop_path_rate=0.0)
        model.eval()  # (mmpretrain's train() returns None)
        if deploy:
            model.switch_to_deploy()
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    return model


def make_step(variant: str, model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """One pass: ``forward`` (eval, no grad) or ``forward_backward`` (train mode, backward)."""
    dw_impl, channels_last, bn_impl = VARIANTS[variant][3:]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with use_dw_impl(dw_impl), use_bn_impl(bn_impl):
            if mode == 'forward':
                model.eval()
                with torch.no_grad():
                    model(x)
            else:
                model.train()
                loss = sum(out.float().mean() for out in model(x))
                loss.backward()
                for p in model.parameters():
                    p.grad = None

    return step


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int,
                     repeats: int, desc: str) -> Dict[str, float]:
    """Median seconds per step, the variants run in turn (A, B, ..., A, B, ...) after warm-up."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in tqdm(range(repeats), desc=desc):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_memory_cuda(step: Callable[[], None], device: torch.device) -> float:
    """MiB allocated at the peak of one pass beyond what was allocated before it."""
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def peak_memory_cpu(step: Callable[[], None]) -> float:
    """MiB live at the peak of one pass beyond what was allocated before it, from the profiler's
    allocation events (ops' own allocations and the frees between ops, in time order)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.time_range.start,
                     e.cpu_memory_usage if e.name == '[memory]' else e.self_cpu_memory_usage)
                    for e in prof.events())
    live = peak = 0
    for _, usage in events:
        live += usage
        peak = max(peak, live)
    return peak / 2**20


def benchmark(config: str, args: argparse.Namespace, device: torch.device) -> List[dict]:
    """The rows of one CONFIG_OR_ARCH: every applicable variant in every mode."""
    kwargs = backbone_kwargs(config)
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    models = {v: build(v, kwargs, device) for v in args.variants}
    models = {v: m for v, m in models.items() if m is not None}
    model_name = f'{kwargs.get("type", "RepLKNet")} {config}'
    rows = []
    for mode in args.modes:
        steps = {v: make_step(v, m, x, mode) for v, m in models.items()}
        medians = time_interleaved(steps, device, args.warmup, args.repeats, f'{config} {mode}')
        for v, seconds in medians.items():
            rows.append(dict(model=model_name, mode=mode, variant=v, description=VARIANTS[v][0],
                             median_ms=round(seconds * 1e3, 1)))
    if not args.no_memory:
        for row in rows:
            step = make_step(row['variant'], models[row['variant']], x, row['mode'])
            peak = peak_memory_cuda(step, device) if device.type == 'cuda' else peak_memory_cpu(step)
            row['peak_mem_mib'] = round(peak, 1)
    reference = {r['mode']: r['median_ms'] for r in rows if r['variant'] == 'mmpretrain-default'}
    for row in rows:
        if row['mode'] in reference:
            row['speedup_vs_mmpretrain'] = round(reference[row['mode']] / row['median_ms'], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+', metavar='CONFIG_OR_ARCH',
                        help='RepLKNet arch names (e.g. 31B) or config files, one table')
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=7, help='timed runs per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per variant first')
    parser.add_argument('--modes', nargs='+', default=['forward', 'forward_backward'],
                        choices=['forward', 'forward_backward'])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory runs')
    parser.add_argument('--out', default='work_dirs/benchmark_backbone',
                        help='folder for benchmark.md and benchmark.csv')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    rows = [row for config in args.configs for row in benchmark(config, args, device)]
    header = (f'Backbones, input {args.batch}x3x{args.shape[0]}x{args.shape[1]}, {args.device}' +
              (f', {args.threads} threads' if device.type == 'cpu' else '') +
              f', torch {torch.__version__}; median of {args.repeats} interleaved runs after '
              f'{args.warmup} warm-up runs')
    columns = ['model', 'mode', 'variant', 'description', 'median_ms', 'speedup_vs_mmpretrain',
               'peak_mem_mib']
    md = [header, '', 'Command: `python ' + ' '.join(sys.argv) + '`', '',
          '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    md += ['| ' + ' | '.join(str(r.get(c, '')) for c in columns) + ' |' for r in rows]
    choices = ', '.join(f'K={k[2]}{" grad" if k[3] else ""}{" NHWC" if k[4] else ""}: {v}'
                        for k, v in sorted(dw_impl_choices().items(), key=lambda kv: kv[0][2:]))
    md += ['', f'DW dispatch choices: {choices}']
    text = '\n'.join(md) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, 'benchmark.md'), text)
    write_csv_atomic(os.path.join(args.out, 'benchmark.csv'), columns, rows)


if __name__ == '__main__':
    main()
