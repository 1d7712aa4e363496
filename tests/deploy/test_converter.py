"""replk_mm.deploy.convert_checkpoint and tools/deploy.py: equivalence, outputs, refusals."""
import os
import pickle
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from replk_mm.checkpoint import UnsafeCheckpointError, load_checkpoint_file
from replk_mm.deploy import EquivalenceError, build_model, convert_checkpoint
from replk_mm.deploy.equivalence import example_input, model_outputs, relative_error
from replk_mm.models.layers import ReparamLargeKernelConv

from .conftest import run_tool

SHAPE = (1, 3, 64, 64)


def _outputs(cfg_path: str, ckpt_path: str):
    model = build_model(Config.fromfile(cfg_path)).eval()
    model.load_state_dict(load_checkpoint_file(ckpt_path)['state_dict'], strict=True)
    return model_outputs(model, example_input((2, 3, 96, 64), seed=7))


def test_classifier_deploy_matches_training_form(classifier_case: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / 'out'
    result = convert_checkpoint(str(classifier_case), str(classifier_case.with_suffix('.pth')),
                                str(out_dir), input_shape=SHAPE, check_float64=True,
                                latency_runs=1)
    assert result.kind == 'classifier'
    assert result.reparameterized == {'ReparamLargeKernelConv': 4}
    assert 0 < result.error <= 1e-4 and result.error_float64 <= 1e-10
    assert result.params_after < result.params_before
    assert Path(result.checkpoint).name == 'cls_tiny_deploy.pth'
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(result.checkpoint).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    ckpt = load_checkpoint_file(result.checkpoint)
    assert set(ckpt) == {'state_dict', 'meta'}  # no optimizer state
    assert ckpt['meta']['dataset_meta']['classes'] == list('abcde')
    assert ckpt['meta']['deploy']['relative_error'] == result.error
    assert not any('lkb_origin' in k or 'small_conv' in k for k in ckpt['state_dict'])
    deploy_cfg = Config.fromfile(result.config)
    assert deploy_cfg.model.backbone.deploy is True and deploy_cfg.load_from is None

    # The written pair computes the training form on a new input (other batch and size).
    reference = _outputs(str(classifier_case), str(classifier_case.with_suffix('.pth')))
    assert relative_error(reference, _outputs(result.config, result.checkpoint)) <= 1e-4
    assert 'float32 error' in result.summary() and 'CPU latency' in result.summary()

    with pytest.raises(FileExistsError, match='--force'):
        convert_checkpoint(str(classifier_case), str(classifier_case.with_suffix('.pth')),
                           str(out_dir), input_shape=SHAPE)
    mtime = os.path.getmtime(result.checkpoint)
    convert_checkpoint(str(classifier_case), str(classifier_case.with_suffix('.pth')),
                       str(out_dir), input_shape=SHAPE, force=True, latency_runs=1)
    assert os.path.getmtime(result.checkpoint) >= mtime


def test_bare_backbone_tool(backbone_case: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / 'out'
    args = [backbone_case, backbone_case.with_suffix('.pth'), out_dir, '--shape', 64, 64,
            '--runs', 1]
    assert run_tool('deploy.py', args, monkeypatch) == 0
    assert sorted(os.listdir(out_dir)) == ['backbone_tiny_deploy.pth', 'backbone_tiny_deploy.py']
    assert Config.fromfile(str(out_dir / 'backbone_tiny_deploy.py')).model.deploy is True
    reference = _outputs(str(backbone_case), str(backbone_case.with_suffix('.pth')))
    deployed = _outputs(str(out_dir / 'backbone_tiny_deploy.py'),
                        str(out_dir / 'backbone_tiny_deploy.pth'))
    assert len(reference) == 4 and relative_error(reference, deployed) <= 1e-4
    # A second run without --force is refused and leaves the outputs alone.
    assert run_tool('deploy.py', args, monkeypatch) == 1


class _Payload:
    """Unpickling this runs ``os.mkdir(path)``: what a malicious checkpoint would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path, )


def test_malicious_checkpoint_is_refused(backbone_case: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    with open(evil, 'wb') as f:
        pickle.dump({'state_dict': {}, 'meta': _Payload(str(marker))}, f)
    with pytest.raises(UnsafeCheckpointError, match='--trust-checkpoint'):
        convert_checkpoint(str(backbone_case), str(evil), str(tmp_path / 'out'))
    assert run_tool('deploy.py', [backbone_case, evil, tmp_path / 'out'], monkeypatch) == 1
    assert not marker.exists() and not (tmp_path / 'out').exists()


def test_mismatched_checkpoint_reports_keys(backbone_case: Path, tmp_path: Path) -> None:
    state_dict = load_checkpoint_file(backbone_case.with_suffix('.pth'))['state_dict']
    state_dict['stages.0.blocks.0.extra.weight'] = torch.zeros(1)
    del state_dict['stages.1.blocks.1.pw2.bn.running_var']
    torch.save({'state_dict': state_dict}, tmp_path / 'keys.pth')
    with pytest.raises(KeyError) as err:
        convert_checkpoint(str(backbone_case), str(tmp_path / 'keys.pth'), str(tmp_path / 'out'))
    assert 'stages.0.blocks.0.extra.weight' in str(err.value)
    assert 'stages.1.blocks.1.pw2.bn.running_var' in str(err.value)

    state_dict = load_checkpoint_file(backbone_case.with_suffix('.pth'))['state_dict']
    state_dict['stem.0.conv.weight'] = torch.zeros(4, 3, 3, 3)
    torch.save({'state_dict': state_dict}, tmp_path / 'shape.pth')
    with pytest.raises(ValueError, match=r'stem\.0\.conv\.weight.*\(4, 3, 3, 3\).*\(8, 3, 3, 3\)'):
        convert_checkpoint(str(backbone_case), str(tmp_path / 'shape.pth'), str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


def test_failed_write_leaves_nothing(backbone_case: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes are on disk ...
        raise OSError('disk full')          # ... and then the write fails

    monkeypatch.setattr(torch, 'save', save_then_fail)
    out_dir = tmp_path / 'out'
    with pytest.raises(OSError, match='disk full'):
        convert_checkpoint(str(backbone_case), str(backbone_case.with_suffix('.pth')),
                           str(out_dir), input_shape=SHAPE, latency_runs=1)
    assert os.listdir(out_dir) == []  # neither outputs nor temporary files


def test_wrong_fusion_is_refused(backbone_case: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = ReparamLargeKernelConv.equivalent_kernel_bias

    def off_by_a_bit(self):
        kernel, bias = real(self)
        return kernel, bias + 0.05

    monkeypatch.setattr(ReparamLargeKernelConv, 'equivalent_kernel_bias', off_by_a_bit)
    with pytest.raises(EquivalenceError, match='tolerance'):
        convert_checkpoint(str(backbone_case), str(backbone_case.with_suffix('.pth')),
                           str(tmp_path / 'out'), input_shape=SHAPE, latency_runs=1)
    assert not (tmp_path / 'out').exists()
