"""Activation checkpointing of one block, shared by the backbones (``with_cp=True``)."""
from typing import Callable

import torch
import torch.utils.checkpoint as cp


def checkpointed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` whose activations are recomputed in the backward pass instead of stored.

    Re-entrant checkpointing when ``x`` requires grad: one autograd node per call. Non-re-entrant
    otherwise (after frozen stages), where the re-entrant form would leave the parameters of ``fn``
    without gradients. The non-re-entrant form runs a Python hook for every tensor an op saves
    (about 1,800 per UperNet-31B step), which made that step, bound by host time at 2 images per
    GPU, slower than mmpretrain's on an H200 (docs/cuda.md, "GPU acceptance run"). The re-entrant
    form does not support ``torch.autograd.grad``; call ``.backward()`` or build with ``with_cp=False``.
    Random ops (drop path) replay the same numbers in the recomputation.
    """
    if not torch.is_grad_enabled():
        return fn(x)
    return cp.checkpoint(fn, x, use_reentrant=x.requires_grad)
