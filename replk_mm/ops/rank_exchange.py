"""Sharing a small result among the ranks of a distributed run without a collective.

:func:`exchange` posts this rank's JSON-able payload under a tag in the process group's key-value
store (the one ``torch.distributed.init_process_group`` rendezvoused through) and waits, at most
``timeout_s``, for every rank's payload under the same tag. Unlike an all-reduce it cannot hang:
a rank whose peers never post that tag (they took another code path) gets None after the timeout
and goes on alone. It does not touch the process group's communicator, so it never interleaves
with DDP's or SyncBN's collectives.
"""
import datetime
import json
from typing import Any, List, Optional

import torch.distributed as dist

_PREFIX = 'replk_mm/'


def world_size() -> int:
    """The number of ranks, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if world_size() > 1 else 0


def exchange(tag: str, payload: Any, timeout_s: float) -> Optional[List[Any]]:
    """Every rank's ``payload`` for ``tag``, in rank order; None when not distributed or when some
    rank has not posted ``tag`` within ``timeout_s`` seconds.

    A tag must be used once per process group (e.g. carry a counter).
    """
    if world_size() == 1:
        return None
    store = dist.distributed_c10d._get_default_store()
    keys = [f'{_PREFIX}{tag}/{r}' for r in range(dist.get_world_size())]
    store.set(keys[dist.get_rank()], json.dumps(payload))
    try:
        store.wait(keys, datetime.timedelta(seconds=timeout_s))
    except RuntimeError:  # a timeout (DistStoreError from a TCPStore, RuntimeError from a FileStore)
        return None
    return [json.loads(store.get(key)) for key in keys]
