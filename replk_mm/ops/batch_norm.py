"""Training-mode batch normalization through the package's CPU kernel (``replk_mm._ext``).

``replk_mm::batch_norm_train_forward`` normalizes a contiguous ``(N, C, *)`` float32 / float64 CPU
tensor with its batch statistics, optionally applies a fused ReLU or GELU, and returns the statistics
too; ``replk_mm::batch_norm_train_backward`` is its gradient (the autograd formula is registered
in C++, ``csrc/bindings/batch_norm_bindings.cpp``; this module adds the fake kernels). Each
channel is read from memory once per pass (PyTorch's kernel reduces with strided loops): 3-7x
PyTorch's forward and 1.5-2.5x its backward on RepLKNet's shapes (docs/ops.md).
:class:`replk_mm.models.layers.BatchNorm2d` uses it where :func:`applies`; running statistics stay
the module's business.
"""
import contextlib
from typing import Iterator, Optional, Tuple

import torch

from .dwconv_ext import extension_loaded
from .impl_override import ImplOverride

IMPL_ENV = 'REPLK_MM_BN_IMPL'
_OVERRIDE = ImplOverride(IMPL_ENV, ('torch', ), 'batch-norm')
_DTYPES = (torch.float32, torch.float64)
ACTIVATIONS = ('none', 'relu', 'gelu')
_HAS_CPU_KERNEL = extension_loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(
    'replk_mm::batch_norm_train_forward', 'CPU')


@contextlib.contextmanager
def use_bn_impl(impl: str) -> Iterator[None]:
    """Within the block, ``'torch'`` keeps every :class:`~replk_mm.models.layers.BatchNorm2d` on
    PyTorch's kernel and ``'auto'`` lets it use the package's where :func:`applies` (the default;
    the environment variable ``REPLK_MM_BN_IMPL`` sets it for a process)."""
    with _OVERRIDE.use(impl, 'use_bn_impl'):
        yield


def check_activation(activation: str, who: str) -> None:
    """Raise a ValueError naming the choices unless ``activation`` is one of :data:`ACTIVATIONS`."""
    if activation not in ACTIVATIONS:
        raise ValueError(f'{who}: unknown activation {activation!r}; choose one of '
                         f'{", ".join(ACTIVATIONS)}')


def _kernel_takes(x: torch.Tensor) -> bool:
    return (_HAS_CPU_KERNEL and x.device.type == 'cpu' and x.dtype in _DTYPES and x.dim() >= 2
            and x.is_contiguous() and x.numel() > x.shape[1])


def applies(x: torch.Tensor) -> bool:
    """Whether the kernel takes ``x`` (a contiguous float32 / float64 CPU tensor ``(N, C, *)``)
    and is not switched off by :func:`use_bn_impl` / ``REPLK_MM_BN_IMPL``."""
    return _kernel_takes(x) and _OVERRIDE.requested() == 'auto'


if _HAS_CPU_KERNEL:

    @torch.library.register_fake('replk_mm::batch_norm_train_forward')
    def _forward_fake(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                      eps: float, activation: str = 'none') -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.empty_like(x), x.new_empty(x.shape[1]), x.new_empty(x.shape[1])

    @torch.library.register_fake('replk_mm::batch_norm_train_backward')
    def _backward_fake(grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                       weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                       activation: str = 'none') -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.empty_like(x), x.new_empty(x.shape[1]), x.new_empty(x.shape[1])


def batch_norm_train(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                     eps: float, activation: str = 'none') -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-statistics normalization, then an optional fused activation; differentiable in ``x``,
    ``weight`` and ``bias``.

    Args:
        x: ``(N, C, *)``, contiguous, float32 or float64, on the CPU.
        weight, bias: ``(C,)`` or None.
        eps: added to the variance.
        activation: ``'none'``, ``'relu'`` or ``'gelu'`` (the exact, erf form of ``nn.GELU()``),
            applied to the normalized values in the same pass; the normalized tensor itself is
            never stored.

    Returns:
        ``(y, mean, var)``: ``y = act(BN(x))`` like ``x``; the per-channel mean and biased variance
        ``(C,)`` (not differentiable).
    """
    check_activation(activation, 'batch_norm_train')
    if not _kernel_takes(x):
        raise ValueError(
            'batch_norm_train needs a contiguous float32/float64 CPU tensor (N, C, *) with more than '
            f'one value per channel and the built extension; got {tuple(x.shape)} {x.dtype} on '
            f'{x.device} (contiguous: {x.is_contiguous()}, extension: {_HAS_CPU_KERNEL}); '
            'use torch.nn.functional.batch_norm for other inputs')
    return torch.ops.replk_mm.batch_norm_train_forward(x, weight, bias, eps, activation)
