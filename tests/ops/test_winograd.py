"""Winograd F(2x2, 3x3) (replk_mm.ops.winograd: the extension's transforms around 16 oneDNN
products) against a float64 direct conv."""
import pytest
import torch
import torch.nn.functional as F

from replk_mm.ops import winograd
from replk_mm.ops.winograd import (pack_winograd_weight, winograd_applies, winograd_conv3x3,
                                   winograd_tiles)


def _case(n: int, c: int, k: int, h: int, w: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(k, c, 3, 3, generator=gen) / (9 * c) ** 0.5
    bias = torch.randn(k, generator=gen)
    return x, weight, bias


# even and odd sizes (a half tile at the bottom / right), one pixel, batches, channels below,
# at and above a vector's width, more tiles than one task
SHAPES = [(1, 16, 8, 6, 6), (2, 5, 3, 7, 9), (1, 24, 40, 1, 1), (3, 32, 17, 13, 4),
          (1, 64, 64, 33, 31)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('relu', [False, True])
def test_equals_direct_conv(shape, relu: bool) -> None:
    x, weight, bias = _case(*shape)
    expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    if relu:
        expected = expected.relu()
    with torch.no_grad():
        out = winograd_conv3x3(x, pack_winograd_weight(weight, winograd_tiles(x)), bias, relu)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_workspace_is_reused_and_grown() -> None:
    """A second, larger call gets a larger buffer; calls of the same size get the same buffer
    (and still the right result: nothing of the previous call leaks through)."""
    small, weight, bias = _case(1, 8, 8, 4, 4)
    large, _, _ = _case(1, 8, 8, 10, 10, seed=1)
    packed = pack_winograd_weight(weight, winograd_tiles(small))
    with torch.no_grad():
        winograd_conv3x3(large, packed, bias, False)
        buffer = winograd._transform_buffer(1).data_ptr()
        first = winograd_conv3x3(small, packed, bias, False)
        assert winograd._transform_buffer(1).data_ptr() == buffer
        assert torch.equal(winograd_conv3x3(small, packed, bias, False), first)
    torch.testing.assert_close(first, F.conv2d(small, weight, bias, padding=1), rtol=1e-5, atol=1e-5)


def test_applies_only_where_it_pays() -> None:
    x = torch.randn(1, 256, 56, 56).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(256, 256, 3, 3)
    assert winograd_applies(x, weight)
    assert not winograd_applies(x.contiguous(), weight)  # NCHW memory
    assert not winograd_applies(x.double(), weight)
    assert not winograd_applies(x[:, :, :14, :14].contiguous(memory_format=torch.channels_last),
                                weight)  # too few pixels for the fixed costs
    assert not winograd_applies(x[:, :64].contiguous(memory_format=torch.channels_last),
                                weight[:64, :64])  # too few channels
    assert not winograd_applies(x, torch.randn(256, 256, 5, 5))


def test_bad_inputs_are_named() -> None:
    x, weight, bias = _case(1, 8, 4, 6, 6)
    v = torch.empty(16, winograd_tiles(x), 8)
    with pytest.raises(RuntimeError, match='channels_last memory.*memory_format=torch.channels_last'):
        torch.ops.replk_mm.winograd_input_transform(x.contiguous(), v)
    with pytest.raises(RuntimeError, match=r'out must be a contiguous \(16, 9, 8\) tensor'):
        torch.ops.replk_mm.winograd_input_transform(x, torch.empty(16, 9, 4))
    products = [torch.zeros(9, 4)] * 16
    with pytest.raises(RuntimeError, match='the 16 products'):
        torch.ops.replk_mm.winograd_output_transform(products[:15], bias, 6, 6, False)
    with pytest.raises(RuntimeError, match='not a multiple of the 16 tiles'):
        torch.ops.replk_mm.winograd_output_transform(products, bias, 8, 8, False)
    with pytest.raises(RuntimeError, match=r'bias must have shape \(4\)'):
        torch.ops.replk_mm.winograd_output_transform(products, torch.zeros(3), 6, 6, False)
    with pytest.raises(RuntimeError, match=r'm\[5\] must be a float32 CPU tensor, got Double'):
        torch.ops.replk_mm.winograd_output_transform(
            products[:5] + [products[5].double()] + products[6:], bias, 6, 6, False)
