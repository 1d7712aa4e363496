"""The emulated mma.sync of csrc/cuda/mma.cuh, a warp collective over the 32 lanes' fragments
(csrc/common/cuda_emulation.h), against a matmul with the PTX ISA fragment layouts written out here."""
import pytest
import torch

import replk_mm._ext_cuda_emu  # noqa: F401  (registers torch.ops.replk_mm_emu)

EMU = torch.ops.replk_mm_emu
DTYPES = [torch.float16, torch.bfloat16]


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
