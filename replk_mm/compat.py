"""Every workaround this package needs for the OpenMMLab 2.x stack on current PyTorch, in one place.

Applied once, when ``replk_mm`` is imported. Each function names the upstream behaviour it fixes.
One workaround is opt-in and lives with the tools' machinery: distributed runs on CPU processes
(:mod:`replk_mm.engine.distributed`, whose docstring says why).
"""
import os

import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.runner.checkpoint import CheckpointLoader

from .checkpoint import load_checkpoint_file, register_safe_globals


def load_from_local(filename: str, map_location=None):
    """MMEngine's local scheme. MMEngine logs ``Loads checkpoint by {name[10:]} backend``: the
    loaders' names are ``load_from_<scheme>``."""
    return load_checkpoint_file(filename, map_location)


def load_from_http(filename: str, map_location=None, model_dir=None):
    """MMEngine's http(s) scheme: downloaded once by rank 0 into the torch hub cache."""
    rank, world_size = get_dist_info()
    model_dir = model_dir or os.path.join(torch.hub.get_dir(), 'checkpoints')
    cached = os.path.join(model_dir, os.path.basename(filename.split('?')[0]))
    if rank == 0 and not os.path.isfile(cached):
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(filename, cached)
    if world_size > 1:
        barrier()
    return load_checkpoint_file(cached, map_location)


def use_safe_checkpoint_loading() -> None:
    """mmengine 0.10.7 calls plain ``torch.load``, which torch >= 2.6 runs with ``weights_only=True``
    and no allow-list, so its own training checkpoints (HistoryBuffer, numpy) fail to load on resume.

    Registers the allow-list for every ``weights_only`` load and routes MMEngine's local and
    http(s) checkpoint schemes (``load_from``, ``resume``, ``init_cfg=Pretrained``) through
    :func:`replk_mm.checkpoint.load_checkpoint_file`.
    """
    register_safe_globals()
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)
    CheckpointLoader.register_scheme(
        prefixes=('http://', 'https://'), loader=load_from_http, force=True)


use_safe_checkpoint_loading()
