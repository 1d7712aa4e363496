"""Training-mode batch norm through the extension (replk_mm.ops.batch_norm), with and without a
fused activation, and the BatchNorm2d / ConvBN modules built on it: values, gradients, running
statistics and fallbacks against PyTorch's BN."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from replk_mm.models.layers import BatchNorm2d, ConvBN, build_norm
from replk_mm.models.layers.batch_norm import fusable_activation
from replk_mm.ops import batch_norm as bn_op

ACTIVATIONS = {'none': lambda t: t, 'relu': F.relu, 'gelu': F.gelu}


def _inputs(shape, dtype=torch.float32, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 5  # a mean far from 0 tests the centring
    c = shape[1]
    weight = torch.randn(c, generator=g, dtype=dtype) if affine else None
    bias = torch.randn(c, generator=g, dtype=dtype) if affine else None
    grad_out = torch.randn(shape, generator=g, dtype=dtype)
    return x, weight, bias, grad_out


def _grads(fn, x, weight, bias, grad_out):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    out = fn(*leaves)
    out.backward(grad_out)
    return [out.detach()] + [t.grad if t is not None else None for t in leaves]


def test_the_extension_has_the_kernel():
    assert bn_op.applies(torch.zeros(2, 3, 4, 4))


@pytest.mark.parametrize('shape', [(2, 16, 7, 7), (3, 5, 13), (1, 3, 1, 2), (2, 40, 14, 9), (4, 2)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('affine', [True, False])
def test_values_and_gradients_match_pytorch(shape, dtype, affine):
    x, weight, bias, grad_out = _inputs(shape, dtype, affine)
    ours = _grads(lambda *a: bn_op.batch_norm_train(*a, 1e-5)[0], x, weight, bias, grad_out)
    ref = _grads(lambda *a: F.batch_norm(a[0], None, None, a[1], a[2], True, 0.1, 1e-5), x, weight,
                 bias, grad_out)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, r in zip(ours, ref):
        if r is None:
            assert a is None
        else:
            torch.testing.assert_close(a, r, **tol)
    _, mean, var = bn_op.batch_norm_train(x, weight, bias, 1e-5)
    dims = [0] + list(range(2, x.dim()))
    torch.testing.assert_close(mean, x.mean(dims), **tol)
    torch.testing.assert_close(var, x.var(dims, unbiased=False), **tol)
    assert not mean.requires_grad and not var.requires_grad


@pytest.mark.parametrize('shape', [(2, 16, 7, 7), (3, 5, 13), (2, 40, 14, 9)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('activation', ['relu', 'gelu'])
def test_fused_activation_matches_pytorch(shape, dtype, activation):
    x, weight, bias, grad_out = _inputs(shape, dtype)
    ours = _grads(lambda *a: bn_op.batch_norm_train(*a, 1e-5, activation)[0], x, weight, bias,
                  grad_out)
    ref = _grads(lambda *a: ACTIVATIONS[activation](
        F.batch_norm(a[0], None, None, a[1], a[2], True, 0.1, 1e-5)), x, weight, bias, grad_out)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, **tol)
    assert (ours[0] == 0).any() if activation == 'relu' else (ours[0] < 0).any()


@pytest.mark.parametrize('activation', ['none', 'relu', 'gelu'])
def test_gradcheck_float64(activation):
    x, weight, bias, _ = _inputs((2, 3, 3, 4), torch.float64)
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    assert torch.autograd.gradcheck(lambda *a: bn_op.batch_norm_train(*a, 1e-3, activation)[0], args)


def test_torch_compile_uses_the_fake_kernels():
    x, weight, bias, _ = _inputs((2, 6, 5, 7))

    def f(x, w, b):
        y = bn_op.batch_norm_train(x, w, b, 1e-5, 'gelu')[0]
        return bn_op.batch_norm_train(y, w, b, 1e-5)[0].relu().sum()

    def ref_f(x, w, b):
        y = F.gelu(F.batch_norm(x, None, None, w, b, True))
        return F.batch_norm(y, None, None, w, b, True).relu().sum()

    compiled = torch.compile(f, backend='aot_eager', fullgraph=True)
    args = [t.clone().requires_grad_() for t in (x, weight, bias)]
    compiled(*args).backward()
    ref = [t.clone().requires_grad_() for t in (x, weight, bias)]
    ref_f(*ref).backward()
    for a, r in zip(args, ref):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_problem():
    x = torch.randn(2, 4, 5, 5)
    with pytest.raises(ValueError, match='contiguous.*torch.nn.functional.batch_norm'):
        bn_op.batch_norm_train(x.contiguous(memory_format=torch.channels_last), None, None, 1e-5)
    with pytest.raises(ValueError, match='more than one value per channel'):
        bn_op.batch_norm_train(torch.randn(1, 4), None, None, 1e-5)
    with pytest.raises(RuntimeError, match='float32 or float64'):
        torch.ops.replk_mm.batch_norm_train_forward(x.half(), None, None, 1e-5)
    with pytest.raises(RuntimeError, match=r'weight must be a contiguous \(C,\) tensor with C=4'):
        torch.ops.replk_mm.batch_norm_train_forward(x, torch.ones(3), None, 1e-5)
    with pytest.raises(RuntimeError, match="bias must match x's dtype"):
        torch.ops.replk_mm.batch_norm_train_forward(x, None, torch.ones(4, dtype=torch.float64), 1e-5)
    with pytest.raises(RuntimeError, match="grad_out must have x's shape"):
        torch.ops.replk_mm.batch_norm_train_backward(x[:1], x, x[0, :, 0, 0], x[0, :, 0, 0], None,
                                                     None, 1e-5)
    with pytest.raises(ValueError, match="unknown activation 'silu'; choose one of none, relu, gelu"):
        bn_op.batch_norm_train(x, None, None, 1e-5, 'silu')
    with pytest.raises(RuntimeError, match="unknown activation 'silu'; choose one of none, relu, gelu"):
        torch.ops.replk_mm.batch_norm_train_forward(x, None, None, 1e-5, 'silu')


@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('channels_last', [False, True])
def test_module_trains_and_evaluates_like_nn_batchnorm(momentum, channels_last):
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6, momentum=momentum)
    ours = BatchNorm2d(6, momentum=momentum)
    ours.load_state_dict(ref.state_dict())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(3):  # running statistics and num_batches_tracked follow nn.BatchNorm2d's
        x, _, _, grad_out = _inputs((4, 6, 5, 3), seed=step)
        x = x.contiguous(memory_format=fmt)
        a = _grads(lambda t, *_: ours(t), x, None, None, grad_out)
        r = _grads(lambda t, *_: ref(t), x, None, None, grad_out)
        torch.testing.assert_close(a[0], r[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a[1], r[1], rtol=1e-4, atol=1e-4)
        for p_ours, p_ref in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-4, atol=1e-4)
        ours.zero_grad(), ref.zero_grad()
    for name, buf in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], buf, rtol=1e-5, atol=1e-6)
    ours.eval(), ref.eval()
    x = _inputs((2, 6, 4, 4), seed=9)[0]
    torch.testing.assert_close(ours(x), ref(x))


def test_module_without_running_stats_uses_batch_stats_in_eval():
    ours = BatchNorm2d(3, track_running_stats=False).eval()
    x = _inputs((2, 3, 4, 4))[0]
    torch.testing.assert_close(ours(x), F.batch_norm(x, None, None, ours.weight, ours.bias, True),
                               rtol=1e-5, atol=1e-5)


def test_build_norm():
    layer = build_norm(dict(type='BN', eps=1e-3, momentum=0.03, requires_grad=False), 8)
    assert type(layer) is BatchNorm2d and layer.eps == 1e-3 and layer.momentum == 0.03
    assert not any(p.requires_grad for p in layer.parameters())
    assert type(build_norm(dict(type='BN2d'), 8)) is BatchNorm2d
    assert isinstance(build_norm(dict(type='SyncBN'), 8), nn.SyncBatchNorm)
    assert isinstance(build_norm(dict(type='GN', num_groups=2), 8), nn.GroupNorm)


def test_use_bn_impl_switches_the_module_to_pytorch(monkeypatch):
    x = _inputs((2, 3, 4, 4))[0]
    assert bn_op.applies(x)
    with bn_op.use_bn_impl('torch'):
        assert not bn_op.applies(x)
        torch.testing.assert_close(BatchNorm2d(3)(x), nn.BatchNorm2d(3)(x))
    assert bn_op.applies(x)
    monkeypatch.setenv(bn_op.IMPL_ENV, 'torch')
    assert not bn_op.applies(x)
    monkeypatch.setenv(bn_op.IMPL_ENV, 'fast')
    with pytest.raises(ValueError, match="REPLK_MM_BN_IMPL: unknown batch-norm implementation 'fast'; "
                       'choose one of auto, torch'):
        bn_op.applies(x)
    with pytest.raises(ValueError, match="use_bn_impl: unknown batch-norm implementation 'ext'"):
        with bn_op.use_bn_impl('ext'):
            pass


def test_module_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'silu'; choose one of none, relu, gelu"):
        BatchNorm2d(3).eval()(torch.randn(2, 3, 4, 4), activation='silu')


def test_fusable_activation():
    bn = BatchNorm2d(4)
    assert fusable_activation(bn, None) == 'none'
    assert fusable_activation(bn, nn.ReLU(inplace=True)) == 'relu'
    assert fusable_activation(bn, nn.GELU()) == 'gelu'
    assert fusable_activation(bn, nn.GELU(approximate='tanh')) is None
    assert fusable_activation(bn, nn.LeakyReLU()) is None
    assert fusable_activation(nn.BatchNorm2d(4), nn.ReLU()) is None


@pytest.mark.parametrize('act', ['ReLU', 'GELU'])
def test_conv_bn_fuses_its_activation_and_falls_back_when_the_norm_is_replaced(act, monkeypatch):
    import replk_mm.models.layers.batch_norm as bn_module
    torch.manual_seed(0)
    block = ConvBN(3, 8, 3, norm_cfg=dict(type='BN'), act_cfg=dict(type=act))
    x, _, _, grad_out = _inputs((2, 3, 9, 7))
    grad_out = grad_out[:, :1].expand(2, 8, 9, 7).contiguous()
    kernel_calls, hook_calls = [], []
    monkeypatch.setattr(bn_module, 'batch_norm_train', lambda *a: kernel_calls.append(a[-1])
                        or bn_op.batch_norm_train(*a))
    block.bn.register_forward_hook(lambda *args: hook_calls.append('bn'))
    fused = _grads(lambda t, *_: block(t), x, None, None, grad_out)
    assert kernel_calls == [act.lower()] and hook_calls == ['bn']
    with bn_op.use_bn_impl('torch'):
        ref = _grads(lambda t, *_: block(t), x, None, None, grad_out)
    assert kernel_calls == [act.lower()] and hook_calls == ['bn', 'bn']
    for a, r in zip(fused, ref):
        if r is not None:
            torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-4)
    # a converter (SyncBN revert, conv-BN fusion) swapping the norm is picked up at the next call
    plain = nn.BatchNorm2d(8)
    plain.load_state_dict(block.bn.state_dict())
    block.bn = plain
    torch.testing.assert_close(block(x), ref[0], rtol=1e-4, atol=1e-4)


def test_use_package_batch_norm_swaps_reverted_syncbn_in_place():
    from mmengine.model import revert_sync_batchnorm
    from mmengine.model.utils import _BatchNormXd

    from replk_mm.models.layers import BatchNormXd, use_package_batch_norm
    torch.manual_seed(0)
    model = revert_sync_batchnorm(nn.Sequential(
        ConvBN(3, 8, 3, norm_cfg=dict(type='SyncBN'), act_cfg=dict(type='ReLU')),
        nn.Flatten(2), build_norm(dict(type='SyncBN'), 8)))  # the last one sees (N, C, L)
    assert [type(m) for m in model.modules()].count(_BatchNormXd) == 2
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    x, _, _, _ = _inputs((2, 3, 6, 5))
    reference = model(x)
    use_package_batch_norm(model)
    assert [type(m) for m in model.modules()].count(BatchNormXd) == 2
    assert not any(type(m) is _BatchNormXd for m in model.modules())
    assert all(a is b for a, b in zip(model.parameters(), params))
    out = model(x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    before = [p.detach().clone() for p in params]
    out.square().sum().backward()
    optimizer.step()  # the optimizer built before the swap updates the swapped layers' weights
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(ValueError, match=r'expected an \(N, C, \*\) input, got 1-D'):
        model[2](torch.randn(8))
