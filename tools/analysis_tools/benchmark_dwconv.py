"""Latency of the large-kernel depth-wise conv: PyTorch (NCHW, channels_last) vs replk_mm's extension.

    python tools/analysis_tools/benchmark_dwconv.py [--device cpu|cuda] [--threads 2] [--batch N]
        [--resolutions 16 32 64] [--kernels 3 5 ... 31] [--parts table1 passes]
        [--modes forward forward_backward] [--out DIR]

Two parts, both side by side on the current device, runs interleaved (A, B, C, A, B, C, ...) and
the best of ``--repeats`` kept, so load on a shared machine hits every implementation alike:

- ``table1``: seed Table 1, the latency of 24 stacked DW layers on (N, 384, R, R), forward and
  forward + backward, per kernel size. The paper uses N=64 on a GPU; the CPU default is N=2 (the
  output says which). A cell whose stack would take longer than ``--cell-budget`` seconds times
  fewer layers and scales to 24 (column ``layers_timed``).
- ``passes``: one layer on (``--passes-batch``, 384, 32, 32): forward, grad input and grad weight
  separately and forward + backward (autograd) with the useful (non-padding) FLOP rate against the
  device's sgemm rate measured in the same run. Each round times the implementations on inputs
  allocated anew, so the best of the rounds does not hang on one allocation's page placement.

The roofline bound (docs/ops.md, SPEC section 3) of a pass is
max(useful FLOPs / sgemm rate, bytes / copy bandwidth), both rates measured here; ``roofline %``
is that bound over the measured time. On the CPU, glibc is asked to keep freed memory mapped
(``--no-keep-freed-memory`` turns this off): otherwise an output of a few MiB sometimes comes from
a fresh mmap and page-faults (~3000 faults, 2-3 ms for 12 MiB on the build machine) and sometimes
not, a tax that lands on whichever implementation's allocation draws it. This lowers the odds, it
does not rule faults out (a freed block that an aligned request of its own size cannot reuse still
leaves fresh pages to touch): the CSVs' ``page_faults`` column counts the faults of each kept run.
Writes ``dwconv_table1.{md,csv,png}`` and ``dwconv_passes.{md,csv}`` into ``--out`` (default
``work_dirs/benchmark_dwconv/<device>``).
"""
import argparse
import csv
import ctypes
import ctypes.util
import io
import os
import resource
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from replk_mm.deploy.atomic import write_text_atomic
from replk_mm.ops import dwconv_ext

CHANNELS = 384
LAYERS = 24
TABLE1_KERNELS = (3, 5, 7, 9, 13, 17, 21, 27, 29, 31)
IMPLS = ('pytorch_nchw', 'pytorch_channels_last', 'ours_nchw', 'ours_channels_last')


def useful_taps_1d(length: int, k: int) -> int:
    """(output, tap) pairs along one axis whose input is not padding."""
    p = k // 2
    return sum(min(k, length + p - h) - max(0, p - h) for h in range(length))


def useful_flops(n: int, c: int, h: int, w: int, k: int) -> int:
    """FLOPs of one pass (forward, grad input or grad weight) that do not touch padding."""
    return 2 * n * c * useful_taps_1d(h, k) * useful_taps_1d(w, k)


def min_bytes(n: int, c: int, h: int, w: int, k: int, elem: int = 4) -> int:
    """Minimum traffic of one pass: two activations (in, out) and the kernel."""
    return (2 * n * c * h * w + c * k * k) * elem


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed_cpu(fn: Callable[[], object], device: torch.device) -> Tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process (all threads), minor page faults)."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu = time.process_time()
    wall = timed(fn, device)
    return wall, time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults


def keep_freed_memory_mapped() -> bool:
    """Ask glibc to serve allocations below 32 MiB from its heap and keep freed memory mapped
    (mallopt M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), so that allocating a layer's output reuses
    mapped pages instead of faulting in fresh ones. False where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def measure_rates(device: torch.device, n: int = 2048) -> Dict[str, float]:
    """sgemm rate (FLOP/s, n^3; SPEC section 3 uses 2048) and copy bandwidth (B/s, 16 n^2 floats)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    src = torch.empty(16 * n * n, device=device)  # 256 MiB for n = 2048
    dst = torch.empty_like(src)
    a @ b
    dst.copy_(src)
    gemm = min(timed(lambda: a @ b, device) for _ in range(5))
    copy = min(timed(lambda: dst.copy_(src), device) for _ in range(5))
    return dict(sgemm=2 * n ** 3 / gemm, bandwidth=2 * src.numel() * 4 / copy)


