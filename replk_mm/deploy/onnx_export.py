"""ONNX export of a backbone, classifier, segmentor or detector in inference form, verified with
onnxruntime.

The model is re-parameterized and rewritten by :func:`~replk_mm.deploy.optimize_for_inference`
(batch norms folded into the convs), exported with PyTorch's ONNX exporter (opset >= 17, dynamic
batch) while the depth-wise dispatcher is forced to its PyTorch path (so each large kernel is a
standard ``Conv`` with ``group = C``), then run by onnxruntime on batches of a size other than the
traced one and compared with PyTorch. Only a file that passed is moved onto the output path.

What the graph computes (:class:`InferenceModule`): a backbone's features ``feat{i}``; a
classifier's ``logits`` ``(N, num_classes)``; a segmentor's decode-head ``logits`` resized to the
input size ``(N, num_classes, H, W)`` (bilinear, the head's ``align_corners``: the
``seg_logits`` before the arg-max); a detector's raw dense-head outputs before any decoding or
NMS, ``out{i}_level{j}`` for the head's ``i``-th output at FPN level ``j`` (the bbox head of a
one-stage detector, e.g. FCOS: ``out0`` class scores, ``out1`` box distances, ``out2``
centerness; the RPN head of a two-stage one: ``out0`` objectness, ``out1`` box deltas, whose RoI
stage needs the proposals after NMS and stays in PyTorch).
"""
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..ops import use_dw_impl
from .atomic import atomic_outputs
from .equivalence import KINDS, example_input, model_kind, relative_error
from .inference import optimize_for_inference

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
    openvino_error: Optional[float] = None


class InferenceModule(nn.Module):
    """The tensor-in, tensors-out function that is exported (and timed against the ONNX runtimes
    by ``tools/analysis_tools/benchmark_backbone.py``): ``(N, 3, H, W)`` -> the outputs of
    ``kind`` listed in the module doc, as a tuple of tensors.

    Args:
        model: a backbone, mmpretrain classifier, mmseg segmentor or mmdet detector (eval mode).
        kind: one of ``'backbone'``, ``'classifier'``, ``'segmentor'``, ``'detector'``.
    """

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
        self.model = model
        self.kind = kind

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.kind == 'classifier':
            return (self.model(x, mode='tensor'), )
        if self.kind == 'segmentor':
            from mmseg.models.utils import resize
            head = self.model.decode_head
            logits = head(self.model.extract_feat(x))
            return (resize(logits, size=x.shape[2:], mode='bilinear',
                           align_corners=head.align_corners), )
        if self.kind == 'detector':
            head = getattr(self.model, 'rpn_head', None) or self.model.bbox_head
            return tuple(t for outputs in head(self.model.extract_feat(x)) for t in outputs)
        return tuple(self.model(x))

    def output_names(self, x: torch.Tensor) -> List[str]:
        """The graph's output names for input ``x``."""
        if self.kind in ('classifier', 'segmentor'):
            return ['logits']
        if self.kind == 'backbone':
            return [f'feat{i}' for i in range(len(self(x)))]
        head = getattr(self.model, 'rpn_head', None) or self.model.bbox_head
        with torch.no_grad():
            outputs = head(self.model.extract_feat(x))
        return [f'out{i}_level{j}' for i, levels in enumerate(outputs) for j in range(len(levels))]


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
            reference = list(module(x))
        outputs = session.run(None, {input_name: x.numpy()})
        worst = max(worst, relative_error(reference, [torch.from_numpy(np.asarray(o))
                                                      for o in outputs]))
    return worst


def openvino_runtime():
    """The ``openvino`` module, or None when it is not installed (``pip install -e .[deploy]``)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def compile_openvino(path: str, shape: Sequence[int], threads: Optional[int] = None,
                     profile: bool = False):
    """The ONNX file compiled by OpenVINO for its CPU at a static input ``shape``, float32
    (``INFERENCE_PRECISION_HINT``; the default may be bf16), latency hint; ``threads`` sets
    ``INFERENCE_NUM_THREADS``; ``profile`` turns on the per-layer counters (``PERF_COUNT``, read
    from an infer request's ``profiling_info``). Call the result with a NumPy batch."""
    ov = openvino_runtime()
    core = ov.Core()
    graph = core.read_model(path)
    graph.reshape({graph.inputs[0].any_name: list(shape)})
    config = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_PRECISION_HINT': 'f32'}
    if threads:
        config['INFERENCE_NUM_THREADS'] = threads
    if profile:
        config['PERF_COUNT'] = True
    return core.compile_model(graph, 'CPU', config)


def _openvino_error(path: str, module: nn.Module, shape: Sequence[int]) -> Optional[float]:
    """What :func:`_ort_error` measures, with OpenVINO at batch ``_CHECK_BATCHES[0]``; None when
    OpenVINO is not installed."""
    if openvino_runtime() is None:
        return None
    x = example_input((_CHECK_BATCHES[0], *shape[1:]), seed=100)
    compiled = compile_openvino(path, x.shape)
    outputs = compiled(x.numpy())
    with torch.no_grad():
        reference = list(module(x))
    return relative_error(reference, [torch.from_numpy(np.asarray(outputs[o]))
                                      for o in compiled.outputs])


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
    """Export ``model`` (rewritten here, in place, into its inference form) to ``out_file`` and
    verify it with onnxruntime.

    Args:
        model: a backbone, mmpretrain classifier, mmseg segmentor or mmdet detector, training,
            deploy or inference form.
        out_file: the ``.onnx`` path (written only after the check passed).
        input_shape: ``(N, C, H, W)``; N is dynamic in the graph, H and W are fixed.
        opset: ONNX opset, >= 17.
        tolerance: the largest accepted ``max|a-b|/max|a|`` between onnxruntime and PyTorch.
        force: overwrite an existing ``out_file``.
        kind: ``'backbone'``, ``'classifier'``, ``'segmentor'`` or ``'detector'`` (detected when
            None).

    Raises:
        ValueError: an unknown kind or an opset below 17.
        OnnxCheckError: non-standard operators or an error above ``tolerance``.
    """
    kind = kind or model_kind(model)
    if opset < MIN_OPSET:
        raise ValueError(f'opset {opset} is too old: use {MIN_OPSET} or newer')
    module = InferenceModule(optimize_for_inference(model), kind).eval()
    shape = tuple(input_shape)
    x = example_input((_TRACE_BATCH, *shape[1:]))
    names = module.output_names(x)
    with atomic_outputs([out_file], force=force) as (tmp,), use_dw_impl('torch'):
        _export(module, x, tmp, names, opset)
        written_opset, counts = _graph_summary(tmp)
        if written_opset < MIN_OPSET:
            raise OnnxCheckError(f'the exporter wrote opset {written_opset} < {MIN_OPSET}')
        error = _ort_error(tmp, module, shape)
        ov_error = _openvino_error(tmp, module, shape)
        for runtime, err in (('onnxruntime', error), ('OpenVINO', ov_error)):
            if err is not None and not err <= tolerance:
                raise OnnxCheckError(f'{runtime} differs from PyTorch: relative error {err:.3e} '
                                     f'> {tolerance:.1e}; nothing was written')
    return OnnxResult(path=out_file, kind=kind, opset=written_opset, input_shape=shape,
                      output_names=names, error=error, node_counts=counts,
                      openvino_error=ov_error)
