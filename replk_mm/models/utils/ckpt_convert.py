"""Released checkpoints -> backbone state dicts: one small mapping per architecture, one loader.

Formats understood by :func:`backbone_state_dict`:

- whole OpenMMLab models (mmpretrain / mmseg / mmdet, and this package's classifiers): the keys
  under ``backbone.`` are taken with the prefix stripped; the rest (neck, heads) is dropped;
- the authors' releases and bare backbone checkpoints: the architecture's :class:`KeyMapping`
  renames and drops apply (e.g. RepLKNet's classifier ``norm.*`` is its last stage's ``norm``).

Wrappers (``state_dict`` / ``model`` / ``module.``) are removed first.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from ...checkpoint import extract_state_dict, load_checkpoint_file, load_state_dict_checked

StateDict = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class KeyMapping:
    """How an architecture's released (non-OpenMMLab) checkpoints map onto its backbone's keys.

    Args:
        renames: ``(old_prefix, new_prefix)`` pairs; the first pair whose prefix matches applies.
        drops: prefixes of keys that are no backbone weights (a classifier head); dropped.
        optional: ``(prefix, reason)`` pairs of (renamed) keys that some configurations of the
            backbone lack by design (the classifier's final norm in a downstream backbone): where
            the model has no such key they are left out with ``reason`` in an INFO line instead of
            a warning about keys that match nothing.
    """

    renames: Tuple[Tuple[str, str], ...] = ()
    drops: Tuple[str, ...] = ()
    optional: Tuple[Tuple[str, str], ...] = ()

    def apply(self, key: str) -> Optional[str]:
        """The backbone key of ``key``, or None when the key is dropped."""
        if key.startswith(self.drops):
            return None
        for old, new in self.renames:
            if key.startswith(old):
                return new + key[len(old):]
        return key


def backbone_state_dict(state_dict: StateDict,
                        mapping: KeyMapping,
                        prefix: Optional[str] = None,
                        logger: Optional[MMLogger] = None) -> StateDict:
    """The backbone weights of a checkpoint's state dict in any supported format.

    Args:
        state_dict: the unwrapped state dict (see :func:`replk_mm.checkpoint.extract_state_dict`).
        mapping: the architecture's key mapping (applied to non-OpenMMLab formats).
        prefix: the backbone's prefix in a whole-model checkpoint; None detects ``backbone.``.
        logger: where dropped keys are reported (info).
    """
    logger = logger or MMLogger.get_current_instance()
    prefix = prefix if prefix is not None else (
        'backbone.' if any(k.startswith('backbone.') for k in state_dict) else '')
    if prefix:
        if not any(k.startswith(prefix) for k in state_dict):
            raise KeyError(f'no key of the checkpoint starts with {prefix!r}; check the '
                           "checkpoint or the init_cfg's prefix")
        converted = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        dropped = sorted(k for k in state_dict if not k.startswith(prefix))
    else:
        converted, dropped = {}, []
        for key, value in state_dict.items():
            new_key = mapping.apply(key)
            if new_key is None:
                dropped.append(key)
            else:
                converted[new_key] = value
    if dropped:
        logger.info(f'dropped {len(dropped)} keys that are not backbone weights: '
                    f'{_abbreviate(dropped)}')
    return converted


def load_pretrained(module: nn.Module,
                    filename: str,
                    mapping: KeyMapping,
                    prefix: Optional[str] = None,
                    convert: Optional[Callable[[StateDict], StateDict]] = None,
                    logger: Optional[MMLogger] = None) -> Tuple[List[str], List[str]]:
    """Load a checkpoint file into a backbone: safe unpickling, format detection, checked loading.

    Args:
        module: the backbone.
        filename: checkpoint path (or URL, through MMEngine's loaders).
        mapping: the architecture's key mapping.
        prefix: see :func:`backbone_state_dict`.
        convert: an architecture-specific last step on the backbone state dict (e.g. fusing a
            training-form checkpoint for a deploy-form model).
        logger: where unmatched keys are reported.

    Returns:
        ``(missing_keys, unexpected_keys)`` (without the mapping's optional keys the model lacks);
        shape mismatches raise ``ValueError``.
    """
    logger = logger or MMLogger.get_current_instance()
    state_dict = backbone_state_dict(
        extract_state_dict(_load(filename)), mapping, prefix=prefix, logger=logger)
    state_dict = _without_optional(state_dict, module, mapping, logger)
    if convert is not None:
        state_dict = convert(state_dict)
    return load_state_dict_checked(module, state_dict, source=str(filename), logger=logger)


def _without_optional(state_dict: StateDict, module: nn.Module, mapping: KeyMapping,
                      logger: MMLogger) -> StateDict:
    """``state_dict`` less the mapping's optional keys that ``module`` does not have (logged)."""
    own = module.state_dict().keys()
    for prefix, reason in mapping.optional:
        unused = sorted(k for k in state_dict if k.startswith(prefix) and k not in own)
        if unused:
            logger.info(f'not loading {_abbreviate(unused)}: {reason}')
            state_dict = {k: v for k, v in state_dict.items() if k not in unused}
    return state_dict


def _load(filename: str) -> Any:
    if str(filename).startswith(('http://', 'https://')):
        from mmengine.runner.checkpoint import CheckpointLoader
        return CheckpointLoader.load_checkpoint(filename, map_location='cpu')
    return load_checkpoint_file(filename, map_location='cpu')


def _abbreviate(keys: List[str], limit: int = 10) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')
