"""State-dict key mapping between the authors' UniRepLKNet checkpoints and replk_mm models.

The backbone reproduces the authors' module names, so only the wrappers differ:

- authors' ImageNet classifier: ``downsample_layers.*``, ``stages.*``, ``norm.*`` (LayerNorm after
  global pooling), ``head.*`` (the linear classifier);
- authors' downstream models (mmdet 2.x / mmseg 0.x) and OpenMMLab models: ``backbone.*`` with
  ``backbone.norm{i}.*`` per output, beside ``neck.*`` / ``decode_head.*`` / ``head.*``;
- mmpretrain ImageClassifier of this package: ``backbone.*`` (the classifier's final norm is
  ``backbone.norm3``, applied after pooling) and ``head.fc.*``.
"""
import re
from typing import Dict, Optional

import torch

from .ckpt_convert import KeyMapping

StateDict = Dict[str, torch.Tensor]


def checkpoint_form(state_dict: StateDict) -> Optional[str]:
    """``'train'`` or ``'deploy'`` from the blocks' keys (None when there is no block)."""
    if any(k.endswith(('act.1.beta', 'pwconv2.2.running_mean')) for k in state_dict):
        return 'train'
    if any(k.endswith('pwconv2.0.bias') for k in state_dict):
        return 'deploy'
    return None


def unireplknet_key_mapping(final_norm: bool) -> KeyMapping:
    """How the authors' ImageNet checkpoints map onto the backbone.

    Args:
        final_norm: the backbone applies ``norm3`` after global pooling (``gap_before_final_norm``),
            so the authors' classifier ``norm.*`` is that layer; otherwise ``norm.*`` is dropped
            (the downstream ``norm{i}`` start fresh, as in the authors' downstream code).
    """
    if final_norm:
        return KeyMapping(renames=(('norm.', 'norm3.'), ), drops=('head.', ))
    return KeyMapping(drops=('head.', 'norm.'))


def authors_to_mmpretrain(state_dict: StateDict) -> StateDict:
    """The authors' ImageNet classifier -> this package's mmpretrain ImageClassifier.

    ``norm.*`` -> ``backbone.norm3.*``, ``head.*`` -> ``head.fc.*``, the rest under ``backbone.``.
    Keys already in OpenMMLab form (``backbone.*``) are returned unchanged.
    """
    if any(k.startswith('backbone.') for k in state_dict):
        return dict(state_dict)
    out: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith('head.'):
            out['head.fc.' + key[len('head.'):]] = value
        elif key.startswith('norm.'):
            out['backbone.norm3.' + key[len('norm.'):]] = value
        else:
            out['backbone.' + key] = value
    return out


def is_unireplknet(state_dict: StateDict) -> bool:
    """Whether a (possibly ``backbone.``-prefixed) state dict is a UniRepLKNet's."""
    return any('downsample_layers.' in k for k in state_dict)


def arch_from_state_dict(state_dict: StateDict) -> dict:
    """``dict(depths, dims, kernel_sizes)`` of a UniRepLKNet backbone state dict, from its shapes."""
    blocks: Dict[int, Dict[int, int]] = {}
    dims: Dict[int, int] = {}
    for key, value in state_dict.items():
        match = re.match(r'stages\.(\d)\.(\d+)\.dwconv\.(lk_origin\.)?weight$', key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks.setdefault(stage, {})[block] = value.shape[-1]
            dims[stage] = value.shape[0]
    if sorted(blocks) != [0, 1, 2, 3]:
        raise KeyError('not a UniRepLKNet backbone state dict: expected the depth-wise conv weights '
                       'stages.{0..3}.{j}.dwconv[.lk_origin].weight')
    return dict(
        depths=tuple(len(blocks[i]) for i in range(4)),
        dims=tuple(dims[i] for i in range(4)),
        kernel_sizes=tuple(tuple(blocks[i][j] for j in sorted(blocks[i])) for i in range(4)))
