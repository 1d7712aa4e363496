"""The depth-wise conv dispatch: every path computes F.conv2d, the choice is measured once and
cached, overrides work, graph capture is not disturbed, and a model's output does not depend on it."""
import types

import pytest
import torch
import torch.nn.functional as F

import replk_mm.ops.depthwise_conv as dw
from replk_mm.models import RepLKNet
from replk_mm.ops import (available_dw_impls, clear_dw_impl_cache, depthwise_conv2d,
                          dw_impl_choices, use_dw_impl)


def reference(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    monkeypatch.delenv(dw.IMPL_ENV, raising=False)
    clear_dw_impl_cache()
    yield
    clear_dw_impl_cache()


def fake_ext(calls):
    """A stand-in for replk_mm.ops.dwconv_ext (the real one is another issue's)."""

    def dwconv2d(x, weight, bias):
        calls.append(tuple(x.shape))
        return reference(x, weight, bias)

    return types.SimpleNamespace(is_available=lambda x: x.device.type == 'cpu',
                                 tensor_cores_available=lambda x: False, dwconv2d=dwconv2d)


@pytest.mark.parametrize('impl', ['torch', 'torch_channels_last', 'auto'])
@pytest.mark.parametrize('kernel', [3, 13, 31])
@pytest.mark.parametrize('channels_last', [False, True])
def test_every_path_equals_conv2d(impl, kernel, channels_last):
    torch.manual_seed(kernel)
    x = torch.randn(2, 5, 11, 9, requires_grad=True)
    weight = torch.randn(5, 1, kernel, kernel, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    expected = reference(x, weight, bias)
    grads_expected = torch.autograd.grad(expected.square().sum(), (x, weight, bias))
    with use_dw_impl(impl):
        out = depthwise_conv2d(xin, weight, bias)
    grads = torch.autograd.grad(out.square().sum(), (x, weight, bias))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, grads_expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    # the output keeps the input's memory format
    assert out.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_autocast_gives_every_path_one_dtype():
    # under autocast F.conv2d casts input and weight to the autocast dtype; so does the dispatcher,
    # so that the extension (which wants one dtype) runs and every path agrees
    torch.manual_seed(0)
    x = torch.randn(2, 16, 10, 12, requires_grad=True)
    weight = torch.randn(16, 1, 7, 7, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        expected = reference(x, weight, bias)
    assert expected.dtype == torch.bfloat16
    for impl in available_dw_impls(x.bfloat16()):
        with use_dw_impl(impl), torch.autocast('cpu', dtype=torch.bfloat16):
            out = depthwise_conv2d(x, weight, bias)
        assert out.dtype == torch.bfloat16, impl
        torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=0.1, msg=impl)
        grad_x, grad_w = torch.autograd.grad(out.float().sum(), (x, weight))
        assert grad_x.dtype == grad_w.dtype == torch.float32, impl


def test_choice_is_measured_once_per_key_and_cached(monkeypatch):
    measured = []
    real = dw._time_candidates

    def spy(x, weight, bias, needs_grad, candidates):
        measured.append((weight.shape[-1], needs_grad, tuple(candidates)))
        return real(x, weight, bias, needs_grad, candidates)

    monkeypatch.setattr(dw, '_time_candidates', spy)
    x = torch.randn(1, 4, 8, 8)
    w = torch.randn(4, 1, 7, 7)
    for _ in range(3):
        depthwise_conv2d(x, w)
    depthwise_conv2d(x, w.requires_grad_())
    with torch.no_grad():
        depthwise_conv2d(x, w)  # no gradient needed: the forward-only choice is reused
    candidates = tuple(available_dw_impls(x))
    assert candidates[:2] == ('torch', 'torch_channels_last')
    assert measured == [(7, False, candidates), (7, True, candidates)]
    choices = dw_impl_choices()
    assert set(choices) == {('cpu', torch.float32, 7, False, False),
                            ('cpu', torch.float32, 7, True, False)}
    assert set(choices.values()) <= set(candidates)


def test_fastest_candidate_wins(monkeypatch):
    monkeypatch.setattr(dw, '_time_candidates', lambda *a: {'torch': 2.0, 'torch_channels_last': 1.0})
    depthwise_conv2d(torch.randn(1, 3, 6, 6), torch.randn(3, 1, 5, 5))
    assert dw_impl_choices() == {('cpu', torch.float32, 5, False, False): 'torch_channels_last'}


def test_measurement_times_forward_and_backward():
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, requires_grad=True)
    times = dw._time_candidates(x, w, None, True, ['torch', 'torch_channels_last'])
    assert set(times) == {'torch', 'torch_channels_last'} and all(t > 0 for t in times.values())
    assert x.grad is None and w.grad is None  # the caller's tensors are untouched


def test_env_override_and_bad_values(monkeypatch):
    called = []
    monkeypatch.setattr(dw, '_time_candidates', lambda *a: called.append(a))
    monkeypatch.setitem(dw._IMPL_FNS, 'torch_channels_last',
                        lambda x, w, b: called.append('cl') or reference(x, w, b))
    monkeypatch.setenv(dw.IMPL_ENV, 'torch_channels_last')
    depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))
    assert called == ['cl']
    with use_dw_impl('torch'):  # the context manager wins over the variable
        depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))
    assert called == ['cl']
    monkeypatch.setenv(dw.IMPL_ENV, 'fast')
    with pytest.raises(ValueError, match='REPLK_MM_DW_IMPL.*auto, torch, torch_channels_last, ext'):
        depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match='unknown depth-wise'):
        with use_dw_impl('cuda'):
            pass


