"""replk_mm: RepLKNet and UniRepLKNet for the OpenMMLab 2.x stack.

Importing the package registers its modules under the MMEngine scope ``replk_mm`` and makes
MMEngine load checkpoints safely (``weights_only=True`` with an allow-list; see
:mod:`replk_mm.checkpoint`).
"""
from . import compat  # noqa: F401  (applies the stack's workarounds first)
from .registry import MODELS  # noqa: F401
from .version import __version__

__all__ = ['__version__', 'MODELS']
