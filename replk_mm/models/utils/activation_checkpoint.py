"""Activation checkpointing of one block, shared by the backbones (``with_cp=True``)."""
from typing import Callable

import torch
import torch.utils.checkpoint as cp

from ...ops.depthwise_conv import grad_follows


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` whose activations are recomputed in the backward pass instead of stored.

    Re-entrant checkpointing when ``x`` requires grad: one autograd node per call. Non-re-entrant
    otherwise (after frozen stages), where the re-entrant form would leave the parameters of ``fn``
    without gradients. The non-re-entrant form runs a Python hook for every tensor an op saves
    (about 1,800 per UperNet-31B step), which made that step, bound by host time at 2 images per
    GPU, slower than mmpretrain's on an H200 (docs/gpu_acceptance_h200.md). The re-entrant
    form does not support ``torch.autograd.grad``; call ``.backward()`` or build with ``with_cp=False``.
    Random ops (drop path) replay the same numbers in the recomputation, and the depth-wise convs
    take the same implementation in both passes (:func:`~replk_mm.ops.depthwise_conv.grad_follows`).
    """
    if not torch.is_grad_enabled():
        return fn(x)
    if not x.requires_grad:
        return cp.checkpoint(fn, x, use_reentrant=False)
    with grad_follows():  # the depth-wise convs choose for the recomputation with grad
        return cp.checkpoint(fn, x, use_reentrant=True)
