"""DilatedReparamBlock: default branches, build-time validation, exact deploy form."""
import pytest
import torch
import torch.nn as nn
from mmengine.model import revert_sync_batchnorm
from torch.nn.modules.batchnorm import _BatchNorm

import replk_mm.ops.depthwise_conv as dw_module
from replk_mm.models.layers import DilatedReparamBlock, reparameterize_model
from replk_mm.models.layers.dilated_reparam import DEFAULT_BRANCHES

TOL = {torch.float64: 1e-6, torch.float32: 1e-4}


@pytest.fixture(autouse=True)
def plain_torch_dw(monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-kernel timing of the depth-wise implementations: not what these tests are about."""
    monkeypatch.setenv('REPLK_MM_DW_IMPL', 'torch')


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random conv weights and random BN affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.uniform_(-1, 1, generator=g)
                m.running_var.uniform_(0.3, 2, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-1, 1, generator=g)
            elif hasattr(m, 'weight') and m.weight is not None:
                m.weight.normal_(0, 0.2, generator=g)
    return module.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('kernel_size', sorted(DEFAULT_BRANCHES))
def test_default_branches_equivalence(kernel_size, dtype):
    block = randomize(DilatedReparamBlock(6, kernel_size)).to(dtype)
    assert (block.kernel_sizes, block.dilations) == DEFAULT_BRANCHES[kernel_size]
    x = torch.randn(2, 6, kernel_size + 6, kernel_size + 4, dtype=dtype)
    with torch.no_grad():
        before = block(x)
        reparameterize_model(block)
        after = block(x)
    assert block.deployed
    assert rel_err(before, after) <= TOL[dtype]
    assert set(block.state_dict()) == {'lk_origin.weight', 'lk_origin.bias'}
    assert block.lk_origin.weight.dtype == dtype


def test_spec_default_settings():
    # SPEC.md section 2, the authors' defaults.
    assert DEFAULT_BRANCHES[17] == ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7))
    assert DEFAULT_BRANCHES[13] == ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5))
    assert DEFAULT_BRANCHES[5] == ((3, 3), (1, 2))
    for k, (ks, rs) in DEFAULT_BRANCHES.items():
        assert all((kk - 1) * r + 1 <= k for kk, r in zip(ks, rs))


def test_training_keys_are_the_authors():
    keys = set(DilatedReparamBlock(4, 13).state_dict())
    for k, r in zip(*DEFAULT_BRANCHES[13]):
        assert f'dil_conv_k{k}_{r}.weight' in keys
        assert f'dil_bn_k{k}_{r}.running_var' in keys
    assert {'lk_origin.weight', 'origin_bn.weight', 'origin_bn.running_mean'} <= keys
    assert 'lk_origin.bias' not in keys


def test_custom_branches_equivalence():
    block = randomize(DilatedReparamBlock(5, 19, kernel_sizes=(7, 3, 5), dilations=(3, 9, 1)))
    x = torch.randn(1, 5, 23, 23, dtype=torch.float64)
    block = block.double()
    with torch.no_grad():
        before = block(x)
        reparameterize_model(block)
        assert rel_err(before, block(x)) <= 1e-12


@pytest.mark.parametrize('kwargs, message', [
    (dict(kernel_size=13, kernel_sizes=(5, 7), dilations=(1, 3)), r'\(k-1\)\*r\+1 = 19'),
    (dict(kernel_size=12), 'odd kernel_size'),
    (dict(kernel_size=19), 'no default dilated branches for kernel_size=19'),
    (dict(kernel_size=9, kernel_sizes=(5, 3), dilations=(1, )), 'one entry per branch'),
    (dict(kernel_size=9, kernel_sizes=(5, ), dilations=None), 'given together'),
    (dict(kernel_size=9, kernel_sizes=(4, ), dilations=(1, )), 'odd and >= 1'),
    (dict(kernel_size=9, kernel_sizes=(3, ), dilations=(0, )), 'dilation rates must be >= 1'),
    (dict(kernel_size=9, kernel_sizes=(3, 3), dilations=(2, 2)), 'given twice'),
])
def test_invalid_settings_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DilatedReparamBlock(4, **kwargs)


def test_deploy_form_loads_a_fused_state_dict():
    block = randomize(DilatedReparamBlock(4, 11))
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        expected = block(x)
        fused = reparameterize_model(block).state_dict()
    deployed = DilatedReparamBlock(4, 11, deploy=True).eval()
    deployed.load_state_dict(fused, strict=True)
    with torch.no_grad():
        assert rel_err(expected, deployed(x)) <= 1e-4
    reparameterize_model(deployed)  # already deployed: a no-op
    assert set(deployed.state_dict()) == {'lk_origin.weight', 'lk_origin.bias'}


def test_deploy_conv_goes_through_the_entry_point(monkeypatch):
    block = reparameterize_model(randomize(DilatedReparamBlock(4, 15)))
    seen = []
    original = dw_module.depthwise_conv2d

    def spy(x, weight, bias=None):
        seen.append(tuple(weight.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(dw_module, 'depthwise_conv2d', spy)
    with torch.no_grad():
        block(torch.randn(1, 4, 20, 20))
    assert seen == [(4, 1, 15, 15)]


def test_sync_bn_config_and_single_device_revert():
    block = DilatedReparamBlock(4, 7, norm_cfg=dict(type='SyncBN'))
    assert isinstance(block.origin_bn, nn.SyncBatchNorm)
    assert isinstance(block.dil_bn_k3_3, nn.SyncBatchNorm)
    block = randomize(revert_sync_batchnorm(block))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in block.modules())
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        before = block(x)
        assert rel_err(before, reparameterize_model(block)(x)) <= 1e-4


def test_input_smaller_than_kernel():
    block = randomize(DilatedReparamBlock(3, 17))
    x = torch.randn(1, 3, 4, 2)
    with torch.no_grad():
        before = block(x)
        after = reparameterize_model(block)(x)
    assert before.shape == x.shape and torch.isfinite(before).all()
    assert rel_err(before, after) <= 1e-4


def test_gradients_flow_through_every_branch():
    block = DilatedReparamBlock(3, 9).train()
    out = block(torch.randn(2, 3, 12, 12))
    (out * torch.randn_like(out)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
