"""In-place channel scalings of UniRepLKNet's inference form: GRN and SE, each one reduction over
the pixels and one scaling pass in the package's extension (``replk_mm::grn_scale_``,
``replk_mm::se_scale_``, CPU, float32 channels_last) instead of 6-9 PyTorch calls.

:func:`fused_scale_applies` says whether a tensor can take them; the callers
(:mod:`replk_mm.deploy.inference`) compute the same formulas with PyTorch otherwise.
"""
import torch

from .dwconv_ext import registered_kernels

_AVAILABLE = all(registered_kernels(f'replk_mm::{op}').get('cpu', False)
                 for op in ('grn_scale_', 'se_scale_'))


def fused_scale_applies(x: torch.Tensor) -> bool:
    """Whether the in-place ops take ``x``: a float32 ``(N, C, H, W)`` CPU tensor in channels_last
    memory, the extension built (the caller checks that no autograd or tracing sees ``x``)."""
    return (_AVAILABLE and x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last))


def grn_scale_(x: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """``x *= 1 + gamma * g / (mean_C(g) + eps)`` with ``g`` the L2 norm of each channel of each
    image over its pixels; ``x``: ``(N, C, H, W)``, ``gamma``: ``(C,)``. Returns ``x``."""
    return torch.ops.replk_mm.grn_scale_(x, gamma, eps)


def se_scale_(x: torch.Tensor, down_weight: torch.Tensor, down_bias: torch.Tensor,
              up_weight: torch.Tensor, up_bias: torch.Tensor) -> torch.Tensor:
    """``x *= sigmoid(up(relu(down(mean over the pixels))))`` per channel and image; ``x``:
    ``(N, C, H, W)``, ``down_weight``: ``(hidden, C)``, ``up_weight``: ``(C, hidden)``. Returns
    ``x``."""
    return torch.ops.replk_mm.se_scale_(x, down_weight, down_bias, up_weight, up_bias)
