"""One entry point for depth-wise convolutions: stride 1, "same" padding, odd square kernels.

``depthwise_conv2d(x, weight, bias)`` has the semantics of
``F.conv2d(x, weight, bias, padding=K // 2, groups=C)`` and chooses the fastest correct
implementation for the device, dtype and kernel size.

Candidates: ``torch`` (PyTorch in NCHW), ``torch_channels_last`` (PyTorch in NHWC: on the CPU
24x faster than NCHW at K=31 but slower at K=13; on CUDA cuDNN instead of a naive kernel),
``ext`` (the package's compiled extension, ``replk_mm.ops.dwconv_ext``, when it is built and
supports the input) and ``ext_tc`` (its tensor-core kernels, for float16 / bfloat16 on CUDA devices
of compute capability 8.0+). Like ``cudnn.benchmark``, the first call for each (device type, dtype, K,
gradient needed, input memory format) times every candidate on that call's input (forward, plus
backward when a gradient is needed) and caches the fastest; inside :func:`grad_follows`
(re-entrant checkpointing's forward without grad) a gradient counts as needed wherever an input
requires grad. The output keeps the input's memory format; a network kept in channels_last pays
no conversion on the channels_last path.

Guard: before timing, each candidate's output (and gradients, for a random output gradient) on
that same input is checked against F.conv2d in float64 on up to 8 of its channels
(:mod:`replk_mm.ops.dw_reference`); one beyond its dtype's tolerance is excluded for the key with
one MMEngine warning naming it, the key and the error. In a distributed run the ranks that measure
a key share their times and errors through the process group's store
(:mod:`replk_mm.ops.rank_exchange`; never a collective, so ranks taking different paths cannot
deadlock: a rank whose peers do not post the key within 60 s keeps its own checked choice): a
candidate failing on any rank is excluded on all of them, and all pick the candidate fastest in
sum. Under ``torch.compile`` nothing is timed: a key an eager call measured keeps its choice,
any other takes the extension where it applies unless it fails the same check, run once while
the graph is traced on a small input of the key's kind. ``REPLK_MM_DW_CHECK=0`` turns the check off
(for measuring the dispatch itself); implementations forced as below are never checked.

Override: the environment variable ``REPLK_MM_DW_IMPL=auto|torch|torch_channels_last|ext|ext_tc`` or
the context manager :func:`use_dw_impl` (which wins over the variable).
"""
import collections
import contextlib
import functools
import logging
import os
import threading
import time
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from .dw_reference import Reference, reference_dtype, tolerance
from .impl_override import ImplOverride
from .rank_exchange import exchange, rank, world_size

IMPL_ENV = 'REPLK_MM_DW_IMPL'
CHECK_ENV = 'REPLK_MM_DW_CHECK'
IMPLS = ('torch', 'torch_channels_last', 'ext', 'ext_tc')
_OVERRIDE = ImplOverride(IMPL_ENV, IMPLS, 'depth-wise conv')
_TIMED_REPS = 2
_ELIMINATE = 4.0
_EXCHANGE_TIMEOUT_S = 60.0

ChoiceKey = Tuple[str, torch.dtype, int, bool, bool]
_choices: Dict[ChoiceKey, str] = {}
_compile_choices: Dict[ChoiceKey, str] = {}  # checked, untimed choices of compiled graphs
_exchanges: Dict[Tuple[ChoiceKey, str], int] = collections.Counter()  # tags used per key


