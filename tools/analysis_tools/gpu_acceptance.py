"""One-shot acceptance run of the CUDA depth-wise kernels on a machine with one NVIDIA GPU.

    python tools/analysis_tools/gpu_acceptance.py --out-dir DIR [--emulate] [--steps NAME ...]

Runs the steps of ``STEPS`` in order and writes one report, ``DIR/acceptance.md``, and its rows,
``DIR/acceptance.csv`` (columns step, case, impl, metric, value), rewritten after every step; the
logs of the sub-processes land beside them. A step that fails is marked FAILED with its error and
the next one runs. Steps: the environment; building ``replk_mm._ext`` for this GPU's architecture
only (skipped when the built one already runs on it); ``tests/ops/test_dwconv_cuda.py``;
``compute-sanitizer`` memcheck and racecheck on small cases (when the toolkit has it); Nsight
Compute's counters of the headline kernels (when ``ncu`` is there); the seed
Table 1 cases and one layer at R = 64, K = 31 in fp32 and fp16, forward and forward + backward,
ours against PyTorch NCHW and channels_last (cuDNN), with the fraction of the fp32 roofline; a
RepLKNet-31B training step (batch 32, 224) and an UperNet-31B training step (batch 2, 512)
against mmpretrain's RepLKNet, with peak memory. Sized for under 8 minutes on an H100 / H200
(docs/cuda.md, "Run this first").

Without a GPU it prints one ``error:`` line and exits with status 2. ``--emulate`` runs the same
pipeline on the CPU with tiny sizes, the CUDA kernels compiled for the host
(``torch.ops.replk_mm_emu``) standing in for the CUDA op; the build, compute-sanitizer and ncu
steps are skipped. Exit status: 0 when every step passed, 1 when one failed, 2 without a GPU.
"""
import argparse
import copy
import csv
import datetime
import functools
import glob
import io
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A fresh checkout: the package (and its in-place build) from here. Importing it loads
# replk_mm._ext, so nothing imports it before the build step has run (every import of the package
# below is inside a function).
sys.path.insert(0, ROOT)

CSV_COLUMNS = ('step', 'case', 'impl', 'metric', 'value')
MODES = ('forward', 'forward_backward')
TINY_ARCH = dict(large_kernel_sizes=[13, 11, 9, 7], layers=[1, 1, 2, 1], channels=[8, 8, 16, 16],
                 small_kernel=3)
# FP32 lanes per SM by compute capability (CUDA programming guide, arithmetic throughput table).
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64}
SANITIZER_TOOLS = ('memcheck', 'racecheck')
# The small cases compute-sanitizer runs: every kernel (forward NCHW / NHWC, input gradient, both
# weight gradients; CUDA cores and tensor cores), partial tiles and channel groups, a kernel larger than the image.
SANITIZER_CASE = '''
import torch, torch.nn.functional as F
import replk_mm._ext
ops = torch.ops.replk_mm
for dtype in (torch.float32, torch.float16):
    for k, (n, c, h, w) in ((3, (2, 5, 37, 35)), (31, (1, 3, 20, 45))):
        for channels_last in (False, True):
            x, g = (torch.randn(n, c, h, w).to(dtype) for _ in range(2))
            weight, bias = torch.randn(c, 1, k, k).to(dtype), torch.randn(c).to(dtype)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x, g = (t.cuda().contiguous(memory_format=fmt) for t in (x, g))
            ref = F.conv2d(x.cpu().float(), weight.float(), bias.float(), padding=k // 2, groups=c)
            # the CUDA-core kernels, then (float16, compute capability 8.0+) the tensor-core ones
            tc = dtype == torch.float16 and torch.cuda.get_device_capability() >= (8, 0)
            for suffix in ('', '_tc') if tc else ('',):
                y = getattr(ops, 'dwconv2d_forward' + suffix)(x, weight.cuda(), bias.cuda())
                assert (y.cpu().float() - ref).abs().max() <= 1e-2 * ref.abs().max(), (dtype, k)
                getattr(ops, 'dwconv2d_backward_input' + suffix)(g, weight.cuda())
                for deterministic in (True, False):
                    torch.use_deterministic_algorithms(deterministic)
                    getattr(ops, 'dwconv2d_backward_weight' + suffix)(g, x, k, True)
torch.cuda.synchronize()
print('sanitizer case: done')
'''


@dataclass(frozen=True)
class Sizes:
    """What each step runs: the GPU sizes, or tiny ones for ``--emulate``."""
    channels: int
    table1_batch: int
    resolutions: Tuple[int, ...]
    kernels: Tuple[int, ...]
    layers: int
    headline: Tuple[int, int, int]  # (N, R, K) of the one-layer case
    headline_dtypes: Tuple[torch.dtype, ...]
    repeats: int
    cell_budget: float  # seconds per candidate and case before fewer layers are timed
    arch: object
    backbone: Tuple[int, int]  # (batch, resolution)
    upernet: Tuple[int, int]
    upernet_head_channels: Optional[Tuple[int, int]]  # (UPerHead, FCNHead) channels; None: config's
    step_warmup: int
    step_repeats: int
    tests: Tuple[str, ...]


