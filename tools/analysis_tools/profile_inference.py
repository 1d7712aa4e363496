"""Where the CPU time of a whole model's inference form goes, beside OpenVINO's per-layer times on
the same exported graph: one table of operators for each, milliseconds per forward.

    python tools/analysis_tools/profile_inference.py CONFIG [--shape H W] [--batch N]
        [--threads T] [--repeats R] [--out DIR]

Ours: ``torch.profiler`` over ``--repeats`` forwards of the model rewritten by
``replk_mm.deploy.optimize_for_inference`` (self CPU time of the main thread, by operator; the
profiler adds a few microseconds to each call). OpenVINO (if installed): ``PERF_COUNT`` real time
by layer type and kernel over as many inferences of the file ``replk_mm.deploy.onnx_export`` wrote
(f32, latency hint, the same threads). Both after two warm-up forwards. Below our table, the
fused convs of one forward timed one by one outside the model (each on the input it had in the
forward, median of 7 calls): what they cost without the rest of the model around them, to set
beside OpenVINO's convs. Writes ``profile.md``.
"""
import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import torch
from torch.profiler import profile

from replk_mm.deploy import build_model, optimize_for_inference
from replk_mm.deploy.atomic import write_text_atomic
from replk_mm.deploy.converter import load_config
from replk_mm.deploy.equivalence import model_kind
from replk_mm.deploy.inference import FusedConv2d
from replk_mm.deploy.onnx_export import (InferenceModule, compile_openvino, export_onnx,
                                         openvino_runtime)

Rows = List[Tuple[str, float, int]]  # (operator, ms per forward, calls per forward)


def profile_ours(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> Rows:
    with torch.no_grad():
        for _ in range(2):
            module(x)
        with profile() as prof:
            for _ in range(repeats):
                module(x)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    return [(e.key, e.self_cpu_time_total / 1e3 / repeats, e.count // repeats) for e in events]


def fused_convs_alone(module: torch.nn.Module, x: torch.Tensor) -> Tuple[float, int]:
    """``(ms, calls)``: the sum over the fused convs of one forward, each timed alone on the
    input it had in that forward (median of 7 calls)."""
    calls = []

    def record(conv: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        calls.append((conv, [a.clone() for a in args],
                      {k: v.clone() for k, v in kwargs.items() if v is not None}))

    convs = [m for m in module.modules() if isinstance(m, FusedConv2d)]
    hooks = [c.register_forward_hook(record, with_kwargs=True) for c in convs]
    with torch.no_grad():
        module(x)
        for hook in hooks:
            hook.remove()
        total = 0.0
        for conv, args, kwargs in calls:
            times = []
            for _ in range(7):
                start = time.perf_counter()
                conv(*args, **kwargs)
                times.append(time.perf_counter() - start)
            total += statistics.median(times)
    return total * 1e3, len(calls)


def profile_openvino(path: str, x: torch.Tensor, threads: int, repeats: int) -> Rows:
    request = compile_openvino(path, x.shape, threads, profile=True).create_infer_request()
    for _ in range(2):
        request.infer([x.numpy()])
    ms: Dict[str, float] = collections.defaultdict(float)
    calls: Dict[str, int] = collections.Counter()
    for _ in range(repeats):
        request.infer([x.numpy()])
        for layer in request.profiling_info:
            if layer.status == layer.Status.EXECUTED:
                key = f'{layer.node_type} ({layer.exec_type})'
                ms[key] += layer.real_time.total_seconds() * 1e3 / repeats
                calls[key] += 1
    return [(key, ms[key], calls[key] // repeats) for key in ms]


def table(title: str, rows: Rows) -> List[str]:
    total = sum(r[1] for r in rows)
    lines = [f'### {title}: {total:.1f} ms per forward', '',
             '| operator | ms per forward | share | calls per forward |', '|---|---|---|---|']
    for name, ms, calls in sorted(rows, key=lambda r: -r[1]):
        if ms >= 0.005 * total:
            lines.append(f'| {name} | {ms:.2f} | {ms / total:.0%} | {calls} |')
    return lines + ['(operators under 0.5% left out)', '']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config of a classifier, segmentor or detector')
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2, help='CPU threads')
    parser.add_argument('--repeats', type=int, default=5, help='profiled forwards')
    parser.add_argument('--out', default='work_dirs/profile_inference',
                        help='folder for profile.md')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(load_config(args.config)).eval()
    kind = model_kind(model)
    x = torch.randn(args.batch, 3, *args.shape)
    lines = [f'Inference form of {args.config}, input {tuple(x.shape)}, {args.threads} threads, '
             f'torch {torch.__version__}', '', 'Command: `python ' + ' '.join(sys.argv) + '`', '']
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'model.onnx')
        export_onnx(model, path, tuple(x.shape), kind=kind)  # (optimizes the model in place)
        module = InferenceModule(optimize_for_inference(model), kind)
        lines += table('replk_mm (torch.profiler, self CPU time)', profile_ours(
            module, x, args.repeats))
        alone_ms, calls = fused_convs_alone(module, x)
        lines += [f'The {calls} fused convs of one forward, each timed alone on its input '
                  f'(median of 7 calls): {alone_ms:.1f} ms in all.', '']
        if openvino_runtime() is None:
            lines.append('OpenVINO not installed (pip install -e .[deploy]): no second table.')
        else:
            lines += table('OpenVINO (PERF_COUNT, by layer type and kernel)', profile_openvino(
                path, x, args.threads, args.repeats))
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, 'profile.md'), text)


if __name__ == '__main__':
    main()
