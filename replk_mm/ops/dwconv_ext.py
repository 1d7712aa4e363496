"""The package's depth-wise conv extension ``replk_mm._ext`` as a differentiable torch op.

``replk_mm._ext`` registers three ops in the ``replk_mm`` namespace (schemas in ``docs/ops.md``):
``dwconv2d_forward``, ``dwconv2d_backward_input`` and ``dwconv2d_backward_weight``, with CPU
kernels (AVX-512 / AVX2 / portable) and, when built with CUDA, CUDA kernels. This module adds
the Python side: input checks with clear errors, fake (meta) implementations so ``torch.compile``
can trace the ops, the autograd formula, and the interface of the dispatcher in
:mod:`replk_mm.ops.depthwise_conv`: :func:`is_available` and :func:`dwconv2d`.
"""
from typing import Optional, Tuple

import torch

try:
    from replk_mm import _ext  # noqa: F401  (loading the library registers the ops)
    _LOAD_ERROR: Optional[BaseException] = None
except ImportError as e:  # the package is usable without its extension (PyTorch fallback)
    _LOAD_ERROR = e

_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def extension_loaded() -> bool:
    """Whether ``replk_mm._ext`` was built and imports."""
    return _LOAD_ERROR is None


def _registered_kernels() -> dict:
    if not extension_loaded():
        return {}
    return {
        device: torch._C._dispatch_has_kernel_for_dispatch_key('replk_mm::dwconv2d_forward', key)
        for device, key in (('cpu', 'CPU'), ('cuda', 'CUDA'))
    }


_KERNELS = _registered_kernels()  # device type -> whether the extension has kernels for it


def _has_kernel(device: torch.device) -> bool:
    return _KERNELS.get(device.type, False)


def is_available(x: torch.Tensor) -> bool:
    """Whether the extension has a kernel for ``x``'s device and dtype."""
    dtypes = _CPU_DTYPES if x.device.type == 'cpu' else _CUDA_DTYPES
    return x.dtype in dtypes and _has_kernel(x.device)


def check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
    """Raise a ``ValueError`` / ``TypeError`` / ``RuntimeError`` naming the problem and the fix."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError('dwconv2d expects x of shape (N, C, H, W), got '
                         f'{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}')
    channels = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != channels or weight.shape[1] != 1:
        raise ValueError(f'dwconv2d expects weight of shape (C, 1, K, K) with C={channels}, '
                         f'got {tuple(weight.shape)}')
    k_h, k_w = weight.shape[-2:]
    if k_h != k_w or k_h % 2 == 0:
        raise ValueError(f'dwconv2d supports odd square kernels only, got {k_h}x{k_w}; '
                         'zero-pad an even kernel to the next odd size')
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f'dwconv2d expects bias of shape ({channels},), got {tuple(bias.shape)}')
    for name, t in (('weight', weight), ('bias', bias)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f'dwconv2d: {name} is on {t.device} but x is on {x.device}; '
                             f'move both to one device')
        if t.dtype != x.dtype:
            raise TypeError(f'dwconv2d: {name} has dtype {t.dtype} but x has {x.dtype}; '
                            'cast both to one dtype')
    dtypes = _CPU_DTYPES if x.device.type == 'cpu' else _CUDA_DTYPES
    if x.dtype not in dtypes:
        raise TypeError(f'dwconv2d on {x.device.type} supports {[str(d) for d in dtypes]}, '
                        f'got {x.dtype}; cast the input and weight (e.g. .float())')
    if x.layout != torch.strided:
        raise ValueError(f'dwconv2d expects a dense (strided) tensor, got layout {x.layout}; '
                         'call .to_dense() first')
    if not _has_kernel(x.device):
        why = (f'the extension failed to load ({_LOAD_ERROR}); rebuild it with '
               '`pip install --no-build-isolation --no-deps -e .`') if _LOAD_ERROR else (
                   f'it was built without kernels for {x.device.type} tensors')
        raise RuntimeError(f'replk_mm dwconv2d cannot run on {x.device}: {why}; '
                           'or use replk_mm.ops.depthwise_conv2d, which falls back to PyTorch')


if extension_loaded():

    def _out_like(t: torch.Tensor) -> torch.Tensor:
        fmt = (torch.channels_last
               if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(
                   memory_format=torch.channels_last) else torch.contiguous_format)
        return torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=fmt)

    @torch.library.register_fake('replk_mm::dwconv2d_forward')
    def _forward_fake(x: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _out_like(x)

    @torch.library.register_fake('replk_mm::dwconv2d_backward_input')
    def _backward_input_fake(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _out_like(grad_out)

    @torch.library.register_fake('replk_mm::dwconv2d_backward_weight')
    def _backward_weight_fake(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int,
                              with_bias: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        grad_weight = x.new_empty((x.shape[1], 1, kernel_size, kernel_size))
        return grad_weight, (x.new_empty((x.shape[1], )) if with_bias else None)

    def _setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None

    def _backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.replk_mm.dwconv2d_backward_input(grad_out, weight)
        if ctx.needs_input_grad[1] or (ctx.with_bias and ctx.needs_input_grad[2]):
            grad_weight, grad_bias = torch.ops.replk_mm.dwconv2d_backward_weight(
                grad_out, x, weight.shape[-1], ctx.with_bias)
        return grad_x, grad_weight, grad_bias

    torch.library.register_autograd(
        'replk_mm::dwconv2d_forward', _backward, setup_context=_setup_context)


def dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=K // 2, groups=C)`` through the extension; differentiable.

    Args:
        x: ``(N, C, H, W)``, contiguous or channels_last (any strides work).
        weight: ``(C, 1, K, K)``, K odd.
        bias: ``(C,)`` or None.

    Returns:
        ``(N, C, H, W)`` in the memory format of ``x``.
    """
    check_inputs(x, weight, bias)
    return torch.ops.replk_mm.dwconv2d_forward(x, weight, bias)
