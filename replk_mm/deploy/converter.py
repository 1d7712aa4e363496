"""Convert a trained checkpoint of any task into its re-parameterized (deploy) form.

:func:`convert_checkpoint` builds the model of a config (mmseg segmentor, mmdet detector,
mmpretrain classifier or bare backbone), loads the checkpoint safely and strictly, fuses every
re-parameterizable module, rebuilds the model from the deploy config (backbone ``deploy=True``)
with the fused weights, checks that it computes the training form on an input of the model's kind,
and only then writes, all or nothing::

    OUT_DIR/{config name}_deploy.pth   # {'state_dict': ..., 'meta': {...}}, no optimizer state
    OUT_DIR/{config name}_deploy.py    # the config with model.backbone.deploy=True

Both are what ``tools/test.py`` takes.
"""
import copy
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import init_default_scope
from mmengine.utils import import_modules_from_strings

from ..checkpoint import extract_state_dict, load_checkpoint_file, load_state_dict_checked
from ..models.layers.reparam import ReparamMixin, reparameterize_model
from ..version import __version__
from .atomic import atomic_outputs, check_outputs_free
from .equivalence import (FLOAT32_TOLERANCE, FLOAT64_TOLERANCE, cpu_latency_ms,
                          default_input_shape, example_input, float64_error, model_kind,
                          model_outputs, relative_error)


class EquivalenceError(RuntimeError):
    """The deploy form does not compute the training form within the tolerance."""


@dataclass
class DeployResult:
    """What a conversion measured and wrote."""
    kind: str
    checkpoint: str
    config: str
    source_checkpoint: str
    input_shape: Tuple[int, ...]
    tolerance: float
    error: float
    error_float64: Optional[float]
    params_before: int
    params_after: int
    size_before: int
    size_after: int
    latency_before_ms: float
    latency_after_ms: float
    reparameterized: Dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """A human-readable report (what ``tools/deploy.py`` prints)."""
        mib = 1 / 2**20
        speedup = self.latency_before_ms / max(self.latency_after_ms, 1e-9)
        lines = [
            f'model kind: {self.kind}; check input {tuple(self.input_shape)}',
            f're-parameterized modules: ' +
            ', '.join(f'{n} x {name}' for name, n in sorted(self.reparameterized.items())),
            f'equivalence (eval mode, max|a-b|/max|a| over all outputs): float32 error '
            f'{self.error:.3e} <= tolerance {self.tolerance:.1e}' +
            (f'; float64 error {self.error_float64:.3e}' if self.error_float64 is not None else ''),
            f'{"":14}{"training form":>16}{"deploy form":>16}',
            f'{"params":14}{self.params_before:>16,}{self.params_after:>16,}',
            f'{"file size":14}{self.size_before * mib:>12.2f} MiB{self.size_after * mib:>12.2f} MiB',
            f'{"CPU latency":14}{self.latency_before_ms:>13.1f} ms{self.latency_after_ms:>13.1f} ms'
            f'  (x{speedup:.2f}, median, {torch.get_num_threads()} threads)',
            f'wrote {self.checkpoint}',
            f'wrote {self.config}',
        ]
        return '\n'.join(lines)


