"""Building blocks shared by the backbones: conv-BN, re-parameterizable convs, the reparam protocol."""
from .conv_bn import ConvBN
from .large_kernel import ReparamLargeKernelConv
from .reparam import (ReparamMixin, dilate_kernel, fuse_conv_bn, pad_kernel,
                      reparameterize_model)

__all__ = [
    'ConvBN', 'ReparamLargeKernelConv', 'ReparamMixin', 'dilate_kernel', 'fuse_conv_bn',
    'pad_kernel', 'reparameterize_model'
]
