"""Activation checkpointing of one block, shared by the backbones (``with_cp=True``)."""
import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torch.nn.modules.batchnorm import _BatchNorm

from ...ops.depthwise_conv import grad_follows


@contextlib.contextmanager
def running_stats_kept(module: Optional[nn.Module]) -> Iterator[None]:
    """Inside, the training-mode batch norms of ``module`` normalize with batch statistics as
    usual but leave their running statistics and ``num_batches_tracked`` as they were (momentum 0,
    the count restored on exit): the recomputation of a checkpointed block, whose first pass
    already updated them."""
    norms = [] if module is None else [
        m for m in module.modules()
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [(m, m.momentum,
              None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged, exactly
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(count)


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` whose activations are recomputed in the backward pass instead of stored; ``fn``
    is a module or a bound method of one.

    Re-entrant checkpointing when ``x`` requires grad: one autograd node per call. Non-re-entrant
    otherwise (after frozen stages), where the re-entrant form would leave the parameters of ``fn``
    without gradients. The non-re-entrant form runs a Python hook for every tensor an op saves
    (about 1,800 per UperNet-31B step), which made that step, bound by host time at 2 images per
    GPU, slower than mmpretrain's on an H200 (docs/gpu_acceptance_h200.md). The re-entrant
    form does not support ``torch.autograd.grad``; call ``.backward()`` or build with
    ``with_cp=False``.
    Random ops (drop path) replay the same numbers in the recomputation, the depth-wise convs
    take the same implementation in both passes (:func:`~replk_mm.ops.depthwise_conv.grad_follows`),
    and the batch norms update their running statistics once, in the first pass
    (:func:`running_stats_kept`), as without checkpointing.
    """
    if not torch.is_grad_enabled():
        return fn(x)
    if torch.compiler.is_compiling():
        # Dynamo traces checkpointing as one higher-order op and recomputes in the backward graph,
        # where the statistics' update (a forward mutation) is not repeated; it takes no context_fn
        return cp.checkpoint(fn, x, use_reentrant=x.requires_grad)
    module = fn if isinstance(fn, nn.Module) else getattr(fn, '__self__', None)
    if not x.requires_grad:
        return cp.checkpoint(fn, x, use_reentrant=False, context_fn=lambda: (
            contextlib.nullcontext(), running_stats_kept(module)))

    def run(inp: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # the first pass (re-entrant: without grad)
            return fn(inp)
        with running_stats_kept(module):  # the recomputation in the backward pass
            return fn(inp)

    with grad_follows():  # the depth-wise convs choose for the recomputation with grad
        return cp.checkpoint(run, x, use_reentrant=True)
