"""The UniRepLKNet block: (dilated re-parameterized) depth-wise conv, SE, GRN feed-forward."""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn.bricks import DropPath

from replk_mm.ops import DepthwiseConv2d
from ..utils.activation_checkpoint import checkpointed
from .batch_norm import build_norm
from .dilated_reparam import DilatedReparamBlock
from .grn import GRN
from .layout import ToChannelsFirst, ToChannelsLast
from .reparam import ReparamMixin, fuse_conv_bn, reparameterize_model
from .se import SEBlock

# Blocks with a kernel of at least this size are "LarK" blocks with a Dilated Reparam Block.
LARGE_KERNEL_MIN = 7


class UniRepLKNetBlock(ReparamMixin, nn.Module):
    """``x + DropPath(γ · BN(Linear(GRN(GELU(Linear(SE(BN(DW(x)))))))))``: ``(N, C, H, W)`` in and out.

    Module names follow the authors' checkpoints: ``dwconv`` (a :class:`DilatedReparamBlock` when
    K >= 7, else a plain depth-wise conv), ``norm``, ``se``, ``pwconv1.1``, ``act.1`` (GRN),
    ``pwconv2.0`` / ``pwconv2.2`` (linear, BN) and ``gamma`` (layer scale). The deploy form folds
    ``norm`` into ``dwconv``, and the GRN bias, ``pwconv2.2`` and ``gamma`` into ``pwconv2.0``.

    Args:
        channels: C.
        kernel_size: K of the depth-wise conv, odd (3 or 5: plain conv; >= 7: dilated re-param).
        drop_path: stochastic depth rate.
        layer_scale_init_value: initial γ; 0 or None disables the layer scale.
        ffn_ratio: hidden width of the feed-forward part over C.
        norm_cfg: the block's batch norms (BN or SyncBN).
        with_cp: recompute the block in the backward pass (:func:`~replk_mm.models.utils.checkpointed`).
        deploy: build the deploy form directly.
    """

    def __init__(self,
                 channels: int,
                 kernel_size: int,
                 drop_path: float = 0.,
                 layer_scale_init_value: Optional[float] = 1e-6,
                 ffn_ratio: int = 4,
                 norm_cfg: Optional[dict] = None,
                 with_cp: bool = False,
                 deploy: bool = False) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f'UniRepLKNet blocks need an odd kernel size >= 3, got {kernel_size}')
        norm_cfg = norm_cfg or dict(type='BN')
        self.with_cp = with_cp
        self.deployed = deploy
        if kernel_size >= LARGE_KERNEL_MIN:
            self.dwconv = DilatedReparamBlock(channels, kernel_size, norm_cfg=norm_cfg, deploy=deploy)
        else:
            self.dwconv = DepthwiseConv2d(channels, kernel_size, bias=deploy)
        self.norm = nn.Identity() if deploy else build_norm(norm_cfg, channels)
        self.se = SEBlock(channels, channels // 4)
        hidden = int(ffn_ratio * channels)
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(channels, hidden))
        self.act = nn.Sequential(nn.GELU(), GRN(hidden, bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(hidden, channels), ToChannelsFirst())
        else:
            self.pwconv2 = nn.Sequential(
                nn.Linear(hidden, channels, bias=False), ToChannelsFirst(),
                build_norm(norm_cfg, channels))
        use_scale = not deploy and bool(layer_scale_init_value)
        self.gamma = nn.Parameter(
            torch.full((channels, ), float(layer_scale_init_value))) if use_scale else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch: ``(N, C, H, W) -> (N, C, H, W)``."""
        y = self.se(self.norm(self.dwconv(x)))
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return self.drop_path(y)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpointed(self._forward, x) if self.with_cp else self._forward(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold BNs, the GRN bias and the layer scale into the conv / linear layers (in place)."""
        if self.deployed:
            return
        reparameterize_model(self.dwconv)
        dw = self.dwconv.lk_origin if isinstance(self.dwconv, DilatedReparamBlock) else self.dwconv
        weight, bias = fuse_conv_bn(dw.weight, dw.bias, self.norm)
        fused_dw = DepthwiseConv2d(dw.channels, dw.kernel_size, bias=True).to(weight)
        fused_dw.weight.copy_(weight)
        fused_dw.bias.copy_(bias)
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.lk_origin = fused_dw
        else:
            self.dwconv = fused_dw
        self.norm = nn.Identity()

        linear, bn = self.pwconv2[0], self.pwconv2[2]
        # Linear(GRN(h) + beta) = Linear(GRN(h)) + W @ beta.
        grn_bias = linear.weight @ self.act[1].pop_bias()
        if linear.bias is not None:
            grn_bias = grn_bias + linear.bias
        weight, bias = fuse_conv_bn(linear.weight, grn_bias, bn)
        if self.gamma is not None:
            weight = weight * self.gamma.view(-1, 1)
            bias = bias * self.gamma
            self.gamma = None
        fused_linear = nn.Linear(linear.in_features, linear.out_features).to(weight)
        fused_linear.weight.copy_(weight)
        fused_linear.bias.copy_(bias)
        self.pwconv2 = nn.Sequential(fused_linear, ToChannelsFirst())
        self.deployed = True