GPU_SIZES = Sizes(channels=384, table1_batch=64, resolutions=(16, 32, 64),
                  kernels=(3, 5, 7, 9, 13, 17, 21, 27, 29, 31), layers=24, headline=(64, 64, 31),
                  headline_dtypes=(torch.float32, torch.float16), repeats=3, cell_budget=0.6,
                  arch='31B', backbone=(32, 224), upernet=(2, 512), upernet_head_channels=None,
                  step_warmup=2, step_repeats=5, tests=('tests/ops/test_dwconv_cuda.py', ))
EMULATED_SIZES = Sizes(channels=3, table1_batch=1, resolutions=(9, 16), kernels=(3, 7), layers=2,
                       headline=(1, 12, 7), headline_dtypes=(torch.float32, torch.float16), repeats=1,
                       cell_budget=1.0, arch=TINY_ARCH, backbone=(2, 32), upernet=(2, 32),
                       upernet_head_channels=(16, 8), step_warmup=1, step_repeats=1,
                       tests=('tests/ops/test_cuda_emulation.py', '-k', 'test_errors_name_the_problem'))


@dataclass
class Context:
    """State shared by the steps."""
    args: argparse.Namespace
    device: torch.device
    sizes: Sizes
    rates: Optional[Tuple[float, float, str]] = None  # fp32 FLOP/s, bytes/s, where they come from

    @functools.cached_property
    def candidates(self) -> List['Candidate']:
        """candidates(), built once on first use: by the op steps, after the build step."""
        return candidates(self.args.emulate)


@dataclass
class Result:
    """A step's outcome: its status, its report section and its CSV rows."""
    status: str = 'ok'  # ok, FAILED, skipped, not available
    lines: List[str] = field(default_factory=list)
    rows: List[dict] = field(default_factory=list)

    def row(self, step: str, case: str, impl: str, metric: str, value) -> None:
        self.rows.append(dict(step=step, case=case, impl=impl, metric=metric,
                              value=f'{value:.4g}' if isinstance(value, float) else value))


@dataclass(frozen=True)
class Candidate:
    """One implementation of the depth-wise conv timed by the op steps."""
    name: str
    memory_format: torch.memory_format
    conv: Callable  # (x, weight) -> y, differentiable
    ours: bool
    dtypes: Tuple[torch.dtype, ...] = ()  # the dtypes it takes; empty: every dtype

    def takes(self, dtype: torch.dtype) -> bool:
        return not self.dtypes or dtype in self.dtypes


def env_with_root() -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT] + [p for p in [env.get('PYTHONPATH')] if p])
    return env


