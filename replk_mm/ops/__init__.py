"""Operators of replk_mm: the depth-wise convolution entry point used by every large-kernel layer,
and training-mode batch norm (used by ``replk_mm.models.layers.BatchNorm2d``)."""
from .batch_norm import use_bn_impl
from .depthwise_conv import (DepthwiseConv2d, available_dw_impls, clear_dw_impl_cache,
                             depthwise_conv2d, dw_impl_choices, set_dw_impl_choices,
                             use_dw_impl)

__all__ = [
    'depthwise_conv2d', 'DepthwiseConv2d', 'available_dw_impls', 'clear_dw_impl_cache',
    'dw_impl_choices', 'set_dw_impl_choices', 'use_dw_impl', 'use_bn_impl'
]