def load_config(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """Read a config file (or copy a Config) and merge ``cfg_options``."""
    cfg = Config.fromfile(config) if isinstance(config, str) else copy.deepcopy(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg:
        raise KeyError(f'config {getattr(cfg, "filename", config)} has no `model`')
    return cfg


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in its config's default scope (custom imports first), on the CPU, with
    SyncBN reverted to BN (as MMEngine's Runner does on one device)."""
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    import replk_mm.models  # noqa: F401  (registers the backbones)
    init_default_scope(cfg.get('default_scope', 'replk_mm'))
    model = ROOT_MODELS.build(cfg.model)
    return revert_sync_batchnorm(model)


def _backbone_cfg(cfg: Config) -> dict:
    return cfg.model.backbone if 'backbone' in cfg.model else cfg.model


def make_deploy_config(cfg: Config) -> Config:
    """The config of the deploy form: backbone ``deploy=True``, no pretrained initialization
    (``init_cfg`` / ``pretrained`` / ``load_from`` are dropped: the weights come from the deploy
    checkpoint), not resuming."""
    deploy_cfg = copy.deepcopy(cfg)
    backbone = _backbone_cfg(deploy_cfg)
    backbone['deploy'] = True
    backbone.pop('init_cfg', None)
    if 'pretrained' in deploy_cfg.model:
        deploy_cfg.model.pretrained = None
    deploy_cfg.load_from = None
    deploy_cfg.resume = False
    return deploy_cfg


def _count_reparam(model: nn.Module) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, ReparamMixin):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return counts


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_paths(config: Union[str, Config], out_dir: str) -> Tuple[str, str]:
    """``(checkpoint, config)`` paths the conversion writes into ``out_dir``."""
    filename = config if isinstance(config, str) else (config.filename or 'model.py')
    name = osp.splitext(osp.basename(filename))[0]
    return osp.join(out_dir, f'{name}_deploy.pth'), osp.join(out_dir, f'{name}_deploy.py')


def _source_meta(checkpoint: Any) -> Dict[str, Any]:
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in ('dataset_meta', 'experiment_name', 'epoch', 'iter', 'seed')
            if k in meta}


def convert_checkpoint(config: Union[str, Config],
                       checkpoint: str,
                       out_dir: str,
                       force: bool = False,
                       trust: Optional[bool] = None,
                       tolerance: float = FLOAT32_TOLERANCE,
                       input_shape: Optional[Sequence[int]] = None,
                       check_float64: bool = False,
                       latency_runs: int = 5,
                       cfg_options: Optional[dict] = None) -> DeployResult:
    """Re-parameterize a trained checkpoint and write the deploy checkpoint and config.

    Args:
        config: the training config (path or Config).
        checkpoint: the trained checkpoint (any of the formats of
            :func:`replk_mm.checkpoint.extract_state_dict`); loaded with the safe loader.
        out_dir: where the two outputs go (created if needed).
        force: overwrite existing outputs.
        trust: load the checkpoint with full pickle (only for files you trust).
        tolerance: the largest accepted float32 relative error of any output.
        input_shape: ``(N, 3, H, W)`` of the check input; default by model kind (224 for
            classifiers and backbones, 512 for segmentors and detectors).
        check_float64: also measure the error of float64 copies (must be <= 1e-10).
        latency_runs: timed runs per form (median reported).
        cfg_options: overrides merged into the config.

    Raises:
        UnsafeCheckpointError: the checkpoint needs unpickling beyond the allow-list.
        KeyError / ValueError: the checkpoint does not match the config (keys or shapes named).
        EquivalenceError: the deploy form differs from the training form; nothing is written.
        FileExistsError: an output exists and ``force`` is False.
    """
    logger = MMLogger.get_current_instance()
    cfg = load_config(config, cfg_options)
    ckpt_path, cfg_path = output_paths(config, out_dir)
    check_outputs_free((ckpt_path, cfg_path), force)

    model = build_model(cfg).eval()
    kind = model_kind(model)
    raw = load_checkpoint_file(checkpoint, trust=trust)
    load_state_dict_checked(model, extract_state_dict(raw), strict=True, source=checkpoint,
                            logger=logger)
    reparam_counts = _count_reparam(model)
    if not reparam_counts:
        raise ValueError(f'the model of {cfg.filename} has no re-parameterizable module: nothing to '
                         'deploy (use a replk_mm backbone, e.g. replk_mm.RepLKNet / UniRepLKNet)')

    shape = tuple(input_shape) if input_shape else default_input_shape(kind)
    if kind == 'segmentor' and not input_shape and cfg.get('crop_size'):
        shape = (1, 3, *cfg.crop_size)
    x = example_input(shape)
    reference = model_outputs(model, x, kind)
    params_before = _num_params(model)
    train_model = copy.deepcopy(model)  # kept for the side-by-side timing
    error64 = None
    if check_float64:
        error64 = float64_error(model, x, kind)
        logger.info(f'deploy check: float64 relative error {error64:.3e}')
        if not error64 <= FLOAT64_TOLERANCE:
            raise EquivalenceError(
                f'float64 relative error {error64:.3e} > {FLOAT64_TOLERANCE:.0e}: the fusion is not '
                'exact (the float32 error hides it). Nothing was written.')

    reparameterize_model(model)
    deploy_cfg = make_deploy_config(cfg)
    deploy_model = build_model(deploy_cfg).eval()
    load_state_dict_checked(deploy_model, model.state_dict(), strict=True,
                            source='the re-parameterized weights', logger=logger)
    del model
    error = relative_error(reference, model_outputs(deploy_model, x, kind))
    logger.info(f'deploy check: float32 relative error {error:.3e} (tolerance {tolerance:.1e})')
    if not error <= tolerance:
        raise EquivalenceError(
            f'the deploy form of {cfg.filename} does not compute the training form: relative error '
            f'{error:.3e} > tolerance {tolerance:.1e} on an input {shape}. Nothing was written. '
            'Check that every re-parameterizable norm is a BatchNorm with running statistics.')
    latency_before, latency_after = cpu_latency_ms([train_model, deploy_model], x, kind,
                                                   runs=latency_runs)
    del train_model

    meta = dict(
        _source_meta(raw),
        deploy=dict(
            source_checkpoint=osp.abspath(checkpoint), source_config=cfg.filename,
            kind=kind, input_shape=list(shape), relative_error=error,
            relative_error_float64=error64, tolerance=tolerance,
            reparameterized=reparam_counts, replk_mm_version=__version__,
            torch_version=str(torch.__version__)))
    with atomic_outputs((ckpt_path, cfg_path), force=force) as (tmp_ckpt, tmp_cfg):
        torch.save({'state_dict': deploy_model.state_dict(), 'meta': meta}, tmp_ckpt)
        deploy_cfg.dump(tmp_cfg)

    return DeployResult(
        kind=kind, checkpoint=ckpt_path, config=cfg_path, source_checkpoint=checkpoint,
        input_shape=shape, tolerance=tolerance, error=error, error_float64=error64,
        params_before=params_before, params_after=_num_params(deploy_model),
        size_before=os.path.getsize(checkpoint), size_after=os.path.getsize(ckpt_path),
        latency_before_ms=latency_before, latency_after_ms=latency_after,
        reparameterized=reparam_counts)

