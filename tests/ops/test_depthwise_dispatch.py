"""The depth-wise conv dispatch: every path computes F.conv2d, the choice is measured once and
cached, overrides work, graph capture is not disturbed, a model's output does not depend on it,
and a wrong candidate (wrong output, wrong gradient, NaN; on one rank of two) never wins."""
import json
import logging
import os
import re
import time
import types

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mmengine.logging import MMLogger

import replk_mm.ops.depthwise_conv as dw
from replk_mm.models import RepLKNet
from replk_mm.ops import (available_dw_impls, clear_dw_impl_cache, depthwise_conv2d,
                          dw_impl_choices, use_dw_impl)
from replk_mm.ops.dw_reference import Reference, relative_error, tolerance


def reference(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])


needs_ext = pytest.mark.skipif(not dw.available_dw_impls(torch.zeros(1, 1, 1, 1)).count('ext'),
                               reason='the extension is not built')


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
    real = dw._measure

    def spy(x, weight, bias, needs_grad, candidates, check):
        measured.append((weight.shape[-1], needs_grad, tuple(candidates)))
        return real(x, weight, bias, needs_grad, candidates, check)

    monkeypatch.setattr(dw, '_measure', spy)
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


def spy_measure(monkeypatch):
    """(needs grad, measured inside a backward pass) of each measurement from now on."""
    calls = []
    real = dw._measure

    def spy(x, weight, bias, needs_grad, candidates, check):
        calls.append((needs_grad, dw._in_backward()))
        return real(x, weight, bias, needs_grad, candidates, check)

    monkeypatch.setattr(dw, '_measure', spy)
    return calls


def test_checkpointing_chooses_for_the_recomputation_in_the_forward(monkeypatch):
    """Re-entrant checkpointing runs the forward without grad and recomputes it with grad in the
    backward: both passes take the forward + backward choice, measured once, in the forward."""
    from replk_mm.models.utils import checkpointed
    calls = spy_measure(monkeypatch)
    w = torch.randn(4, 1, 7, 7, requires_grad=True)
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    checkpointed(lambda t: depthwise_conv2d(t, w).square(), x).sum().backward()
    assert calls == [(True, False)]
    assert set(dw_impl_choices()) == {('cpu', torch.float32, 7, True, False)}
    grads = x.grad, w.grad
    x.grad = w.grad = None
    depthwise_conv2d(x, w).square().sum().backward()
    torch.testing.assert_close(grads, (x.grad, w.grad))


def test_a_key_first_met_in_a_backward_pass_is_measured_in_its_thread(monkeypatch):
    """A backward started from another thread would wait, on CUDA, for the engine thread that runs
    this backward: the measurement runs nested, and the result is right."""
    calls = spy_measure(monkeypatch)
    w = torch.randn(4, 1, 5, 5, requires_grad=True)

    class ConvInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, grad):
            with torch.enable_grad():
                inner = grad.detach().requires_grad_()
                out = depthwise_conv2d(inner, w)
                g, = torch.autograd.grad(out.square().sum(), inner)
            return g

    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    ConvInBackward.apply(x).sum().backward()
    assert calls == [(True, True)]
    ones = torch.ones_like(x).requires_grad_()
    expected, = torch.autograd.grad(F.conv2d(ones, w, padding=2, groups=4).square().sum(), ones)
    torch.testing.assert_close(x.grad, expected)


def test_without_torchs_backward_query_the_dispatch_still_measures(monkeypatch):
    """``torch._C._current_graph_task_id`` is private: where a torch lacks it, keys are measured
    in a fresh thread (on the CPU also inside a backward pass) instead of failing every call."""
    monkeypatch.setattr(dw, '_graph_task_id', None)
    calls = spy_measure(monkeypatch)
    w = torch.randn(4, 1, 5, 5, requires_grad=True)
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    depthwise_conv2d(x, w).square().sum().backward()
    assert calls == [(True, False)]
    torch.testing.assert_close(
        x.grad, torch.autograd.grad(F.conv2d(x, w, padding=2, groups=4).square().sum(), x)[0])


def test_fastest_candidate_wins(monkeypatch):
    monkeypatch.setattr(dw, '_measure', lambda *a, **k: dw._Measurement(
        {'torch': 2.0, 'torch_channels_last': 1.0}, {}))
    depthwise_conv2d(torch.randn(1, 3, 6, 6), torch.randn(3, 1, 5, 5))
    assert dw_impl_choices() == {('cpu', torch.float32, 5, False, False): 'torch_channels_last'}


def test_measurement_times_forward_and_backward():
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(3, 1, 5, 5, requires_grad=True)
    times, errors = dw._measure(x, w, None, True, ['torch', 'torch_channels_last'], check=True)
    assert set(times) == {'torch', 'torch_channels_last'} and all(t > 0 for t in times.values())
    # both were checked against the float64 reference, output and gradients
    assert set(errors) == set(times)
    for what, err in errors.values():
        assert what in ('output', 'grad input', 'grad weight') and err < 1e-5
    assert x.grad is None and w.grad is None  # the caller's tensors are untouched


