"""Does the deploy form compute the training form? Inputs and outputs of each kind of model.

A model is one of four kinds (:func:`model_kind`): an mmseg segmentor, an mmdet detector, an
mmpretrain classifier or a bare backbone. For each, :func:`model_outputs` returns every tensor the
model computes densely from an image batch ``(N, 3, H, W)``:

- segmentor: the backbone(+neck) features and the decode head's logits;
- detector: the backbone(+neck) features and the dense head outputs (RPN head of a two-stage
  detector, bbox head of a one-stage one: the parts before any sorting / NMS, which would turn a
  rounding difference into a different box list);
- classifier: the features and the logits;
- backbone: its tuple of features.

The deploy form is equivalent when :func:`relative_error` (``max|a - b| / max|a|`` over every
output) is within the tolerance.
"""
import copy
import statistics
import sys
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..models.layers.reparam import reparameterize_model

KINDS = ('segmentor', 'detector', 'classifier', 'backbone')
FLOAT32_TOLERANCE = 1e-4
FLOAT64_TOLERANCE = 1e-10


def model_kind(model: nn.Module) -> str:
    """One of :data:`KINDS` (checks only the OpenMMLab packages already imported)."""
    if 'mmseg' in sys.modules:
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'segmentor'
    if 'mmdet' in sys.modules:
        from mmdet.models.detectors import BaseDetector
        if isinstance(model, BaseDetector):
            return 'detector'
    if 'mmpretrain' in sys.modules:
        from mmpretrain.models.classifiers import BaseClassifier
        if isinstance(model, BaseClassifier):
            return 'classifier'
    return 'backbone'


def default_input_shape(kind: str) -> Tuple[int, int, int, int]:
    """``(N, C, H, W)`` of the check input: ImageNet size for classifiers and backbones, a
    downstream-sized image for segmentors and detectors."""
    if kind not in KINDS:
        raise ValueError(f'unknown model kind {kind!r}; expected one of {KINDS}')
    return (1, 3, 512, 512) if kind in ('segmentor', 'detector') else (1, 3, 224, 224)


def example_input(shape: Sequence[int], seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reproducible standard-normal batch of ``shape`` (a normalized image batch)."""
    if len(shape) != 4:
        raise ValueError(f'the check input needs a shape (N, C, H, W), got {tuple(shape)}')
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype)


def _flatten(outputs: Any) -> List[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in _flatten(v)]
    if isinstance(outputs, (list, tuple)):
        return [t for v in outputs for t in _flatten(v)]
    return []  # None and non-tensor entries (e.g. absent optional heads)


def inference_forward(model: nn.Module, kind: Optional[str] = None) -> Callable[[torch.Tensor], Any]:
    """The function that maps an image batch to the model's dense outputs (what is timed)."""
    kind = kind or model_kind(model)
    if kind == 'segmentor':
        def forward(x: torch.Tensor) -> Any:
            feats = model.extract_feat(x)
            return feats, model.decode_head.forward(feats)
    elif kind == 'detector':
        head = getattr(model, 'rpn_head', None) or getattr(model, 'bbox_head', None)

        def forward(x: torch.Tensor) -> Any:
            feats = model.extract_feat(x)
            return feats, head(feats) if head is not None else None
    elif kind == 'classifier':
        def forward(x: torch.Tensor) -> Any:
            feats = model.extract_feat(x)
            return feats, model.head(feats) if getattr(model, 'with_head', False) else None
    else:
        forward = model
    return forward


@torch.no_grad()
def model_outputs(model: nn.Module, x: torch.Tensor, kind: Optional[str] = None) -> List[torch.Tensor]:
    """Every dense output of ``model`` (eval mode) on ``x``, flattened to a list of tensors."""
    if model.training:
        raise RuntimeError('compare models in eval mode: call model.eval() first (BN uses '
                           'running statistics only in eval mode, and drop path is off)')
    return [t.detach() for t in _flatten(inference_forward(model, kind)(x))]


def relative_error(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> float:
    """``max over outputs of max|a - b| / max|a|`` (absolute error where ``a`` is all zeros)."""
    if len(reference) != len(outputs):
        raise ValueError(f'the models return different numbers of outputs: {len(reference)} vs '
                         f'{len(outputs)}')
    worst = 0.0
    for i, (a, b) in enumerate(zip(reference, outputs)):
        if a.shape != b.shape:
            raise ValueError(f'output {i} has shape {tuple(a.shape)} in the training form but '
                             f'{tuple(b.shape)} in the deploy form')
        diff = (a.double() - b.double()).abs().max().item()
        scale = a.double().abs().max().item()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def float64_error(model: nn.Module, x: torch.Tensor, kind: Optional[str] = None) -> float:
    """:func:`relative_error` of re-parameterizing a float64 copy of the training-form ``model``:
    separates the arithmetic of the fusion (~1e-15 when exact) from float32 rounding."""
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    reference = model_outputs(model64, x64, kind)
    return relative_error(reference, model_outputs(reparameterize_model(model64), x64, kind))


@torch.no_grad()
def cpu_latency_ms(models: Sequence[nn.Module], x: torch.Tensor, kind: Optional[str] = None,
                   runs: int = 5, warmup: int = 1) -> List[float]:
    """Median wall time (ms) of :func:`inference_forward` of each model on ``x``.

    The models run interleaved (one call of each per round, ``warmup`` rounds untimed), so a
    shared, noisy machine slows them alike and their ratio stays meaningful.
    """
    forwards = [inference_forward(model, kind) for model in models]
    times: List[List[float]] = [[] for _ in models]
    for round_ in range(warmup + max(runs, 1)):
        for forward, record in zip(forwards, times):
            start = time.perf_counter()
            forward(x)
            if round_ >= warmup:
                record.append(1e3 * (time.perf_counter() - start))
    return [statistics.median(record) for record in times]