def run_logged(cmd: Sequence[str], log: str, timeout: float, env: Optional[dict] = None
               ) -> Tuple[int, str]:
    """Run ``cmd`` in the checkout, its output streamed into ``log`` (what a hung command printed
    stays there); (exit status, output)."""
    with open(log, 'w') as f:
        f.write('$ ' + ' '.join(cmd) + '\n')
        f.flush()
        try:
            status = subprocess.run(list(cmd), cwd=ROOT, env=env or env_with_root(), stdout=f,
                                    stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            status = -1
            f.write(f'\ntimed out after {timeout:.0f} s\n')
    with open(log) as f:
        return status, f.read()


def last_lines(text: str, n: int = 6) -> List[str]:
    return ['    ' + line for line in text.strip().splitlines()[-n:]] or ['    (no output)']


# ----------------------------------------------------------------------------- the op candidates


class EmulatedConv(torch.autograd.Function):
    """``torch.ops.replk_mm_emu`` (the CUDA kernels compiled for the host) as a differentiable conv;
    ``suffix`` ``''`` or ``'_tc'`` (the tensor-core kernels) selects the op family."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, suffix: str) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.suffix = suffix
        return getattr(torch.ops.replk_mm_emu, 'dwconv2d_forward' + suffix)(x, weight, None)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        ops = torch.ops.replk_mm_emu
        grad_x = getattr(ops, 'dwconv2d_backward_input' + ctx.suffix)(grad_out, weight)
        grad_weight, _ = getattr(ops, 'dwconv2d_backward_weight' + ctx.suffix)(
            grad_out, x, weight.shape[-1], False)
        return grad_x, grad_weight, None


def torch_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=x.shape[1])


def candidates(emulate: bool) -> List[Candidate]:
    """PyTorch in both layouts, ours in both, and our tensor-core kernels in both for float16 /
    bfloat16 where the GPU has them (compute capability 8.0+; the emulated kernels under
    ``--emulate``). A new kernel is one more entry here."""
    half = (torch.float16, torch.bfloat16)
    if emulate:
        import replk_mm._ext_cuda_emu  # noqa: F401  (registers torch.ops.replk_mm_emu)
        ours, ours_tc = (lambda x, w: EmulatedConv.apply(x, w, '')), (
            lambda x, w: EmulatedConv.apply(x, w, '_tc'))
        with_tc = True
    else:
        from replk_mm.ops import dwconv_ext
        ours, ours_tc = dwconv_ext.dwconv2d, dwconv_ext.dwconv2d_tc
        with_tc = torch.cuda.is_available() and dwconv_ext.tensor_cores_available(
            torch.empty(1, 1, 1, 1, device='cuda', dtype=torch.float16))
    nchw, nhwc = torch.contiguous_format, torch.channels_last
    return [Candidate('pytorch_nchw', nchw, torch_conv, False),
            Candidate('pytorch_channels_last', nhwc, torch_conv, False),
            Candidate('ours_nchw', nchw, ours, True),
            Candidate('ours_channels_last', nhwc, ours, True)] + ([
                Candidate('ours_tc_nchw', nchw, ours_tc, True, half),
                Candidate('ours_tc_channels_last', nhwc, ours_tc, True, half)] if with_tc else [])


def roofline_rates(device: torch.device) -> Tuple[float, float, str]:
    """fp32 FLOP/s and DRAM bytes/s of the roofline: the GPU's nominal figures from its properties,
    else (CPU, or properties without clocks) the sgemm and copy rates measured now."""
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        clock, mem_clock, bus = (getattr(p, a, 0) for a in ('clock_rate', 'memory_clock_rate',
                                                            'memory_bus_width'))
        if clock and mem_clock and bus:
            lanes = FP32_LANES.get((p.major, p.minor), 128)
            flops = p.multi_processor_count * lanes * 2 * clock * 1e3
            bandwidth = 2 * mem_clock * 1e3 * bus / 8
            return flops, bandwidth, (
                f'nominal: {p.multi_processor_count} SMs x {lanes} FP32 lanes x 2 x '
                f'{clock / 1e6:.2f} GHz = {flops / 1e12:.1f} TFLOP/s; {bus}-bit bus x 2 x '
                f'{mem_clock / 1e6:.2f} GHz = {bandwidth / 1e12:.2f} TB/s')
    from benchmark_dwconv import measure_rates
    rates = measure_rates(device, 1024 if device.type == 'cpu' else 4096)
    return rates['sgemm'], rates['bandwidth'], (
        f'measured now: fp32 sgemm {rates["sgemm"] / 1e9:.0f} GFLOP/s, copy '
        f'{rates["bandwidth"] / 1e9:.1f} GB/s')


def time_case(ctx: Context, n: int, r: int, k: int, dtype: torch.dtype, mode: str, layers: int,
              result: Result, step: str) -> Dict[str, float]:
    """Milliseconds of ``layers`` stacked layers on (n, C, r, r) for every candidate (rows into
    ``result``); a candidate that raises is reported and left out."""
    from benchmark_dwconv import best_interleaved, min_bytes, stack_within_budget, useful_flops
    device, c = ctx.device, ctx.sizes.channels
    case = f'N={n} C={c} R={r} K={k} {str(dtype)[6:]} {mode}'
    gen = torch.Generator(device=device).manual_seed(k)
    x0 = torch.randn(n, c, r, r, device=device, generator=gen).to(dtype)
    weights = [(torch.randn(c, 1, k, k, device=device, generator=gen) * (0.5 / k)).to(dtype)
               .requires_grad_(mode == 'forward_backward') for _ in range(layers)]
    fns, layers_timed = {}, {}
    for cand in ctx.candidates:
        if not cand.takes(dtype):
            continue
        try:
            fns[cand.name], layers_timed[cand.name] = stack_within_budget(
                cand.conv, x0.contiguous(memory_format=cand.memory_format), weights, mode,
                ctx.sizes.cell_budget, ctx.sizes.repeats, device)
        except Exception as err:  # noqa: BLE001  (one candidate's failure is a result)
            result.status = 'FAILED' if cand.ours else result.status
            result.lines.append(f'- {case}, {cand.name}: raised {type(err).__name__}: '
                                f'{str(err).splitlines()[0]}')
            result.row(step, case, cand.name, 'error', type(err).__name__)
    times = best_interleaved([fns] * ctx.sizes.repeats, device) if fns else {}
    passes = 1 if mode == 'forward' else 3
    ctx.rates = ctx.rates or roofline_rates(device)
    flops, peak_bytes = useful_flops(n, c, r, r, k) * passes, min_bytes(n, c, r, r, k, dtype.itemsize) * passes
    bound_ms = layers * max(flops / ctx.rates[0], peak_bytes / ctx.rates[1]) * 1e3
    ms = {}
    for name, (seconds, _, _) in times.items():
        ms[name] = seconds * layers / layers_timed[name] * 1e3
        result.row(step, case, name, 'ms', ms[name])
        result.row(step, case, name, 'layers_timed', layers_timed[name])
        result.row(step, case, name, 'roofline_pct', 100 * bound_ms / ms[name])
    result.row(step, case, 'roofline', 'ms', bound_ms)
    ms['roofline'] = bound_ms
    return ms


def best(ms: Dict[str, float], ours: bool) -> Optional[float]:
    values = [t for name, t in ms.items() if name.startswith('ours') == ours and name != 'roofline']
    return min(values) if values else None


def speedup_cells(ms: Dict[str, float]) -> Tuple[str, str, str]:
    """(ours' best % of the roofline, its speed-up over PyTorch NCHW, over PyTorch's best)."""
    ours, theirs = best(ms, True), best(ms, False)
    if ours is None:
        return '-', '-', '-'
    nchw = ms.get('pytorch_nchw')
    return (f"{100 * ms['roofline'] / ours:.0f}%",
            f'{nchw / ours:.2f}x' if nchw else '-', f'{theirs / ours:.2f}x' if theirs else '-')


# ----------------------------------------------------------------------------- the steps


def step_environment(ctx: Context, result: Result) -> None:
    lines = [f'- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN '
             f'{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "-"}']
    if ctx.device.type == 'cuda':
        p = torch.cuda.get_device_properties(ctx.device)
        lines.append(f'- GPU: {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, '
                     f'{p.total_memory / 2**30:.0f} GiB' + (f'; {torch.cuda.device_count()} GPUs visible, '
                                                           'cuda:0 used' if torch.cuda.device_count() > 1 else ''))
        nvcc = shutil.which('nvcc')
        version = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout if nvcc else ''
        lines.append(f'- nvcc: {nvcc} ({last_lines(version, 1)[0].strip()})' if nvcc else '- nvcc: not on PATH')
    else:
        lines.append(f'- emulation on the CPU ({torch.get_num_threads()} thread): the CUDA kernels '
                     'compiled for the host (torch.ops.replk_mm_emu) stand in for the CUDA op; the '
                     'model steps run the package on the CPU')
    ctx.rates = roofline_rates(ctx.device)
    lines.append(f'- fp32 roofline: {ctx.rates[2]}')
    result.lines += lines
    result.row('environment', 'device', '', 'name', torch.cuda.get_device_name(ctx.device)
               if ctx.device.type == 'cuda' else 'cpu (emulation)')
    result.row('environment', 'roofline', '', 'fp32_tflops', ctx.rates[0] / 1e12)
    result.row('environment', 'roofline', '', 'bandwidth_tbps', ctx.rates[1] / 1e12)


CUDA_PROBE = ('import torch, replk_mm._ext; x = torch.ones(1, 2, 5, 5, device="cuda"); '
              'torch.ops.replk_mm.dwconv2d_forward(x, torch.ones(2, 1, 3, 3, device="cuda"), None); '
              'torch.cuda.synchronize()')


def step_build(ctx: Context, result: Result) -> None:
    log = os.path.join(ctx.args.out_dir, 'build.log')
    status, probe = run_logged([sys.executable, '-c', CUDA_PROBE], log, 300)
    if status == 0:
        result.lines.append('- replk_mm._ext is built and runs a CUDA forward on this GPU: not rebuilt')
        result.row('build', 'extension', '', 'rebuilt', 'no')
        return
    major, minor = torch.cuda.get_device_capability(ctx.device)
    env = dict(env_with_root(), TORCH_CUDA_ARCH_LIST=f'{major}.{minor}', FORCE_CUDA='1')
    cmd = [sys.executable, 'setup.py', 'build_ext', '--inplace']
    start = time.perf_counter()
    status, output = run_logged(cmd, log, 1800, env)
    seconds = time.perf_counter() - start
    result.lines.append(f'- not usable before ({last_lines(probe, 1)[0].strip()}); built for sm_{major}{minor} '
                        f'only with `TORCH_CUDA_ARCH_LIST={major}.{minor} FORCE_CUDA=1 python setup.py '
                        f'build_ext --inplace` in {seconds:.0f} s (log: build.log)')
    result.row('build', 'extension', '', 'rebuilt', 'yes')
    result.row('build', 'extension', '', 'seconds', seconds)
    if status == 0:
        status, output = run_logged([sys.executable, '-c', CUDA_PROBE], log + '.probe', 300)
    if status != 0:
        result.status = 'FAILED'
        result.lines += ['- the build or the CUDA forward after it failed:'] + last_lines(output)


def step_tests(ctx: Context, result: Result) -> None:
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *ctx.sizes.tests]
    status, output = run_logged(cmd, os.path.join(ctx.args.out_dir, 'tests.log'), 900)
    counts = {word: int(num) for num, word in re.findall(
        r'(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)', output.strip().splitlines()[-1]
        if output.strip() else '')}
    for word, num in counts.items():
        result.row('tests', ' '.join(ctx.sizes.tests), '', word, num)
    result.lines.append(f"- `{' '.join(cmd[1:])}`: " + (', '.join(f'{n} {w}' for w, n in counts.items())
                                                         or 'no summary') + ' (log: tests.log)')
    if status != 0 or not counts.get('passed') or counts.get('skipped'):
        result.status = 'FAILED'
        result.lines += last_lines(output)


def find_cuda_tool(name: str, *patterns: str) -> Optional[str]:
    """``name`` on PATH, else in ``$CUDA_HOME/bin`` or ``/usr/local/cuda/bin``, else the last match
    of ``patterns`` (globs: tools installed beside the toolkit)."""
    from torch.utils.cpp_extension import CUDA_HOME
    candidates = [shutil.which(name)] + [os.path.join(home, 'bin', name)
                                         for home in (CUDA_HOME, '/usr/local/cuda') if home]
    candidates += [path for pattern in patterns for path in sorted(glob.glob(pattern), reverse=True)]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def sanitizer_verdict(status: int, output: str) -> Tuple[bool, List[str]]:
    """(no error, summary lines) of one compute-sanitizer run: exit status 0 and the case's last
    line printed. The log's first lines echo the command, the case's source included, so whole
    lines are matched."""
    lines = [line.strip() for line in output.splitlines()]
    summary = [line for line in lines if 'SUMMARY' in line or line == 'sanitizer case: done']
    return status == 0 and 'sanitizer case: done' in lines, summary


def step_compute_sanitizer(ctx: Context, result: Result) -> None:
    tool = find_cuda_tool('compute-sanitizer')
    if tool is None:
        result.status = 'not available'
        result.lines.append('- compute-sanitizer is not on PATH nor in $CUDA_HOME/bin: not run (it '
                            'comes with the CUDA toolkit; install it and run this step again with '
                            '`--steps compute_sanitizer`)')
        result.row('compute_sanitizer', '', '', 'available', 'no')
        return
    for name in SANITIZER_TOOLS:
        cmd = [tool, '--tool', name, '--error-exitcode', '1', sys.executable, '-c', SANITIZER_CASE]
        start = time.perf_counter()
        status, output = run_logged(cmd, os.path.join(ctx.args.out_dir, f'sanitizer_{name}.log'), 900)
        ok, summary = sanitizer_verdict(status, output)
        result.status = result.status if ok else 'FAILED'
        result.lines.append(f'- {name}: {"no error" if ok else "FAILED"} in {time.perf_counter() - start:.0f} s '
                            f'({"; ".join(s.strip("= ") for s in summary) or "no summary"}; '
                            f'log: sanitizer_{name}.log)')
        if not ok:
            result.lines += last_lines(output, 12)
        result.row('compute_sanitizer', 'small cases', name, 'errors', 0 if ok else 'yes')


# The kernels Nsight Compute profiles: one call each at the headline size (N = 64, C = 384, R = 64,
# K = 31), after a warm-up call, between torch.cuda.profiler.start() and stop().
NCU_CASE = '''
import torch
import replk_mm._ext
ops = torch.ops.replk_mm
x = torch.randn(64, 384, 64, 64, device="cuda")
w = torch.randn(384, 1, 31, 31, device="cuda")
calls = [lambda: ops.dwconv2d_forward(x, w, None),
         lambda: ops.dwconv2d_backward_weight(x, x, 31, False)]
if torch.cuda.get_device_capability() >= (8, 0):
    xh, wh = x.half(), w.half()
    calls.append(lambda: ops.dwconv2d_forward_tc(xh, wh, None))
for call in calls:
    call()
torch.cuda.synchronize()
torch.cuda.profiler.start()
for call in calls:
    call()
torch.cuda.synchronize()
torch.cuda.profiler.stop()
'''
NCU_SECTIONS = ('SpeedOfLight', 'Occupancy', 'LaunchStats', 'ComputeWorkloadAnalysis',
                'MemoryWorkloadAnalysis', 'WarpStateStats')


def parse_ncu_csv(output: str) -> Dict[str, List[Tuple[str, str, str, str]]]:
    """``ncu --csv --page details`` output -> {kernel: [(section, metric, unit, value), ...]};
    the lines that are not CSV rows (``==PROF==`` messages, the program's own output) are skipped."""
    rows = [line for line in output.splitlines() if line.startswith('"')]
    metrics: Dict[str, List[Tuple[str, str, str, str]]] = {}
    for row in csv.DictReader(rows):
        if row.get('Metric Name') and row.get('Kernel Name'):
            kernel = row['Kernel Name'].split('(')[0].strip()
            metrics.setdefault(kernel, []).append((row.get('Section Name', ''), row['Metric Name'],
                                                   row.get('Metric Unit', ''), row.get('Metric Value', '')))
    return metrics


def step_ncu(ctx: Context, result: Result) -> None:
    tool = find_cuda_tool('ncu', '/opt/nvidia/nsight-compute/*/ncu')
    if tool is None:
        result.status = 'not available'
        result.lines.append('- Nsight Compute (`ncu`) is not on PATH, in $CUDA_HOME/bin, '
                            '/usr/local/cuda/bin nor /opt/nvidia/nsight-compute: not run')
        result.row('ncu', '', '', 'available', 'no')
        return
    cmd = [tool, '--clock-control', 'none', '--profile-from-start', 'off', '--csv', '--page', 'details',
           *[arg for section in NCU_SECTIONS for arg in ('--section', section)],
           sys.executable, '-c', NCU_CASE]
    status, output = run_logged(cmd, os.path.join(ctx.args.out_dir, 'ncu.log'), 600)
    metrics = parse_ncu_csv(output)
    result.lines.append('Hardware counters of one call of each kernel at the headline size (N = 64, '
                        'C = 384, R = 64, K = 31; fp32 forward and weight gradient, fp16 tensor-core '
                        'forward), the clocks left as they are (`--clock-control none`); log: ncu.log.')
    if status != 0 or not metrics:
        result.status = 'FAILED'
        result.lines += ['- ncu failed or reported no kernel:'] + last_lines(output, 12)
        return
    for kernel, rows in metrics.items():
        result.lines += ['', f'### {kernel}', '', '| section | metric | unit | value |', '|---|---|---|---|']
        for section, name, unit, value in rows:
            result.lines.append(f'| {section} | {name} | {unit} | {value} |')
            result.row('ncu', kernel, section, f'{name} ({unit})' if unit else name, value)


def step_table1(ctx: Context, result: Result) -> None:
    s = ctx.sizes
    result.lines += [f'{s.layers} stacked layers on ({s.table1_batch}, {s.channels}, R, R), fp32; ms, best of '
                     f'{s.repeats} (the CSV\'s layers_timed says where fewer layers were timed and scaled). '
                     '"% roofline" is ours (faster layout) against the fp32 roofline; speed-ups are ours over '
                     "PyTorch NCHW and over PyTorch's faster layout.", '']
    for mode in MODES:
        cells = {(r, k): time_case(ctx, s.table1_batch, r, k, torch.float32, mode, s.layers, result, 'table1')
                 for r in s.resolutions for k in s.kernels}
        impls = [c.name for c in ctx.candidates if c.takes(torch.float32)] + ['roofline']
        result.lines += [f'### {mode}', '', '| R | row | ' + ' | '.join(map(str, s.kernels)) + ' |',
                         '|---|---|' + '---|' * len(s.kernels)]
        for r in s.resolutions:
            for impl in impls:
                vals = [f'{cells[(r, k)][impl]:.1f}' if impl in cells[(r, k)] else 'error' for k in s.kernels]
                result.lines.append(f'| {r} | {impl} | ' + ' | '.join(vals) + ' |')
            for i, label in enumerate(('ours, % roofline', 'ours / NCHW', 'ours / best PyTorch')):
                vals = [speedup_cells(cells[(r, k)])[i] for k in s.kernels]
                result.lines.append(f'| {r} | {label} | ' + ' | '.join(vals) + ' |')
        result.lines.append('')


def step_headline(ctx: Context, result: Result) -> None:
    n, r, k = ctx.sizes.headline
    result.lines += [f'One layer on ({n}, {ctx.sizes.channels}, {r}, {r}), K = {k}; ms, best of '
                     f'{ctx.sizes.repeats}. Targets (docs/cuda.md, fp32): ours >= 5x PyTorch NCHW, '
                     ">= 1.5x PyTorch's faster layout, >= 60% of the fp32 roofline.", '',
                     '| dtype | mode | ' + ' | '.join(c.name for c in ctx.candidates) +
                     ' | roofline | ours, % roofline | ours / NCHW | ours / best PyTorch |',
                     '|---|---|' + '---|' * (len(ctx.candidates) + 4)]
    verdicts = []
    for dtype in ctx.sizes.headline_dtypes:
        for mode in MODES:
            ms = time_case(ctx, n, r, k, dtype, mode, 1, result, 'headline')
            cells = [f'{ms[c.name]:.2f}' if c.name in ms else 'error' if c.takes(dtype) else 'n/a'
                     for c in ctx.candidates]
            pct, vs_nchw, vs_best = speedup_cells(ms)
            result.lines.append(f'| {str(dtype)[6:]} | {mode} | ' + ' | '.join(cells) +
                                f" | {ms['roofline']:.2f} | {pct} | {vs_nchw} | {vs_best} |")
            ours, theirs = best(ms, True), best(ms, False)
            if dtype == torch.float32 and ours and theirs and 'pytorch_nchw' in ms:
                met = (ms['pytorch_nchw'] / ours >= 5, theirs / ours >= 1.5, ms['roofline'] / ours >= 0.6)
                verdicts.append(f'{mode}: ' + ', '.join(f'{what} {"yes" if ok else "NO"}' for what, ok in zip(
                    ('5x NCHW', '1.5x best PyTorch', '60% roofline'), met)))
                result.row('headline', f'fp32 {mode}', 'ours', 'targets_met', sum(met))
    result.lines += ['', 'Targets met: ' + ('; '.join(verdicts) or 'not evaluated') +
                     (' (emulated sizes: the verdict only exercises the report)' if ctx.args.emulate else '')]


def time_models(ctx: Context, result: Result, step: str, builders: Dict[str, Callable[[], Callable]]) -> None:
    """Median time and peak memory of the training step each builder returns (benchmark_backbone's
    timing)."""
    from benchmark_backbone import peak_memory_cpu, peak_memory_cuda, time_interleaved
    from replk_mm.ops import clear_dw_impl_cache
    # The dispatch's keys carry no shape: without this the UperNet step would run on the choices
    # measured on the previous step's inputs. A training run measures its own, in its first step
    # (here a warm-up step).
    clear_dw_impl_cache()
    steps = {name: build() for name, build in builders.items()}
    medians = time_interleaved(steps, ctx.device, ctx.sizes.step_warmup, ctx.sizes.step_repeats, step)
    reference = medians.get('mmpretrain')
    result.lines += ['| model | median ms | peak memory MiB | speed-up over mmpretrain |', '|---|---|---|---|']
    for name, seconds in medians.items():
        peak = (peak_memory_cuda(steps[name], ctx.device) if ctx.device.type == 'cuda'
                else peak_memory_cpu(steps[name]))
        speedup = f'{reference / seconds:.2f}x' if reference else '-'
        result.lines.append(f'| {name} | {seconds * 1e3:.1f} | {peak:.0f} | {speedup} |')
        result.row(step, 'training step', name, 'median_ms', seconds * 1e3)
        result.row(step, 'training step', name, 'peak_mib', peak)
    if ctx.device.type == 'cuda':
        torch.cuda.empty_cache()


def step_replknet(ctx: Context, result: Result) -> None:
    from benchmark_backbone import build, make_step
    batch, res = ctx.sizes.backbone
    kwargs = dict(arch=ctx.sizes.arch)
    variants = {'ours': 'ours-train-auto', 'mmpretrain': 'mmpretrain-default'}
    result.lines += [f'Backbone forward + backward (loss: mean of the last stage), batch {batch}, '
                     f'{res} x {res}, fp32, drop path 0; benchmark_backbone.py\'s variants {variants}. '
                     f'Median of {ctx.sizes.step_repeats} after {ctx.sizes.step_warmup} warm-up runs.', '']

    x = torch.randn(batch, 3, res, res, device=ctx.device)
    time_models(ctx, result, 'replknet31b', {
        name: lambda v=v: make_step(v, build(v, kwargs, ctx.device), x, 'forward_backward')
        for name, v in variants.items()})


def upernet_configs(sizes: Sizes) -> Dict[str, object]:
    """configs/upernet_replknet31b_ade20k.py without pretrained weights, its inputs padded to the
    step's size (ours), and the same with mmpretrain's RepLKNet as the backbone."""
    from benchmark_backbone import mmpretrain_kwargs
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'upernet_replknet31b_ade20k.py'))
    cfg.model.data_preprocessor.size = (sizes.upernet[1], ) * 2
    backbone = cfg.model.backbone
    backbone.init_cfg = None
    backbone.arch = copy.deepcopy(sizes.arch)
    if sizes.upernet_head_channels:
        channels = sizes.arch['channels']
        cfg.model.decode_head.update(in_channels=list(channels), channels=sizes.upernet_head_channels[0])
        cfg.model.auxiliary_head.update(in_channels=channels[2], channels=sizes.upernet_head_channels[1])
    theirs = copy.deepcopy(cfg)
    theirs.model.backbone = dict(type='mmpretrain.RepLKNet', **mmpretrain_kwargs(copy.deepcopy(sizes.arch)),
                                 out_indices=tuple(backbone.out_indices),
                                 drop_path_rate=backbone.drop_path_rate, with_cp=backbone.with_cp)
    return dict(ours=cfg, mmpretrain=theirs)


