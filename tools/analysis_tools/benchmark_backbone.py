"""Latency and peak memory of a RepLKNet / UniRepLKNet backbone or whole model: training vs deploy
vs inference form, the package's depth-wise dispatch vs plain NCHW PyTorch, side by side with
mmpretrain's RepLKNet and with ONNX Runtime and OpenVINO running the exported graph.

    python tools/analysis_tools/benchmark_backbone.py CONFIG_OR_ARCH [CONFIG_OR_ARCH ...] [--whole]
        [--shape H W] [--batch N] [--threads T] [--repeats R] [--modes forward forward_backward]
        [--variants ...] [--out DIR]

CONFIG_OR_ARCH is a preset name (31B, 31L, XL, ...) or a config whose ``model.backbone`` is a
``replk_mm.RepLKNet`` or a ``replk_mm.UniRepLKNet`` (e.g. ``configs/unireplknet/*.py``; it has no
mmpretrain counterpart, so only the replk_mm variants run); several of them make one table, one
model after the other. Without ``--whole`` every variant outputs
the last stage with a BN on it (mmpretrain's default ``out_indices=(3,)``); with ``--whole`` the
config's whole model runs (a classifier's logits, a segmentor's logits at the input size, a
detector's raw dense-head outputs: what ``tools/export_onnx.py`` exports).

``ours-inference`` is the deploy form rewritten by ``replk_mm.deploy.optimize_for_inference``;
``onnxruntime`` / ``openvino`` export that model with ``replk_mm.deploy.onnx_export`` (the folded
graph, checked against PyTorch) and run it with the same number of threads (ONNX Runtime: CPU EP,
``intra_op_num_threads``; OpenVINO: ``INFERENCE_NUM_THREADS``, f32 precision and latency hints,
static input shape). Missing peers are named and skipped (``pip install -e .[deploy]``).

Runs are interleaved (A, B, C, A, B, C, ...) after warm-up, and each variant's median is reported,
so load on a shared machine hits every variant alike. On the CPU each timed run starts after
``--settle`` idle seconds (0.1): the thread pools of the three runtimes share the process, and
one that spins after its run (ONNX Runtime's does, for tens of ms) would slow the next one down
(measured: the GEMMs of the floor ran at half speed right after ONNX Runtime without it). In
forward mode two GEMMs run in the same rounds (``torch.mm`` and a channels_last 1x1 conv through
oneDNN, 1024 x 1024 x 1024); the faster sets the floor, 2 x multiply-adds (MMEngine's counter,
``get_flops.py``) over that rate, and each row reports the fraction of the floor it reaches and
its speed relative to the faster peer. Peak memory: what one pass allocates at its peak beyond
the weights and input (CUDA: the allocator's statistics; CPU: the profiler's allocation events;
not measured for the peers). Writes ``benchmark.md`` and ``benchmark.csv`` into ``--out``.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # get_flops.py, beside this script
from get_flops import count as count_params_flops  # noqa: E402
from replk_mm.deploy import build_model as build_whole_model  # noqa: E402
from replk_mm.deploy import optimize_for_inference, reparameterize_model  # noqa: E402
from replk_mm.deploy.atomic import write_csv_atomic, write_text_atomic  # noqa: E402
from replk_mm.deploy.converter import load_config  # noqa: E402
from replk_mm.deploy.equivalence import model_kind  # noqa: E402
from replk_mm.deploy.onnx_export import InferenceModule, compile_openvino, export_onnx  # noqa: E402
from replk_mm.models import RepLKNet, UniRepLKNet  # noqa: E402
from replk_mm.models.backbones.replknet import ARCH_SETTINGS  # noqa: E402
from replk_mm.ops import dw_impl_choices, use_bn_impl, use_dw_impl  # noqa: E402

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
    'ours-inference': ('replk_mm, inference form (optimize_for_inference), DW dispatch',
                       'inference', True, 'auto', False, 'auto'),
    'onnxruntime': ("ONNX Runtime, CPU EP, on the exported inference form", 'onnxruntime', True,
                    'auto', False, 'auto'),
    'openvino': ('OpenVINO, CPU, f32, latency hint, on the same ONNX file', 'openvino', True,
                 'auto', False, 'auto'),
}
PEERS = ('onnxruntime', 'openvino')
FORWARD_ONLY = ('ours-inference', ) + PEERS
WHOLE_VARIANTS = ('ours-deploy-auto', 'ours-inference') + PEERS
GEMM_SIZE = 1024


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


def build_ours(kwargs: dict, whole: Optional[str]) -> Tuple[nn.Module, str]:
    """A fresh training-form model of the package and its kind: the whole model of config
    ``whole``, or (None) the backbone of ``kwargs`` with its last stage as output."""
    torch.manual_seed(0)
    if whole:
        model = build_whole_model(load_config(whole))
        return model, model_kind(model)
    if kwargs.get('type') == 'UniRepLKNet':
        return UniRepLKNet(**{k: v for k, v in kwargs.items() if k != 'type'},
                           out_indices=(3, ), drop_path_rate=0.0), 'backbone'
    return RepLKNet(**kwargs, out_indices=(3, ), norm_intermediate_features=True,
                    drop_path_rate=0.0), 'backbone'


def mmpretrain_kwargs(arch: Union[str, dict, None]) -> Optional[dict]:
    """``arch`` (and ``ffn_ratio``) for mmpretrain's RepLKNet of the same architecture as ours, or
    None when mmpretrain has no such preset."""
    if isinstance(arch, dict):  # mmpretrain needs every key of its arch dicts
        arch = dict(dict(small_kernel=None, dw_ratio=1), **arch)
        ffn_ratio = arch.pop('ffn_ratio', 4)
        return dict(arch=arch, ffn_ratio=ffn_ratio)
    return dict(arch=arch) if arch in MMPRETRAIN_ARCHS else None


class Peer:
    """An ONNX runtime running the exported inference form: ``peer(x)`` with a NumPy batch."""

    def __init__(self, name: str, path: str, input_shape: Tuple[int, ...], threads: int) -> None:
        self.name = name
        if name == 'onnxruntime':
            import onnxruntime as ort
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
            feed = session.get_inputs()[0].name
            self.run = lambda x: session.run(None, {feed: x})
        else:
            request = compile_openvino(path, input_shape, threads).create_infer_request()
            self.run = lambda x: request.infer([x])

    def __call__(self, x):
        return self.run(x)


def build(variant: str, kwargs: dict, device: torch.device, whole: Optional[str] = None,
          input_shape: Tuple[int, ...] = (1, 3, 224, 224), threads: int = 1,
          onnx_dir: Optional[str] = None):
    """The variant's model in eval mode (a whole model wrapped in its ``InferenceModule``; a
    :class:`Peer` for the ONNX runtimes, whose file goes into ``onnx_dir``), or None when it does
    not apply."""
    _, builder, deploy, _, channels_last, _ = VARIANTS[variant]
    if builder == 'mmpretrain':
        theirs = mmpretrain_kwargs(kwargs.get('arch'))
        if whole or kwargs.get('type') == 'UniRepLKNet' or theirs is None:
            return None
        torch.manual_seed(0)
        from mmpretrain.models.backbones import RepLKNet as MMPretrainRepLKNet
        model = MMPretrainRepLKNet(**theirs, out_indices=(3, ), drop_path_rate=0.0)
        model.eval()  # (mmpretrain's train() returns None)
        if deploy:
            model.switch_to_deploy()
    else:
        model, kind = build_ours(kwargs, whole)
        if deploy:
            reparameterize_model(model.eval())
        if builder != 'ours':
            optimize_for_inference(model)
        if builder in PEERS:
            if device.type != 'cpu':
                return None
            path = os.path.join(onnx_dir, 'model.onnx')
            if not os.path.exists(path):  # one export (checked by onnxruntime) for both peers
                export_onnx(model, path, input_shape, kind=kind)
            return Peer(builder, path, input_shape, threads)
        if whole:
            model = InferenceModule(model, kind)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    return model


def make_step(variant: str, model, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """One pass: ``forward`` (eval, no grad) or ``forward_backward`` (train mode, backward)."""
    if isinstance(model, Peer):
        x_np = x.numpy()
        return lambda: model(x_np)
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


def gemm_steps(best: Dict[str, float]) -> Dict[str, Callable[[], None]]:
    """The two GEMMs of the floor, each ``2 * GEMM_SIZE**3`` FLOPs: ``torch.mm`` and a 1x1 conv on
    a channels_last ``(1, GEMM_SIZE, 32, 32)`` input (32 x 32 = 1024 pixels) through oneDNN. Each
    step runs its GEMM three times in a row and keeps the fastest call in ``best`` (seconds): the
    first call after a large model's forward ran at half the rate."""
    n = GEMM_SIZE
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = torch.randn(1, n, 32, 32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1)

    def timed(name: str, gemm: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                for _ in range(3):
                    start = time.perf_counter()
                    gemm()
                    best[name] = min(best.get(name, float('inf')), time.perf_counter() - start)
        return step

    return {'gemm torch.mm': timed('torch.mm', lambda: torch.mm(a, b)),
            'gemm 1x1 conv channels_last': timed('1x1 conv channels_last',
                                                 lambda: torch.nn.functional.conv2d(x, w))}


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: Dict[str, Callable[[], None]], device: torch.device, warmup: int,
                     repeats: int, desc: str, settle: float = 0.0) -> Dict[str, float]:
    """Median seconds per step, the variants run in turn (A, B, ..., A, B, ...) after warm-up,
    each after ``settle`` idle seconds."""
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(warmup):
        for step in steps.values():
            step()
    for _ in tqdm(range(repeats), desc=desc):
        for name, step in steps.items():
            sync(device)
            time.sleep(settle)
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


