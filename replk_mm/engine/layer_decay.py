"""Layer-wise learning-rate decay for RepLKNet and UniRepLKNet backbones.

The built-in layer-decay constructors of mmseg / mmdet / mmpretrain only know ConvNeXt, BEiT and
MAE. This one reads the backbone's parameter names, so it works for every task model that holds
the backbone as ``model.backbone`` (``EncoderDecoder``, ``CascadeRCNN``, ``FCOS``,
``ImageClassifier``).

Layer ids (``L = num_layers``, default 12; ids run from 0 to ``L + 1``):

* RepLKNet (the authors' fine-tuning ids): ``stem`` 0; ``stages.0`` / ``transitions.0`` 1;
  ``stages.1`` / ``transitions.1`` 2; ``stages.2.blocks.k`` ``3 + k // 4`` (one id per two
  RepLK + ConvFFN pairs); ``transitions.2`` and ``stages.2.norm`` ``L - 1``; ``stages.3`` ``L``.
* UniRepLKNet (as ConvNeXt): ``downsample_layers.0`` 0; ``stages.0`` 1; ``downsample_layers.1`` /
  ``stages.1`` 2; ``downsample_layers.2`` 3; ``stages.2.k`` ``3 + k // 3``;
  ``downsample_layers.3`` / ``stages.3`` ``L``.
* Everything else (output norms, neck, heads): ``L + 1``.

Stage-2 ids are capped at ``L - 1``. A parameter with id ``i`` gets the learning rate
``lr * decay_rate ** (L + 1 - i)``. One-dimensional parameters (norms, biases, layer scales) get no
weight decay.
"""
from typing import Callable, Dict, List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS


def replknet_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a RepLKNet parameter (name relative to the backbone)."""
    parts = name.split('.')
    if parts[0] == 'stem':
        return 0
    if parts[0] in ('stages', 'transitions'):
        stage = int(parts[1])
        if stage < 2:
            return stage + 1
        if stage == 3:
            return num_layers
        if parts[0] == 'stages' and parts[2] == 'blocks':
            return min(3 + int(parts[3]) // 4, num_layers - 1)
        return num_layers - 1
    return num_layers + 1


def unireplknet_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a UniRepLKNet parameter (name relative to the backbone)."""
    parts = name.split('.')
    if parts[0] == 'downsample_layers':
        return (0, 2, 3, num_layers)[int(parts[1])]
    if parts[0] == 'stages':
        stage = int(parts[1])
        if stage == 2:
            return min(3 + int(parts[2]) // 3, num_layers - 1)
        return (1, 2, None, num_layers)[stage]
    return num_layers + 1


def backbone_layer_id_fn(backbone: nn.Module) -> Callable[[str, int], int]:
    """The layer-id rule that fits ``backbone``, recognised by its module names."""
    children = dict(backbone.named_children())
    if 'stem' in children and 'transitions' in children:
        return replknet_layer_id
    if 'downsample_layers' in children:
        return unireplknet_layer_id
    raise TypeError(
        f'layer-wise lr decay knows RepLKNet (stem / stages / transitions) and UniRepLKNet '
        f'(downsample_layers / stages) backbones, got {type(backbone).__name__} with children '
        f'{sorted(children)}; use the default optim_wrapper constructor for this model')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with layer-wise lr decay over a RepLKNet / UniRepLKNet backbone.

    Config::

        optim_wrapper = dict(
            constructor='replk_mm.LayerDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            paramwise_cfg=dict(decay_rate=0.9, num_layers=12))

    ``paramwise_cfg`` keys: ``decay_rate`` (required, 1.0 disables the decay) and ``num_layers``
    (the id of the last stage, default 12; see the module docstring for the ids).
    """

    _KEYS = ('decay_rate', 'num_layers')

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None) -> None:
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(self._KEYS))
        if unknown or 'decay_rate' not in paramwise_cfg:
            raise ValueError(
                f'LayerDecayOptimWrapperConstructor: paramwise_cfg takes {self._KEYS} '
                f'(decay_rate required), got {sorted(paramwise_cfg)}')
        num_layers = paramwise_cfg.setdefault('num_layers', 12)
        if not isinstance(num_layers, int) or num_layers < 4:
            raise ValueError(f'paramwise_cfg.num_layers must be an int >= 4, got {num_layers!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        """Fill ``params`` with one group per (layer id, weight decay or not)."""
        backbone = getattr(module, 'backbone', None)
        if backbone is None:
            raise TypeError(f'layer-wise lr decay needs a model with a .backbone, got '
                            f'{type(module).__name__}')
        layer_id = backbone_layer_id_fn(backbone)
        num_layers = self.paramwise_cfg['num_layers']
        decay_rate = self.paramwise_cfg['decay_rate']
        groups: Dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith('backbone.'):
                lid = layer_id(name[len('backbone.'):], num_layers)
            else:
                lid = num_layers + 1
            no_decay = param.ndim == 1 or name.endswith('.bias')
            key = f'layer_{lid}_{"no_decay" if no_decay else "decay"}'
            if key not in groups:
                scale = decay_rate**(num_layers + 1 - lid)
                groups[key] = dict(params=[], lr_scale=scale, lr=self.base_lr * scale,
                                   weight_decay=0. if no_decay else (self.base_wd or 0.))
            groups[key]['params'].append(param)
        summary = ', '.join(f'{k}: {len(g["params"])} params x{g["lr_scale"]:.3g}'
                            for k, g in sorted(groups.items()))
        print_log(f'layer-wise lr decay {decay_rate} over {num_layers + 2} ids: {summary}',
                  logger='current')
        params.extend(groups.values())
