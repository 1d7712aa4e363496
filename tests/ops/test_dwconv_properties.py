"""Property-based tests (hypothesis) of the depth-wise conv kernels: the CPU extension
(torch.ops.replk_mm, every instruction set and forward scheme) and the CUDA kernels run through the
emulation header (torch.ops.replk_mm_emu). Any N, C, H, W (1, primes, smaller than K), every odd K
from 1 to 63, contiguous / channels_last / sliced / transposed tensors, every dtype each supports,
with and without bias: forward and both gradients against F.conv2d in float64.

Profiles: ``ci`` (the default: derandomized, a bounded number of small examples) and ``long``
(``HYPOTHESIS_PROFILE=long``: many more and larger examples, run by hand).
"""
import contextlib
import os
from typing import Iterator, NamedTuple, Optional

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replk_mm._ext_cuda_emu  # noqa: F401  (registers torch.ops.replk_mm_emu)
from replk_mm.ops import dwconv_ext
from test_dwconv_ext import _cpu_isas  # the instruction sets this CPU has

settings.register_profile('ci', max_examples=40, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('long', max_examples=600, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get('HYPOTHESIS_PROFILE', 'ci')
settings.load_profile(PROFILE)
# Multiply-adds of one forward (N * C * H * W * K^2): keeps the float64 reference fast.
BUDGET = 4_000_000 if PROFILE == 'long' else 400_000
MAX_SIDE = 80 if PROFILE == 'long' else 40

# Largest error allowed, as a fraction of the largest sum of magnitudes (the reference computed on
# |x|, |weight|, |bias|, |grad_out|: a sum that cancels, e.g. the bias gradient of one channel,
# must not make the bound vanish): every dtype is accumulated in fp32 (float64 in float64), so the
# error is the output rounding of the dtype, or fp32 summation over the N * H * W terms of the
# weight gradient.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LAYOUTS = ('contiguous', 'channels_last', 'sliced', 'sliced_channels_last', 'transposed')
CPU_ISAS = _cpu_isas()


class Case(NamedTuple):
    n: int
    c: int
    h: int
    w: int
    k: int
    dtype: torch.dtype
    x_layout: str
    grad_layout: str
    weight_sliced: bool
    bias: bool
    seed: int
    isa: Optional[str]  # CPU only: REPLK_DWCONV_CPU_ISA
    direct_max_k: Optional[str]  # CPU only: REPLK_DWCONV_CPU_DIRECT_MAX_K (None: the default)


SIZES = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 31]), st.integers(1, MAX_SIDE))


@st.composite
def cases(draw, dtypes, cpu: bool) -> Case:
    k = 2 * draw(st.integers(0, 31)) + 1
    n = draw(st.sampled_from([1, 2, 3]))
    c = draw(st.one_of(st.sampled_from([1, 2, 3, 5, 8, 16, 17, 31, 37]), st.integers(1, 48)))
    # H and W: around K as often as far from it (smaller than K included)
    h, w = (draw(st.one_of(SIZES, st.integers(max(1, k - 3), k + 3))) for _ in range(2))
    while n * c * h * w * k * k > BUDGET and c > 1:  # keep the tensors small
        c = max(1, c // 2)
    while n * c * h * w * k * k > BUDGET:
        h, w = max(1, h // 2), max(1, w // 2)
    return Case(n, c, h, w, k, draw(st.sampled_from(dtypes)), draw(st.sampled_from(LAYOUTS)),
                draw(st.sampled_from(LAYOUTS)), draw(st.booleans()), draw(st.booleans()),
                draw(st.integers(0, 2 ** 31 - 1)),
                draw(st.sampled_from(CPU_ISAS)) if cpu else None,
                draw(st.sampled_from([None, '0', '15'])) if cpu else None)


def laid_out(t: torch.Tensor, layout: str, generator: torch.Generator) -> torch.Tensor:
    """``t``'s values in a tensor of the given layout (the sliced ones are views into a larger
    tensor: other strides, an offset)."""
    n, c, h, w = t.shape
    if layout == 'contiguous':
        return t.contiguous()
    if layout == 'channels_last':
        return t.contiguous(memory_format=torch.channels_last)
    if layout == 'transposed':
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    base = torch.randn(n + 1, 2 * c, h + 3, w + 2, generator=generator).to(t.dtype)
    if layout == 'sliced_channels_last':
        base = base.contiguous(memory_format=torch.channels_last)
    view = base[1:, 1::2, 2:-1, 1:-1]
    view.copy_(t)
    return view


def make_tensors(case: Case):
    g = torch.Generator().manual_seed(case.seed)
    shape = (case.n, case.c, case.h, case.w)
    x = laid_out(torch.randn(shape, generator=g).to(case.dtype), case.x_layout, g)
    grad_out = laid_out(torch.randn(shape, generator=g).to(case.dtype), case.grad_layout, g)
    if case.weight_sliced:  # every other filter of a larger tensor, an inner window of each
        weight = torch.randn(2 * case.c, 1, case.k + 2, case.k + 2, generator=g).to(case.dtype)
        weight = weight[::2, :, 1:-1, 1:-1]
    else:
        weight = torch.randn(case.c, 1, case.k, case.k, generator=g).to(case.dtype)
    bias = torch.randn(2 * case.c, generator=g).to(case.dtype)[::2] if case.bias else None
    return x, weight, bias, grad_out


def reference(x, weight, bias, grad_out):
    """float64 output, input, weight and bias gradients of the same (rounded) values."""
    x, weight = (t.double().requires_grad_() for t in (x, weight))
    bias = bias.double().requires_grad_() if bias is not None else None
    y = F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])
    grads = torch.autograd.grad(y, [t for t in (x, weight, bias) if t is not None], grad_out.double())
    return (y.detach(), ) + grads + ((None, ) if bias is None else ())