def _check_inputs(x: torch.Tensor, weight: torch.Tensor,
                  bias: Optional[torch.Tensor]) -> None:
    if x.dim() != 4:
        raise ValueError(f'depthwise_conv2d expects x of shape (N, C, H, W), got {tuple(x.shape)}')
    channels = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != channels or weight.shape[1] != 1:
        raise ValueError(
            f'depthwise_conv2d expects weight of shape (C, 1, K, K) with C={channels}, '
            f'got {tuple(weight.shape)}')
    k_h, k_w = weight.shape[-2:]
    if k_h != k_w or k_h % 2 == 0:
        raise ValueError(f'depthwise_conv2d supports odd square kernels only, got {k_h}x{k_w}; '
                         'pad an even kernel with zeros to the next odd size')
    if bias is not None and bias.shape != (channels,):
        raise ValueError(f'bias must have shape ({channels},), got {tuple(bias.shape)}')


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _run_torch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               memory_format: torch.memory_format) -> torch.Tensor:
    channels_last_in = _is_channels_last(x)
    out = F.conv2d(x.contiguous(memory_format=memory_format), weight, bias,
                   padding=weight.shape[-1] // 2, groups=x.shape[1])
    return out.contiguous(
        memory_format=torch.channels_last if channels_last_in else torch.contiguous_format)


def _torch_nchw(x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _run_torch(x, weight, bias, torch.contiguous_format)


def _torch_channels_last(x: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _run_torch(x, weight, bias, torch.channels_last)


@functools.lru_cache(maxsize=None)
def _ext_module():
    """``replk_mm.ops.dwconv_ext`` if it imports, else None (the extension is optional)."""
    try:
        from . import dwconv_ext
    except ImportError:
        return None
    return dwconv_ext


def _ext(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _ext_module().dwconv2d(x, weight, bias)


def _ext_tc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return _ext_module().dwconv2d_tc(x, weight, bias)


_IMPL_FNS: Dict[str, Callable] = {
    'torch': _torch_nchw, 'torch_channels_last': _torch_channels_last, 'ext': _ext, 'ext_tc': _ext_tc
}


def available_dw_impls(x: torch.Tensor) -> List[str]:
    """The implementations that can run ``x`` (``torch`` and ``torch_channels_last`` always)."""
    impls = ['torch', 'torch_channels_last']
    ext = _ext_module()
    if ext is not None and ext.is_available(x):
        impls.append('ext')
    if ext is not None and ext.tensor_cores_available(x):
        impls.append('ext_tc')
    return impls


@contextlib.contextmanager
def use_dw_impl(impl: str) -> Iterator[None]:
    """Force one implementation (or ``'auto'``) inside the block, e.g. for deterministic tests."""
    with _OVERRIDE.use(impl, 'use_dw_impl'):
        yield


def dw_impl_choices() -> Dict[ChoiceKey, str]:
    """The cached automatic choices: ``{(device type, dtype, K, needs grad, channels_last input):
    impl}``."""
    return dict(_choices)


def set_dw_impl_choices(choices: Dict[ChoiceKey, str]) -> None:
    """Adopt measured choices, e.g. those of the run a resumed run continues (same numerics)."""
    _choices.update(choices)


def clear_dw_impl_cache() -> None:
    """Forget the automatic choices (they are measured again on the next calls)."""
    _choices.clear()
    _compile_choices.clear()


_grad_follows = threading.local()  # .active: inside grad_follows() in this thread


@contextlib.contextmanager
def grad_follows() -> Iterator[None]:
    """Inside the block, calls choose as if a gradient were needed wherever an input requires grad,
    grad mode or not: for a forward run without grad that is recomputed with grad in the backward
    pass (re-entrant checkpointing). Both passes then use the forward + backward choice, measured in
    the forward on the first input of its key rather than in the backward on the last."""
    previous = getattr(_grad_follows, 'active', False)
    _grad_follows.active = True
    try:
        yield
    finally:
        _grad_follows.active = previous


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    grad_counts = torch.is_grad_enabled() or (
        not torch.compiler.is_compiling() and getattr(_grad_follows, 'active', False))
    return grad_counts and any(t is not None and t.requires_grad for t in (x, weight, bias))


#: torch's (private) query for the backward pass running in this thread: -1 outside one
_graph_task_id: Optional[Callable[[], int]] = getattr(torch._C, '_current_graph_task_id', None)


def _in_backward() -> bool:
    """Whether the autograd engine is running a backward pass in this thread. False where torch
    lacks the query (it is private): a key first met in a backward pass is then measured in a
    fresh thread, which on CUDA would wait forever; ``with_cp`` meets its keys in the forward."""
    return _graph_task_id is not None and _graph_task_id() != -1


class _Measurement(NamedTuple):
    """Seconds per call and, when checked, (worst tensor, relative error) of each candidate."""
    times: Dict[str, float]
    errors: Dict[str, Tuple[str, float]]


def _measure(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], needs_grad: bool,
             candidates: List[str], check: bool, timed: bool = True) -> _Measurement:
    """Run each candidate on ``x`` (forward, plus backward if ``needs_grad``); with ``check``,
    compare its results with a :class:`~replk_mm.ops.dw_reference.Reference` on the same input;
    with ``timed``, time it (a candidate beyond its dtype's tolerance is not timed again).

    Runs in a fresh thread so that the caller's autograd state (checkpointing hooks, tracing,
    inference mode, a compiler's fake tensors) neither sees nor disturbs the measurement; inside a
    backward pass (a key first met in a custom backward) in the calling thread.
    """
    times: Dict[str, float] = {}
    errors: Dict[str, Tuple[str, float]] = {}
    failures: List[BaseException] = []
    inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
              for t in (x, weight, bias)]
    grad_flags = [needs_grad and t is not None and t.requires_grad for t in inputs]
    grad_inputs = [t for t, g in zip(inputs, grad_flags) if g]
    limit = tolerance(x.dtype, x.device.type)
    num_threads = torch.get_num_threads()

    def sync() -> None:
        if x.device.type == 'cuda':
            torch.cuda.synchronize(x.device)

    def measure() -> None:
        try:
            torch.set_num_threads(num_threads)  # OpenMP settings are per thread
            if x.device.type == 'cuda':
                torch.cuda.set_device(x.device)
            generator = torch.Generator(x.device).manual_seed(0)
            grad_out = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            reference = Reference(*inputs, grad_out, grad_flags) if check else None

            def once(name: str, checked: bool) -> float:
                sync()
                start = time.perf_counter()
                if needs_grad:
                    out = _IMPL_FNS[name](*inputs)
                    grads = torch.autograd.grad(out, grad_inputs, grad_out)
                else:
                    with torch.no_grad():
                        out, grads = _IMPL_FNS[name](*inputs), ()
                sync()
                seconds = time.perf_counter() - start
                if checked:
                    errors[name] = reference.error(out, grads)
                return seconds

            # One warm-up (and checked) run each; a candidate over 4x the best warm-up is out (a
            # clear loser need not be run again: at K=31 NCHW takes seconds), as is one beyond
            # the tolerance; the rest are timed again.
            warm = {name: once(name, check) for name in candidates}
            del reference
            for name, first in warm.items():
                if not timed or first > _ELIMINATE * min(warm.values()) or (
                        name in errors and errors[name][1] > limit):
                    times[name] = first
                else:
                    times[name] = min(once(name, False) for _ in range(_TIMED_REPS))
        except BaseException as err:  # re-raised in the caller's thread
            failures.append(err)

    if _in_backward():
        # An autograd engine thread runs this call, and a backward started from another thread
        # would queue behind it and never run (on CUDA, whose nodes only the device's engine
        # thread executes). Nested in this thread it runs.
        measure()
    else:
        worker = threading.Thread(target=measure, name='replk_mm-dw-benchmark')
        worker.start()
        worker.join()
    if failures:
        raise failures[0]
    return _Measurement(times, errors)


def _check_enabled() -> bool:
    value = os.environ.get(CHECK_ENV, '1') or '1'
    if value not in ('0', '1'):
        raise ValueError(f'{CHECK_ENV}={value!r}: use 1 (check every candidate against the '
                         'reference before timing it, the default) or 0 (do not check)')
    return value == '1'


def _describe(key: ChoiceKey) -> str:
    return (f'{key[0]} {str(key[1])[6:]} K={key[2]} {"forward+backward" if key[3] else "forward"}'
            f'{" channels_last" if key[4] else ""}')


def _agree(key: ChoiceKey, measured: _Measurement, stage: str) -> Tuple[_Measurement, List[int]]:
    """In a distributed run, the measurement of every rank that measured ``key`` too: per
    candidate (those every rank has) the summed times and the worst error, with the ranks the
    errors come from; this rank's own when not distributed or when a peer does not post in
    time (see :mod:`replk_mm.ops.rank_exchange`)."""
    _exchanges[key, stage] += 1
    tag = f'dw-{stage}/{_describe(key).replace(" ", "/")}/{_exchanges[key, stage]}'
    reports = exchange(tag, measured._asdict(), _EXCHANGE_TIMEOUT_S)
    if reports is None:
        if world_size() > 1:
            print_log(f'depthwise_conv2d: not every rank measured {_describe(key)} within '
                      f'{_EXCHANGE_TIMEOUT_S:.0f} s; this rank keeps its own checked choice',
                      logger='current', level=logging.WARNING)
        return measured, [rank()] * len(measured.times)
    names = [n for n in measured.times if all(n in r['times'] for r in reports)]
    times = {n: sum(r['times'][n] for r in reports) for n in names}
    errors: Dict[str, Tuple[str, float]] = {}
    ranks = []
    for n in names:
        worst = max(range(len(reports)), key=lambda r: reports[r]['errors'].get(n, ('', 0.0))[1])
        ranks.append(worst)
        if n in reports[worst]['errors']:
            errors[n] = tuple(reports[worst]['errors'][n])
    return _Measurement(times, errors), ranks


def _choose(key: ChoiceKey, x: torch.Tensor, measured: _Measurement, stage: str,
            preference: Sequence[str] = ()) -> str:
    """The fastest candidate within tolerance on every rank that measured ``key`` in ``stage``
    (``'eager'`` or ``'compile'``), or with ``preference`` (untimed runs) the first of those in
    that order; one warning per excluded candidate."""
    limit = tolerance(x.dtype, x.device.type)
    measured, ranks = _agree(key, measured, stage)
    passed = {n: t for n, t in measured.times.items()
              if n not in measured.errors or measured.errors[n][1] <= limit}
    for name, source in zip(measured.times, ranks):
        if name not in passed:
            what, err = measured.errors[name]
            where = f' on rank {source}' if world_size() > 1 else ''
            print_log(
                f'depthwise_conv2d: {name} is excluded for {_describe(key)}: its {what} differs '
                f'from the {str(reference_dtype(x.device))[6:]} reference by {err:.3g} of the '
                f'reference\'s largest magnitude{where} (tolerance {limit:g}); set {IMPL_ENV} to '
                'force an implementation', logger='current', level=logging.WARNING)
    if not passed:
        print_log(f'depthwise_conv2d: no candidate passed the check for {_describe(key)}; '
                  'using PyTorch NCHW (the reference\'s own definition)', logger='current',
                  level=logging.WARNING)
        return 'torch'
    if preference:
        return next(name for name in preference if name in passed)
    return min(passed, key=passed.get)


@torch.compiler.assume_constant_result
def _compile_time_choice(key: ChoiceKey, candidates: Tuple[str, ...]) -> str:
    """The choice inside a compiled graph, where nothing is timed (this runs eagerly, once per key,
    while the graph is traced): an eager call's measured choice if there was one, else the
    extension where it takes the input, unless it fails the check on a small input of the key's
    kind (2 x 12 channels x (K + 10) x (K + 7): partial tiles and channel groups)."""
    if key in _choices:
        return _choices[key]
    if key not in _compile_choices:
        preferred = [n for n in ('ext', 'torch', 'torch_channels_last') if n in candidates]
        choice = preferred[0]
        if _check_enabled():
            device = torch.device(key[0], torch.cuda.current_device() if key[0] == 'cuda' else None)
            generator = torch.Generator(device).manual_seed(0)
            kernel = key[2]
            x, weight, bias = (torch.randn(shape, generator=generator, device=device).to(key[1])
                               for shape in ((2, 12, kernel + 10, kernel + 7),
                                             (12, 1, kernel, kernel), (12, )))
            if key[4]:
                x = x.contiguous(memory_format=torch.channels_last)
            for t in (x, weight, bias):
                t.requires_grad_(key[3])
            measured = _measure(x, weight, bias, key[3], preferred, check=True, timed=False)
            choice = _choose(key, x, measured, 'compile', preferred)
        _compile_choices[key] = choice
    return _compile_choices[key]


def _select_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> str:
    impl = _OVERRIDE.requested()
    if impl in ('ext', 'ext_tc'):
        if impl not in available_dw_impls(x):
            kernels = 'tensor-core kernels (float16 / bfloat16, CUDA 8.0+)' if impl == 'ext_tc' \
                else 'kernels'
            raise RuntimeError(
                f'{IMPL_ENV}/use_dw_impl asks for the extension\'s {kernels} ({impl}), but '
                f'replk_mm.ops.dwconv_ext is not built or does not support this input '
                f'({x.device.type}, {x.dtype}); rebuild it with '
                '`pip install --no-build-isolation --no-deps -e .` or choose auto')
        return impl
    if impl != 'auto':
        return impl
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return 'torch'  # TorchScript graphs hold no custom-op calls of ours
    needs_grad = _needs_grad(x, weight, bias)
    key = (x.device.type, x.dtype, weight.shape[-1], needs_grad, _is_channels_last(x))
    candidates = available_dw_impls(x)
    if torch.compiler.is_compiling():
        return _compile_time_choice(key, tuple(candidates))
    choice = _choices.get(key)
    if choice is None:
        measured = _measure(x, weight, bias, needs_grad, candidates, check=_check_enabled())
        choice = _choose(key, x, measured, 'eager')
        _choices[key] = choice
        timings = ', '.join(f'{name} {1e3 * t:.2f} ms' for name, t in measured.times.items())
        print_log(f'depthwise_conv2d: {choice} for {_describe(key)} on {tuple(x.shape)} '
                  f'({timings})', logger='current', level=logging.INFO)
    return choice if choice in candidates else 'torch'


def depthwise_conv2d(x: torch.Tensor,
                     weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depth-wise conv with "same" padding, by the fastest implementation (see module doc).

    Args:
        x: ``(N, C, H, W)``, any memory format.
        weight: ``(C, 1, K, K)``, K odd.
        bias: ``(C,)`` or None.

    Returns:
        ``(N, C, H, W)`` in the memory format of ``x``.
    """
    _check_inputs(x, weight, bias)
    if x.device.type in ('cpu', 'cuda') and torch.is_autocast_enabled(x.device.type):
        # what F.conv2d does under autocast, so that every candidate sees one dtype
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return _IMPL_FNS[_select_impl(x, weight, bias)](x, weight, bias)


class DepthwiseConv2d(nn.Module):
    """Module form of :func:`depthwise_conv2d`; parameters named like ``nn.Conv2d`` (``weight``, ``bias``).

    Args:
        channels: C.
        kernel_size: K, odd.
        bias: whether to learn a ``(C,)`` bias.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same initialisation as nn.Conv2d.
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / self.kernel_size
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        return depthwise_conv2d(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f'{self.channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}'
