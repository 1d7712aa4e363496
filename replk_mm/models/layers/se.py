"""Squeeze-and-Excitation (SENet) on NCHW feature maps."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SEBlock(nn.Module):
    """``x · sigmoid(up(relu(down(avgpool(x)))))``: ``(N, C, H, W) -> (N, C, H, W)``.

    ``down`` / ``up`` are 1x1 convs with bias (key names of the authors' checkpoints).

    Args:
        channels: C.
        hidden: width of the bottleneck (UniRepLKNet: C // 4).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f'SEBlock needs hidden >= 1, got {hidden} for {channels} channels; '
                             'use at least 4 channels with the C // 4 bottleneck')
        self.down = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.up = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return x * s
