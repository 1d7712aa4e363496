"""The inference form: a deploy-form model rewritten in memory for fast CPU inference.

:func:`optimize_for_inference` goes beyond the authors' deploy form (which fuses only the
re-parameterized branches) and keeps the checkpoints in that form:

- every batch norm next to a conv is folded into it: after it (``ConvBN``, mmcv's ``ConvModule``)
  and, for RepLKNet's ``prelkb_bn`` / ``preffn_bn``, before the 1x1 conv it feeds (exact: a 1x1
  conv has no padding); UniRepLKNet's linear layers become 1x1 convs;
- the ReLU / GELU after a conv and the residual add after a block's last 1x1 conv run inside that
  conv (oneDNN post-ops), with the conv weights packed once for oneDNN;
- UniRepLKNet's SE and GRN each run as one reduction over the pixels and one in-place scaling
  of their input (a fresh intermediate) in the package's extension
  (:mod:`replk_mm.ops.channel_scale`); elsewhere (autograd, tracing, export) the SE's 1x1 convs
  are matrix products on the pooled ``(N, C)`` vectors and the GRN reduces over the spatial
  dimensions of the ``(N, C, H, W)`` tensor (no permutes in an exported graph);
- 3x3 convs of stride 1 with many channels (UperNet's FPN convs and bottleneck, mask heads) run
  as Winograd F(2x2, 3x3) (:mod:`replk_mm.ops.winograd`): 2.25x fewer multiply-adds;
- activations stay channels_last from the first conv to the last, so the depth-wise kernels, the
  LayerNorms and UniRepLKNet's channel-wise layers read them without layout conversions (mmcv's
  compiled ops, which may assume NCHW memory, get contiguous inputs).

The fused layers run oneDNN on float32 CPU tensors without autograd; on other devices, under
autograd, tracing, ``torch.compile`` and ONNX export they run the same folded convs through
``F.conv2d`` (so an exported graph holds the folded form: no BatchNormalization nodes).
"""
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.backbones.replknet import ConvFFN, RepLKBlock
from ..models.layers import GRN, ConvBN, SEBlock, UniRepLKNetBlock, reparameterize_model
from ..models.layers.batch_norm import UNFUSED_ACTIVATIONS, activation_name
from ..models.layers.reparam import fuse_bn_conv, fuse_conv_bn
from ..ops import DepthwiseConv2d
from ..ops.channel_scale import fused_scale_applies, grn_scale_, se_scale_
from ..ops.winograd import (pack_winograd_weight, winograd_applies, winograd_conv3x3,
                            winograd_tiles)


def _onednn_applies(x: torch.Tensor) -> bool:
    """Whether the oneDNN path runs ``x``: a plain float32 CPU tensor (no subclass such as the
    fake tensors of tracing), no autograd, no graph capture."""
    return (type(x) is torch.Tensor and x.device.type == 'cpu' and x.dtype == torch.float32
            and x.dim() == 4 and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.jit.is_tracing() and not torch.jit.is_scripting()
            and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export())


