"""Acceptance: a trained demo segmentor (UperNet, RepLKNet) and a trained demo detector
(UniRepLKNet) deploy to checkpoints that tools/test.py evaluates to identical metrics and
matching predictions."""
import pickle
import runpy
import sys
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from replk_mm.deploy import convert_checkpoint

from .conftest import ROOT

SEG_CFG = ROOT / 'configs' / 'demo' / 'upernet_replknet-demo_ade20k-demo.py'
# The FCOS demo with a tiny UniRepLKNet (LarK blocks with dilated re-param branches, SmaK blocks).
# Layer scale starts at 1 so that after two iterations the residual branches (and their fusion)
# weigh in the outputs as much as in a trained model, not 1e-6 as at initialization.
DET_CFG_TEXT = f"""
_base_ = ['{ROOT / 'configs' / 'demo' / 'fcos_replknet-demo_coco-demo.py'}']
model = dict(backbone=dict(
    _delete_=True, type='replk_mm.UniRepLKNet', drop_path_rate=0.1, layer_scale_init_value=1.0,
    arch=dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128),
              kernel_sizes=((3, ), (13, ), (13, 3), (11, )))))
"""
TRAIN_ITERS = 2


@pytest.fixture(autouse=True)
def plain_torch_dw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training needs the fast depth-wise weight gradient: let the dispatcher choose."""
    monkeypatch.delenv('REPLK_MM_DW_IMPL', raising=False)


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('demo_data')
    make = runpy.run_path(str(ROOT / 'tools' / 'misc' / 'make_demo_data.py'))['make_demo_data']
    make(str(out), 0, 128, 8, 6)
    return out


def _data_options(cfg_path: Path, data_root: Path) -> dict:
    """Point every dataloader of the config at ``data_root``; small batches, no workers."""
    scope = Config.fromfile(str(cfg_path)).default_scope
    root = str(data_root / ('ade20k' if scope == 'mmseg' else 'coco'))
    options = {}
    for split in ('train', 'val', 'test'):
        options[f'{split}_dataloader.dataset.data_root'] = root
        options[f'{split}_dataloader.batch_size'] = 2
    if scope == 'mmdet':
        for split in ('val', 'test'):
            options[f'{split}_evaluator.ann_file'] = f'{root}/annotations/instances_val2017.json'
    return options


def _train(cfg_path: Path, options: dict, work_dir: Path) -> Path:
    """A few iterations of the demo schedule: BN statistics and weights leave their init."""
    cfg = Config.fromfile(str(cfg_path))
    cfg.merge_from_dict(options)
    cfg.work_dir = str(work_dir)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=TRAIN_ITERS)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=TRAIN_ITERS,
                                        by_epoch=False)
    cfg.param_scheduler = []
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    Runner.from_cfg(cfg).train()
    return work_dir / f'iter_{TRAIN_ITERS}.pth'


def _test(cfg_path: str, ckpt: str, options: dict, out: Path, capsys) -> Tuple[str, list]:
    """tools/test.py in this process: the printed metrics line and the dumped predictions."""
    opts = [f'{k}={v}' for k, v in options.items()]
    argv = ['test.py', cfg_path, ckpt, '--work-dir', str(out.parent / 'test_logs'), '--out',
            str(out)] + (['--cfg-options', *opts] if opts else [])
    capsys.readouterr()
    old_argv, sys.argv = sys.argv, argv
    try:
        runpy.run_path(str(ROOT / 'tools' / 'test.py'), run_name='__main__')
    finally:
        sys.argv = old_argv
    metrics = [line for line in capsys.readouterr().out.splitlines() if line.startswith('metrics:')]
    assert len(metrics) == 1, metrics
    with open(out, 'rb') as f:
        return metrics[0], pickle.load(f)


def _deploy_and_compare(cfg_path: Path, demo_data: Path, tmp_path: Path, capsys):
    options = _data_options(cfg_path, demo_data)
    ckpt = _train(cfg_path, options, tmp_path / 'train')
    result = convert_checkpoint(str(cfg_path), str(ckpt), str(tmp_path / 'deploy'),
                                cfg_options=options, input_shape=(1, 3, 128, 128),
                                latency_runs=2)
    assert result.error <= 1e-4 and result.params_after < result.params_before
    metrics_train, preds_train = _test(str(cfg_path), str(ckpt), options,
                                       tmp_path / 'train.pkl', capsys)
    # The deploy config carries the data options already: test.py takes it as it is.
    metrics_deploy, preds_deploy = _test(result.config, result.checkpoint, {},
                                         tmp_path / 'deploy.pkl', capsys)
    print(f'{cfg_path.name}: {metrics_train}; CPU latency training form '
          f'{result.latency_before_ms:.1f} ms, deploy form {result.latency_after_ms:.1f} ms')
    assert metrics_deploy == metrics_train
    assert len(preds_deploy) == len(preds_train) > 0
    return preds_train, preds_deploy


def _max_rel(a: List[np.ndarray], b: List[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)) for x, y in zip(a, b))


def test_demo_segmentor_deploys_to_identical_miou(demo_data: Path, tmp_path: Path,
                                                  capsys) -> None:
    train, deploy = _deploy_and_compare(SEG_CFG, demo_data, tmp_path, capsys)
    logits = lambda preds: [torch.as_tensor(p['seg_logits']['data']).numpy() for p in preds]  # noqa: E731
    labels = lambda preds: [torch.as_tensor(p['pred_sem_seg']['data']).numpy() for p in preds]  # noqa: E731
    assert _max_rel(logits(train), logits(deploy)) <= 1e-4
    assert all((a == b).all() for a, b in zip(labels(train), labels(deploy)))


def test_demo_detector_deploys_to_identical_map(demo_data: Path, tmp_path: Path, capsys) -> None:
    det_cfg = tmp_path / 'fcos_unireplknet-demo_coco-demo.py'
    det_cfg.write_text(DET_CFG_TEXT)
    train, deploy = _deploy_and_compare(det_cfg, demo_data, tmp_path, capsys)
    for a, b in zip(train, deploy):
        boxes_a = torch.as_tensor(a['pred_instances']['bboxes']).numpy()
        boxes_b = torch.as_tensor(b['pred_instances']['bboxes']).numpy()
        scores_a = torch.as_tensor(a['pred_instances']['scores']).numpy()
        scores_b = torch.as_tensor(b['pred_instances']['scores']).numpy()
        assert boxes_a.shape == boxes_b.shape and len(boxes_a) > 0
        np.testing.assert_allclose(scores_b, scores_a, rtol=1e-3, atol=1e-5)
        # Detections are sorted by score, and a barely trained detector has near-equal scores, whose
        # order the two forms' rounding may swap: pair every deploy detection with an unused
        # training-form one of the same score and box.
        unused = list(range(len(boxes_a)))
        for box, score in zip(boxes_b, scores_b):
            match = [i for i in unused if abs(scores_a[i] - score) <= 1e-5 + 1e-3 * abs(score)
                     and np.allclose(boxes_a[i], box, rtol=1e-3, atol=1e-2)]
            assert match, f'deploy detection {box} (score {score}) has no training-form twin'
            unused.remove(match[0])