def to_layout(t: torch.Tensor, impl: str) -> torch.Tensor:
    fmt = torch.channels_last if impl.endswith('channels_last') else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def conv_fn(impl: str) -> Callable:
    if impl.startswith('ours'):
        return dwconv_ext.dwconv2d
    return lambda x, w, b=None: F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])


def pass_fns(impl: str, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> Dict[str, Callable]:
    """The three passes of one layer and forward + backward through autograd."""
    k, c = w.shape[-1], x.shape[1]
    conv = conv_fn(impl)
    if impl.startswith('ours'):
        ops = torch.ops.replk_mm
        grad_input = lambda: ops.dwconv2d_backward_input(g, w)  # noqa: E731
        grad_weight = lambda: ops.dwconv2d_backward_weight(g, x, k, False)  # noqa: E731
    else:
        def backward(mask):
            return lambda: torch.ops.aten.convolution_backward(
                g, x, w, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], c, mask)
        grad_input, grad_weight = backward([True, False, False]), backward([False, True, False])

    def forward_backward():
        xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
        conv(xr, wr).backward(g)

    return dict(forward=lambda: conv(x, w), grad_input=grad_input, grad_weight=grad_weight,
                forward_backward=forward_backward)


def stack_fn(conv: Callable, x: torch.Tensor, weights: Sequence[torch.Tensor], mode: str) -> Callable:
    """``len(weights)`` stacked layers of ``conv(x, w)``: forward, or forward + backward of the sum."""

    def run():
        with torch.set_grad_enabled(mode == 'forward_backward'):
            y = x
            for w in weights:
                y = conv(y, w)
            if mode == 'forward_backward':
                y.sum().backward()

    return run


def stack_within_budget(conv: Callable, x: torch.Tensor, weights: Sequence[torch.Tensor], mode: str,
                        budget: float, repeats: int, device: torch.device) -> Tuple[Callable, int]:
    """The stack (:func:`stack_fn`) of as many of ``weights`` (at least one) as ``repeats`` runs
    can time within ``budget`` seconds, judged by one run of one layer (which also warms up), and
    its number of layers."""
    one = timed(stack_fn(conv, x, weights[:1], mode), device)
    n_layers = max(1, min(len(weights), int(budget / max(one, 1e-9) / repeats)))
    return stack_fn(conv, x, weights[:n_layers], mode), n_layers


def best_interleaved(rounds: Sequence[Dict], device: torch.device) -> Dict[str, Tuple[float, float, int]]:
    """Best (wall, CPU) seconds of each function over interleaved rounds (each round a dict of the
    same names, all timed once), and the page faults of its fastest run."""
    for fn in rounds[0].values():  # warm-up (and the extension's one-off set-up)
        fn()
    best = {name: (float('inf'), float('inf'), 0) for name in rounds[0]}
    for fns in rounds:
        for name, fn in fns.items():
            wall, cpu, faults = timed_cpu(fn, device)
            fastest = wall < best[name][0]
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu), faults if fastest else best[name][2])
    return best


def run_passes(args, device: torch.device, rates: Dict[str, float], impls: List[str]) -> List[dict]:
    n, h = args.passes_batch, 32
    rows = []
    for k in tqdm(args.kernels, desc='passes'):
        gen = torch.Generator(device=device).manual_seed(k)
        x0 = torch.randn(n, CHANNELS, h, h, device=device, generator=gen).to(args.dtype)
        g0 = torch.randn(n, CHANNELS, h, h, device=device, generator=gen).to(args.dtype)
        w = (torch.randn(CHANNELS, 1, k, k, device=device, generator=gen) * 0.05).to(args.dtype)
        # Each round gets inputs of its own, alive until the cell ends: a layer's time on one tensor
        # depends on where its pages fall (ours NCHW K=5 forward: 0.91-1.55 ms over 8 allocations on
        # the build machine, PyTorch's alike), so one allocation would fix a run's luck per cell.
        rounds = [{(impl, name): fn for impl in impls
                   for name, fn in pass_fns(impl, to_layout(x0, impl).clone(), w,
                                            to_layout(g0, impl).clone()).items()}
                  for _ in range(args.repeats)]
        times = best_interleaved(rounds, device)
        flops = useful_flops(n, CHANNELS, h, h, k)
        for (impl, name), (t, cpu, faults) in times.items():
            passes = 3 if name == 'forward_backward' else 1
            bound = passes * max(flops / rates['sgemm'], min_bytes(n, CHANNELS, h, h, k, args.dtype.itemsize) / rates['bandwidth'])
            rows.append(dict(k=k, impl=impl, part=name, ms=t * 1e3, cpu_ms=cpu * 1e3,
                             useful_gflops=passes * flops / t / 1e9,
                             pct_sgemm=100 * passes * flops / t / rates['sgemm'], roofline_pct=100 * bound / t,
                             page_faults=faults))
    return rows


