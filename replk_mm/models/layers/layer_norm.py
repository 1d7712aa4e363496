"""LayerNorm over the channel dimension of NCHW feature maps (ConvNeXt / UniRepLKNet style)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm normalising each pixel over its channels: ``(N, C, H, W) -> (N, C, H, W)``.

    Parameters ``weight`` / ``bias`` of shape ``(C,)``, as the authors' channels-first LayerNorm, so
    their checkpoints load unchanged. A pooled input ``(N, C)`` is normalised the same way, which is
    the classifier's final norm after global average pooling.

    Args:
        channels: C.
        eps: added to the variance; the authors use 1e-6.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        if x.dim() != 4:
            raise ValueError(f'LayerNorm2d expects (N, C, H, W) or (N, C), got {tuple(x.shape)}')
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)
