"""Models of replk_mm: backbones and their building blocks."""
from .backbones import *  # noqa: F401,F403
from .backbones import __all__ as _backbones

__all__ = list(_backbones)
