"""Distributed runs on CPU processes (torchrun + gloo), e.g. ``tools/dist_train.sh CONFIG 2`` without GPUs.

MMEngine 0.10.7 assumes GPUs once launched: ``init_dist('pytorch')`` calls ``torch.cuda.set_device``
and the Runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]``, which DDP rejects for a CPU
module. :func:`setup_cpu_distributed` initialises gloo itself (the Runner then skips ``init_dist``)
and selects :class:`CPUDistributedDataParallel`.

Not in :mod:`replk_mm.compat` with the other workarounds: those patch MMEngine for every user
when the package is imported (before the models are registered), while this one is a model
wrapper and a config change that only the tools' front end (:mod:`replk_mm.engine.cli`) opts into,
and it needs the models' batch norm; importing it from ``compat`` would load the models first.
"""
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm

from ..models.layers import use_package_batch_norm
from ..registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for CPU processes: no device ids, and SyncBN reverted to the
    package's BN (SyncBatchNorm has no CPU kernel; each process keeps its own batch statistics)."""

    def __init__(self, module: nn.Module, device_ids=None, **kwargs) -> None:
        module = use_package_batch_norm(revert_sync_batchnorm(module))
        super().__init__(module=module, device_ids=None, **kwargs)


def setup_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Prepare ``cfg`` for a distributed run on CPUs; a no-op with GPUs or without a launcher."""
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(f'distributed runs without GPUs need --launcher pytorch (torchrun, as in '
                         f'tools/dist_train.sh), got --launcher {launcher}')
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend='gloo')
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    cfg.model_wrapper_cfg = dict(
        type='replk_mm.CPUDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
