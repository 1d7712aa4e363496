"""Shared by the tests of the depth-wise conv CUDA kernels, on a GPU (test_dwconv_cuda.py) and under the CPU
emulation (test_cuda_emulation*.py): random inputs, the float64 reference and the tolerance check."""
from typing import Tuple

import torch
import torch.nn.functional as F

# Largest error allowed, as a fraction of the reference's largest magnitude: fp32 accumulation in every
# dtype (the tensor-core kernels: exact 16-bit products summed in fp32), so the error is the output
# rounding of the dtype (fp32: summation order over up to 10^5 terms in the weight gradient).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make_inputs(n: int, c: int, h: int, w: int, k: int, dtype: torch.dtype, channels_last: bool, seed: int = 0,
                device: str = 'cpu') -> Tuple[torch.Tensor, ...]:
    """x, weight [c, 1, k, k], bias [c] and grad_out (x and grad_out [n, c, h, w], channels_last if asked):
    standard normal, drawn in float32 and rounded to dtype."""
    g = torch.Generator(device=device).manual_seed(seed)
    x, grad_out = (torch.randn(n, c, h, w, device=device, generator=g).to(dtype) for _ in range(2))
    weight = torch.randn(c, 1, k, k, device=device, generator=g).to(dtype)
    bias = torch.randn(c, device=device, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    return x, weight, bias, grad_out


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              grad_out: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """float64 forward, input, weight and bias gradients of the same (rounded) inputs ("same" padding)."""
    x, weight, bias = (t.double().requires_grad_() for t in (x, weight, bias))
    y = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])
    y.backward(grad_out.double())
    return y.detach(), x.grad, weight.grad, bias.grad


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """actual has dtype, is on expected's device and is within TOLERANCE[dtype] of it (max abs error)."""
    assert actual.dtype == dtype and actual.device == expected.device, what
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= TOLERANCE[dtype] * scale, f'{what}: max error {err:.3g} vs scale {scale:.3g}'


def check_all(ops, suffix: str, n: int, c: int, h: int, w: int, k: int, dtype: torch.dtype, channels_last: bool,
              device: str = 'cpu') -> None:
    """ops.dwconv2d_forward{suffix}, _backward_input{suffix} and _backward_weight{suffix} (with bias) against
    reference(): values, output layout and weight-gradient shape."""
    x, weight, bias, grad_out = make_inputs(n, c, h, w, k, dtype, channels_last, device=device)
    y_ref, gx_ref, gw_ref, gb_ref = reference(x, weight, bias, grad_out)
    y = getattr(ops, f'dwconv2d_forward{suffix}')(x, weight, bias)
    assert_matches(y, y_ref, dtype, f'forward K={k}')
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    gx = getattr(ops, f'dwconv2d_backward_input{suffix}')(grad_out, weight)
    assert_matches(gx, gx_ref, dtype, f'grad input K={k}')
    gw, gb = getattr(ops, f'dwconv2d_backward_weight{suffix}')(grad_out, x, k, True)
    assert gw.shape == (c, 1, k, k)
    assert_matches(gw, gw_ref, dtype, f'grad weight K={k}')
    assert_matches(gb, gb_ref, dtype, f'grad bias K={k}')