def assert_close(actual, expected, magnitude, dtype, what, case):
    """``actual`` is within the dtype's tolerance of ``expected``, relative to ``magnitude``."""
    assert actual.dtype == dtype and actual.shape == expected.shape, (what, case)
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    scale = magnitude.max().item() if expected.numel() else 0.0
    assert err <= TOLERANCE[dtype] * scale + 1e-30, (
        f'{what}: max error {err:.3g} vs largest sum of magnitudes {scale:.3g} for {case}')


@contextlib.contextmanager
def env(**values: Optional[str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def check_case(ops, case: Case) -> None:
    """Forward, input and weight (+ bias) gradients of ``ops`` match the float64 reference."""
    with env(REPLK_DWCONV_CPU_ISA=case.isa, REPLK_DWCONV_CPU_DIRECT_MAX_K=case.direct_max_k):
        check_results(ops, case)


def check_results(ops, case: Case) -> None:
    x, weight, bias, grad_out = make_tensors(case)
    expected = reference(x, weight, bias, grad_out)
    magnitude = reference(*(t.abs() if t is not None else None for t in (x, weight, bias, grad_out)))
    y = ops.dwconv2d_forward(x, weight, bias)
    for fmt in (torch.contiguous_format, torch.channels_last):
        if x.is_contiguous(memory_format=fmt) and not (fmt == torch.channels_last and x.is_contiguous()):
            assert y.is_contiguous(memory_format=fmt), ('output memory format', case)
    gw, gb = ops.dwconv2d_backward_weight(grad_out, x, case.k, bias is not None)
    assert (gb is None) == (bias is None), case
    actual = (y, ops.dwconv2d_backward_input(grad_out, weight), gw, gb)
    for what, a, e, m in zip(('forward', 'grad input', 'grad weight', 'grad bias'), actual, expected,
                             magnitude):
        if e is not None:
            assert_close(a, e, m, case.dtype, what, case)


@given(cases(dwconv_ext._CPU_DTYPES, cpu=True))
def test_cpu_extension(case):
    check_case(torch.ops.replk_mm, case)


@given(cases(dwconv_ext._CUDA_DTYPES, cpu=False))
def test_emulated_cuda_kernels(case):
    check_case(torch.ops.replk_mm_emu, case)


@pytest.mark.parametrize('ops', ['replk_mm', 'replk_mm_emu'])
def test_the_checks_catch_a_wrong_result(ops):
    # the property's own check is not vacuous: a result off by one tap fails it
    case = Case(2, 3, 9, 8, 5, torch.float32, 'contiguous', 'contiguous', False, True, 0, None, None)
    x, weight, bias, grad_out = make_tensors(case)
    y_ref = reference(x, weight, bias, grad_out)[0]
    wrong = weight.clone()
    wrong[:, :, 0, 0] += 0.1
    with pytest.raises(AssertionError, match='forward: max error'):
        assert_close(getattr(torch.ops, ops).dwconv2d_forward(x, wrong, bias), y_ref, y_ref.abs(),
                     case.dtype, 'forward', case)


# Found by the long profile: the bias gradient of one channel summed 660 values to 0.0235, and an
# fp32 rounding error of 4.9e-6 (1e-8 of the sum of magnitudes) failed a bound relative to the
# result's own magnitude. The bound is now relative to the sum of magnitudes (here and in the
# dispatch's check, replk_mm/ops/dw_reference.py).
@pytest.mark.parametrize('ops', ['replk_mm', 'replk_mm_emu'])
def test_a_cancelling_bias_gradient(ops):
    check_case(getattr(torch.ops, ops), Case(1, 1, 60, 11, 1, torch.float32, 'sliced', 'contiguous',
                                             False, True, 60, 'generic' if ops == 'replk_mm' else None,
                                             None))
