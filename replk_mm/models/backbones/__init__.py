"""Backbones registered in ``replk_mm.registry.MODELS``."""
from .replknet import RepLKNet

__all__ = ['RepLKNet']
