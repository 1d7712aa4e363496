"""``BatchNorm2d``: ``nn.BatchNorm2d`` whose training pass runs the package's CPU kernel, and the
norm builder every layer of the package uses."""
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer

from ...ops.batch_norm import applies, batch_norm_train


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same arguments, state-dict keys and results) that normalizes with batch
    statistics through :func:`replk_mm.ops.batch_norm.batch_norm_train` when that applies to the
    input (contiguous float32 / float64 on the CPU); PyTorch's kernel otherwise, and always in eval
    mode with running statistics. ``(N, C, H, W) -> (N, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        uses_batch_stats = self.training or self.running_mean is None
        if not (uses_batch_stats and applies(x)):
            return super().forward(x)
        self._check_input_dim(x)
        y, mean, var = batch_norm_train(x, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked)
                      if self.momentum is None else self.momentum)
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (count / (count - 1)), factor)
        return y


def build_norm(cfg: dict, num_features: int) -> nn.Module:
    """mmcv's ``build_norm_layer(cfg, num_features)[1]``, except that ``BN`` / ``BN2d`` build a
    :class:`BatchNorm2d`."""
    if cfg.get('type') not in ('BN', 'BN2d'):
        return build_norm_layer(cfg, num_features)[1]
    kwargs = {k: v for k, v in cfg.items() if k not in ('type', 'requires_grad')}
    layer = BatchNorm2d(num_features, **kwargs)
    for param in layer.parameters():
        param.requires_grad = cfg.get('requires_grad', True)
    return layer
