"""UniRepLKNet's Dilated Reparam Block: a large depth-wise conv with parallel dilated small ones."""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from replk_mm.ops import DepthwiseConv2d
from .batch_norm import build_norm
from .reparam import ReparamMixin, dilate_kernel, fuse_conv_bn, pad_kernel

# The authors' default branches per large kernel K: (kernel sizes k, dilation rates r).
DEFAULT_BRANCHES: Dict[int, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    5: ((3, 3), (1, 2)),
    7: ((5, 3, 3), (1, 2, 3)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
}


def resolve_branches(kernel_size: int,
                     kernel_sizes: Optional[Sequence[int]] = None,
                     dilations: Optional[Sequence[int]] = None) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Validate the branch setting of a Dilated Reparam Block (defaults when both are None).

    Raises:
        ValueError: naming the offending branch and the rule it breaks.
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f'DilatedReparamBlock needs an odd kernel_size >= 3, got {kernel_size}')
    if kernel_sizes is None and dilations is None:
        if kernel_size not in DEFAULT_BRANCHES:
            raise ValueError(
                f'no default dilated branches for kernel_size={kernel_size} (defaults exist for '
                f'{sorted(DEFAULT_BRANCHES)}); pass kernel_sizes=... and dilations=...')
        return DEFAULT_BRANCHES[kernel_size]
    if kernel_sizes is None or dilations is None or len(kernel_sizes) != len(dilations):
        raise ValueError('kernel_sizes and dilations must be given together with one entry per '
                         f'branch, got kernel_sizes={kernel_sizes}, dilations={dilations}')
    seen = set()
    for k, r in zip(kernel_sizes, dilations):
        if k < 1 or k % 2 == 0:
            raise ValueError(f'branch k={k}, r={r}: branch kernel sizes must be odd and >= 1')
        if r < 1:
            raise ValueError(f'branch k={k}, r={r}: dilation rates must be >= 1')
        span = (k - 1) * r + 1
        if span > kernel_size:
            raise ValueError(
                f'branch k={k}, r={r} spans (k-1)*r+1 = {span} pixels, more than the large kernel '
                f'{kernel_size}, so it cannot be merged into it; use a smaller k or r')
        if (k, r) in seen:
            raise ValueError(f'branch k={k}, r={r} is given twice; each (k, r) may appear once')
        seen.add((k, r))
    return tuple(kernel_sizes), tuple(dilations)


class DilatedReparamBlock(ReparamMixin, nn.Module):
    """Depth-wise KxK conv-BN plus parallel dilated depth-wise conv-BN branches, summed.

    ``(N, C, H, W) -> (N, C, H, W)``. Module names follow the authors' checkpoints: ``lk_origin``
    (KxK, no bias), ``origin_bn``, and per branch ``dil_conv_k{k}_{r}`` / ``dil_bn_k{k}_{r}``. The
    deploy form is ``lk_origin`` alone, a KxK depth-wise conv with bias.

    Args:
        channels: C.
        kernel_size: K, odd.
        kernel_sizes: branch kernel sizes k (None: the default for K).
        dilations: branch dilation rates r (None: the default for K). Each branch must satisfy
            (k-1)*r+1 <= K.
        norm_cfg: the norm of every branch (BN or SyncBN).
        deploy: build the deploy form directly.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 kernel_sizes: Optional[Sequence[int]] = None,
                 dilations: Optional[Sequence[int]] = None,
                 norm_cfg: Optional[dict] = None,
                 deploy: bool = False) -> None:
        super().__init__()
        self.kernel_sizes, self.dilations = resolve_branches(kernel_size, kernel_sizes, dilations)
        self.channels = channels
        self.kernel_size = kernel_size
        self.deployed = deploy
        self.lk_origin = DepthwiseConv2d(channels, kernel_size, bias=deploy)
        if deploy:
            return
        norm_cfg = norm_cfg or dict(type='BN')
        self.origin_bn = build_norm(norm_cfg, channels)
        for k, r in self.branches():
            conv = nn.Conv2d(channels, channels, k, padding=(k - 1) * r // 2, dilation=r,
                             groups=channels, bias=False)
            setattr(self, f'dil_conv_k{k}_{r}', conv)
            setattr(self, f'dil_bn_k{k}_{r}', build_norm(norm_cfg, channels))

    def branches(self) -> Sequence[Tuple[int, int]]:
        """The (k, r) pairs of the dilated branches."""
        return list(zip(self.kernel_sizes, self.dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deployed:
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for k, r in self.branches():
            out = out + getattr(self, f'dil_bn_k{k}_{r}')(getattr(self, f'dil_conv_k{k}_{r}')(x))
        return out

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse every BN, dilate and centre each branch kernel, sum into one KxK conv with bias."""
        if self.deployed:
            return
        weight, bias = fuse_conv_bn(self.lk_origin.weight, None, self.origin_bn)
        for k, r in self.branches():
            conv = getattr(self, f'dil_conv_k{k}_{r}')
            branch_w, branch_b = fuse_conv_bn(conv.weight, None, getattr(self, f'dil_bn_k{k}_{r}'))
            weight = weight + pad_kernel(dilate_kernel(branch_w, r), self.kernel_size)
            bias = bias + branch_b
            delattr(self, f'dil_conv_k{k}_{r}')
            delattr(self, f'dil_bn_k{k}_{r}')
        del self.origin_bn
        merged = DepthwiseConv2d(self.channels, self.kernel_size, bias=True).to(weight)
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lk_origin = merged
        self.deployed = True

    def extra_repr(self) -> str:
        return (f'{self.channels}, kernel_size={self.kernel_size}, kernel_sizes={self.kernel_sizes}, '
                f'dilations={self.dilations}, deployed={self.deployed}')

