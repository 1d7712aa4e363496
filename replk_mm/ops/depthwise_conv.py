"""One entry point for depth-wise convolutions: stride 1, "same" padding, odd square kernels.

``depthwise_conv2d(x, weight, bias)`` has the semantics of
``F.conv2d(x, weight, bias, padding=K // 2, groups=C)`` and chooses the fastest correct
implementation for the device, dtype and kernel size.

Candidates: ``torch`` (PyTorch in NCHW), ``torch_channels_last`` (PyTorch in NHWC: on the CPU
24x faster than NCHW at K=31 but slower at K=13; on CUDA cuDNN instead of a naive kernel) and
``ext`` (the package's compiled extension, ``replk_mm.ops.dwconv_ext``, when it is built and
supports the input) and ``ext_tc`` (its tensor-core kernels, for float16 / bfloat16 on CUDA devices of
compute capability 8.0+). Like ``cudnn.benchmark``, the first call for each (device type, dtype, K,
gradient needed, input memory format) times every candidate on that call's input (forward, plus backward when a
gradient is needed) and caches the fastest; under ``torch.compile`` a key without a measured choice
takes the extension where it applies (nothing is timed inside a graph). The output keeps the input's memory format; a
network kept in channels_last pays no conversion on the channels_last path.

Override: the environment variable ``REPLK_MM_DW_IMPL=auto|torch|torch_channels_last|ext|ext_tc`` or
the context manager :func:`use_dw_impl` (which wins over the variable).
"""
import contextlib
import functools
import logging
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from .impl_override import ImplOverride

IMPL_ENV = 'REPLK_MM_DW_IMPL'
IMPLS = ('torch', 'torch_channels_last', 'ext', 'ext_tc')
_OVERRIDE = ImplOverride(IMPL_ENV, IMPLS, 'depth-wise conv')
_TIMED_REPS = 2
_ELIMINATE = 4.0

ChoiceKey = Tuple[str, torch.dtype, int, bool, bool]
_choices: Dict[ChoiceKey, str] = {}


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


def clear_dw_impl_cache() -> None:
    """Forget the automatic choices (they are measured again on the next calls)."""
    _choices.clear()


def _needs_grad(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))


def _time_candidates(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     needs_grad: bool, candidates: List[str]) -> Dict[str, float]:
    """Seconds per call (forward, plus backward if ``needs_grad``) of each candidate on ``x``.

    Runs in a fresh thread so that the caller's autograd state (checkpointing hooks, tracing,
    inference mode) neither sees nor disturbs the measurement.
    """
    times: Dict[str, float] = {}
    errors: List[BaseException] = []
    inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
              for t in (x, weight, bias)]
    grad_inputs = [t for t in inputs if t is not None and t.requires_grad]
    num_threads = torch.get_num_threads()

    def sync() -> None:
        if x.device.type == 'cuda':
            torch.cuda.synchronize(x.device)

    def once(fn: Callable) -> None:
        if needs_grad:
            out = fn(*inputs)
            torch.autograd.grad(out, grad_inputs, torch.ones_like(out))
        else:
            with torch.no_grad():
                fn(*inputs)

    def timed(fn: Callable) -> float:
        sync()
        start = time.perf_counter()
        once(fn)
        sync()
        return time.perf_counter() - start

    def measure() -> None:
        try:
            torch.set_num_threads(num_threads)  # OpenMP settings are per thread
            if x.device.type == 'cuda':
                torch.cuda.set_device(x.device)
            # One warm-up run each; a candidate over 4x the best warm-up is out (a clear loser
            # need not be run again: at K=31 NCHW takes seconds), the rest are timed again.
            warm = {name: timed(_IMPL_FNS[name]) for name in candidates}
            for name, first in warm.items():
                if first > _ELIMINATE * min(warm.values()):
                    times[name] = first
                else:
                    times[name] = min(timed(_IMPL_FNS[name]) for _ in range(_TIMED_REPS))
        except BaseException as err:  # re-raised in the caller's thread
            errors.append(err)

    worker = threading.Thread(target=measure, name='replk_mm-dw-benchmark')
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return times


def _select_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> str:
    impl = _OVERRIDE.requested()
    if impl == 'ext':
        if 'ext' not in available_dw_impls(x):
            raise RuntimeError(
                f'{IMPL_ENV}/use_dw_impl asks for the extension, but replk_mm.ops.dwconv_ext is '
                f'not built or does not support this input ({x.device.type}, {x.dtype}); rebuild '
                'it with `pip install --no-build-isolation --no-deps -e .` or choose auto')
        return impl
    if impl != 'auto':
        return impl
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return 'torch'  # TorchScript graphs hold no custom-op calls of ours
    needs_grad = _needs_grad(x, weight, bias)
    key = (x.device.type, x.dtype, weight.shape[-1], needs_grad, _is_channels_last(x))
    candidates = available_dw_impls(x)
    choice = _choices.get(key)
    if choice is None and torch.compiler.is_compiling():
        # no timing inside a compiled graph: an eager call's measured choice if there was one,
        # else the extension where it takes the input
        return 'ext' if 'ext' in candidates else 'torch'
    if choice is None:
        times = _time_candidates(x, weight, bias, needs_grad, candidates)
        choice = min(times, key=times.get)
        _choices[key] = choice
        timings = ', '.join(f'{name} {1e3 * t:.2f} ms' for name, t in times.items())
        print_log(
            f'depthwise_conv2d: {choice} for {key[0]} {str(key[1])[6:]} K={key[2]} '
            f'{"forward+backward" if needs_grad else "forward"} on {tuple(x.shape)}'
            f'{" channels_last" if key[4] else ""} ({timings})',
            logger='current', level=logging.INFO)
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
