"""``BatchNorm2d``: ``nn.BatchNorm2d`` whose training pass runs the package's CPU kernel (with an
optional fused ReLU / GELU), the norm builder every layer of the package uses, and the swap that
gives SyncBN layers reverted on one process the same kernel."""
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model.utils import _BatchNormXd

from ...ops.batch_norm import applies, batch_norm_train, check_activation

# the unfused form of each name of replk_mm.ops.batch_norm.ACTIVATIONS
UNFUSED_ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'none': lambda x: x, 'relu': F.relu, 'gelu': F.gelu}


def activation_name(act: Optional[nn.Module]) -> Optional[str]:
    """The name in ``replk_mm.ops.batch_norm.ACTIVATIONS`` of ``act`` (``'none'`` for None), or
    None when it is not a plain ``nn.ReLU`` / exact ``nn.GELU``: the activations that kernels
    (this BN's, oneDNN's conv post-ops) can apply in their own pass."""
    if act is None:
        return 'none'
    if type(act) is nn.ReLU:
        return 'relu'
    if type(act) is nn.GELU and act.approximate == 'none':
        return 'gelu'
    return None


def fusable_activation(norm: nn.Module, act: Optional[nn.Module]) -> Optional[str]:
    """The ``activation`` :meth:`BatchNorm2d.forward` takes for ``act(norm(x))`` (``'none'`` without
    an activation), or None when ``norm`` is not a :class:`BatchNorm2d` or ``act`` is not a plain
    ``nn.ReLU`` / exact ``nn.GELU``."""
    if not isinstance(norm, BatchNorm2d):
        return None
    return activation_name(act)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same arguments, state-dict keys and results) that normalizes with batch
    statistics through :func:`replk_mm.ops.batch_norm.batch_norm_train` when that applies to the
    input (contiguous float32 / float64 on the CPU); PyTorch's kernel otherwise, and always in eval
    mode with running statistics. ``(N, C, H, W) -> (N, C, H, W)``.

    ``forward(x, activation='relu' | 'gelu')`` applies the activation in the same kernel pass (a
    ``ConvBN`` with such an activation calls it so), and the normalized tensor is never stored."""

    def forward(self, x: torch.Tensor, activation: str = 'none') -> torch.Tensor:
        """``act(BN(x))`` with ``activation`` one of ``'none'``, ``'relu'``, ``'gelu'``."""
        check_activation(activation, 'BatchNorm2d')
        uses_batch_stats = self.training or self.running_mean is None
        if not (uses_batch_stats and applies(x)):
            return UNFUSED_ACTIVATIONS[activation](super().forward(x))
        self._check_input_dim(x)
        y, mean, var = batch_norm_train(x, self.weight, self.bias, self.eps, activation)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked)
                      if self.momentum is None else self.momentum)
            count = x.numel() // x.shape[1]
            with torch.no_grad():
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (count / (count - 1)), factor)
        return y


class BatchNormXd(BatchNorm2d):
    """:class:`BatchNorm2d` for inputs ``(N, C, *)`` of any rank: what :func:`use_package_batch_norm`
    turns MMEngine's ``_BatchNormXd`` (a SyncBN reverted on one process) into."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f'expected an (N, C, *) input, got {x.dim()}-D')


def use_package_batch_norm(model: nn.Module) -> nn.Module:
    """Replace in place every MMEngine ``_BatchNormXd`` of ``model`` (what the Runner and
    ``revert_sync_batchnorm`` make of SyncBN without a process group) by a :class:`BatchNormXd`
    holding the same parameter and buffer objects, so those layers run the package's kernel and
    ``ConvBN`` fuses their activations. An optimizer built before keeps working. Returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not _BatchNormXd:
                continue
            swapped = BatchNormXd(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            swapped.weight, swapped.bias = child.weight, child.bias
            swapped.running_mean, swapped.running_var = child.running_mean, child.running_var
            swapped.num_batches_tracked = child.num_batches_tracked
            swapped.train(child.training)
            setattr(parent, name, swapped)
    return model


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