class FusedConv2d(nn.Module):
    """``act(conv(x) + bias [+ residual])`` with every batch norm folded into ``weight`` / ``bias``.

    ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``; on the oneDNN path the output is channels_last
    (any input format is accepted). Build it with :meth:`from_conv` or :meth:`from_linear`.

    Args:
        weight: ``(C_out, C_in / groups, kh, kw)``.
        bias: ``(C_out,)``.
        stride, padding, dilation: per axis.
        groups: conv groups.
        activation: ``'none'``, ``'relu'`` or ``'gelu'`` (exact), applied after the residual add.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: Tuple[int, int],
                 padding: Tuple[int, int], dilation: Tuple[int, int], groups: int,
                 activation: str = 'none') -> None:
        super().__init__()
        if activation not in UNFUSED_ACTIVATIONS:
            raise ValueError(f'activation must be one of {sorted(UNFUSED_ACTIVATIONS)}, '
                             f'got {activation!r}')
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups
        self.activation = activation
        self._packed: Optional[Tuple[tuple, torch.Tensor]] = None
        self._winograd_packed: Optional[Tuple[tuple, List[torch.Tensor]]] = None
        # a 3x3 conv, stride 1, padding 1, no groups: Winograd F(2x2, 3x3) where it pays
        self.winograd = (tuple(weight.shape[2:]) == (3, 3) and self.stride == [1, 1]
                         and self.padding == [1, 1] and self.dilation == [1, 1] and groups == 1)

    @classmethod
    def from_conv(cls, conv: nn.Module, before: Optional[nn.Module] = None,
                  after: Optional[nn.Module] = None, activation: str = 'none') -> 'FusedConv2d':
        """``act(after(conv(before(x))))`` as one layer; ``conv`` is an ``nn.Conv2d`` (zero
        padding) or a :class:`~replk_mm.ops.DepthwiseConv2d`, ``before`` / ``after`` eval-mode
        batch norms or None (``before`` needs a 1x1 conv without groups)."""
        if isinstance(conv, DepthwiseConv2d):
            k = conv.kernel_size
            geometry = ((1, 1), (k // 2, k // 2), (1, 1), conv.channels)
        else:
            geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
        weight, bias = conv.weight, conv.bias
        with torch.no_grad():
            if before is not None:
                weight, bias = fuse_bn_conv(before, weight, bias)
            if after is not None:
                weight, bias = fuse_conv_bn(weight, bias, after)
            if bias is None:
                bias = weight.new_zeros(weight.shape[0])
        return cls(weight, bias, *geometry, activation=activation)

    @classmethod
    def from_linear(cls, linear: nn.Linear, activation: str = 'none') -> 'FusedConv2d':
        """A linear layer over the channels of an NHWC tensor as a 1x1 conv over NCHW."""
        bias = linear.bias if linear.bias is not None else linear.weight.new_zeros(
            linear.out_features)
        return cls(linear.weight[:, :, None, None], bias, (1, 1), (0, 0), (1, 1), 1, activation)

    def __getstate__(self) -> dict:
        # the packed weights are opaque oneDNN tensors (no storage): never copied or pickled,
        # packed again on the next call
        return dict(self.__dict__, _packed=None, _winograd_packed=None)

    def _cached(self, slot: str, pack: Callable[[], object]) -> object:
        """``pack()``, kept in attribute ``slot`` until the weight changes (in place or
        replaced)."""
        key = (self.weight.data_ptr(), self.weight._version)
        cached = getattr(self, slot)
        if cached is None or cached[0] != key:
            cached = (key, pack())
            setattr(self, slot, cached)
        return cached[1]

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight in oneDNN's blocked layout, packed on the first call."""
        return self._cached('_packed', lambda: torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.weight.detach().to_mkldnn(), self.padding, self.stride, self.dilation,
            self.groups, list(x.shape)))

    def _winograd_weights(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The 16 Winograd-transformed weights packed for oneDNN on the first call (for the
        tiles of that ``x``; other sizes run them as they are)."""
        return self._cached('_winograd_packed',
                            lambda: pack_winograd_weight(self.weight, winograd_tiles(x)))

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``act(conv(x) + bias + residual)``; ``residual`` has the output's shape."""
        if _onednn_applies(x) and (residual is None or _onednn_applies(residual)):
            x = x.contiguous(memory_format=torch.channels_last)
            if self.winograd and residual is None and winograd_applies(x, self.weight):
                y = winograd_conv3x3(x, self._winograd_weights(x), self.bias,
                                     self.activation == 'relu')
                return torch.ops.aten.gelu_(y) if self.activation == 'gelu' else y
            weight = self._packed_weight(x)
            algorithm = 'none' if self.activation == 'gelu' else ''
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
                    self.activation, [], algorithm)
            residual = residual.contiguous(memory_format=torch.channels_last)
            # oneDNN fuses a ReLU after the add, not a GELU
            # (not the in-place variant, which writes into the residual: its sum post-op ran
            # oneDNN's reference kernel for 4096 -> 1024 channels at 7 x 7, 135 ms for 3.5 ms)
            y = torch.ops.mkldnn._convolution_pointwise.binary(
                x, residual, weight, self.bias, self.padding, self.stride, self.dilation,
                self.groups, 'add', None, 'relu' if self.activation == 'relu' else None, [], None)
            return F.gelu(y) if self.activation == 'gelu' else y
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                     self.groups)
        if residual is not None:
            y = y + residual
        return UNFUSED_ACTIVATIONS[self.activation](y)

    def extra_repr(self) -> str:
        out_c, in_c, kh, kw = self.weight.shape
        return (f'{in_c * self.groups}, {out_c}, kernel_size=({kh}, {kw}), stride={self.stride}, '
                f'padding={self.padding}, groups={self.groups}, activation={self.activation}')