def run_table1(args, device: torch.device, rates: Dict[str, float], impls: List[str]) -> List[dict]:
    rows = []
    for r, k in tqdm([(r, k) for r in args.resolutions for k in args.kernels], desc='table1'):
        gen = torch.Generator(device=device).manual_seed(k)
        x0 = torch.randn(args.batch, CHANNELS, r, r, device=device, generator=gen).to(args.dtype)
        w0 = [(torch.randn(CHANNELS, 1, k, k, device=device, generator=gen) * (0.5 / k)).to(args.dtype)
              for _ in range(LAYERS)]
        for mode in args.modes:
            fns, layers_timed = {}, {}
            for impl in impls:
                ws = [w.requires_grad_(mode == 'forward_backward') for w in w0]
                fns[impl], layers_timed[impl] = stack_within_budget(
                    conv_fn(impl), to_layout(x0, impl), ws, mode, args.cell_budget, args.repeats, device)
            times = best_interleaved([fns] * args.repeats, device)
            flops = useful_flops(args.batch, CHANNELS, r, r, k) * (1 if mode == 'forward' else 3)
            nbytes = min_bytes(args.batch, CHANNELS, r, r, k, args.dtype.itemsize) * (1 if mode == 'forward' else 3)
            bound = LAYERS * max(flops / rates['sgemm'], nbytes / rates['bandwidth'])
            for impl, (t, cpu, faults) in times.items():
                ms = t * LAYERS / layers_timed[impl] * 1e3
                rows.append(dict(resolution=r, k=k, mode=mode, impl=impl, ms=ms,
                                 cpu_ms=cpu * LAYERS / layers_timed[impl] * 1e3,
                                 layers_timed=layers_timed[impl], roofline_ms=bound * 1e3,
                                 roofline_pct=100 * bound * 1e3 / ms, page_faults=faults))
    return rows