def test_env_override_and_bad_values(monkeypatch):
    called = []
    monkeypatch.setattr(dw, '_measure', lambda *a, **k: called.append(a))
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
    monkeypatch.setattr(dw, '_measure', lambda *a, **k: dw._Measurement(
        {'torch': 3.0, 'torch_channels_last': 2.0, 'ext': 1.0}, {}))
    depthwise_conv2d(x, w)
    assert dw_impl_choices()[('cpu', torch.float32, 9, False, False)] == 'ext'


def test_forcing_a_missing_extension_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(dw, '_ext_module', lambda: None)
    assert available_dw_impls(torch.randn(1, 1, 3, 3)) == ['torch', 'torch_channels_last']
    with pytest.raises(RuntimeError, match='pip install --no-build-isolation'):
        with use_dw_impl('ext'):
            depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3))


def test_no_measurement_while_tracing(monkeypatch):
    monkeypatch.setattr(dw, '_measure', lambda *a, **k: pytest.fail('measured while tracing'))
    module = dw.DepthwiseConv2d(3, 7, bias=True)
    x = torch.randn(1, 3, 8, 8)
    traced = torch.jit.trace(module, (x, ), check_trace=False)
    torch.testing.assert_close(traced(x), reference(x, module.weight, module.bias))
    assert dw_impl_choices() == {}


@needs_ext
@pytest.mark.parametrize('measured', [None, 'torch'])
def test_a_compiled_graph_keeps_the_extension_or_the_measured_choice(monkeypatch, measured):
    real, checks = dw._measure, []

    def untimed_only(x, weight, bias, needs_grad, candidates, check, timed=True):
        assert not timed, 'timed while compiling'
        checks.append(candidates)
        measurement = real(x, weight, bias, needs_grad, candidates, check, timed)
        # the extension's one untimed run the slowest: a compiled graph prefers it all the same
        # (an untimed warm-up run says nothing about speed)
        slow = {name: (10.0 if name == 'ext' else 1.0) for name in measurement.times}
        return measurement._replace(times=slow)

    monkeypatch.setattr(dw, '_measure', untimed_only)
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
    # an unmeasured key's extension was checked (untimed) while the graph was traced
    assert checks == ([] if measured else [['ext', 'torch', 'torch_channels_last']])


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


# The guard: a wrong candidate never wins.

@pytest.fixture
def warnings_logged():
    """The messages of the WARNING records the MMEngine logger receives inside the test."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def slow(fn, seconds):
    def run(x, weight, bias):
        time.sleep(seconds)
        return fn(x, weight, bias)

    return run


def off_by_one_padding(x, weight, bias):
    pad = weight.shape[-1] // 2
    x = F.pad(x, (pad + 1, pad - 1, pad + 1, pad - 1))
    return F.conv2d(x, weight, bias, groups=x.shape[1])


class LostWeightTap(torch.autograd.Function):
    """Right forward and input gradient, a weight gradient that misses its first tap."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return reference(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = (t.detach().requires_grad_() for t in ctx.saved_tensors)
        with torch.enable_grad():
            grads = torch.autograd.grad(reference(x, weight, bias), (x, weight, bias), grad_out)
        grads[1][:, :, 0, 0] = 0
        return grads


def one_nan(x, weight, bias):
    out = reference(x, weight, bias).clone()
    out.view(-1)[-1] = float('nan')
    return out


def install_wrong_fast_ext(monkeypatch, wrong):
    """Make ``wrong`` the fast 'ext' candidate and the PyTorch ones 20-40 ms slower."""
    monkeypatch.setattr(dw, '_ext_module', lambda: fake_ext([]))
    monkeypatch.setitem(dw._IMPL_FNS, 'ext', wrong)
    monkeypatch.setitem(dw._IMPL_FNS, 'torch', slow(dw._torch_nchw, 0.04))
    monkeypatch.setitem(dw._IMPL_FNS, 'torch_channels_last', slow(dw._torch_channels_last, 0.02))