class FusedResidualBlock(nn.Module):
    """``x + pw2(mid(pw1(pre(x))))`` with the add inside ``pw2``: RepLKNet's RepLK and ConvFFN
    blocks and UniRepLKNet's block in inference form. ``(N, C, H, W) -> (N, C, H, W)``."""

    def __init__(self, pre: nn.Module, pw1: FusedConv2d, mid: nn.Module,
                 pw2: FusedConv2d) -> None:
        super().__init__()
        self.pre, self.pw1, self.mid, self.pw2 = pre, pw1, mid, pw2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.mid(self.pw1(self.pre(x))), residual=x)


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone(), requires_grad=False)


class InferenceSE(nn.Module):
    """A :class:`~replk_mm.models.layers.SEBlock` for inference: ``(N, C, H, W) -> (N, C, H, W)``.

    Its input must be a fresh intermediate that nothing else reads: where no autograd or tracing
    sees it, it is scaled in place, through :func:`~replk_mm.ops.channel_scale.se_scale_` where
    that applies; otherwise the 1x1 convs run as matrix products on the pooled ``(N, C)`` vectors
    (no oneDNN call for a 1x1 image)."""

    def __init__(self, se: SEBlock) -> None:
        super().__init__()
        self.down_weight = _frozen(se.down.weight[:, :, 0, 0])
        self.down_bias = _frozen(se.down.bias)
        self.up_weight = _frozen(se.up.weight[:, :, 0, 0])
        self.up_bias = _frozen(se.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = _onednn_applies(x)  # (no autograd or tracing sees x)
        if inplace and fused_scale_applies(x):
            return se_scale_(x, self.down_weight, self.down_bias, self.up_weight, self.up_bias)
        s = F.relu(F.linear(x.mean((2, 3)), self.down_weight, self.down_bias))
        s = torch.sigmoid(F.linear(s, self.up_weight, self.up_bias))[:, :, None, None]
        return x.mul_(s) if inplace else x * s


class InferenceGRN(nn.Module):
    """A :class:`~replk_mm.models.layers.GRN` applied to ``(N, C, H, W)``: the norms reduce over
    the spatial dimensions directly (no permutes, none in an exported graph either), and the
    input is scaled once. Its input must be a fresh intermediate that nothing else reads: where no
    autograd or tracing sees it, it is scaled in place, through
    :func:`~replk_mm.ops.channel_scale.grn_scale_` where that applies."""

    def __init__(self, grn: GRN) -> None:
        super().__init__()
        self.gamma = _frozen(grn.gamma.reshape(-1))
        self.beta = None if grn.beta is None else _frozen(grn.beta.reshape(-1, 1, 1))
        self.eps = grn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inplace = _onednn_applies(x)  # (no autograd or tracing sees x)
        if inplace and fused_scale_applies(x):
            out = grn_scale_(x, self.gamma, self.eps)
        else:
            g = x.square().sum(dim=(2, 3)).sqrt()  # (N, C)
            scale = self.gamma * g / (g.mean(dim=1, keepdim=True) + self.eps) + 1
            out = x.mul_(scale[:, :, None, None]) if inplace else x * scale[:, :, None, None]
        return out if self.beta is None else out + self.beta


def _batch_norms(*norms: nn.Module) -> bool:
    return all(isinstance(n, _BatchNorm) and n.running_var is not None for n in norms)


def _replk_block(block: RepLKBlock) -> Optional[nn.Module]:
    act = activation_name(block.pw1.act)
    if (act is None or activation_name(block.lk_nonlinear) is None
            or not block.large_kernel.deployed
            or not _batch_norms(block.prelkb_bn, block.pw1.bn, block.pw2.bn)):
        return None
    pw1 = FusedConv2d.from_conv(block.pw1.conv, block.prelkb_bn, block.pw1.bn, act)
    pw2 = FusedConv2d.from_conv(block.pw2.conv, None, block.pw2.bn)
    lk_act = block.lk_nonlinear
    if type(lk_act) is nn.ReLU:
        lk_act = nn.ReLU(inplace=True)  # on the depth-wise output, which nothing else reads
    return FusedResidualBlock(nn.Identity(), pw1, nn.Sequential(block.large_kernel.lkb_reparam,
                                                                lk_act), pw2)


def _conv_ffn(block: ConvFFN) -> Optional[nn.Module]:
    act = activation_name(block.pw1.act)
    if act is None or not _batch_norms(block.preffn_bn, block.pw1.bn, block.pw2.bn):
        return None
    pw1 = FusedConv2d.from_conv(block.pw1.conv, block.preffn_bn, block.pw1.bn, act)
    pw2 = FusedConv2d.from_conv(block.pw2.conv, None, block.pw2.bn)
    return FusedResidualBlock(nn.Identity(), pw1, nn.Identity(), pw2)


def _unireplknet_block(block: UniRepLKNetBlock) -> Optional[nn.Module]:
    if not block.deployed:
        return None
    pw1 = FusedConv2d.from_linear(block.pwconv1[1], 'gelu')
    pw2 = FusedConv2d.from_linear(block.pwconv2[0])
    # the SE scales the depth-wise output and the GRN pw1's output: fresh tensors, in place
    return FusedResidualBlock(nn.Sequential(block.dwconv, InferenceSE(block.se)), pw1,
                              InferenceGRN(block.act[1]), pw2)


def _conv_bn(module: ConvBN) -> Optional[nn.Module]:
    act = activation_name(module.act)
    if act is None or not _batch_norms(module.bn):
        return None
    return FusedConv2d.from_conv(module.conv, None, module.bn, act)


def _zero_padded(conv: nn.Conv2d) -> bool:
    return conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)