def to_csv(rows: List[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f'{v:.4g}' if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def header(args, device: torch.device, rates: Dict[str, float]) -> List[str]:
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (
        f'CPU, {torch.get_num_threads()} threads, freed memory '
        + ('kept mapped' if args.freed_memory_kept else 'returned to the system (page faults possible)'))
    load = f', load average {os.getloadavg()[0]:.1f}' if hasattr(os, 'getloadavg') else ''
    return [f'Device: {name}{load}; torch {torch.__version__}, {str(args.dtype)[6:]}. fp32 sgemm ({args.gemm_size}^3) '
            f'{rates["sgemm"] / 1e9:.0f} GFLOP/s, copy bandwidth {rates["bandwidth"] / 1e9:.1f} GB/s, '
            'measured in this run.', '']


def table1_markdown(args, rows: List[dict], impls: List[str]) -> List[str]:
    lines = [f'## Seed Table 1: {LAYERS} stacked DW layers on ({args.batch}, {CHANNELS}, R, R), ms',
             '', f'N = {args.batch}' + (' (the paper: 64 on a 2080Ti; smaller on the CPU)'
                                       if args.batch != 64 else '') + '. Best of '
             f'{args.repeats} interleaved runs; roofline = {LAYERS} x max(useful FLOPs / sgemm, '
             'bytes / bandwidth).', '']
    cell = {(r['resolution'], r['k'], r['mode'], r['impl']): r for r in rows}
    for mode in args.modes:
        lines += [f'### {mode}', '', '| R | impl | ' + ' | '.join(str(k) for k in args.kernels) + ' |',
                  '|---|---|' + '---|' * len(args.kernels)]
        for res in args.resolutions:
            for impl in impls + ['roofline bound', 'ours best, % of roofline']:
                vals = []
                for k in args.kernels:
                    if impl == 'roofline bound':
                        vals.append(f"{cell[(res, k, mode, impls[0])]['roofline_ms']:.1f}")
                    elif impl.startswith('ours best'):
                        best = min((cell[(res, k, mode, i)] for i in impls if i.startswith('ours')),
                                   key=lambda c: c['ms'], default=None)
                        vals.append(f"{best['roofline_pct']:.0f}%" if best else '-')
                    else:
                        c = cell[(res, k, mode, impl)]
                        vals.append(f"{c['ms']:.1f}" + ('*' if c['layers_timed'] < LAYERS else ''))
                lines.append(f'| {res} | {impl} | ' + ' | '.join(vals) + ' |')
        lines.append('')
    lines.append(f'\\* timed on fewer layers (column layers_timed of the CSV) and scaled to {LAYERS}.')
    return lines


def passes_markdown(args, rows: List[dict], impls: List[str], rates: Dict[str, float]) -> List[str]:
    cell = {(r['k'], r['impl'], r['part']): r for r in rows}
    parts = ('forward', 'grad_input', 'grad_weight', 'forward_backward')
    lines = [f'## One layer on ({args.passes_batch}, {CHANNELS}, 32, 32): ms (useful GFLOP/s)', '',
             'forward_backward = forward + grad input + grad weight through autograd; '
             '"speed-up" = the faster PyTorch layout / ours (each layout).', '',
             '| K | impl | ' + ' | '.join(parts) + ' |', '|---|---|' + '---|' * len(parts)]
    for k in args.kernels:
        for impl in impls:
            vals = [f"{cell[(k, impl, p)]['ms']:.2f} ({cell[(k, impl, p)]['useful_gflops']:.0f})"
                    for p in parts]
            lines.append(f'| {k} | {impl} | ' + ' | '.join(vals) + ' |')
    ours = [i for i in impls if i.startswith('ours')]
    if not ours:
        return lines
    lines += ['', '| K | ours | forward speed-up | forward_backward speed-up | same in CPU time | '
              'min % of sgemm over the 3 passes |', '|---|---|---|---|---|---|']
    verdict = dict(fb31=None, fb13=None, fwd=None, rate=None)  # None: no kernel size run for it
    for k in args.kernels:
        for impl in ours:
            sp = {}
            for p in ('forward', 'forward_backward'):
                ref = min(cell[(k, i, p)]['ms'] for i in impls if i.startswith('pytorch'))
                sp[p] = ref / cell[(k, impl, p)]['ms']
            ref_cpu = min(cell[(k, i, 'forward_backward')]['cpu_ms'] for i in impls if i.startswith('pytorch'))
            sp_cpu = ref_cpu / cell[(k, impl, 'forward_backward')]['cpu_ms']
            pct = min(cell[(k, impl, p)]['pct_sgemm'] for p in parts[:3])
            lines.append(f"| {k} | {impl} | {sp['forward']:.2f}x | {sp['forward_backward']:.2f}x | "
                         f'{sp_cpu:.2f}x | {pct:.0f}% |')
            checks = dict(fwd=sp['forward'] >= 1, fb31=sp['forward_backward'] >= 5 if k == 31 else None,
                          fb13=sp['forward_backward'] >= 2 if k == 13 else None,
                          rate=pct >= 50 if k >= 13 else None)
            for name, passed in checks.items():
                if passed is not None:
                    verdict[name] = passed and verdict[name] is not False
    ok = lambda b: 'not run' if b is None else 'yes' if b else 'NO'  # noqa: E731
    lines += ['', f'Targets over the kernels run ({", ".join(map(str, args.kernels))}), each of ours\' layouts: '
              f"forward never slower: {ok(verdict['fwd'])}; forward_backward >= 5x at K=31: "
              f"{ok(verdict['fb31'])}; >= 2x at K=13: {ok(verdict['fb13'])}; every pass at K >= 13 "
              f">= 50% of sgemm ({rates['sgemm'] / 2e9:.0f} GFLOP/s): {ok(verdict['rate'])}."]
    return lines


def plot_table1(args, rows: List[dict], impls: List[str], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(args.modes), len(args.resolutions), squeeze=False,
                             figsize=(4.2 * len(args.resolutions), 3.4 * len(args.modes)))
    for mi, mode in enumerate(args.modes):
        for ri, res in enumerate(args.resolutions):
            ax = axes[mi][ri]
            for impl in impls:
                pts = [(r['k'], r['ms']) for r in rows
                       if r['mode'] == mode and r['resolution'] == res and r['impl'] == impl]
                ax.plot(*zip(*pts), marker='o', label=impl)
            bound = [(r['k'], r['roofline_ms']) for r in rows
                     if r['mode'] == mode and r['resolution'] == res and r['impl'] == impls[0]]
            ax.plot(*zip(*bound), linestyle='--', color='gray', label='roofline bound')
            ax.set_yscale('log')
            ax.set_title(f'{mode}, R={res}')
            ax.set_xlabel('kernel size')
            ax.set_ylabel(f'ms, {LAYERS} layers, N={args.batch}')
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = f'{path}.tmp{os.getpid()}.png'
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--batch', type=int, help='N of table1 (default 64 on CUDA, 2 on the CPU)')
    parser.add_argument('--passes-batch', type=int, default=8, help='N of the passes part')
    parser.add_argument('--resolutions', type=int, nargs='+', default=[16, 32, 64])
    parser.add_argument('--kernels', type=int, nargs='+', default=list(TABLE1_KERNELS))
    parser.add_argument('--modes', nargs='+', default=['forward', 'forward_backward'],
                        choices=['forward', 'forward_backward'], help='table1 modes')
    parser.add_argument('--parts', nargs='+', default=['passes', 'table1'], choices=['passes', 'table1'])
    parser.add_argument('--impls', nargs='+', default=list(IMPLS), choices=IMPLS)
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per cell (best kept)')
    parser.add_argument('--cell-budget', type=float, default=20.0,
                        help='seconds per implementation and table1 cell before fewer layers are timed')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'],
                        help='dtype of the convolutions (the sgemm reference rate stays fp32)')
    parser.add_argument('--gemm-size', type=int, default=2048, help='n of the n^3 sgemm rate')
    parser.add_argument('--keep-freed-memory', action=argparse.BooleanOptionalAction, default=True,
                        help='CPU: ask glibc to keep freed memory mapped, so that output allocations '
                        'do not page-fault in some runs only')
    parser.add_argument('--out', help='output folder (default work_dirs/benchmark_dwconv/<device>)')
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 64 if args.device.startswith('cuda') else 2
    args.dtype = getattr(torch, args.dtype)
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    args.freed_memory_kept = False
    if device.type == 'cpu':
        torch.set_num_threads(args.threads)
        args.freed_memory_kept = args.keep_freed_memory and keep_freed_memory_mapped()
    bad = [k for k in args.kernels if k % 2 == 0 or k < 1]
    if bad:
        raise SystemExit(f'--kernels must be odd and positive, got {bad}')
    impls = list(args.impls)
    probe = torch.zeros(1, 1, 1, 1, device=device, dtype=args.dtype)
    if not dwconv_ext.is_available(probe):
        print(f'replk_mm._ext has no kernel for {device} {args.dtype}: timing PyTorch only '
              '(build it with `pip install --no-build-isolation --no-deps -e .`)')
        impls = [i for i in impls if not i.startswith('ours')]
    out = args.out or os.path.join('work_dirs', 'benchmark_dwconv', device.type)
    os.makedirs(out, exist_ok=True)
    rates = measure_rates(device, args.gemm_size)
    print('\n'.join(header(args, device, rates)))
    if 'passes' in args.parts:
        rows = run_passes(args, device, rates, impls)
        md = '\n'.join(header(args, device, rates) + passes_markdown(args, rows, impls, rates)) + '\n'
        write_text_atomic(os.path.join(out, 'dwconv_passes.csv'), to_csv(rows))
        write_text_atomic(os.path.join(out, 'dwconv_passes.md'), md)
        print(md)
    if 'table1' in args.parts:
        rows = run_table1(args, device, rates, impls)
        md = '\n'.join(header(args, device, rates) + table1_markdown(args, rows, impls)) + '\n'
        write_text_atomic(os.path.join(out, 'dwconv_table1.csv'), to_csv(rows))
        write_text_atomic(os.path.join(out, 'dwconv_table1.md'), md)
        plot_table1(args, rows, impls, os.path.join(out, 'dwconv_table1.png'))
        print(md)
    print(f'written to {out}')


if __name__ == '__main__':
    main()
