"""The reference a depth-wise conv implementation is checked against before the dispatch may use it.

:class:`Reference` computes ``F.conv2d(x, weight, bias, padding=K // 2, groups=C)`` and the
gradients of ``(grad_out * y).sum()`` in float64 (float32 on devices without float64) on a spread
subset of at most :data:`CHECKED_CHANNELS` channels of the very input the candidates run on: every
output element of a channel depends on that channel only (its weight gradient sums over the whole
batch), so the subset is checked exactly while the float64 work, which PyTorch runs several times
slower than float32, stays a small fraction of the candidates' own. :meth:`Reference.error` gives a
candidate's largest deviation relative to the reference's largest magnitude, per tensor (for the
weight and bias gradients, sums over the batch that may cancel, relative to a bound on the sum of
their terms' magnitudes), which :func:`tolerance` bounds per dtype.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

CHECKED_CHANNELS = 8
GRAD_NAMES = ('grad input', 'grad weight', 'grad bias')
# Largest error allowed, as a fraction of the reference's largest magnitude. Correct kernels reach
# the output rounding of the dtype (measured: bfloat16 2e-3 - 3.4e-3 for PyTorch's and ours alike),
# or in float32 the summation error of the N * H * W terms of the weight gradient (4e-6 at 25,000
# terms): twice the bounds of tests/ops/test_cuda_emulation.py for the 16-bit types, 5x for float32,
# whose error grows with the batch. A real bug (a lost tap, tile or block, a shifted window, a race)
# is off by 0.1 or more.
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3.2e-2}
# PyTorch lets cuDNN convolve float32 with TF32 tensor cores by default: inputs rounded to 10 bits.
_TF32_TOLERANCE = 1e-2


def tolerance(dtype: torch.dtype, device_type: str) -> float:
    """The largest relative error a correct implementation may have for ``dtype`` on the device."""
    if dtype == torch.float32 and device_type == 'cuda' and torch.backends.cudnn.allow_tf32:
        return _TF32_TOLERANCE
    return _TOLERANCE.get(dtype, _TOLERANCE[torch.bfloat16])


def reference_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device computes it (CPU, CUDA), else float32 (e.g. MPS)."""
    return torch.float32 if device.type == 'mps' else torch.float64


def checked_channels(channels: int, device: torch.device) -> torch.Tensor:
    """At most :data:`CHECKED_CHANNELS` channel indices spread over ``[0, channels)``, both ends
    included (the last is where partial channel groups are)."""
    count = min(channels, CHECKED_CHANNELS)
    return torch.linspace(0, channels - 1, count, device=device).round().long().unique()


def relative_error(actual: torch.Tensor, expected: torch.Tensor, scale: float = 0.0) -> float:
    """``max |actual - expected| / max(scale, max |expected|)`` over the elements where ``expected``
    is finite (an input holding inf / NaN leaves the rest checkable); inf where ``actual`` is not
    finite there or where the scale is zero and ``actual`` differs."""
    finite = torch.isfinite(expected)
    if not bool(finite.any()):
        return 0.0
    diff = (actual.to(expected.dtype) - expected)[finite].abs()
    err = float(diff.max())
    if err != err or err == float('inf'):  # NaN / inf where the reference is finite
        return float('inf')
    scale = max(scale, float(expected[finite].abs().max()))
    if scale == 0.0:
        return 0.0 if err == 0.0 else float('inf')
    return err / scale


class Reference:
    """The reference results on the checked channels of one input.

    Args:
        x: ``(N, C, H, W)``.
        weight: ``(C, 1, K, K)``.
        bias: ``(C,)`` or None.
        grad_out: ``(N, C, H, W)``, the output gradient the candidates' backward receives; unused
            when ``grads`` is empty.
        grads: three flags: whether x, weight and bias need a gradient.
    """

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 grad_out: torch.Tensor, grads: Sequence[bool]) -> None:
        self.channels = checked_channels(x.shape[1], x.device)
        dtype = reference_dtype(x.device)
        inputs = [t.detach().index_select(dim, self.channels).to(dtype).requires_grad_(g)
                  if t is not None else None
                  for t, dim, g in zip((x, weight, bias), (1, 0, 0), grads)]
        self.grad_names = [n for n, g in zip(GRAD_NAMES, grads) if g]
        with torch.enable_grad():
            out = F.conv2d(inputs[0], inputs[1], inputs[2], padding=weight.shape[-1] // 2,
                           groups=len(self.channels))
        self.out = out.detach()
        self.grads: List[torch.Tensor] = []
        self.scales: Dict[str, float] = {}
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        if wanted:
            grad_out = grad_out.index_select(1, self.channels).to(dtype)
            self.grads = list(torch.autograd.grad(out, wanted, grad_out))
            # The weight and bias gradients sum over the batch and may cancel: their scale is a
            # bound on the sum of their terms' magnitudes (Cauchy-Schwarz for the weight's).
            g, x_checked = (torch.nan_to_num(t.detach(), 0.0, 0.0, 0.0).transpose(0, 1).flatten(1)
                            for t in (grad_out, inputs[0]))
            self.scales = {'grad weight': float((g.norm(dim=1) * x_checked.norm(dim=1)).max()),
                           'grad bias': float(g.abs().sum(dim=1).max())}

    def error(self, out: torch.Tensor, grads: Sequence[torch.Tensor]) -> Tuple[str, float]:
        """The worst (tensor name, relative error) of a candidate's output and gradients (in the
        order of ``grads`` given to the constructor: input, weight, bias)."""
        errors: Dict[str, float] = {
            'output': relative_error(out.detach().index_select(1, self.channels), self.out)}
        for name, actual, expected in zip(self.grad_names, grads, self.grads):
            dim = 1 if name == 'grad input' else 0
            errors[name] = relative_error(actual.detach().index_select(dim, self.channels), expected,
                                          self.scales.get(name, 0.0))
        worst = max(errors, key=errors.get)
        return worst, errors[worst]