@pytest.mark.parametrize('wrong, needs_grad, what', [
    (off_by_one_padding, False, 'output'),
    (lambda x, w, b: LostWeightTap.apply(x, w, b), True, 'grad weight'),
    (one_nan, True, 'output'),
])
def test_a_wrong_candidate_never_wins(monkeypatch, warnings_logged, wrong, needs_grad, what):
    install_wrong_fast_ext(monkeypatch, wrong)
    x = torch.randn(2, 20, 13, 11)
    weight = torch.randn(20, 1, 7, 7, requires_grad=needs_grad)
    bias = torch.randn(20, requires_grad=needs_grad)
    for _ in range(2):  # measured (and warned about) once
        out = depthwise_conv2d(x, weight, bias)
    torch.testing.assert_close(out, reference(x, weight, bias))
    key = ('cpu', torch.float32, 7, needs_grad, False)
    assert dw_impl_choices() == {key: 'torch_channels_last'}
    assert len(warnings_logged) == 1, warnings_logged
    message = warnings_logged[0]
    stage = 'forward+backward' if needs_grad else 'forward'
    assert f'ext is excluded for cpu float32 K=7 {stage}: its {what} differs' in message
    assert re.search(r'by (\d\.\d+|inf|nan)', message), message
    # without the check, the same candidate would have won: the guard is what kept it out
    clear_dw_impl_cache()
    monkeypatch.setenv(dw.CHECK_ENV, '0')
    depthwise_conv2d(x, weight, bias)
    assert dw_impl_choices() == {key: 'ext'} and len(warnings_logged) == 1


def test_check_variable_and_forced_implementations(monkeypatch, warnings_logged):
    install_wrong_fast_ext(monkeypatch, off_by_one_padding)
    x, weight = torch.randn(1, 3, 9, 9), torch.randn(3, 1, 5, 5)
    monkeypatch.setenv(dw.CHECK_ENV, 'no')
    with pytest.raises(ValueError, match='REPLK_MM_DW_CHECK=.no.: use 1 .* or 0'):
        depthwise_conv2d(x, weight)
    monkeypatch.setenv(dw.CHECK_ENV, '1')
    with use_dw_impl('ext'):  # forced: not checked, used as asked
        torch.testing.assert_close(depthwise_conv2d(x, weight), off_by_one_padding(x, weight, None))
    assert dw_impl_choices() == {} and warnings_logged == []


def test_no_candidate_passing_falls_back_to_pytorch(monkeypatch, warnings_logged):
    measured = dw._Measurement({'torch': 2.0, 'torch_channels_last': 1.0},
                               {'torch': ('output', 0.5), 'torch_channels_last': ('output', 0.5)})
    monkeypatch.setattr(dw, '_measure', lambda *a, **k: measured)
    depthwise_conv2d(torch.randn(1, 3, 6, 6), torch.randn(3, 1, 5, 5))
    assert dw_impl_choices() == {('cpu', torch.float32, 5, False, False): 'torch'}
    assert len(warnings_logged) == 3 and 'no candidate passed' in warnings_logged[-1]


@needs_ext
def test_a_compiled_graph_never_takes_a_failing_extension(monkeypatch, warnings_logged):
    monkeypatch.setitem(dw._IMPL_FNS, 'ext', off_by_one_padding)  # traceable, unlike a fake module
    module = dw.DepthwiseConv2d(3, 7, bias=True)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        out = torch.compile(module, backend='eager', fullgraph=True)(x)
    torch.testing.assert_close(out, reference(x, module.weight, module.bias))
    assert dw_impl_choices() == {}  # nothing timed
    assert len(warnings_logged) == 1 and 'ext is excluded for cpu float32 K=7 forward' in (
        warnings_logged[0])


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float64])
def test_correct_candidates_pass_with_margin(dtype):
    # every real candidate, at a larger batch, stays far inside its dtype's tolerance
    x = torch.randn(4, 24, 30, 26).to(dtype)
    weight = torch.randn(24, 1, 13, 13).to(dtype).requires_grad_()
    bias = torch.randn(24).to(dtype).requires_grad_()
    candidates = available_dw_impls(x)
    _, errors = dw._measure(x, weight, bias, True, candidates, check=True, timed=False)
    assert set(errors) == set(candidates)
    limit = tolerance(dtype, 'cpu')
    assert all(err < limit / 4 for _, err in errors.values()), errors


def test_relative_error_ignores_non_finite_reference_and_catches_non_finite_results():
    expected = torch.tensor([1.0, float('nan'), -4.0, float('inf')], dtype=torch.float64)
    assert relative_error(torch.tensor([1.0, 5.0, -3.0, 0.0]), expected) == 0.25
    assert relative_error(torch.tensor([1.0, 5.0, float('nan'), 0.0]), expected) == float('inf')
    assert relative_error(torch.zeros(3), torch.zeros(3, dtype=torch.float64)) == 0.0
    assert relative_error(torch.ones(3), torch.zeros(3, dtype=torch.float64)) == float('inf')


