"""Operators of replk_mm: the depth-wise convolution entry point used by every large-kernel layer."""
from .depthwise_conv import DepthwiseConv2d, depthwise_conv2d

__all__ = ['depthwise_conv2d', 'DepthwiseConv2d']
