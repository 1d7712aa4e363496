"""The CUDA kernels of replk_mm/ops/csrc/cuda/, compiled for the host by the emulation header and run on
CPU tensors (torch.ops.replk_mm_emu.*): forward, input and weight gradients against F.conv2d for every
dtype and layout, kernel sizes 3 to 65, images smaller than the kernel, odd channel counts, partial
tiles and channel groups, the deterministic and the atomic weight gradient, autocast, errors."""
import pytest
import torch
import torch.nn.functional as F

import replk_mm._ext_cuda_emu  # noqa: F401  (registers torch.ops.replk_mm_emu)
from dw_testing import assert_matches, check_all, make_inputs, reference

EMU = torch.ops.replk_mm_emu


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('k', [3, 7, 13, 31, 63])
def test_kernels_match_conv2d(k, channels_last, dtype):
    # 5 channels: partial channel groups in channels_last; 37 x 35: partial 32 x 32 tiles.
    check_all(EMU, '', 2, 5, 37, 35, k, dtype, channels_last)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('shape', [(1, 3, 5, 40, 13), (2, 7, 29, 4, 31), (1, 1, 9, 9, 63), (3, 9, 1, 1, 5)])
def test_images_smaller_than_the_kernel(shape, channels_last):
    check_all(EMU, '', *shape, torch.float32, channels_last)


def test_kernel_larger_than_63():
    # 65: more filter tap blocks than threads per channel (two rounds in the weight gradient).
    check_all(EMU, '', 1, 2, 20, 23, 65, torch.float32, channels_last=False)


def test_weight_grad_batch_split_over_blocks():
    # 128 channels x 1 tile: 20 images in 10 chunks of 2 per block (2048 blocks wanted).
    x, weight, bias, grad_out = make_inputs(20, 128, 32, 32, 3, torch.float32, channels_last=False)
    _, _, gw_ref, gb_ref = reference(x, weight, bias, grad_out)
    gw, gb = EMU.dwconv2d_backward_weight(grad_out, x, 3, True)
    assert_matches(gw, gw_ref, torch.float32, 'grad weight')
    assert_matches(gb, gb_ref, torch.float32, 'grad bias')


def test_non_contiguous_inputs():
    x, weight, bias, grad_out = make_inputs(2, 6, 20, 18, 9, torch.float32, channels_last=False)
    x_strided = x[:, ::2]
    y_ref = F.conv2d(x_strided, weight[::2], bias[::2], padding=4, groups=3)
    torch.testing.assert_close(EMU.dwconv2d_forward(x_strided, weight[::2], bias[::2]), y_ref,
                               rtol=1e-5, atol=1e-5)


# fp16: the two summation orders may round to neighbouring fp16 values (one ulp = 2^-10 relative).
@pytest.mark.parametrize('suffix, dtype, rtol, atol',
                         [('', torch.float32, 1e-5, 1e-4), ('_tc', torch.float16, 2e-3, 2e-3)],
                         ids=['cuda_cores', 'tensor_cores'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_weight_grad_deterministic_and_atomic(channels_last, suffix, dtype, rtol, atol):
    # The CUDA-core and the tensor-core (test_cuda_emulation_tensor_core.py) weight gradients.
    backward_weight = getattr(EMU, f'dwconv2d_backward_weight{suffix}')
    x, _, _, grad_out = make_inputs(4, 6, 40, 40, 13, dtype, channels_last)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        first = backward_weight(grad_out, x, 13, True)
        second = backward_weight(grad_out, x, 13, True)
        torch.use_deterministic_algorithms(False)
        atomic = backward_weight(grad_out, x, 13, True)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    torch.testing.assert_close(atomic[0], first[0], rtol=rtol, atol=atol)
    torch.testing.assert_close(atomic[1], first[1], rtol=rtol, atol=atol)


def test_weight_grad_without_bias():
    x, _, _, grad_out = make_inputs(1, 3, 10, 10, 5, torch.float32, channels_last=False)
    gw, gb = EMU.dwconv2d_backward_weight(grad_out, x, 5, False)
    assert gb is None and gw.shape == (3, 1, 5, 5)


def test_empty_batch():
    x, weight, bias, grad_out = make_inputs(0, 3, 8, 8, 5, torch.float32, channels_last=False)
    assert EMU.dwconv2d_forward(x, weight, bias).shape == (0, 3, 8, 8)
    gw, gb = EMU.dwconv2d_backward_weight(grad_out, x, 5, True)
    assert torch.count_nonzero(gw) == 0 and torch.count_nonzero(gb) == 0


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_runs_in_the_autocast_dtype(dtype):
    x, weight, bias, _ = make_inputs(1, 4, 12, 12, 7, torch.float32, channels_last=False)
    with torch.autocast('cpu', dtype=dtype):
        y = EMU.dwconv2d_forward(x, weight, bias)
    assert y.dtype == dtype
    y_ref = F.conv2d(x.to(dtype).float(), weight.to(dtype).float(), bias.to(dtype).float(), padding=3, groups=4)
    assert_matches(y, y_ref, dtype, 'autocast forward')


def test_errors_name_the_problem():
    x, weight, bias, grad_out = make_inputs(1, 3, 8, 8, 5, torch.float32, channels_last=False)
    with pytest.raises(RuntimeError, match='odd'):
        EMU.dwconv2d_forward(x, torch.randn(3, 1, 4, 4), None)
    with pytest.raises(RuntimeError, match='odd'):
        EMU.dwconv2d_backward_weight(grad_out, x, 4, True)
    with pytest.raises(RuntimeError, match='float32, float16 and bfloat16'):
        EMU.dwconv2d_forward(x.double(), weight.double(), None)
    with pytest.raises(RuntimeError, match='same dtype'):
        EMU.dwconv2d_forward(x, weight.half(), None)
    # The emulated device has Turing's 64 KiB of opt-in shared memory per block.
    with pytest.raises(RuntimeError, match='shared memory'):
        EMU.dwconv2d_forward(x, torch.randn(3, 1, 101, 101), None)
