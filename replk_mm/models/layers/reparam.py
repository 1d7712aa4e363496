"""Structural re-parameterization: the protocol and the kernel algebra every block shares.

A module that can be re-parameterized defines ``reparameterize()``: in place, it replaces its
training-time branches by the single equivalent layer and sets ``self.deployed = True``. A second
call is a no-op. :func:`reparameterize_model` converts a whole model by walking its modules
children-first, so a parent sees its children already fused.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm


class ReparamMixin:
    """Marks a module as re-parameterizable; subclasses implement :meth:`reparameterize`."""

    deployed: bool = False

    def reparameterize(self) -> None:
        raise NotImplementedError


def reparameterize_model(model: nn.Module) -> nn.Module:
    """Convert every re-parameterizable module of ``model`` in place (children first).

    Idempotent: modules already in deploy form are left as they are. Returns ``model``.
    """

    def visit(module: nn.Module) -> None:
        for child in list(module.children()):
            visit(child)
        if isinstance(module, ReparamMixin) and not module.deployed:
            module.reparameterize()
            module.deployed = True

    visit(model)
    return model


def bn_scale_shift(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(C,)``, of an eval-mode batch norm: ``BN(x) = scale * x + shift``
    per channel."""
    if not isinstance(norm, _BatchNorm) or norm.running_var is None:
        raise TypeError(
            f'cannot fuse {type(norm).__name__} into a conv: only batch norms with running '
            'statistics fold into a linear layer; build the model with a BN/SyncBN norm_cfg '
            'to re-parameterize it')
    std = (norm.running_var + norm.eps).sqrt()
    gamma = norm.weight if norm.weight is not None else torch.ones_like(std)
    beta = norm.bias if norm.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - norm.running_mean * scale


def fuse_conv_bn(weight: torch.Tensor, bias: Optional[torch.Tensor],
                 norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode batch norm into the conv (or linear) before it.

    Args:
        weight: conv weight ``(C_out, C_in / groups, kh, kw)`` or linear weight ``(C_out, C_in)``.
        bias: conv bias ``(C_out,)`` or None.
        norm: a BatchNorm / SyncBatchNorm over ``C_out`` channels with running statistics.

    Returns:
        ``(weight, bias)`` of the single equivalent layer.
    """
    scale, shift = bn_scale_shift(norm)
    fused_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    conv_bias = bias if bias is not None else torch.zeros_like(scale)
    return fused_weight, conv_bias * scale + shift


def fuse_bn_conv(norm: nn.Module, weight: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode batch norm into the 1x1 conv (or linear) after it: exact, as a 1x1 conv
    without padding sees every normalized input value once.

    Args:
        norm: a BatchNorm / SyncBatchNorm over ``C_in`` channels with running statistics.
        weight: 1x1 conv weight ``(C_out, C_in, 1, 1)`` (no groups) or linear weight
            ``(C_out, C_in)``.
        bias: ``(C_out,)`` or None.

    Returns:
        ``(weight, bias)`` of the single equivalent layer.
    """
    if weight.dim() == 4 and weight.shape[-2:] != (1, 1):
        raise ValueError(f'a batch norm folds into the input side of a 1x1 conv only, got a '
                         f'{weight.shape[-2]}x{weight.shape[-1]} kernel (its zero padding would '
                         'not see the shift)')
    scale, shift = bn_scale_shift(norm)
    matrix = weight.reshape(weight.shape[0], -1)
    if matrix.shape[1] != scale.numel():
        raise ValueError(f'the batch norm has {scale.numel()} channels, the conv takes '
                         f'{matrix.shape[1]} inputs (grouped convs do not fold)')
    fused_weight = weight * scale.reshape(1, -1, *([1] * (weight.dim() - 2)))
    fused_bias = matrix @ shift
    return fused_weight, fused_bias if bias is None else fused_bias + bias


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a ``(..., k, k)`` kernel to ``(..., size, size)``, keeping it centred."""
    k = kernel.shape[-1]
    if k > size or (size - k) % 2:
        raise ValueError(f'cannot centre a {k}x{k} kernel in {size}x{size}: '
                         'the target must be larger by an even amount')
    p = (size - k) // 2
    return F.pad(kernel, [p, p, p, p])


def dilate_kernel(kernel: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense equivalent of a dilated kernel: ``(C, 1, k, k)`` -> ``(C, 1, (k-1)r+1, (k-1)r+1)``.

    Zeros are inserted between taps, so a conv with the result and dilation 1 equals a conv with
    ``kernel`` and dilation ``dilation``.
    """
    if dilation == 1:
        return kernel
    k = kernel.shape[-1]
    size = (k - 1) * dilation + 1
    dense = kernel.new_zeros(*kernel.shape[:-2], size, size)
    dense[..., ::dilation, ::dilation] = kernel
    return dense
