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
beside OpenVINO's convs. Then both sides' convs by shape (dense or depth-wise, channels in ->
out, output size): ours each timed alone as above (the depth-wise ones too), OpenVINO's from
the same ``PERF_COUNT`` runs. Last, the time budget of those profiled runs on each side: their
wall time and the part of it that the kernels take (ours: oneDNN's primitives by its own timer,
from its verbose log, i.e. without PyTorch's set-up of each call; the package's kernels and the
other operators by the profiler; OpenVINO: its layers); the rest lies between and around the
kernels. Writes ``profile.md``.
"""
import argparse
import collections
import contextlib
import ctypes
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.profiler import profile

from replk_mm.deploy import build_model, optimize_for_inference
from replk_mm.deploy.atomic import write_text_atomic
from replk_mm.deploy.converter import load_config
from replk_mm.deploy.equivalence import model_kind
from replk_mm.deploy.inference import FusedConv2d
from replk_mm.deploy.onnx_export import (InferenceModule, compile_openvino, export_onnx,
                                         openvino_runtime)
from replk_mm.ops import DepthwiseConv2d

Rows = List[Tuple[str, float, int]]  # (operator, ms per forward, calls per forward)
ConvShape = Tuple[str, int, int, int, int]  # (dense | depth-wise, C_in, C_out, H_out, W_out)
ByShape = Dict[ConvShape, list]  # shape -> [ms per forward, calls per forward]
Budget = Tuple[float, float, int]  # (wall ms, oneDNN execution ms, oneDNN primitives) a forward


@contextlib.contextmanager
def onednn_exec_log() -> Iterator[List[float]]:
    """Collects the execution time (ms) of every oneDNN primitive run inside the block, by
    oneDNN's own timer: its verbose log, which it writes to file descriptor 1."""
    libc = ctypes.CDLL(None)
    times: List[float] = []
    with tempfile.TemporaryFile(mode='w+') as log:
        sys.stdout.flush()
        libc.fflush(None)
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                yield times
            libc.fflush(None)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        times += [float(line.rsplit(',', 1)[1]) for line in log if ',primitive,exec,' in line]


