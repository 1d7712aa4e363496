"""The re-parameterizable large depth-wise conv of RepLKNet: a KxK DW conv-BN plus a kxk one."""
from typing import Optional

import torch
import torch.nn as nn

from ...ops import DepthwiseConv2d
from .conv_bn import ConvBN
from .reparam import ReparamMixin, fuse_conv_bn, pad_kernel


class ReparamLargeKernelConv(ReparamMixin, nn.Module):
    """``BN(DW_K(x)) + BN(DW_k(x))``, fused after training into one ``DW_K(x) + b``.

    Keys (the RepLKNet authors'): training form ``lkb_origin.{conv,bn}.*`` and
    ``small_conv.{conv,bn}.*``; deploy form ``lkb_reparam.{weight,bias}``.

    Args:
        channels: C (depth-wise, so C_in = C_out = C).
        kernel_size: K, the large odd kernel.
        small_kernel: k, the parallel small odd kernel (k <= K), or None for no small branch.
        norm_cfg: mmcv norm config of both branches (must be a batch norm to re-parameterize).
        deploy: build the fused form directly.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 small_kernel: Optional[int] = None,
                 norm_cfg: Optional[dict] = None,
                 deploy: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f'the large kernel size must be a positive odd number, got {kernel_size}')
        if small_kernel is not None and (small_kernel % 2 == 0 or not 0 < small_kernel <= kernel_size):
            raise ValueError(
                f'small_kernel must be an odd number no larger than the large kernel ({kernel_size}), '
                f'got {small_kernel}; use small_kernel=None to drop the small branch')
        self.channels = channels
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        self.deployed = deploy
        if deploy:
            self.lkb_reparam = DepthwiseConv2d(channels, kernel_size, bias=True)
        else:
            self.lkb_origin = ConvBN(channels, channels, kernel_size, groups=channels,
                                     norm_cfg=norm_cfg, dw_op=True)
            if small_kernel is not None:
                self.small_conv = ConvBN(channels, channels, small_kernel, groups=channels,
                                         norm_cfg=norm_cfg, dw_op=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        if self.deployed:
            return self.lkb_reparam(x)
        out = self.lkb_origin(x)
        if self.small_kernel is not None:
            out = out + self.small_conv(x)
        return out

    @torch.no_grad()
    def equivalent_kernel_bias(self) -> tuple:
        """The ``(C, 1, K, K)`` kernel and ``(C,)`` bias of the fused conv (BNs in eval semantics)."""
        kernel, bias = fuse_conv_bn(self.lkb_origin.conv.weight, None, self.lkb_origin.bn)
        if self.small_kernel is not None:
            small_k, small_b = fuse_conv_bn(self.small_conv.conv.weight, None, self.small_conv.bn)
            kernel = kernel + pad_kernel(small_k, self.kernel_size)
            bias = bias + small_b
        return kernel, bias

    def reparameterize(self) -> None:
        """Replace both branches by ``lkb_reparam`` (in place; same device and dtype)."""
        if self.deployed:
            return
        kernel, bias = self.equivalent_kernel_bias()
        fused = DepthwiseConv2d(self.channels, self.kernel_size, bias=True).to(kernel)
        fused.weight.data.copy_(kernel)
        fused.bias.data.copy_(bias)
        self.lkb_reparam = fused
        del self.lkb_origin
        if self.small_kernel is not None:
            del self.small_conv
        self.deployed = True

    def extra_repr(self) -> str:
        return (f'{self.channels}, kernel_size={self.kernel_size}, '
                f'small_kernel={self.small_kernel}, deployed={self.deployed}')
