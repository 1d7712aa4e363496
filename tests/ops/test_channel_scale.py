"""replk_mm::grn_scale_ / replk_mm::se_scale_ (the extension's in-place GRN and SE scalings of
UniRepLKNet's inference form) against the PyTorch formulas of GRN and SEBlock."""
import pytest
import torch

from replk_mm.models.layers import GRN, SEBlock
from replk_mm.ops.channel_scale import fused_scale_applies, grn_scale_, se_scale_


def _channels_last(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).contiguous(memory_format=torch.channels_last)


# C below, at and above a vector's width; one pixel; more rows than one task (2**14 elements)
SHAPES = [(2, 16, 7, 9), (1, 20, 1, 1), (3, 5, 4, 3), (1, 8, 64, 48)]


@pytest.mark.parametrize('shape', SHAPES)
def test_grn_scale_equals_grn(shape) -> None:
    grn = GRN(shape[1], bias=False)
    with torch.no_grad():
        grn.gamma.normal_()
        x = _channels_last(*shape)
        expected = grn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert fused_scale_applies(x)
        out = grn_scale_(x, grn.gamma.reshape(-1), grn.eps)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('shape', SHAPES)
def test_se_scale_equals_se_block(shape) -> None:
    torch.manual_seed(1)
    se = SEBlock(shape[1], max(1, shape[1] // 4))
    with torch.no_grad():
        x = _channels_last(*shape, seed=2)
        expected = se(x)
        out = se_scale_(x, se.down.weight[:, :, 0, 0], se.down.bias, se.up.weight[:, :, 0, 0],
                        se.up.bias)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_named() -> None:
    nchw = torch.randn(1, 16, 4, 4)
    assert not fused_scale_applies(nchw) and not fused_scale_applies(nchw.double())
    with pytest.raises(RuntimeError, match='channels_last memory.*memory_format=torch.channels_last'):
        grn_scale_(nchw, torch.zeros(16), 1e-6)
    x = _channels_last(1, 16, 4, 4)
    with pytest.raises(RuntimeError, match=r'gamma must be a float32 CPU tensor of shape \[16\]'):
        grn_scale_(x, torch.zeros(8), 1e-6)
    with pytest.raises(RuntimeError, match=r'up_weight must be .* of shape \[16, 4\]'):
        se_scale_(x, torch.zeros(4, 16), torch.zeros(4), torch.zeros(4, 16), torch.zeros(16))
