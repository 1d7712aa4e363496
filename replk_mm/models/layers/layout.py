"""Layout changes between NCHW and NHWC as modules, so that they can sit inside ``nn.Sequential``."""
import torch
import torch.nn as nn


class ToChannelsLast(nn.Module):
    """``(N, C, H, W) -> (N, H, W, C)`` (a view; no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToChannelsFirst(nn.Module):
    """``(N, H, W, C) -> (N, C, H, W)`` (a view; no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)
