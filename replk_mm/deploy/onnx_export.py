"""ONNX export of a backbone or a classifier in deploy form, verified with onnxruntime.

The model is re-parameterized, exported with PyTorch's ONNX exporter (opset >= 17, dynamic batch)
while the depth-wise dispatcher is forced to its PyTorch path (so each large kernel is a standard
``Conv`` with ``group = C``), then run by onnxruntime on batches of a size other than the traced
one and compared with PyTorch. Only a file that passed is moved onto the output path.
"""
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..models.layers.reparam import reparameterize_model
from ..ops import use_dw_impl
from .atomic import atomic_outputs
from .equivalence import example_input, model_kind, relative_error

MIN_OPSET = 17
DEFAULT_OPSET = 18
_TRACE_BATCH = 2
_CHECK_BATCHES = (1, 3)


class OnnxCheckError(RuntimeError):
    """The exported graph is not standard ONNX or does not compute what PyTorch computes."""


@dataclass
class OnnxResult:
    """What an export wrote and measured."""
    path: str
    kind: str
    opset: int
    input_shape: Tuple[int, ...]
    output_names: List[str]
    error: float
    node_counts: dict


class _Exportable(nn.Module):
    """The tensor-in, tensors-out function to export: a backbone's feature tuple or a classifier's
    logits ``(N, num_classes)``."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, x: torch.Tensor):
        if self.kind == 'classifier':
            return self.model(x, mode='tensor')
        return tuple(self.model(x))


def _output_names(module: nn.Module, x: torch.Tensor, kind: str) -> List[str]:
    with torch.no_grad():
        out = module(x)
    if kind == 'classifier':
        return ['logits']
    return [f'feat{i}' for i in range(len(out))]


def _graph_summary(path: str) -> Tuple[int, dict]:
    """The opset and ``{op_type: count}`` of the exported graph; raises on non-standard operators."""
    import onnx
    proto = onnx.load(path)
    graph = proto.graph
    custom = sorted({f'{n.domain}::{n.op_type}' for n in graph.node
                     if n.domain not in ('', 'ai.onnx')})
    if custom:
        raise OnnxCheckError(f'the exported graph uses non-standard operators {custom}; the '
                             'depth-wise convs must export as plain Conv')
    counts: dict = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    opset = next(o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx'))
    return opset, counts


def _ort_error(path: str, module: nn.Module, shape: Sequence[int]) -> float:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name
    worst = 0.0
    for i, batch in enumerate(_CHECK_BATCHES):
        x = example_input((batch, *shape[1:]), seed=100 + i)
        with torch.no_grad():
            reference = module(x)
        reference = [reference] if isinstance(reference, torch.Tensor) else list(reference)
        outputs = session.run(None, {input_name: x.numpy()})
        worst = max(worst, relative_error(reference, [torch.from_numpy(np.asarray(o))
                                                      for o in outputs]))
    return worst


def _export(module: nn.Module, x: torch.Tensor, path: str, names: List[str], opset: int) -> None:
    """The ``torch.export`` based exporter for opset >= 18; for 17 (which it cannot down-convert
    models with reductions to) the TorchScript one. Batch is dynamic in both."""
    if opset >= 18:
        batch = torch.export.Dim('batch', min=1, max=4096)
        torch.onnx.export(module, (x, ), path, input_names=['input'], output_names=names,
                          opset_version=opset, dynamic_shapes=({0: batch}, ),
                          external_data=False, dynamo=True, verbose=False)
        return
    dynamic_axes = {name: {0: 'batch'} for name in ['input', *names]}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)  # shape checks seen as constants
        torch.onnx.export(module, (x, ), path, input_names=['input'], output_names=names,
                          opset_version=opset, dynamic_axes=dynamic_axes, dynamo=False)


def export_onnx(model: nn.Module,
                out_file: str,
                input_shape: Sequence[int] = (1, 3, 224, 224),
                opset: int = DEFAULT_OPSET,
                tolerance: float = 1e-4,
                force: bool = False,
                kind: Optional[str] = None) -> OnnxResult:
    """Export ``model`` (a backbone or an mmpretrain classifier; re-parameterized here, in place)
    to ``out_file`` and verify it with onnxruntime.

    Args:
        model: the model, training or deploy form.
        out_file: the ``.onnx`` path (written only after the check passed).
        input_shape: ``(N, C, H, W)``; N is dynamic in the graph, H and W are fixed.
        opset: ONNX opset, >= 17.
        tolerance: the largest accepted ``max|a-b|/max|a|`` between onnxruntime and PyTorch.
        force: overwrite an existing ``out_file``.
        kind: ``'backbone'`` or ``'classifier'`` (detected when None).

    Raises:
        ValueError: a segmentor / detector, or an opset below 17.
        OnnxCheckError: non-standard operators or an error above ``tolerance``.
    """
    kind = kind or model_kind(model)
    if kind not in ('backbone', 'classifier'):
        raise ValueError(f'ONNX export supports backbones and classifiers, got a {kind}; export its '
                         'backbone, or use MMDeploy for the full segmentor / detector')
    if opset < MIN_OPSET:
        raise ValueError(f'opset {opset} is too old: use {MIN_OPSET} or newer')
    module = _Exportable(reparameterize_model(model.eval()), kind).eval()
    shape = tuple(input_shape)
    x = example_input((_TRACE_BATCH, *shape[1:]))
    names = _output_names(module, x, kind)
    with atomic_outputs([out_file], force=force) as (tmp,), use_dw_impl('torch'):
        _export(module, x, tmp, names, opset)
        written_opset, counts = _graph_summary(tmp)
        if written_opset < MIN_OPSET:
            raise OnnxCheckError(f'the exporter wrote opset {written_opset} < {MIN_OPSET}')
        error = _ort_error(tmp, module, shape)
        if not error <= tolerance:
            raise OnnxCheckError(f'onnxruntime differs from PyTorch: relative error {error:.3e} > '
                                 f'{tolerance:.1e}; nothing was written')
    return OnnxResult(path=out_file, kind=kind, opset=written_opset, input_shape=shape,
                      output_names=names, error=error, node_counts=counts)
