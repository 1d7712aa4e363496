"""The inference form (replk_mm.deploy.optimize_for_inference) computes the deploy form."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

from replk_mm.deploy import build_model, optimize_for_inference, reparameterize_model
from replk_mm.deploy.equivalence import example_input, relative_error
from replk_mm.deploy.inference import (FusedConv2d, FusedResidualBlock, InferenceGRN,
                                       InferenceSE)
from replk_mm.deploy.onnx_export import InferenceModule
from replk_mm.models import RepLKNet, UniRepLKNet
from replk_mm.models.backbones.replknet import ARCH_SETTINGS
from replk_mm.models.backbones.unireplknet import ARCH_SETTINGS as UNI_ARCH_SETTINGS
from replk_mm.models.backbones.unireplknet import resolve_arch
from replk_mm.models.layers import GRN, SEBlock, fuse_bn_conv

from .conftest import ROOT, randomize_norms

TOLERANCE = 1e-5  # relative, float32 (the acceptance)


def _randomize(model: nn.Module) -> nn.Module:
    """Trained-like BN statistics, GRN parameters and layer scales (none of them trivial)."""
    randomize_norms(model)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('gamma', 'beta')):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _check_inference_form(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Deploy form vs inference form on ``x`` (within TOLERANCE), a second call changes nothing;
    returns the inference form."""
    deployed = reparameterize_model(model.eval())
    with torch.no_grad():
        expected = list(deployed(x))
        optimized = optimize_for_inference(copy.deepcopy(deployed))
        out = list(optimized(x))
        structure = repr(optimized)
        again = list(optimize_for_inference(optimized)(x))
    assert relative_error(expected, out) <= TOLERANCE
    assert repr(optimized) == structure and all(torch.equal(a, b) for a, b in zip(out, again))
    assert out[0].is_contiguous(memory_format=torch.channels_last)
    return optimized


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_replknet_every_preset(arch: str) -> None:
    """Reduced width and depth, every preset's kernels, small kernel and dw_ratio; all stages out."""
    torch.manual_seed(0)
    settings = dict(ARCH_SETTINGS[arch], layers=(1, 1, 1, 1), channels=(8, 8, 16, 16))
    model = _randomize(RepLKNet(settings, norm_intermediate_features=True, drop_path_rate=0.2))
    optimized = _check_inference_form(model, example_input((2, 3, 64, 64)))
    blocks = [m for m in optimized.modules() if isinstance(m, FusedResidualBlock)]
    assert len(blocks) == 8  # every RepLK and ConvFFN block, prelkb_bn / preffn_bn folded
    # BNs are left only on the outputs (stages.{i}.norm)
    norms = [n for n, m in optimized.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == [f'stages.{i}.norm' for i in range(4)]


@pytest.mark.parametrize('arch', list(UNI_ARCH_SETTINGS))
def test_unireplknet_every_preset(arch: str) -> None:
    """Reduced width, and the third stage cut to its first three blocks (LarK and SmaK ones)."""
    depths, dims, kernels = resolve_arch(arch)
    kernels = (kernels[0], kernels[1], kernels[2][:3], kernels[3])
    depths = tuple(len(k) for k in kernels)
    torch.manual_seed(0)
    model = _randomize(UniRepLKNet(dict(depths=depths, dims=tuple(max(8, d // 32) for d in dims),
                                        kernel_sizes=kernels)))
    optimized = _check_inference_form(model, example_input((1, 3, 64, 64)))
    assert sum(isinstance(m, FusedResidualBlock) for m in optimized.modules()) == sum(depths)
    assert not any(isinstance(m, nn.Linear) for m in optimized.modules())


@pytest.mark.parametrize('winograd', [False, True])
def test_whole_segmentor(winograd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """mmcv ConvModules (conv-BN-act) of the decode head fold too; logits at the input size.
    With ``winograd`` the thresholds are lowered so that the head's 3x3 convs run Winograd
    F(2x2, 3x3) at this size (at full size they do: replk_mm.ops.winograd)."""
    from replk_mm.deploy import inference
    from replk_mm.ops import winograd as winograd_ops
    calls = []
    if winograd:
        monkeypatch.setattr(winograd_ops, 'MIN_CHANNEL_PRODUCT', 0)
        monkeypatch.setattr(winograd_ops, 'MIN_CHANNEL_PIXEL_PRODUCT', 0)
        conv3x3 = inference.winograd_conv3x3
        monkeypatch.setattr(inference, 'winograd_conv3x3',
                            lambda *args: calls.append(args[0].shape) or conv3x3(*args))
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(ROOT / 'configs/demo/upernet_replknet-demo_ade20k-demo.py')))
    randomize_norms(model)
    x = example_input((1, 3, 64, 64))
    module = _check_inference_form(InferenceModule(model, 'segmentor'), x)
    assert list(module(x))[0].shape == (1, 5, 64, 64)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                   for m in module.model.decode_head.modules())
    if winograd:  # the FPN convs and the bottleneck, in both calls of _check_inference_form
        assert len(calls) >= 2 * (len(module.model.decode_head.fpn_convs) + 1)


def test_mmcv_ops_get_contiguous_inputs() -> None:
    """mmcv's RoIAlign reads channels_last memory as NCHW: the inference form guards it."""
    from mmcv.ops import RoIAlign, roi_align
    model = optimize_for_inference(nn.ModuleDict(dict(roi=RoIAlign((3, 3), 1.0, 2))))
    x = torch.randn(1, 8, 16, 16)
    rois = torch.tensor([[0, 1., 2., 10., 12.], [0, 3., 3., 7., 9.]])
    reference = roi_align(x, rois, (3, 3), 1.0, 2)
    out = model['roi'](x.contiguous(memory_format=torch.channels_last), rois)
    assert torch.equal(out, reference)
    optimize_for_inference(model)
    assert len(model['roi']._forward_pre_hooks) == 1


def test_fused_conv_paths() -> None:
    """oneDNN (packed weight, channels_last out) and F.conv2d (autograd) agree; the packed weight
    follows an in-place weight change and is not deep-copied; a BN folds only into the input side
    of a 1x1 conv."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    bn = nn.BatchNorm2d(16).eval()
    randomize_norms(bn)
    fused = FusedConv2d.from_conv(conv, None, bn, 'gelu')
    x = torch.randn(2, 8, 9, 9)
    residual = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        reference = nn.functional.gelu(bn(conv(x)) + residual)
        fast = fused(x, residual)
        assert fast.is_contiguous(memory_format=torch.channels_last)
        fused.weight.mul_(2)
        doubled = fused(x)
    slow = fused(x.requires_grad_(), residual)  # autograd: the F.conv2d path
    assert slow.requires_grad
    assert relative_error([reference], [fast]) <= TOLERANCE
    assert relative_error([reference], [slow.detach()]) > 0.1  # the weight was doubled since
    assert torch.equal(copy.deepcopy(fused)(x.detach()), doubled)  # the packed copy is not copied
    doubled_reference = nn.functional.gelu(
        nn.functional.conv2d(x.detach(), fused.weight, fused.bias, 2, 1))
    assert relative_error([doubled_reference], [doubled]) <= TOLERANCE
    with pytest.raises(ValueError, match='1x1 conv'):
        fuse_bn_conv(nn.BatchNorm2d(8).eval(), conv.weight, conv.bias)


def test_fused_conv_winograd(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3 stride-1 conv runs Winograd where it applies (thresholds lowered for a small case),
    with the activation after it; its packed weights follow an in-place weight change."""
    from replk_mm.ops import winograd as winograd_ops
    monkeypatch.setattr(winograd_ops, 'MIN_CHANNEL_PRODUCT', 0)
    monkeypatch.setattr(winograd_ops, 'MIN_CHANNEL_PIXEL_PRODUCT', 0)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    fused = FusedConv2d.from_conv(conv, activation='relu')
    assert fused.winograd
    assert not FusedConv2d.from_conv(nn.Conv2d(8, 16, 3, padding=1, stride=2)).winograd
    gelu = FusedConv2d.from_conv(conv, activation='gelu')
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        out = fused(x)
        assert fused._winograd_packed is not None  # the Winograd path ran
        assert relative_error([conv(x).relu()], [out]) <= TOLERANCE
        assert relative_error([nn.functional.gelu(conv(x))], [gelu(x)]) <= TOLERANCE
        assert gelu._winograd_packed is not None
        fused.weight.mul_(-1)
        flipped = fused(x)
    assert relative_error([(-conv(x) + 2 * conv.bias[:, None, None]).relu()], [flipped]) <= TOLERANCE


def test_grn_inference_norm_equals_the_autograd_one() -> None:
    """GRN's faster norm without autograd (square-sum-sqrt) computes vector_norm's value."""
    grn = GRN(32)
    with torch.no_grad():
        grn.gamma.normal_()
    x = torch.randn(2, 9, 7, 32)
    with torch.no_grad():
        fast = grn(x)
    slow = grn(x.requires_grad_())
    assert relative_error([slow.detach()], [fast]) <= 1e-6


@pytest.mark.parametrize('with_beta', [False, True])
def test_se_and_grn_inference_modules(with_beta: bool) -> None:
    """InferenceSE / InferenceGRN on (N, C, H, W) compute SEBlock / GRN (which takes NHWC); they
    scale their input in place without autograd (the extension's ops on channels_last, PyTorch on
    NCHW), and leave it alone under autograd."""
    torch.manual_seed(0)
    se, grn = SEBlock(16, 4), GRN(16, bias=with_beta)
    with torch.no_grad():
        for p in [*se.parameters(), *grn.parameters()]:
            p.normal_()
    x = torch.randn(2, 16, 7, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = [se(x), grn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)]
    modules = [InferenceSE(se), InferenceGRN(grn)]
    for module, reference in zip(modules, expected):
        tracked = x.clone().requires_grad_()
        out = module(tracked)  # autograd: a new tensor, the input untouched
        assert out.data_ptr() != tracked.data_ptr() and torch.equal(tracked.detach(), x)
        assert relative_error([reference], [out.detach()]) <= TOLERANCE
        # channels_last: the extension's op; NCHW: the PyTorch formulas
        for memory_format in (torch.channels_last, torch.contiguous_format):
            fresh = x.clone(memory_format=memory_format)
            with torch.no_grad():
                out = module(fresh)
            assert out.data_ptr() == fresh.data_ptr() or with_beta  # (beta adds a new tensor)
            assert relative_error([reference], [out]) <= TOLERANCE
        assert not any(p.requires_grad for p in module.parameters())