def step_upernet(ctx: Context, result: Result) -> None:
    import mmpretrain.models  # noqa: F401  (registers mmpretrain.RepLKNet)
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from replk_mm.deploy.converter import build_model
    batch, res = ctx.sizes.upernet
    configs = upernet_configs(ctx.sizes)
    result.lines += [f'`model.train_step` (data pre-processor, losses, backward, AdamW update) of '
                     f'configs/upernet_replknet31b_ade20k.py (checkpointing and drop path as configured, '
                     f'SyncBN reverted to BN), batch {batch}, {res} x {res}, 150 classes; mmpretrain: '
                     'the same model with mmpretrain\'s RepLKNet as the backbone. Median of '
                     f'{ctx.sizes.step_repeats} after {ctx.sizes.step_warmup} warm-up runs.', '']
    gen = torch.Generator().manual_seed(0)
    meta = dict(img_shape=(res, res), pad_shape=(res, res), ori_shape=(res, res))
    data = dict(inputs=[torch.randint(0, 256, (3, res, res), generator=gen, dtype=torch.uint8)
                        for _ in range(batch)],
                data_samples=[SegDataSample(gt_sem_seg=PixelData(data=torch.randint(
                    0, 150, (1, res, res), generator=gen)), metainfo=meta) for _ in range(batch)])

    def train_step(cfg) -> Callable:
        torch.manual_seed(0)
        model = build_model(cfg).to(ctx.device).train()
        optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05))
        return lambda: model.train_step(data, optim)

    time_models(ctx, result, 'upernet31b', {name: lambda c=cfg: train_step(c) for name, cfg in configs.items()})


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Context, Result], None]
    on_emulation: bool = True  # False: skipped under --emulate


