"""Conv + norm (+ activation) blocks whose state-dict keys are ``conv.*`` and ``bn.*``."""
from typing import Optional

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer

from ...ops import DepthwiseConv2d
from .batch_norm import build_norm, fusable_activation


class ConvBN(nn.Module):
    """``conv -> norm (-> act)`` with keys ``conv.weight``, ``bn.*`` (the RepLKNet authors' names).

    With ``dw_op=True`` the conv is a :class:`replk_mm.ops.DepthwiseConv2d` (depth-wise, stride 1,
    "same" padding), so it runs through the package's depth-wise entry point; otherwise it is an
    ``nn.Conv2d`` without bias and with "same" padding. A ReLU or GELU after the package's
    :class:`BatchNorm2d` runs fused into its kernel (same results, one pass and one tensor less).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: k (odd).
        stride: conv stride.
        groups: conv groups.
        norm_cfg: mmcv norm config (BN, SyncBN, GN, ...), built over C_out channels.
        act_cfg: mmcv activation config, or None for no activation.
        dw_op: use the depth-wise entry point (needs ``in_channels == out_channels == groups``
            and ``stride == 1``).
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int,
                 stride: int = 1,
                 groups: int = 1,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 dw_op: bool = False) -> None:
        super().__init__()
        if dw_op:
            if not (groups == in_channels == out_channels and stride == 1):
                raise ValueError('dw_op=True needs a depth-wise conv (groups == in_channels == '
                                 f'out_channels, got {groups}, {in_channels}, {out_channels}) '
                                 f'with stride 1 (got {stride})')
            self.conv = DepthwiseConv2d(out_channels, kernel_size, bias=False)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                  padding=kernel_size // 2, groups=groups, bias=False)
        self.bn = build_norm(norm_cfg or dict(type='BN'), out_channels)
        self.act = build_activation_layer(act_cfg) if act_cfg is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)``."""
        x = self.conv(x)
        # decided per call: converters (SyncBN, conv-BN fusion) may have replaced self.bn since
        fused = fusable_activation(self.bn, self.act)
        if fused is not None:
            return self.bn(x, activation=fused)
        x = self.bn(x)
        return self.act(x) if self.act is not None else x
