"""3x3 convs (stride 1, padding 1) as Winograd F(2x2, 3x3) on the CPU, for the inference form.

A direct 3x3 conv costs 9 multiply-adds per output pixel, input and output channel; F(2x2, 3x3)
computes each 2x2 output tile from its 4x4 input patch with 16, i.e. 2.25x fewer. The work is one
input transform (``replk_mm::winograd_input_transform``), 16 matrix products
``(P tiles, C) @ (C, K)`` run as oneDNN 1x1 convs on pre-packed transformed weights, and one
output transform with the bias and ReLU (``replk_mm::winograd_output_transform``). It pays where
the products dominate: many input and output channels (UperNet's FPN convs and bottleneck).
The transforms add and subtract only, and the weight transform runs in float64, so the result
matches the direct conv to float32 rounding.
"""
import threading
from typing import List

import torch

from .dwconv_ext import registered_kernels

_AVAILABLE = all(registered_kernels(f'replk_mm::{op}').get('cpu', False)
                 for op in ('winograd_input_transform', 'winograd_output_transform'))

#: F(2x2, 3x3) weight transform G (4 x 3)
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

#: Winograd pays from this many input x output channels ...
MIN_CHANNEL_PRODUCT = 256 * 256
#: ... and this many (input x output channels x output pixels): below, the 16 oneDNN calls and the
#: transforms cost more than they save. Measured against oneDNN's direct conv (2 threads, batch
#: 1, ``tools/analysis_tools/benchmark_winograd.py``): 256 x 256 channels at 56 x 56 1.3x faster,
#: at 28 x 28 0.9x; 512 x 512 at 14 x 14 1.0x, at 8 x 8 0.5x; 2048 x 512 at 128 x 128 2.9x.
MIN_CHANNEL_PIXEL_PRODUCT = 10 ** 8

#: largest transformed input (bytes), held per thread for the next call
MAX_TRANSFORMED_BYTES = 1 << 30


_workspace = threading.local()


def _transform_buffer(numel: int) -> torch.Tensor:
    """A float32 buffer of ``numel`` values, kept per thread and grown on demand (a fresh buffer
    of hundreds of MB costs more in page faults than the input transform writing it)."""
    buffer = getattr(_workspace, 'buffer', None)
    if buffer is None or buffer.numel() < numel:
        buffer = _workspace.buffer = torch.empty(numel)
    return buffer[:numel]


def winograd_tiles(x: torch.Tensor) -> int:
    """The number of 2x2 output tiles of ``x``: ``(N, C, H, W)`` -> N * ceil(H/2) * ceil(W/2)."""
    n, _, h, w = x.shape
    return n * ((h + 1) // 2) * ((w + 1) // 2)


def winograd_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv3x3` takes input ``x`` and ``weight`` ``(K, C, 3, 3)`` and pays:
    float32 CPU tensors, x ``(N, C, H, W)`` channels_last, the extension built, enough channels
    and pixels, the transformed input within :data:`MAX_TRANSFORMED_BYTES`."""
    return (_AVAILABLE and x.device.type == 'cpu' and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and tuple(weight.shape[2:]) == (3, 3) and weight.shape[1] == x.shape[1]
            and weight.shape[0] * weight.shape[1] >= MIN_CHANNEL_PRODUCT
            and weight.shape[0] * x.numel() >= MIN_CHANNEL_PIXEL_PRODUCT
            and 16 * winograd_tiles(x) * x.shape[1] * 4 <= MAX_TRANSFORMED_BYTES)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(K, C, 3, 3)`` -> ``(16, K, C)``: ``U[4 i + j] = (G g G^T)[i][j]`` per output and input
    channel, computed in float64."""
    out_channels, in_channels = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum('ai,kcij,bj->abkc', g, weight.detach().double(), g)
    return u.reshape(16, out_channels, in_channels).to(weight.dtype).contiguous()


def pack_winograd_weight(weight: torch.Tensor, tiles: int) -> List[torch.Tensor]:
    """The 16 transformed weights ``(K, C, 1, 1)`` in oneDNN's blocked layout for products over
    ``tiles`` tiles."""
    u = winograd_weight(weight)
    in_channels = weight.shape[1]
    return [torch._C._nn.mkldnn_reorder_conv2d_weight(
        u[t][:, :, None, None].contiguous().to_mkldnn(), [0, 0], [1, 1], [1, 1], 1,
        [1, in_channels, 1, tiles]) for t in range(16)]


def winograd_conv3x3(x: torch.Tensor, packed: List[torch.Tensor], bias: torch.Tensor,
                     relu: bool) -> torch.Tensor:
    """``relu?(conv3x3(x, weight, padding=1) + bias)``: ``(N, C, H, W)`` channels_last ->
    ``(N, K, H, W)`` channels_last; ``packed`` from :func:`pack_winograd_weight` for
    :func:`winograd_tiles` ``(x)`` tiles, ``bias`` ``(K,)``."""
    _, in_channels, height, width = x.shape
    tiles = winograd_tiles(x)
    v = _transform_buffer(16 * tiles * in_channels).view(16, tiles, in_channels)
    torch.ops.replk_mm.winograd_input_transform(x, v)
    products = []
    for t in range(16):
        # (P, C) as a channels_last (1, C, 1, P) image
        image = v[t].view(1, 1, tiles, in_channels).permute(0, 3, 1, 2)
        m = torch.ops.mkldnn._convolution_pointwise(image, packed[t], None, [0, 0], [1, 1],
                                                     [1, 1], 1, 'none', [], '')
        products.append(m.permute(0, 2, 3, 1).reshape(tiles, -1))
    return torch.ops.replk_mm.winograd_output_transform(products, bias, height, width, relu)