def test_extension_is_a_candidate_when_available(monkeypatch):
    calls = []
    monkeypatch.setattr(dw, '_ext_module', lambda: fake_ext(calls))
    x, w = torch.randn(1, 3, 6, 6), torch.randn(3, 1, 9, 9)
    assert available_dw_impls(x) == ['torch', 'torch_channels_last', 'ext']
    with use_dw_impl('ext'):
        out = depthwise_conv2d(x, w)
    assert calls == [(1, 3, 6, 6)]
    torch.testing.assert_close(out, reference(x, w, None))
    monkeypatch.setattr(dw, '_time_candidates',
                        lambda *a: {'torch': 3.0, 'torch_channels_last': 2.0, 'ext': 1.0})
    depthwise_conv2d(x, w)
    assert dw_impl_choices()[('cpu', torch.float32, 9, False, False)] == 'ext'


def test_forcing_a_missing_extension_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(dw, '_ext_module', lambda: None)
    assert available_dw_impls(torch.randn(1, 1, 3, 3)) == ['torch', 'torch_channels_last']
    with pytest.raises(RuntimeError, match='pip install --no-build-isolation'):
        with use_dw_impl('ext'):
            depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))


def test_no_measurement_while_tracing(monkeypatch):
    monkeypatch.setattr(dw, '_time_candidates', lambda *a: pytest.fail('measured while tracing'))
    module = dw.DepthwiseConv2d(3, 7, bias=True)
    x = torch.randn(1, 3, 8, 8)
    traced = torch.jit.trace(module, (x, ), check_trace=False)
    torch.testing.assert_close(traced(x), reference(x, module.weight, module.bias))
    assert dw_impl_choices() == {}


@pytest.mark.skipif(not dw.available_dw_impls(torch.zeros(1, 1, 1, 1)).count('ext'),
                    reason='the extension is not built')
@pytest.mark.parametrize('measured', [None, 'torch'])
def test_a_compiled_graph_keeps_the_extension_or_the_measured_choice(monkeypatch, measured):
    monkeypatch.setattr(dw, '_time_candidates', lambda *a: pytest.fail('measured while compiling'))
    module = dw.DepthwiseConv2d(3, 7, bias=True)
    x = torch.randn(1, 3, 8, 8)
    if measured is not None:  # an eager call measured (here: stubbed) before compiling
        monkeypatch.setattr(dw, '_choices', {('cpu', torch.float32, 7, True, False): measured})
    targets = []

    def record(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == 'call_function')
        return gm

    out = torch.compile(module, backend=record, fullgraph=True)(x)
    torch.testing.assert_close(out, reference(x, module.weight, module.bias))
    uses_ext = torch.ops.replk_mm.dwconv2d_forward in targets
    assert uses_ext == (measured is None)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'):
        depthwise_conv2d(torch.randn(3, 8, 8), torch.randn(3, 1, 3, 3))
    with pytest.raises(ValueError, match='odd square'):
        depthwise_conv2d(torch.randn(1, 3, 8, 8), torch.randn(3, 1, 4, 4))
    with pytest.raises(ValueError, match='C=3'):
        depthwise_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 1, 3, 3))


def test_model_output_does_not_depend_on_the_path():
    torch.manual_seed(0)
    arch = dict(large_kernel_sizes=[31, 13], layers=[1, 1], channels=[8, 16], small_kernel=5)
    model = RepLKNet(arch, out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 48, 48)
    outs = {}
    for impl in available_dw_impls(x) + ['auto']:
        with torch.no_grad(), use_dw_impl(impl):
            outs[impl] = model(x)
    for impl in outs:
        for a, b in zip(outs['torch'], outs[impl]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