def profile_ours(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> Tuple[Rows, Budget]:
    """Operators by self CPU time, and the budget of the same forwards: wall time, oneDNN's
    execution time and primitives, per forward."""
    with torch.no_grad():
        for _ in range(2):
            module(x)
        with onednn_exec_log() as exec_times, profile() as prof:
            start = time.perf_counter()
            for _ in range(repeats):
                module(x)
            wall = (time.perf_counter() - start) * 1e3 / repeats
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    rows = [(e.key, e.self_cpu_time_total / 1e3 / repeats, e.count // repeats) for e in events]
    return rows, (wall, sum(exec_times) / repeats, len(exec_times) // repeats)


def budget_table(ours: Budget, ours_rows: Rows,
                 openvino: Optional[Tuple[float, float]]) -> List[str]:
    """Where the wall time of the profiled forwards went, ours (:func:`profile_ours`) and OpenVINO's
    (``(wall, sum of layers)``)."""
    wall, exec_ms, primitives = ours
    package_ms = sum(ms for name, ms, _ in ours_rows if name.startswith('replk_mm::'))
    other_ms = sum(ms for name, ms, _ in ours_rows
                   if not name.startswith('replk_mm::') and 'mkldnn' not in name)
    rest = wall - exec_ms - package_ms - other_ms
    lines = ['### Time budget of the profiled forwards', '', '| side | part | ms per forward |',
             '|---|---|---|',
             f'| ours | wall time (profiler and oneDNN\'s log on) | {wall:.1f} |',
             f'| ours | oneDNN primitives executing ({primitives} a forward, its own timer) '
             f'| {exec_ms:.1f} |',
             f'| ours | the package\'s kernels (replk_mm::, self CPU time) | {package_ms:.1f} |',
             f'| ours | other operators (self CPU time, outside mkldnn and replk_mm) '
             f'| {other_ms:.1f} |',
             f'| ours | the rest: set-up of each oneDNN call, Python, allocation, profiling '
             f'| {rest:.1f} |']
    if openvino is not None:
        wall, layers = openvino
        lines += [f'| OpenVINO | wall time (PERF_COUNT on) | {wall:.1f} |',
                  f'| OpenVINO | its layers (PERF_COUNT) | {layers:.1f} |',
                  f'| OpenVINO | the rest | {wall - layers:.1f} |']
    return lines + ['']


def _add(by_shape: ByShape, kind: str, in_channels: int, out_shape: Sequence[int],
         ms: float) -> None:
    """Count one conv of ``kind`` with output ``(N, C_out, H, W)`` taking ``ms``."""
    entry = by_shape[kind, in_channels, *out_shape[1:]]
    entry[0] += ms
    entry[1] += 1


def convs_alone(module: torch.nn.Module, x: torch.Tensor) -> Tuple[float, int, ByShape]:
    """``(ms, calls, by shape)``: the sum over the fused convs of one forward, each timed alone on
    the input it had in that forward (median of 7 calls), and every conv of that forward (the
    depth-wise ones too) timed so, by shape."""
    calls = []

    def record(conv: torch.nn.Module, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        calls.append((conv, [a.clone() for a in args],
                      {k: v.clone() for k, v in kwargs.items() if v is not None},
                      tuple(out.shape)))

    convs = [m for m in module.modules() if isinstance(m, (FusedConv2d, DepthwiseConv2d))]
    hooks = [c.register_forward_hook(record, with_kwargs=True) for c in convs]
    fused_ms, fused_calls = 0.0, 0
    by_shape: ByShape = collections.defaultdict(lambda: [0.0, 0])
    with torch.no_grad():
        module(x)
        for hook in hooks:
            hook.remove()
        for conv, args, kwargs, out_shape in calls:
            times = []
            for _ in range(7):
                start = time.perf_counter()
                conv(*args, **kwargs)
                times.append(time.perf_counter() - start)
            ms = statistics.median(times) * 1e3
            in_channels = args[0].shape[1]
            depthwise = isinstance(conv, DepthwiseConv2d) or conv.groups == in_channels > 1
            _add(by_shape, 'depth-wise' if depthwise else 'dense', in_channels, out_shape, ms)
            if isinstance(conv, FusedConv2d):
                fused_ms += ms
                fused_calls += 1
    return fused_ms, fused_calls, by_shape


def profile_openvino(path: str, x: torch.Tensor, threads: int,
                     repeats: int) -> Tuple[Rows, ByShape, float]:
    """OpenVINO's layers by type and kernel, its convs by shape (from the executed graph:
    ``Convolution`` / ``GroupConvolution`` nodes, depth-wise where the kernel says ``_dw``) and
    the wall time of those inferences, per inference."""
    compiled = compile_openvino(path, x.shape, threads, profile=True)
    request = compiled.create_infer_request()
    x_np = x.numpy()
    for _ in range(2):
        request.infer([x_np])
    ms: Dict[str, float] = collections.defaultdict(float)
    calls: Dict[str, int] = collections.Counter()
    node_ms: Dict[str, float] = collections.defaultdict(float)
    wall = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        request.infer([x_np])
        wall += (time.perf_counter() - start) * 1e3 / repeats
        for layer in request.profiling_info:
            if layer.status == layer.Status.EXECUTED:
                key = f'{layer.node_type} ({layer.exec_type})'
                layer_ms = layer.real_time.total_seconds() * 1e3 / repeats
                ms[key] += layer_ms
                calls[key] += 1
                node_ms[layer.node_name] += layer_ms
    by_shape: ByShape = collections.defaultdict(lambda: [0.0, 0])
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer_type = info['layerType'].astype(str)
        if layer_type not in ('Convolution', 'GroupConvolution'):
            continue
        depthwise = layer_type == 'GroupConvolution' or '_dw' in info['primitiveType'].astype(str)
        in_shape = op.input(0).get_partial_shape().to_shape()
        out_shape = op.output(0).get_partial_shape().to_shape()
        _add(by_shape, 'depth-wise' if depthwise else 'dense', in_shape[1], out_shape,
             node_ms.get(op.get_friendly_name(), 0.0))
    return [(key, ms[key], calls[key] // repeats) for key in ms], by_shape, wall


def shape_table(ours: ByShape, openvino: ByShape) -> List[str]:
    """Both sides' convs by shape, ms per forward (calls)."""
    lines = ['### Convs by shape: ours each timed alone, OpenVINO in its graph', '',
             '| conv | channels in -> out | output | ours ms (calls) | OpenVINO ms (calls) '
             '| ours / OpenVINO |', '|---|---|---|---|---|---|']
    def ratio(a: float, b: float) -> str:
        return f'{a / b:.2f}' if a > 0 and b > 0 else ''

    for key in sorted(set(ours) | set(openvino)):
        kind, c_in, c_out, h, w = key
        a, b = ours.get(key, (0.0, 0)), openvino.get(key, (0.0, 0))
        lines.append(f'| {kind} | {c_in} -> {c_out} | {h} x {w} | {a[0]:.2f} ({a[1]}) '
                     f'| {b[0]:.2f} ({b[1]}) | {ratio(a[0], b[0])} |')
    total_ours, total_ov = sum(v[0] for v in ours.values()), sum(v[0] for v in openvino.values())
    return lines + [f'| all | | | {total_ours:.2f} | {total_ov:.2f} | '
                    f'{ratio(total_ours, total_ov)} |', '']


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
        ours_rows, ours_budget = profile_ours(module, x, args.repeats)
        lines += table('replk_mm (torch.profiler, self CPU time)', ours_rows)
        alone_ms, calls, ours_by_shape = convs_alone(module, x)
        lines += [f'The {calls} fused convs of one forward, each timed alone on its input '
                  f'(median of 7 calls): {alone_ms:.1f} ms in all.', '']
        openvino_budget = None
        if openvino_runtime() is None:
            lines += ['OpenVINO not installed (pip install -e .[deploy]): no second table.', '']
        else:
            rows, openvino_by_shape, openvino_wall = profile_openvino(path, x, args.threads,
                                                                      args.repeats)
            lines += table('OpenVINO (PERF_COUNT, by layer type and kernel)', rows)
            lines += shape_table(ours_by_shape, openvino_by_shape)
            openvino_budget = (openvino_wall, sum(r[1] for r in rows))
        lines += budget_table(ours_budget, ours_rows, openvino_budget)
    text = '\n'.join(lines) + '\n'
    print(text)
    os.makedirs(args.out, exist_ok=True)
    write_text_atomic(os.path.join(args.out, 'profile.md'), text)


if __name__ == '__main__':
    main()