def test_a_cancelling_batch_sum_is_no_error():
    # found by the property tests: the bias gradient of one channel may sum to almost nothing, and
    # a correct float32 result's rounding error must not then count as a large relative error
    x = torch.randn(1, 1, 60, 11)
    weight, bias = torch.randn(1, 1, 3, 3), torch.randn(1)
    grad_out = torch.randn(1, 1, 60, 11)
    grad_out -= grad_out.mean()  # the bias gradient cancels to rounding noise
    args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = reference(*args)
    grads = torch.autograd.grad(out, args, grad_out)
    check = Reference(x, weight, bias, grad_out, (True, True, True))
    assert check.grads[2].abs().item() < 1e-5 * grad_out.abs().sum().item()
    what, err = check.error(out, grads)
    assert err < tolerance(torch.float32, 'cpu') / 10, (what, err)
    wrong = list(grads)
    wrong[2] = grads[2] + 1e-2 * grad_out.abs().sum()  # off by 1% of the sum of magnitudes
    assert check.error(out, wrong) == ('grad bias', pytest.approx(1e-2, rel=1e-3))


# Distributed: the reduction of the ranks' reports, then two gloo ranks on the CPU.

def test_ranks_reports_are_reduced_to_one_choice(monkeypatch, warnings_logged):
    reports = [  # rank 1 has no extension; rank 2 saw it fail
        {'times': {'torch': 3.0, 'torch_channels_last': 1.0, 'ext': 0.1},
         'errors': {'torch': ['output', 0.0], 'torch_channels_last': ['output', 1e-6],
                    'ext': ['output', 1e-6]}},
        {'times': {'torch': 1.0, 'torch_channels_last': 7.0},
         'errors': {'torch': ['output', 0.0], 'torch_channels_last': ['grad input', 2e-6]}},
        {'times': {'torch': 2.0, 'torch_channels_last': 1.0, 'ext': 0.1},
         'errors': {'torch': ['output', 0.0], 'torch_channels_last': ['output', 1e-6],
                    'ext': ['grad weight', 0.5]}},
    ]
    monkeypatch.setattr(dw, 'exchange', lambda tag, payload, timeout: reports)
    monkeypatch.setattr(dw, 'world_size', lambda: 3)
    key = ('cpu', torch.float32, 7, True, False)
    local = dw._Measurement(**reports[0])
    measured, ranks = dw._agree(key, local, 'eager')
    # only the candidates every rank has; times summed; each error the worst rank's
    assert measured.times == {'torch': 6.0, 'torch_channels_last': 9.0}
    assert measured.errors['torch_channels_last'] == ('grad input', 2e-6) and ranks == [0, 1]
    reports[1]['times']['ext'] = 0.1
    reports[1]['errors']['ext'] = ['output', 1e-6]
    assert dw._choose(key, torch.zeros(1), local, 'eager') == 'torch'  # 6.0 vs 9.0, ext out
    assert len(warnings_logged) == 1 and 'grad weight' in warnings_logged[0] and (
        'on rank 2' in warnings_logged[0])

def _rank_main(rank, init_file, out_dir):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    torch.set_num_threads(1)
    dw._EXCHANGE_TIMEOUT_S = 3.0
    mp = pytest.MonkeyPatch()
    # the extension is wrong on rank 1 only (as a race on one GPU would be), fast on both
    install_wrong_fast_ext(mp, off_by_one_padding if rank == 1 else dw._torch_nchw)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    MMLogger.get_current_instance().addHandler(handler)
    torch.manual_seed(rank)  # each rank its own data
    depthwise_conv2d(torch.randn(2, 6, 9, 9), torch.randn(6, 1, 7, 7))
    if rank == 0:  # a key the other rank never measures: no deadlock, a timeout
        depthwise_conv2d(torch.randn(1, 6, 9, 9), torch.randn(6, 1, 3, 3))
    dist.barrier()
    choices = {str(k[2]): v for k, v in dw_impl_choices().items()}
    with open(os.path.join(out_dir, f'{rank}.json'), 'w') as f:
        json.dump({'choices': choices, 'warnings': records}, f)
    dist.destroy_process_group()


def test_ranks_exclude_a_candidate_failing_on_any_of_them(tmp_path):
    ranks = torch.multiprocessing.spawn(_rank_main, (str(tmp_path / 'init'), str(tmp_path)),
                                        nprocs=2, join=False)
    deadline = time.monotonic() + 300  # a deadlock never ends; this run takes seconds
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail('the ranks hung measuring the keys')
    results = [json.loads((tmp_path / f'{rank}.json').read_text()) for rank in range(2)]
    # K=7 (both ranks): ext failed on rank 1 and is out on both; both pick the same
    assert [r['choices']['7'] for r in results] == ['torch_channels_last'] * 2
    for r in results:
        assert any('ext is excluded for cpu float32 K=7 forward' in w and 'on rank 1' in w
                   for w in r['warnings']), r['warnings']
    # K=3 (rank 0 alone): it waited 3 s, then kept its own checked choice (ext passes there)
    assert results[0]['choices']['3'] == 'ext' and '3' not in results[1]['choices']
    assert any('not every rank measured cpu float32 K=3' in w for w in results[0]['warnings'])
