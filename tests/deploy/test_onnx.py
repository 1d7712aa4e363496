"""ONNX export in inference form, checked by onnxruntime (tools/export_onnx.py, replk_mm.deploy)."""
import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config
from mmseg.models.utils import resize

from replk_mm.checkpoint import load_checkpoint_file
from replk_mm.deploy import build_model
from replk_mm.deploy.equivalence import example_input, relative_error
from replk_mm.deploy.onnx_export import OnnxCheckError, export_onnx
from replk_mm.models import UniRepLKNet
from replk_mm.models.backbones.unireplknet import resolve_arch

from .conftest import ROOT, randomize_norms, run_tool


def _trained(cfg_path: Path) -> torch.nn.Module:
    model = build_model(Config.fromfile(str(cfg_path))).eval()
    model.load_state_dict(load_checkpoint_file(cfg_path.with_suffix('.pth'))['state_dict'])
    return model


def _large_dw_convs(path: Path) -> list:
    """(group, kernel) of every Conv with a kernel larger than 5: the fused large kernels."""
    convs = []
    for node in onnx.load(str(path)).graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == 'Conv' and attrs['kernel_shape'][0] > 5:
            convs.append((attrs['group'], attrs['kernel_shape'][0]))
    return convs


def test_classifier_export_tool(classifier_case: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / 'cls.onnx'
    args = [classifier_case, classifier_case.with_suffix('.pth'), out, '--shape', 64, 64,
            '--opset', 17]
    assert run_tool('export_onnx.py', args, monkeypatch) == 0
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    # One standard grouped Conv per fused large kernel, no second (small-kernel) branch.
    assert sorted(_large_dw_convs(out)) == [(8, 13), (16, 9), (16, 11), (32, 7)]

    # Independently of the tool's own check: onnxruntime vs the training-form PyTorch model.
    x = example_input((5, 3, 64, 64), seed=3)
    logits, = ort.InferenceSession(str(out)).run(None, {'input': x.numpy()})
    with torch.no_grad():
        reference = _trained(classifier_case)(x, mode='tensor')
    assert logits.shape == (5, 5)
    assert relative_error([reference], [torch.from_numpy(np.asarray(logits))]) <= 1e-4
    assert run_tool('export_onnx.py', args, monkeypatch) == 1  # exists, no --force


def test_backbone_export_and_failed_check(backbone_case: Path, tmp_path: Path) -> None:
    out = tmp_path / 'backbone.onnx'
    with pytest.raises(OnnxCheckError, match='nothing was written'):
        export_onnx(_trained(backbone_case), str(out), (1, 3, 64, 64), opset=17, tolerance=-1.0)
    assert list(tmp_path.glob('*.onnx')) == [] and not list(tmp_path.glob('.backbone*'))
    with pytest.raises(ValueError, match='opset 16'):
        export_onnx(_trained(backbone_case), str(out), (1, 3, 64, 64), opset=16)

    result = export_onnx(_trained(backbone_case), str(out), (1, 3, 64, 64))  # torch.export
    assert result.opset == 18 and result.output_names == ['feat0', 'feat1', 'feat2', 'feat3']
    assert 0 <= result.error <= 1e-4
    outputs = ort.InferenceSession(str(out)).run(None, {'input': example_input((4, 3, 64, 64)).numpy()})
    assert [o.shape for o in outputs] == [(4, 8, 16, 16), (4, 16, 8, 8), (4, 16, 4, 4), (4, 32, 2, 2)]


def test_segmentor_export(tmp_path: Path) -> None:
    """A whole UperNet in inference form: logits at the input size, no BatchNormalization left,
    checked by onnxruntime and OpenVINO (a test requirement) before the file is written."""
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(ROOT / 'configs/demo/upernet_replknet-demo_ade20k-demo.py')))
    randomize_norms(model)
    reference = copy.deepcopy(model).eval()
    out = tmp_path / 'seg.onnx'
    result = export_onnx(model, str(out), (1, 3, 64, 64))
    assert result.kind == 'segmentor' and result.output_names == ['logits']
    assert result.error <= 1e-4 and result.openvino_error is not None
    assert result.openvino_error <= 1e-4
    assert 'BatchNormalization' not in result.node_counts
    x = example_input((2, 3, 64, 64), seed=5)
    logits, = ort.InferenceSession(str(out)).run(None, {'input': x.numpy()})
    with torch.no_grad():  # the deploy-form PyTorch model, resized as mmseg's predict does
        expected = resize(reference.decode_head(reference.extract_feat(x)), size=(64, 64),
                          mode='bilinear', align_corners=False)
    assert logits.shape == (2, 5, 64, 64)
    assert relative_error([expected], [torch.from_numpy(logits)]) <= 1e-4


def test_detector_export_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FCOS: the bbox head's raw outputs per FPN level (class scores, box distances, centerness)."""
    out = tmp_path / 'det.onnx'
    args = [ROOT / 'configs/demo/fcos_replknet-demo_coco-demo.py', 'none', out, '--shape', 64, 64]
    assert run_tool('export_onnx.py', args, monkeypatch) == 0
    session = ort.InferenceSession(str(out))
    names = [o.name for o in session.get_outputs()]
    assert names == [f'out{i}_level{j}' for i in range(3) for j in range(5)]
    outputs = session.run(None, {'input': example_input((1, 3, 64, 64)).numpy()})
    strides = (4, 8, 16, 32, 64)
    assert [o.shape for o in outputs] == [(1, c, max(64 // s, 1), max(64 // s, 1))
                                          for c in (3, 4, 1) for s in strides]


def test_unireplknet_export_has_no_per_block_transposes(tmp_path: Path) -> None:
    """UniRepLKNet's GRN and SE export on the NCHW tensor: no Transpose pair per block (the ONNX
    runtimes would run them as copies), only those around the LayerNorms; checked by onnxruntime
    and OpenVINO."""
    depths, dims, kernels = resolve_arch('A')
    kernels = (kernels[0], kernels[1], kernels[2][:3], kernels[3])
    torch.manual_seed(0)
    model = UniRepLKNet(dict(depths=tuple(len(k) for k in kernels),
                             dims=tuple(max(8, d // 32) for d in dims), kernel_sizes=kernels))
    randomize_norms(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('gamma', 'beta')):
                p.normal_(0, 0.5)
    result = export_onnx(model, str(tmp_path / 'uni.onnx'), (1, 3, 64, 64))
    assert result.error <= 1e-4 and result.openvino_error <= 1e-4
    counts = result.node_counts  # a channels-first LayerNorm is a Transpose pair around it
    assert counts.get('Transpose', 0) <= 2 * counts['LayerNormalization']
    assert not {'BatchNormalization', 'MatMul'} & set(result.node_counts)