def _plain_conv(conv: nn.Conv2d) -> Optional[nn.Module]:
    return FusedConv2d.from_conv(conv) if _zero_padded(conv) else None


def _conv_module(module: nn.Module) -> Optional[nn.Module]:
    """mmcv's ``ConvModule`` in the order conv -> norm -> act with a batch norm or none."""
    if (tuple(module.order) != ('conv', 'norm', 'act') or module.with_explicit_padding
            or not isinstance(module.conv, nn.Conv2d) or not _zero_padded(module.conv)):
        return None
    norm = module.norm if module.with_norm else None
    if norm is not None and not _batch_norms(norm):
        return None
    act = activation_name(module.activate if module.with_activation else None)
    if act is None:
        return None
    return FusedConv2d.from_conv(module.conv, None, norm, act)


Converter = Tuple[Callable[[nn.Module], bool], Callable[[nn.Module], Optional[nn.Module]]]


def _converters() -> List[Converter]:
    """``(matches, convert)`` pairs, the first match wins; ``convert`` returns None to keep the
    module (then its children are visited)."""
    from mmcv.cnn import ConvModule
    from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
    plain_convs = (nn.Conv2d, MMCVConv2d)  # exact types: a subclass may pad or compute otherwise
    return [(lambda m: isinstance(m, RepLKBlock), _replk_block),
            (lambda m: isinstance(m, ConvFFN), _conv_ffn),
            (lambda m: isinstance(m, UniRepLKNetBlock), _unireplknet_block),
            (lambda m: isinstance(m, ConvBN), _conv_bn),
            (lambda m: isinstance(m, ConvModule), _conv_module),
            (lambda m: type(m) in plain_convs, _plain_conv)]


def _convert(module: nn.Module, converters: List[Converter]) -> None:
    """Replace the convertible children of ``module`` in place, then visit the children."""
    for name, child in list(module.named_children()):
        matched = next((convert for matches, convert in converters if matches(child)), None)
        replacement = matched(child) if matched is not None else None
        if replacement is not None:
            setattr(module, name, replacement)
        _convert(replacement or child, converters)


def _contiguous_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _guard_mmcv_ops(model: nn.Module) -> None:
    """Give mmcv's compiled ops (``mmcv.ops``: RoIAlign, ...) contiguous NCHW inputs: some read
    the raw memory as NCHW and compute garbage from channels_last tensors (RoIAlign does)."""
    for module in model.modules():
        if (type(module).__module__.startswith('mmcv.ops.')
                and not getattr(module, '_replk_contiguous_inputs', False)):
            module.register_forward_pre_hook(_contiguous_inputs)
            module._replk_contiguous_inputs = True


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """Rewrite ``model`` in place into its inference form (see the module doc); returns it.

    The model is put in eval mode and re-parameterized first (a no-op for a deploy-form model);
    its outputs equal the deploy form's within float32 rounding. Idempotent: a second call
    changes nothing. The parameters of the fused layers are frozen (``requires_grad=False``):
    the result is for inference only, and its ``state_dict`` is not a checkpoint format (keep
    the deploy-form checkpoint).
    """
    reparameterize_model(model.eval())
    with torch.no_grad():
        _convert(model, _converters())
    _guard_mmcv_ops(model)
    return model.eval()
