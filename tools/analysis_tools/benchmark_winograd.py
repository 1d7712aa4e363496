"""Winograd F(2x2, 3x3) against oneDNN's direct 3x3 conv, one layer at a time, on the CPU.

    python tools/analysis_tools/benchmark_winograd.py [--shapes C,K,H,W ...] [--batch N]
        [--threads T] [--repeats R] [--out DIR]

Each shape is a 3x3 conv (stride 1, padding 1, ReLU after) from C to K channels on an
``(N, C, H, W)`` channels_last float32 input: the inference form's two paths, interleaved
(``torch.ops.mkldnn._convolution_pointwise`` on the packed weight, and
``replk_mm.ops.winograd.winograd_conv3x3``), after one warm-up call each. The table says whether
``winograd_applies`` picks Winograd for the shape, and the relative error of each path against a
float64 direct conv. Writes ``winograd.md``. The default shapes are UperNet-31B's head at 512 x 512
(bottleneck, FPN convs) and smaller ones around the thresholds of ``winograd_applies``.
"""
import argparse
import os
import statistics
import time
from typing import Callable, List, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from replk_mm.deploy.atomic import write_text_atomic
from replk_mm.ops.winograd import (pack_winograd_weight, winograd_applies, winograd_conv3x3,
                                   winograd_tiles)

DEFAULT_SHAPES = ['2048,512,128,128', '512,512,128,128', '512,512,64,64', '4096,512,16,16',
                  '256,256,56,56', '256,256,28,28', '512,512,14,14', '128,128,56,56']


def parse_shape(text: str) -> Tuple[int, int, int, int]:
    try:
        c, k, h, w = (int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a shape is C,K,H,W (four integers), got {text!r}')
    return c, k, h, w


def median_ms(steps: List[Callable[[], torch.Tensor]], repeats: int) -> List[float]:
    """Median ms of each step, the steps run in turn after one warm-up call each."""
    for step in steps:
        step()
    times: List[List[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def measure(shape: Tuple[int, int, int, int], batch: int, repeats: int) -> dict:
    c, k, h, w = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    bias = torch.randn(k, generator=gen)
    with torch.no_grad():
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            weight.to_mkldnn(), [1, 1], [1, 1], [1, 1], 1, list(x.shape))
        winograd_weights = pack_winograd_weight(weight, winograd_tiles(x))
        direct = lambda: torch.ops.mkldnn._convolution_pointwise(  # noqa: E731
            x, packed, bias, [1, 1], [1, 1], [1, 1], 1, 'relu', [], '')
        winograd = lambda: winograd_conv3x3(x, winograd_weights, bias, True)  # noqa: E731
        reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1).relu()
        errors = [((step().double() - reference).abs().max() / reference.abs().max()).item()
                  for step in (direct, winograd)]
        direct_ms, winograd_ms = median_ms([direct, winograd], repeats)
    return dict(shape=f'({batch}, {c}, {h}, {w}) -> {k}', direct_ms=direct_ms,
                winograd_ms=winograd_ms, speedup=direct_ms / winograd_ms,
                applies=winograd_applies(x, weight), errors=errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--shapes', nargs='+', type=parse_shape,
                        default=[parse_shape(s) for s in DEFAULT_SHAPES], metavar='C,K,H,W')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', default='work_dirs/benchmark_winograd')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(shape, args.batch, args.repeats)
            for shape in tqdm(args.shapes, desc='3x3 convs')]
    lines = [f'3x3 convs (stride 1, padding 1, ReLU), float32 channels_last, cpu, {args.threads} '
             f'threads, torch {torch.__version__}; median of {args.repeats} interleaved runs', '',
             '| input -> out channels | oneDNN direct ms | Winograd ms | speedup | picked | '
             'rel. error direct | rel. error Winograd |', '|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r["shape"]} | {r["direct_ms"]:.2f} | {r["winograd_ms"]:.2f} | '
                     f'{r["speedup"]:.2f} | {"yes" if r["applies"] else "no"} | '
                     f'{r["errors"][0]:.1e} | {r["errors"][1]:.1e} |')
    write_text_atomic(os.path.join(args.out, 'winograd.md'), '\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
