"""One entry point for depth-wise convolutions: stride 1, "same" padding, odd square kernels.

``depthwise_conv2d(x, weight, bias)`` has the semantics of
``F.conv2d(x, weight, bias, padding=K // 2, groups=C)`` and chooses the fastest correct
implementation for the device, dtype and kernel size.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


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


def depthwise_conv2d(x: torch.Tensor,
                     weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depth-wise conv with "same" padding.

    Args:
        x: ``(N, C, H, W)``, any memory format.
        weight: ``(C, 1, K, K)``, K odd.
        bias: ``(C,)`` or None.

    Returns:
        ``(N, C, H, W)``.
    """
    _check_inputs(x, weight, bias)
    pad = weight.shape[-1] // 2
    return F.conv2d(x, weight, bias, padding=pad, groups=x.shape[1])


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
