"""The CUDA kernels of replk_mm::dwconv2d_* on a real GPU (run by themselves when one is present):
correctness against F.conv2d for every dtype and layout (and of the tensor-core kernels, *_tc, for fp16 /
bf16 on compute capability 8.0+), streams, determinism, autocast, errors."""
import functools

import pytest
import torch
import torch.nn.functional as F

import dw_testing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

OPS = torch.ops.replk_mm
make_inputs = functools.partial(dw_testing.make_inputs, device='cuda')


@pytest.fixture(scope='module', autouse=True)
def extension():
    import replk_mm._ext  # noqa: F401  (registers torch.ops.replk_mm)
    assert torch._C._dispatch_has_kernel_for_dispatch_key('replk_mm::dwconv2d_forward', 'CUDA'), (
        'replk_mm._ext was built without CUDA: reinstall with FORCE_CUDA=1 (see docs/cuda.md)')


# (op suffix, dtype): the CUDA-core kernels in every dtype, the tensor-core kernels (_tc) in fp16 / bf16.
KERNELS = [('', torch.float32), ('', torch.float16), ('', torch.bfloat16), ('_tc', torch.float16),
           ('_tc', torch.bfloat16)]


@pytest.mark.parametrize('suffix, dtype', KERNELS, ids=['fp32', 'fp16', 'bf16', 'fp16_tc', 'bf16_tc'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('k', [3, 13, 31, 63])
def test_kernels_match_conv2d(k, channels_last, suffix, dtype):
    if suffix and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip('the tensor-core kernels need compute capability 8.0+')
    dw_testing.check_all(OPS, suffix, 3, 37, 45, 70, k, dtype, channels_last, device='cuda')


def test_current_stream_is_used():
    x, weight, bias, _ = make_inputs(8, 64, 64, 64, 31, torch.float32, False)
    expected = OPS.dwconv2d_forward(x, weight, bias)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        y = OPS.dwconv2d_forward(x, weight, bias)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
def test_weight_grad_is_deterministic(channels_last):
    x, _, _, grad_out = make_inputs(16, 32, 64, 64, 31, torch.float32, channels_last)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        runs = [OPS.dwconv2d_backward_weight(grad_out, x, 31, True) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for gw, gb in runs[1:]:
        assert torch.equal(gw, runs[0][0]) and torch.equal(gb, runs[0][1])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast(dtype):
    x, weight, bias, _ = make_inputs(2, 16, 32, 32, 13, torch.float32, False)
    with torch.autocast('cuda', dtype=dtype):
        y = OPS.dwconv2d_forward(x, weight, bias)
    assert y.dtype == dtype


def test_errors_are_exceptions():
    x, weight, _, _ = make_inputs(1, 4, 16, 16, 5, torch.float32, False)
    with pytest.raises(RuntimeError, match='odd'):
        OPS.dwconv2d_forward(x, torch.randn(4, 1, 4, 4, device='cuda'), None)
    with pytest.raises(RuntimeError, match='shared memory'):
        OPS.dwconv2d_forward(x, torch.randn(4, 1, 301, 301, device='cuda'), None)
    with pytest.raises(RuntimeError, match='float32, float16 and bfloat16'):
        OPS.dwconv2d_forward(x.double(), weight.double(), None)
    # The context is still usable after the errors.
    torch.testing.assert_close(OPS.dwconv2d_forward(x, weight, None),
                               F.conv2d(x, weight, padding=2, groups=4), rtol=1e-4, atol=1e-4)
