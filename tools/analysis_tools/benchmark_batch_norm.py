"""Training-mode batch norm on the CPU: PyTorch's kernel vs replk_mm's, on every BN input of a
RepLKNet training step, each with the activation the step fuses into it.

    python tools/analysis_tools/benchmark_batch_norm.py [ARCH] [--batch 2] [--shape 224 224]
        [--threads 2] [--repeats 9] [--out DIR]

The BN inputs and their fused activations (none, ReLU, GELU) are collected by running the backbone
(``ARCH``, default 31B) once; each distinct (shape, activation) is then timed alone, forward
(``act(torch.batch_norm(...))`` in training mode vs ``replk_mm::batch_norm_train_forward``) and
backward (autograd through PyTorch's BN and activation vs ``replk_mm::batch_norm_train_backward``),
the implementations interleaved and the median of ``--repeats`` kept, with a tensor copy of the
same size as the memory-bandwidth yardstick. The total weights each row by how often the step runs
it. Writes ``batch_norm.md`` and ``batch_norm.csv`` into ``--out`` (default
``work_dirs/benchmark_batch_norm``).
"""
import argparse
import collections
import csv
import io
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from replk_mm.deploy.atomic import write_text_atomic
from replk_mm.models import RepLKNet
from replk_mm.models.layers import BatchNorm2d
from replk_mm.models.layers.batch_norm import UNFUSED_ACTIVATIONS
from replk_mm.ops.batch_norm import applies


def bn_calls(arch: str, batch: int, shape: Tuple[int, int]) -> Dict[Tuple[tuple, str], int]:
    """How often each (input shape, fused activation) reaches a BatchNorm2d in one training
    forward of the backbone."""
    model = RepLKNet(arch=arch, out_indices=(3, ), norm_intermediate_features=True).train()
    counts: Dict[Tuple[tuple, str], int] = collections.Counter()

    def record(_, args, kwargs):
        counts.update([(tuple(args[0].shape), kwargs.get('activation', 'none'))])

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True)
             for m in model.modules() if isinstance(m, BatchNorm2d)]
    with torch.no_grad():
        model(torch.randn(batch, 3, *shape))
    for hook in hooks:
        hook.remove()
    return counts


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    for fn in fns.values():
        fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def measure(shape: tuple, activation: str, repeats: int) -> Dict[str, float]:
    """Milliseconds of each pass for one input shape and fused activation."""
    x, grad_out = torch.randn(shape), torch.randn(shape)
    channels = shape[1]
    weight, bias = torch.randn(channels), torch.randn(channels)
    if not applies(x):
        raise SystemExit('replk_mm._ext has no CPU batch-norm kernel; rebuild the package '
                         '(pip install --no-build-isolation --no-deps -e .)')
    act = UNFUSED_ACTIVATIONS[activation]
    ours = torch.ops.replk_mm
    _, mean, var = ours.batch_norm_train_forward(x, weight, bias, 1e-5, activation)
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = act(F.batch_norm(leaves[0], None, None, leaves[1], leaves[2], True))
    return time_interleaved({
        'copy': x.clone,
        'torch_forward': lambda: act(F.batch_norm(x, None, None, weight, bias, True)),
        'ours_forward': lambda: ours.batch_norm_train_forward(x, weight, bias, 1e-5, activation),
        'torch_backward': lambda: torch.autograd.grad(out, leaves, grad_out, retain_graph=True),
        'ours_backward': lambda: ours.batch_norm_train_backward(
            grad_out, x, mean, var, weight, bias, 1e-5, activation),
    }, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('arch', nargs='?', default='31B', help='RepLKNet arch (31B, 31L, XL)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=9)
    parser.add_argument('--out', default='work_dirs/benchmark_batch_norm')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    counts = bn_calls(args.arch, args.batch, tuple(args.shape))
    rows = []
    for (shape, activation), count in tqdm(sorted(counts.items(), key=lambda kv: -kv[1]),
                                           desc='shapes'):
        ms = measure(shape, activation, args.repeats)
        rows.append(dict(shape='x'.join(map(str, shape)), activation=activation, calls=count,
                         **{k: round(v, 3) for k, v in ms.items()},
                         forward_speedup=round(ms['torch_forward'] / ms['ours_forward'], 2),
                         backward_speedup=round(ms['torch_backward'] / ms['ours_backward'], 2)))
    totals = {k: sum(r[k] * r['calls'] for r in rows)
              for k in ('torch_forward', 'ours_forward', 'torch_backward', 'ours_backward')}
    columns = list(rows[0])
    md = [f'Training-mode BN inputs (with their fused activations) of one RepLKNet-{args.arch} '
          f'step, input {args.batch}x3x{args.shape[0]}x{args.shape[1]}, CPU, {args.threads} '
          f'threads, torch {torch.__version__}; '
          f'ms, median of {args.repeats} interleaved runs per shape', '',
          'Command: `python ' + ' '.join(sys.argv) + '`', '',
          '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    md += ['| ' + ' | '.join(str(r[c]) for c in columns) + ' |' for r in rows]
    md += ['', 'Whole step (each shape times its calls): forward {:.1f} -> {:.1f} ms ({:.1f}x), '
           'backward {:.1f} -> {:.1f} ms ({:.1f}x)'.format(
               totals['torch_forward'], totals['ours_forward'],
               totals['torch_forward'] / totals['ours_forward'], totals['torch_backward'],
               totals['ours_backward'], totals['torch_backward'] / totals['ours_backward'])]
    text = '\n'.join(md) + '\n'
    print(text)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(os.path.join(args.out, 'batch_norm.md'), text)
    write_text_atomic(os.path.join(args.out, 'batch_norm.csv'), buf.getvalue())


if __name__ == '__main__':
    main()
