"""ConvBN and the re-parameterizable large-kernel conv: keys, fusion equivalence, the protocol."""
import pytest
import torch
import torch.nn as nn

from replk_mm.deploy import reparameterize_model
from replk_mm.models.layers import ConvBN, ReparamLargeKernelConv
from replk_mm.ops import DepthwiseConv2d, use_dw_impl


def randomize_norms(module: nn.Module) -> None:
    """Random BN statistics and affine parameters, so a fusion error cannot hide behind identity BNs."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.3, 2)
            m.bias.data.uniform_(-1, 1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def test_conv_bn_keys_and_conv_type():
    block = ConvBN(4, 8, 3, stride=2, act_cfg=dict(type='ReLU'))
    assert isinstance(block.conv, nn.Conv2d) and block.conv.bias is None
    assert sorted(block.state_dict()) == [
        'bn.bias', 'bn.num_batches_tracked', 'bn.running_mean', 'bn.running_var', 'bn.weight',
        'conv.weight'
    ]
    assert block(torch.randn(1, 4, 9, 9)).shape == (1, 8, 5, 5)
    dw = ConvBN(6, 6, 7, groups=6, dw_op=True)
    assert isinstance(dw.conv, DepthwiseConv2d) and dw.conv.weight.shape == (6, 1, 7, 7)


def test_conv_bn_dw_op_needs_depthwise():
    with pytest.raises(ValueError, match='depth-wise'):
        ConvBN(4, 8, 7, groups=4, dw_op=True)
    with pytest.raises(ValueError, match='stride 1'):
        ConvBN(4, 4, 7, stride=2, groups=4, dw_op=True)


@pytest.mark.parametrize('kernel, small', [(31, 5), (13, 5), (7, 5), (5, 5), (27, None),
                                           (3, None)])
@pytest.mark.parametrize('dtype, tol', [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_large_kernel_reparam_equivalence(kernel, small, dtype, tol):
    torch.manual_seed(kernel)
    conv = ReparamLargeKernelConv(6, kernel, small).to(dtype)
    randomize_norms(conv)
    conv.eval()
    x = torch.randn(2, 6, 20, 20, dtype=dtype)
    with torch.no_grad(), use_dw_impl('torch'):
        expected = conv(x)
        conv.reparameterize()
        fused = conv(x)
    assert conv.deployed and not hasattr(conv, 'lkb_origin') and not hasattr(conv, 'small_conv')
    assert sorted(conv.state_dict()) == ['lkb_reparam.bias', 'lkb_reparam.weight']
    assert conv.lkb_reparam.weight.dtype == dtype
    assert rel_err(expected, fused) <= tol


def test_large_kernel_keys_match_the_authors():
    conv = ReparamLargeKernelConv(4, 13, 5)
    keys = set(conv.state_dict())
    assert {'lkb_origin.conv.weight', 'lkb_origin.bn.weight', 'lkb_origin.bn.running_var',
            'small_conv.conv.weight', 'small_conv.bn.bias'} <= keys
    assert conv.lkb_origin.conv.weight.shape == (4, 1, 13, 13)
    assert conv.small_conv.conv.weight.shape == (4, 1, 5, 5)
    deployed = ReparamLargeKernelConv(4, 13, 5, deploy=True)
    assert sorted(deployed.state_dict()) == ['lkb_reparam.bias', 'lkb_reparam.weight']
    assert not hasattr(ReparamLargeKernelConv(4, 13, None), 'small_conv')


def test_reparameterize_model_walks_and_is_idempotent():
    torch.manual_seed(0)
    model = nn.Sequential(ReparamLargeKernelConv(4, 9, 3), nn.ReLU(),
                          nn.Sequential(ReparamLargeKernelConv(4, 7, 5)))
    randomize_norms(model)
    model.eval()
    x = torch.randn(1, 4, 12, 12)
    with torch.no_grad():
        expected = model(x)
        assert reparameterize_model(model) is model
        first = {k: v.clone() for k, v in model.state_dict().items()}
        reparameterize_model(model)
        out = model(x)
    assert all(m.deployed for m in model.modules() if isinstance(m, ReparamLargeKernelConv))
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())
    assert rel_err(expected, out) <= 1e-4


def test_reparam_gradients_flow_and_bad_arguments():
    conv = ReparamLargeKernelConv(3, 11, 5)
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    assert conv.lkb_origin.conv.weight.grad is not None
    assert conv.small_conv.conv.weight.grad is not None
    with pytest.raises(ValueError, match='odd'):
        ReparamLargeKernelConv(3, 12, 5)
    with pytest.raises(ValueError, match='small_kernel=None'):
        ReparamLargeKernelConv(3, 5, 7)


def test_reparam_with_group_norm_says_what_to_do():
    conv = ReparamLargeKernelConv(4, 7, 3, norm_cfg=dict(type='GN', num_groups=2))
    with pytest.raises(TypeError, match='BN/SyncBN norm_cfg'):
        conv.reparameterize()
