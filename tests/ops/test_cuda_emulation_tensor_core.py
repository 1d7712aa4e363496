"""The tensor-core kernels of replk_mm/ops/csrc/cuda/ (dwconv_tc_kernels.cuh) under the emulation, whose
mma.sync is a warp collective over the 32 lanes' fragments (csrc/common/cuda_emulation.h): the emulated
mma against a matmul with the PTX ISA fragment layouts written out here, then forward, input and weight
gradients (torch.ops.replk_mm_emu.*_tc) against a float64 F.conv2d for float16 / bfloat16, NCHW /
channels_last and kernel sizes 3 to the largest the emulated device's shared memory takes, and the
errors (the determinism of the weight gradient is checked in test_cuda_emulation.py)."""
import pytest
import torch

import replk_mm._ext_cuda_emu  # noqa: F401  (registers torch.ops.replk_mm_emu)
from dw_testing import check_all, make_inputs

EMU = torch.ops.replk_mm_emu
DTYPES = [torch.float16, torch.bfloat16]
# The largest K whose forward tiles fit the emulated device (Turing's 64 KiB per block); the weight
# gradient takes up to 127 there.
MAX_K = 89


# PTX ISA, mma.m16n8k16 with .f16 / .bf16 inputs: (row, column) of element i of lane l's fragment.
def a_coord(lane, i):
    return lane // 4 + 8 * (i // 2 % 2), 2 * (lane % 4) + i % 2 + 8 * (i // 4)


def b_coord(lane, i):
    return 2 * (lane % 4) + i % 2 + 8 * (i // 2), lane // 4


def cd_coord(lane, i):
    return lane // 4 + 8 * (i // 2), 2 * (lane % 4) + i % 2


def to_fragments(matrix, coord, per_lane):
    return torch.stack([torch.stack([matrix[coord(lane, i)] for i in range(per_lane)]) for lane in range(32)])


def from_fragments(frag, coord, shape):
    out = torch.empty(shape, dtype=frag.dtype)
    for lane in range(32):
        for i in range(frag.shape[1]):
            out[coord(lane, i)] = frag[lane, i]
    return out


def mma_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(16, 16, generator=g).to(dtype)
    b = torch.randn(16, 8, generator=g).to(dtype)
    c = torch.randn(16, 8, generator=g)
    return a, b, c


@pytest.mark.parametrize('dtype', DTYPES)
def test_mma_is_a_warp_matmul_with_the_ptx_fragment_layouts(dtype):
    a, b, c = mma_inputs(dtype)
    d_frag = EMU.mma_m16n8k16(to_fragments(a, a_coord, 8), to_fragments(b, b_coord, 4), to_fragments(c, cd_coord, 4))
    d = from_fragments(d_frag, cd_coord, (16, 8))
    expected = a.double() @ b.double() + c.double()
    torch.testing.assert_close(d.double(), expected, rtol=1e-6, atol=1e-5)


def test_mma_result_depends_on_which_lane_holds_what():
    # Lanes 0 and 5 exchange their A fragments (rows 0 / 1, columns 0-1 / 2-3): a wrong lane mapping.
    a, b, c = mma_inputs(torch.float16)
    a_frag = to_fragments(a, a_coord, 8)
    a_frag[[0, 5]] = a_frag[[5, 0]]
    d_frag = EMU.mma_m16n8k16(a_frag, to_fragments(b, b_coord, 4), to_fragments(c, cd_coord, 4))
    d = from_fragments(d_frag, cd_coord, (16, 8))
    assert not torch.allclose(d.double(), a.double() @ b.double() + c.double(), rtol=1e-3, atol=1e-3)


def test_mma_with_a_divergent_warp_is_an_error():
    a, b, c = mma_inputs(torch.bfloat16)
    with pytest.raises(RuntimeError, match='divergent mma.sync'):
        EMU.mma_m16n8k16(to_fragments(a, a_coord, 8), to_fragments(b, b_coord, 4), to_fragments(c, cd_coord, 4),
                         active_lanes=16)


@pytest.mark.parametrize('dtype', DTYPES, ids=['fp16', 'bf16'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('k', [3, 9, 13, 25])
def test_kernels_match_conv2d(k, channels_last, dtype):
    # 3 channels: a partial channel group in channels_last; 70 x 35: partial 64 x 32 and 32 x 32 tiles;
    # K = 9 and 25 fill their 1 and 2 band steps exactly.
    check_all(EMU, '_tc', 2, 3, 70, 35, k, dtype, channels_last)


@pytest.mark.parametrize('dtype', DTYPES, ids=['fp16', 'bf16'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('k', [31, 63, MAX_K])
def test_large_kernels_match_conv2d(k, channels_last, dtype):
    # Several filter-row blocks and column chunks in the weight gradient (rounds of items at 63 and 89);
    # images smaller than K.
    check_all(EMU, '_tc', 1, 3, 21, 40, k, dtype, channels_last)


def test_errors_name_the_problem():
    x, weight, bias, grad_out = make_inputs(1, 3, 8, 8, 5, torch.float16, channels_last=False)
    with pytest.raises(RuntimeError, match='tensor-core kernels take float16 and bfloat16'):
        EMU.dwconv2d_forward_tc(x.float(), weight.float(), None)
    with pytest.raises(RuntimeError, match='tensor-core kernels take float16 and bfloat16'):
        EMU.dwconv2d_backward_weight_tc(grad_out.float(), x.float(), 5, True)
    with pytest.raises(RuntimeError, match='odd'):
        EMU.dwconv2d_backward_weight_tc(grad_out, x, 4, True)
    with pytest.raises(RuntimeError, match=f'kernel size {MAX_K + 2} needs .* bytes of shared memory'):
        EMU.dwconv2d_forward_tc(x, torch.randn(3, 1, MAX_K + 2, MAX_K + 2).half(), None)
