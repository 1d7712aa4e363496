"""Building blocks shared by the backbones: BN and conv-BN, re-parameterizable convs, the reparam
protocol."""
from .batch_norm import BatchNorm2d, BatchNormXd, build_norm, use_package_batch_norm
from .conv_bn import ConvBN
from .dilated_reparam import DilatedReparamBlock
from .grn import GRN
from .large_kernel import ReparamLargeKernelConv
from .layer_norm import LayerNorm2d
from .layout import ToChannelsFirst, ToChannelsLast
from .reparam import (ReparamMixin, dilate_kernel, fuse_bn_conv, fuse_conv_bn, pad_kernel,
                      reparameterize_model)
from .se import SEBlock
from .unireplknet_block import UniRepLKNetBlock

__all__ = [
    'BatchNorm2d', 'BatchNormXd', 'build_norm', 'use_package_batch_norm', 'ConvBN',
    'ReparamLargeKernelConv', 'ReparamMixin', 'dilate_kernel', 'fuse_bn_conv', 'fuse_conv_bn',
    'pad_kernel', 'reparameterize_model', 'DilatedReparamBlock', 'GRN', 'LayerNorm2d', 'ToChannelsFirst',
    'ToChannelsLast', 'SEBlock', 'UniRepLKNetBlock'
]
