"""Safe checkpoint loading and state-dict loading with a full report.

Checkpoints are unpickled with ``torch.load(weights_only=True)``: only tensors, containers and an
explicit allow-list of the metadata types that real MMEngine / mmseg / mmdet / mmpretrain
checkpoints contain can be rebuilt. A file that asks for anything else (a pickle that would run
code) is refused with :class:`UnsafeCheckpointError`. A trusted file may be loaded with full
pickle by passing ``trust=True`` or by setting the environment variable
``REPLK_MM_TRUST_CHECKPOINTS=1`` (never the default).

A file that is not a checkpoint, or one cut short (a copy or a write that was killed), is reported
as :class:`CorruptCheckpointError` naming the file and what is wrong with it; every tool and
MMEngine's loaders go through :func:`load_checkpoint_file`, so this is decided here only.
"""
import os
import pickle
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, MMLogger

TRUST_ENV = 'REPLK_MM_TRUST_CHECKPOINTS'

# HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, name).
_HISTORY_BUFFER_METHODS = frozenset(('min', 'max', 'mean', 'current'))


def _restricted_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as the unpickler may call it: only HistoryBuffer's statistics methods."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) while unpickling: only '
        f'HistoryBuffer.{{{",".join(sorted(_HISTORY_BUFFER_METHODS))}}} are allowed')


def _numpy_globals() -> List[Any]:
    multiarray = np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


# Exactly the non-tensor types found in checkpoints saved by MMEngine's Runner for mmseg, mmdet and
# mmpretrain models (meta, message_hub with HistoryBuffers of numpy arrays, scheduler states).
SAFE_GLOBALS: List[Any] = [
    HistoryBuffer, (_restricted_getattr, 'builtins.getattr'), *_numpy_globals()
]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asked the unpickler for something outside the allow-list."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be read: empty, truncated, damaged or not a PyTorch file."""


_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_MAGIC = b'\x80'  # PyTorch's legacy (pre-1.6) format is a plain pickle stream


def checkpoint_file_problem(path: str, verify_data: bool = False) -> Optional[str]:
    """What is wrong with the checkpoint file ``path`` (None when nothing is found).

    Reads the archive's directory at the end of the file (a truncated file has none); with
    ``verify_data`` also every member's CRC (reads the whole file).
    """
    size = os.path.getsize(path)
    if size == 0:
        return 'empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        return None  # legacy format: only unpickling tells
    if head != _ZIP_MAGIC:
        return f'not a PyTorch file (it starts with {head!r}, not a zip archive or a pickle)'
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
                return 'a zip archive but not a PyTorch file (no data.pkl in it)'
            damaged = archive.testzip() if verify_data else None
    except (zipfile.BadZipFile, OSError, EOFError):
        return (f'truncated ({size} bytes; the end of the archive is missing: a copy or write '
                'that was cut short)')
    if damaged:
        return f'damaged (the CRC of its member {damaged} does not match)'
    return None


def _trusted(trust: Optional[bool]) -> bool:
    if trust is not None:
        return trust
    return os.environ.get(TRUST_ENV, '0') == '1'


def register_safe_globals() -> None:
    """Allow the metadata types of OpenMMLab checkpoints in every ``weights_only`` load."""
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _unreadable(err: BaseException, weights_only: bool) -> Optional[str]:
    """Why ``torch.load`` could not read the file, if ``err`` says the bytes are bad; None for
    the refusals of the ``weights_only`` unpickler and for unrelated errors."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, EOFError) or 'truncated' in text or 'PytorchStreamReader' in text:
        return f'PyTorch cannot read it ({text})'
    if isinstance(err, (OSError, zipfile.BadZipFile)):
        return f'reading it failed ({text})'
    if isinstance(err, pickle.UnpicklingError) and not weights_only:
        return f'its pickle cannot be read ({text})'
    return None


def load_checkpoint_file(filename: Any,
                         map_location: Any = 'cpu',
                         trust: Optional[bool] = None) -> Any:
    """Load a checkpoint file (path or file-like) without executing code from it.

    Args:
        filename: path or binary file object.
        map_location: as for :func:`torch.load`.
        trust: True loads with full pickle (only for files you trust); None follows
            ``REPLK_MM_TRUST_CHECKPOINTS``.

    Raises:
        UnsafeCheckpointError: the file needs a type outside the allow-list.
        CorruptCheckpointError: the file is empty, truncated, damaged or not a PyTorch file.
    """
    if isinstance(filename, (str, os.PathLike)):
        filename = os.path.expanduser(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'checkpoint {filename} does not exist')
        problem = checkpoint_file_problem(filename)
        if problem:
            raise CorruptCheckpointError(f'checkpoint {filename} is {problem}')
    weights_only = not _trusted(trust)
    try:
        return torch.load(filename, map_location=map_location, weights_only=weights_only)
    except (EOFError, RuntimeError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        unreadable = _unreadable(err, weights_only)
        if unreadable:
            raise CorruptCheckpointError(
                f'checkpoint {filename} is damaged or truncated: {unreadable}') from None
        if not (weights_only and isinstance(err, pickle.UnpicklingError)):
            raise
        raise UnsafeCheckpointError(
            f'refused to load checkpoint {filename}: it contains objects outside the safe '
            f'allow-list, and unpickling them could run arbitrary code ({err}). If you trust '
            f'this file, set {TRUST_ENV}=1 (or pass trust=True / --trust-checkpoint) to load it '
            'with full pickle.') from None


def extract_state_dict(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The model weights of a checkpoint: unwraps ``state_dict`` / ``model`` / ``module.``."""
    state_dict = checkpoint
    for wrapper in ('state_dict', 'model'):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict):
        raise TypeError(f'expected a state dict, got {type(state_dict).__name__}')
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_state_dict_checked(module: nn.Module,
                            state_dict: Dict[str, torch.Tensor],
                            strict: bool = False,
                            source: str = 'checkpoint',
                            logger: Optional[MMLogger] = None) -> Tuple[List[str], List[str]]:
    """Load ``state_dict`` into ``module``, reporting every key that did not match by name.

    Shape mismatches are always errors (naming the key and both shapes). Missing and unexpected keys
    are logged as warnings, or raised when ``strict``.

    Returns:
        ``(missing_keys, unexpected_keys)``.
    """
    own = module.state_dict()
    mismatched = [
        f'{k}: {source} {tuple(v.shape)} vs model {tuple(own[k].shape)}'
        for k, v in state_dict.items() if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(f'shape mismatch loading {source} into {type(module).__name__}: ' +
                         '; '.join(mismatched))
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    if strict and (missing or unexpected):
        raise KeyError(
            f'{source} does not match {type(module).__name__}: missing keys {missing}, '
            f'unexpected keys {unexpected}. Check that the config (arch, deploy=...) matches '
            'the checkpoint.')
    module.load_state_dict(state_dict, strict=False)
    logger = logger or MMLogger.get_current_instance()
    if missing:
        logger.warning(f'{source}: missing keys in the checkpoint: {missing}')
    if unexpected:
        logger.warning(f'{source}: keys in the checkpoint that match nothing: {unexpected}')
    return missing, unexpected