def floor_ms(deploy_model: nn.Module, shape: Tuple[int, int], batch: int,
             gemm_gflops: float) -> Tuple[float, float]:
    """``(multiply-adds in G, floor in ms)`` of one forward of ``deploy_model`` at
    ``gemm_gflops``."""
    macs = count_params_flops(deploy_model, shape)[1] * batch / 1e9
    return macs, 2 * macs / gemm_gflops * 1e3


def benchmark(config: str, args: argparse.Namespace,
              device: torch.device) -> Tuple[List[dict], List[str]]:
    """The rows of one CONFIG_OR_ARCH (every applicable variant in every mode) and its notes."""
    kwargs = backbone_kwargs(config)
    whole = config if args.whole else None
    if whole and not os.path.isfile(whole):
        raise SystemExit(f'--whole needs a config file, got {whole!r}')
    variants = args.variants or list(WHOLE_VARIANTS if whole else VARIANTS)
    notes = []
    missing = [p for p in PEERS if p in variants and importlib.util.find_spec(p) is None]
    if missing:
        notes.append(f'not installed, skipped: {", ".join(missing)} (pip install -e .[deploy])')
        print(notes[-1])
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    with tempfile.TemporaryDirectory() as onnx_dir:
        models = {v: build(v, kwargs, device, whole, tuple(x.shape), args.threads, onnx_dir)
                  for v in variants if v not in missing}
    models = {v: m for v, m in models.items() if m is not None}
    model_name = (f'whole model of {config}' if whole else
                  f'{kwargs.get("type", "RepLKNet")} {config}')
    rows, gemm_seconds = [], {}
    for mode in args.modes:
        steps = {v: make_step(v, m, x, mode) for v, m in models.items()
                 if mode == 'forward' or v not in FORWARD_ONLY}
        if mode == 'forward' and device.type == 'cpu':
            steps.update(gemm_steps(gemm_seconds))
        medians = time_interleaved(steps, device, args.warmup, args.repeats, f'{config} {mode}',
                                   args.settle if device.type == 'cpu' else 0.0)
        for v, seconds in medians.items():
            if v.startswith('gemm '):
                continue
            rows.append(dict(model=model_name, mode=mode, variant=v, description=VARIANTS[v][0],
                             median_ms=round(seconds * 1e3, 1)))
    if not args.no_memory:
        for v, model in models.items():
            for row in rows:
                if row['variant'] == v and not isinstance(model, Peer):
                    step = make_step(v, model, x, row['mode'])
                    peak = (peak_memory_cuda(step, device) if device.type == 'cuda' else
                            peak_memory_cpu(step))
                    row['peak_mem_mib'] = round(peak, 1)

    reference = {r['mode']: r['median_ms'] for r in rows if r['variant'] == 'mmpretrain-default'}
    peers = [r['median_ms'] for r in rows if r['variant'] in PEERS]
    floor = None
    gemm = {name: 2 * GEMM_SIZE**3 / seconds / 1e9 for name, seconds in gemm_seconds.items()}
    if gemm:
        deploy_model = models.get('ours-deploy-auto')  # (the one timed, if it was)
        if deploy_model is None:
            deploy_model = reparameterize_model(build_ours(kwargs, whole)[0].eval())
        macs, floor = floor_ms(deploy_model, args.shape, args.batch, max(gemm.values()))
        rates = ', '.join(f'{name} {rate:.0f}' for name, rate in gemm.items())
        notes.append(f'{config}: floor {macs:.2f} G multiply-adds = {2 * macs:.1f} GFLOP at the '
                     f'best GEMM rate of this run ({rates} GFLOP/s) = {floor:.1f} ms')
    for row in rows:
        if row['mode'] in reference:
            row['speedup_vs_mmpretrain'] = round(reference[row['mode']] / row['median_ms'], 2)
        if row['mode'] == 'forward' and peers:
            row['speedup_vs_best_peer'] = round(min(peers) / row['median_ms'], 2)
        if row['mode'] == 'forward' and floor:
            row['floor_fraction'] = round(floor / row['median_ms'], 2)
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+', metavar='CONFIG_OR_ARCH',
                        help='RepLKNet arch names (e.g. 31B) or config files, one table')
    parser.add_argument('--whole', action='store_true',
                        help="time each config's whole model (classifier / segmentor / detector)")
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--repeats', type=int, default=7, help='timed runs per variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per variant first')
    parser.add_argument('--modes', nargs='+', default=['forward', 'forward_backward'],
                        choices=['forward', 'forward_backward'])
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS),
                        help=f'default: all (with --whole: {" ".join(WHOLE_VARIANTS)})')
    parser.add_argument('--settle', type=float, default=0.1, metavar='SECONDS',
                        help='idle time before each timed CPU run, so that the previous run\'s '
                        'thread pool (ONNX Runtime\'s spins for tens of ms) has gone to sleep')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory runs')
    parser.add_argument('--out', default='work_dirs/benchmark_backbone',
                        help='folder for benchmark.md and benchmark.csv')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    rows, notes = [], []
    for config in args.configs:
        config_rows, config_notes = benchmark(config, args, device)
        rows += config_rows
        notes += config_notes
    header = (f'{"Whole models" if args.whole else "Backbones"}, input '
              f'{args.batch}x3x{args.shape[0]}x{args.shape[1]}, {args.device}' +
              (f', {args.threads} threads' if device.type == 'cpu' else '') +
              f', torch {torch.__version__}; median of {args.repeats} interleaved runs after '
              f'{args.warmup} warm-up runs')
    columns = ['model', 'mode', 'variant', 'description', 'median_ms', 'speedup_vs_mmpretrain',
               'speedup_vs_best_peer', 'floor_fraction', 'peak_mem_mib']
    md = [header, '', 'Command: `python ' + ' '.join(sys.argv) + '`', '',
          '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    md += ['| ' + ' | '.join(str(r.get(c, '')) for c in columns) + ' |' for r in rows]
    choices = ', '.join(f'K={k[2]}{" grad" if k[3] else ""}{" NHWC" if k[4] else ""}: {v}'
                        for k, v in sorted(dw_impl_choices().items(), key=lambda kv: kv[0][2:]))
    md += [''] + [f'{note}  ' for note in notes] + [f'DW dispatch choices: {choices}']
    text = '\n'.join(md) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, 'benchmark.md'), text)
    write_csv_atomic(os.path.join(args.out, 'benchmark.csv'), columns, rows)


if __name__ == '__main__':
    main()