STEPS = [  # the build first: the package (which loads replk_mm._ext) is imported after it
    Step('build', 'Build of the extension', step_build, on_emulation=False),
    Step('environment', 'Environment', step_environment),
    Step('tests', 'Tests', step_tests),
    Step('compute_sanitizer', 'compute-sanitizer', step_compute_sanitizer, on_emulation=False),
    Step('ncu', 'Nsight Compute counters of the headline kernels', step_ncu, on_emulation=False),
    Step('table1', 'Seed Table 1', step_table1),
    Step('headline', 'One layer at the headline size, fp32 and fp16', step_headline),
    Step('replknet31b', 'RepLKNet-31B training step', step_replknet),
    Step('upernet31b', 'UperNet-31B training step', step_upernet),
]


# ----------------------------------------------------------------------------- the report


def write_report(ctx: Context, results: Dict[str, Tuple[Result, float]], started: float) -> None:
    from replk_mm.deploy.atomic import write_text_atomic
    title = 'GPU acceptance run' + (' (emulation on the CPU, tiny sizes)' if ctx.args.emulate else '')
    total = time.perf_counter() - started
    lines = [f'# {title}', '', f'`python {" ".join(sys.argv)}`; {datetime.datetime.now():%Y-%m-%d %H:%M}; '
             f'{total:.0f} s in all' + ('' if ctx.args.emulate else ' (sized for < 480 s on an H100 / H200)') + '.',
             '', '## Summary', '', '| step | status | seconds |', '|---|---|---|']
    lines += [f'| {step.name} | {results[step.name][0].status} | {results[step.name][1]:.0f} |'
              for step in STEPS if step.name in results]
    rows = []
    for step in STEPS:
        if step.name in results:
            result = results[step.name][0]
            lines += ['', f'## {step.title}', ''] + result.lines
            rows += result.rows
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(os.path.join(ctx.args.out_dir, 'acceptance.csv'), buffer.getvalue())
    write_text_atomic(os.path.join(ctx.args.out_dir, 'acceptance.md'), '\n'.join(lines) + '\n')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out-dir', required=True, help='folder of acceptance.md, acceptance.csv and the logs')
    parser.add_argument('--emulate', action='store_true',
                        help='run the pipeline on the CPU with tiny sizes and the emulated kernels')
    parser.add_argument('--steps', nargs='+', choices=[s.name for s in STEPS], metavar='NAME',
                        help=f'run only these steps (of {", ".join(s.name for s in STEPS)}); '
                        'build and environment always run')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not args.emulate and not torch.cuda.is_available():
        print('error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); run this on '
              'a machine with an NVIDIA GPU, or pass --emulate for the CPU dry run', file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    ctx = Context(args=args, device=torch.device('cpu' if args.emulate else 'cuda:0'),
                  sizes=EMULATED_SIZES if args.emulate else GPU_SIZES)
    if ctx.device.type == 'cuda':
        torch.cuda.set_device(ctx.device)
    else:
        torch.set_num_threads(1)  # tiny sizes: threads would only wait on each other
    started = time.perf_counter()
    results: Dict[str, Tuple[Result, float]] = {}
    for step in STEPS:
        if args.steps and step.name not in args.steps + ['build', 'environment']:
            continue
        result, start = Result(), time.perf_counter()
        if args.emulate and not step.on_emulation:
            result.status = 'skipped'
            result.lines.append('- skipped in emulation (it needs a GPU)')
        else:
            print(f'[{datetime.datetime.now():%H:%M:%S}] {step.name}', flush=True)
            try:
                step.run(ctx, result)
            except Exception as err:  # noqa: BLE001  (a failed step is reported, the next one runs)
                result.status = 'FAILED'
                result.lines += [f'- raised {type(err).__name__}: {err}', '', '```',
                                 traceback.format_exc().strip(), '```']
        results[step.name] = (result, time.perf_counter() - start)
        write_report(ctx, results, started)
    failed = [name for name, (result, _) in results.items() if result.status == 'FAILED']
    print(f'report: {os.path.join(args.out_dir, "acceptance.md")}' +
          (f'; FAILED: {", ".join(failed)}' if failed else '; every step passed'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
