"""The random state of a training process, as a checkpoint carries it so that a resumed run
continues the interrupted one exactly.

One entry per rank: the generators of torch (CPU and every CUDA device), numpy and Python's
``random``, the training data loader's own generator if it has one, and the depth-wise conv
implementations the process measured and chose (``replk_mm.ops``: another choice would round
differently). Samplers and data-loader workers need no entry of their own: their streams follow
from the seed, and MMEngine's resume replays the data loader over the batches already trained.
"""
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info
from mmengine.logging import MMLogger

from ..ops import dw_impl_choices, set_dw_impl_choices

CHECKPOINT_KEY = 'rng_states'


def _choices_to_plain(choices: Dict[tuple, str]) -> List[list]:
    """``dw_impl_choices()`` as plain values (a ``weights_only`` checkpoint holds no dtypes)."""
    return [[device, str(dtype).replace('torch.', ''), k, grad, channels_last, impl]
            for (device, dtype, k, grad, channels_last), impl in choices.items()]


def _choices_from_plain(rows: List[list]) -> Dict[tuple, str]:
    return {(device, getattr(torch, dtype), k, grad, channels_last): impl
            for device, dtype, k, grad, channels_last, impl in rows}


def capture_rng_state(loader: Optional[Any] = None) -> Dict[str, Any]:
    """This process's random state (see the module doc); ``loader`` is the training data loader."""
    state = dict(torch=torch.get_rng_state(), numpy=np.random.get_state(),
                 python=random.getstate(), dw_impl_choices=_choices_to_plain(dw_impl_choices()))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    generator = getattr(loader, 'generator', None)
    if generator is not None:
        state['loader_generator'] = generator.get_state()
    return state


def restore_rng_state(state: Dict[str, Any], loader: Optional[Any] = None) -> None:
    """Set this process's generators (and measured choices) to ``state``."""
    torch.set_rng_state(state['torch'])
    np.random.set_state(state['numpy'])
    random.setstate(state['python'])
    set_dw_impl_choices(_choices_from_plain(state['dw_impl_choices']))
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            MMLogger.get_current_instance().warning(
                f'the checkpoint has the CUDA random states of {len(cuda)} devices, this process '
                f'sees {torch.cuda.device_count()}: CUDA random streams start afresh')
        else:
            torch.cuda.set_rng_state_all(cuda)
    generator = getattr(loader, 'generator', None)
    if generator is not None and 'loader_generator' in state:
        generator.set_state(state['loader_generator'])


def gather_rng_states(local: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every rank's ``local`` state, indexed by rank (a collective: every rank must call it)."""
    return all_gather_object(local)


def own_rng_state(states: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """This rank's entry of a checkpoint's ``states``; None (with a warning) when the checkpoint
    was written by another number of processes."""
    rank, world_size = get_dist_info()
    if len(states) != world_size:
        MMLogger.get_current_instance().warning(
            f'the checkpoint holds the random states of {len(states)} processes and this run has '
            f'{world_size}: the random streams start afresh, so the resumed run will not repeat '
            'the interrupted one exactly')
        return None
    return states[rank]
