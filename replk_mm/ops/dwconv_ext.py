"""The package's depth-wise conv extension ``replk_mm._ext`` as a differentiable torch op.

``replk_mm._ext`` registers three ops in the ``replk_mm`` namespace (schemas in ``docs/ops.md``):
``dwconv2d_forward``, ``dwconv2d_backward_input`` and ``dwconv2d_backward_weight``, with CPU
kernels (AVX-512 / AVX2 / portable) and, when built with CUDA, CUDA kernels; and the same three ops with
a ``_tc`` suffix, whose CUDA kernels run float16 / bfloat16 on tensor cores (compute capability 8.0+).
This module adds the Python side: input checks with clear errors, fake (meta) implementations so
``torch.compile`` can trace the ops, the autograd formula, and the interface of the dispatcher in
:mod:`replk_mm.ops.depthwise_conv`: :func:`is_available`, :func:`dwconv2d`,
:func:`tensor_cores_available` and :func:`dwconv2d_tc`.
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
_TENSOR_CORE_DTYPES = (torch.float16, torch.bfloat16)
_TENSOR_CORE_CAPABILITY = (8, 0)  # mma.sync m16n8k16


def extension_loaded() -> bool:
    """Whether ``replk_mm._ext`` was built and imports."""
    return _LOAD_ERROR is None


def registered_kernels(op: str) -> dict:
    """device type -> whether the extension has kernels of `op` for it ({} without the op)."""
    if not extension_loaded() or not hasattr(torch.ops.replk_mm, op.split('::')[1]):
        return {}
    return {
        device: torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
        for device, key in (('cpu', 'CPU'), ('cuda', 'CUDA'))
    }


_KERNELS = registered_kernels('replk_mm::dwconv2d_forward')
_TC_KERNELS = registered_kernels('replk_mm::dwconv2d_forward_tc')


def _has_kernel(device: torch.device) -> bool:
    return _KERNELS.get(device.type, False)


def is_available(x: torch.Tensor) -> bool:
    """Whether the extension has a kernel for ``x``'s device and dtype."""
    dtypes = _CPU_DTYPES if x.device.type == 'cpu' else _CUDA_DTYPES
    return x.dtype in dtypes and _has_kernel(x.device)


def tensor_cores_available(x: torch.Tensor) -> bool:
    """Whether the tensor-core ops (``*_tc``) can run ``x``: float16 / bfloat16 on a CUDA device of
    compute capability 8.0 or newer, with the extension built with CUDA."""
    return (x.device.type == 'cuda' and x.dtype in _TENSOR_CORE_DTYPES and _TC_KERNELS.get('cuda', False)
            and torch.cuda.get_device_capability(x.device) >= _TENSOR_CORE_CAPABILITY)


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

    def _forward_fake(x: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _out_like(x)

    def _backward_input_fake(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _out_like(grad_out)

    def _backward_weight_fake(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: int,
                              with_bias: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        grad_weight = x.new_empty((x.shape[1], 1, kernel_size, kernel_size))
        return grad_weight, (x.new_empty((x.shape[1], )) if with_bias else None)

    def _setup_context(ctx, inputs, output) -> None:
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None

    def _register(suffix: str) -> None:
        """Fake kernels and the autograd formula of one op family (``''`` or ``'_tc'``)."""
        backward_input = getattr(torch.ops.replk_mm, f'dwconv2d_backward_input{suffix}')
        backward_weight = getattr(torch.ops.replk_mm, f'dwconv2d_backward_weight{suffix}')

        def _backward(ctx, grad_out: torch.Tensor):
            x, weight = ctx.saved_tensors
            grad_x = grad_weight = grad_bias = None
            if ctx.needs_input_grad[0]:
                grad_x = backward_input(grad_out, weight)
            if ctx.needs_input_grad[1] or (ctx.with_bias and ctx.needs_input_grad[2]):
                grad_weight, grad_bias = backward_weight(grad_out, x, weight.shape[-1], ctx.with_bias)
            return grad_x, grad_weight, grad_bias

        for name, fake in (('forward', _forward_fake), ('backward_input', _backward_input_fake),
                           ('backward_weight', _backward_weight_fake)):
            torch.library.register_fake(f'replk_mm::dwconv2d_{name}{suffix}', fake)
        torch.library.register_autograd(
            f'replk_mm::dwconv2d_forward{suffix}', _backward, setup_context=_setup_context)

    _register('')
    if _TC_KERNELS:  # an extension built before the tensor-core ops has no schema for them
        _register('_tc')


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


def dwconv2d_tc(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dwconv2d` on tensor cores (float16 / bfloat16 CUDA tensors, compute capability 8.0+);
    differentiable, the gradients on tensor cores too."""
    check_inputs(x, weight, bias)
    if not tensor_cores_available(x):
        raise RuntimeError(
            f'replk_mm dwconv2d_tc cannot run {x.dtype} on {x.device}: the tensor-core kernels need float16 '
            'or bfloat16 CUDA tensors on compute capability 8.0+ and an extension built with CUDA; '
            'use dwconv2d (CUDA cores) or replk_mm.ops.depthwise_conv2d')
    return torch.ops.replk_mm.dwconv2d_forward_tc(x, weight, bias)
