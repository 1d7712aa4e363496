"""tools/infer.py and replk_mm.apis.inference_model: per task (UperNet, FCOS, Cascade Mask R-CNN,
classifier) with a training checkpoint and its deploy form from tools/deploy.py, an unreadable
input among good ones, no input at all, and a checkpoint that does not fit the config. The models
are randomly initialised tiny demo models saved by the test: the tool's mechanics are under test,
not the predictions' quality (``make demo`` runs the tool on trained models)."""
import itertools
import json
import os.path as osp
import sys
from pathlib import Path
from typing import Tuple

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from replk_mm.apis import inference_model
from replk_mm.deploy import build_model, convert_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / 'configs' / 'demo'
# A tiny RepLKNet ImageNet classifier (the 31B recipe's pipeline and 1000-class head).
CLS_CFG_TEXT = f"""
_base_ = ['{ROOT / 'configs' / 'replknet' / 'replknet-31B_32xb64_in1k.py'}']
model = dict(backbone=dict(arch=dict(_delete_=True, large_kernel_sizes=(13, 11, 9, 7),
                                     layers=(1, 1, 2, 1), channels=(16, 32, 64, 128)),
                           drop_path_rate=0.0),
             head=dict(in_channels=128))
"""
_RUNS = itertools.count()
sys.path.insert(0, str(ROOT / 'tools' / 'misc'))
from make_demo_data import make_demo_data  # noqa: E402
# This folder is on sys.path; the fixture fixes the depth-wise op (no auto-tuning in short runs).
from test_downstream_tools import fixed_dw_impl, run_tool  # noqa: E402,F401


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo_data')
    make_demo_data(str(root), seed=0, size=64, num_train=1, num_val=3)
    return root


def images(demo_data: Path, task: str) -> list:
    folder = (demo_data / 'ade20k' / 'images' / 'validation' if task == 'seg' else
              demo_data / 'coco' / 'val2017')
    return sorted(str(p) for p in folder.iterdir())


def tiny_checkpoints(task: str, tmp: Path) -> Tuple[str, str, str, str]:
    """``(config, checkpoint, deploy config, deploy checkpoint)`` of a randomly initialised model
    of the task, converted by tools/deploy.py's function."""
    if task == 'cls':
        config = tmp / 'replknet-tiny_in1k.py'
        config.write_text(CLS_CFG_TEXT)
        config = str(config)
    else:
        config = str(DEMO / {'seg': 'upernet_replknet-demo_ade20k-demo.py',
                             'fcos': 'fcos_replknet-demo_coco-demo.py',
                             'cascade': 'cascade-mask-rcnn_replknet-demo_coco-demo.py'}[task])
    torch.manual_seed(0)
    model = build_model(Config.fromfile(config))
    ckpt = str(tmp / 'model.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    result = convert_checkpoint(config, ckpt, str(tmp / 'deploy'), input_shape=(1, 3, 64, 64),
                                latency_runs=1)
    return config, ckpt, result.config, result.checkpoint


def infer(argv: list, capsys) -> Tuple[int, str, str]:
    """tools/infer.py in this process: (exit status, stdout, stderr). A fresh current logger
    writes to this test's captured stdout (an older one may hold a closed stream)."""
    MMLogger.get_instance(f'test_infer_{next(_RUNS)}')
    return run_tool('infer', [str(a) for a in argv], capsys)


def check_outputs(out_dir: Path, inputs: list, task: str) -> list:
    """Every input has its drawing (a decodable picture of the input's size) and its JSON."""
    import mmcv
    predictions = []
    for path in inputs:
        stem = Path(path).stem
        drawing = mmcv.imread(str(out_dir / Path(path).name))
        assert drawing is not None and drawing.shape[:2] == mmcv.imread(path).shape[:2]
        pred = json.loads((out_dir / f'{stem}.json').read_text())
        assert pred['image'] == path
        predictions.append(pred)
        if task == 'seg':
            assert pred['task'] == 'segmentation'
            assert sum(s['area'] for s in pred['segments']) == 64 * 64
            assert {s['name'] for s in pred['segments']} <= {'wall', 'floor', 'tree', 'person',
                                                              'car'}
        elif task == 'cls':
            assert pred['task'] == 'classification' and len(pred['scores']) == 1000
            assert max(pred['scores']) == pred['score'] == pred['scores'][pred['label']]
        else:
            assert pred['task'] == 'detection' and pred['instances']
            for inst in pred['instances']:
                assert inst['name'] in ('circle', 'square', 'triangle') and len(inst['bbox']) == 4
                assert ('mask' in inst) == (task == 'cascade')
    assert not list(out_dir.glob('.*.tmp*'))  # no temporary file left behind
    return predictions


@pytest.mark.parametrize('task', ['seg', 'fcos', 'cascade', 'cls'])
def test_infer_training_and_deploy_checkpoints(task, demo_data, tmp_path, capsys):
    config, ckpt, deploy_config, deploy_ckpt = tiny_checkpoints(task, tmp_path)
    inputs = images(demo_data, task)
    folder = osp.dirname(inputs[0])
    # A folder, with every detection drawn (the random model's scores are low).
    code, out, err = infer([config, ckpt, folder, '--out-dir', tmp_path / 'train', '--score-thr',
                            0, '--batch-size', 2, '--device', 'cpu'], capsys)
    assert code == 0, err
    assert f'wrote {len(inputs)} drawings' in out
    train = check_outputs(tmp_path / 'train', inputs, task)
    # The deploy form, the images given one by one and as a glob.
    code, _, err = infer([deploy_config, deploy_ckpt, inputs[0], f'{folder}/*[!0].jpg',
                          '--out-dir', tmp_path / 'deploy', '--score-thr', 0], capsys)
    assert code == 0, err
    deploy = check_outputs(tmp_path / 'deploy', inputs, task)
    if task in ('seg', 'cascade'):
        # The inference form (--optimize): the deploy form's predictions.
        code, _, err = infer([deploy_config, deploy_ckpt, folder, '--out-dir',
                              tmp_path / 'optimized', '--score-thr', 0, '--optimize'], capsys)
        assert code == 0, err
        optimized = check_outputs(tmp_path / 'optimized', inputs, task)
        if task == 'seg':
            assert [p['segments'] for p in optimized] == [p['segments'] for p in deploy]
        else:
            for fast, reference in zip(optimized, deploy):
                assert [i['label'] for i in fast['instances']] == [
                    i['label'] for i in reference['instances']]
                assert torch.allclose(
                    torch.tensor([i['bbox'] + [i['score']] for i in fast['instances']]),
                    torch.tensor([i['bbox'] + [i['score']] for i in reference['instances']]),
                    rtol=1e-4, atol=1e-3)
    if task == 'seg':
        # Same predictions from both forms.
        assert [p['segments'] for p in train] == [p['segments'] for p in deploy]
        # A training checkpoint with the deploy config: tools/test.py's one-line error.
        code, _, err = infer([deploy_config, ckpt, inputs[0], '--out-dir', tmp_path / 'x'],
                             capsys)
        assert code == 1 and err.count('\n') == 1 and not (tmp_path / 'x').exists()
        assert err.startswith('error: checkpoint ') and 'pass the config it wrote next to it' in err


def test_unreadable_input_among_good_ones(demo_data, tmp_path, capsys):
    config = str(DEMO / 'upernet_replknet-demo_ade20k-demo.py')
    torch.save({'state_dict': build_model(Config.fromfile(config)).state_dict()},
               tmp_path / 'seg.pth')
    good = images(demo_data, 'seg')
    bad = tmp_path / 'notes.jpg'
    bad.write_text('not a picture')
    out_dir = tmp_path / 'out'
    code, out, err = infer([config, tmp_path / 'seg.pth', good[0], bad, good[1], tmp_path /
                            'missing.png', '--out-dir', out_dir], capsys)
    assert code == 1
    warnings = [line.split(' - WARNING - ')[1] for line in out.splitlines()
                if ' - WARNING - skipped' in line]
    assert warnings == [f'skipped {bad}: not a readable image (OpenCV cannot decode it)',
                        f'skipped {tmp_path / "missing.png"}: no such file']
    assert f'could not be read: {bad}, {tmp_path / "missing.png"}' in err
    check_outputs(out_dir, good[:2], 'seg')
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [Path(good[0]).name, Path(good[1]).name, Path(good[0]).stem + '.json',
         Path(good[1]).stem + '.json'])


def test_no_input_found(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    config = str(DEMO / 'upernet_replknet-demo_ade20k-demo.py')
    code, out, err = infer([config, tmp_path / 'absent.pth', tmp_path / 'empty',
                            f'{tmp_path}/*.png', '--out-dir', tmp_path / 'out'], capsys)
    assert code == 1 and out == ''
    assert err.count('\n') == 1 and err.startswith('error: no input images found in ')
    assert not (tmp_path / 'out').exists()


def test_cuda_without_gpu_is_one_error_line(demo_data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip('a CUDA device is visible')
    config = str(DEMO / 'upernet_replknet-demo_ade20k-demo.py')
    code, _, err = infer([config, tmp_path / 'absent.pth', images(demo_data, 'seg')[0],
                          '--device', 'cuda', '--out-dir', tmp_path / 'out'], capsys)
    assert code == 1 and err == 'error: device cuda: PyTorch sees no CUDA device here; use cpu\n'


def test_inference_model_api(demo_data, tmp_path):
    config, ckpt, _, _ = tiny_checkpoints('cls', tmp_path)
    inputs = images(demo_data, 'cls')
    results = inference_model(config, ckpt, inputs[:2] + [str(tmp_path / 'missing.jpg')],
                              str(tmp_path / 'out'), device='cpu', batch_size=2)
    assert [r.image for r in results] == inputs[:2] + [str(tmp_path / 'missing.jpg')]
    assert [r.error for r in results] == [None, None, 'no such file']
    assert results[0].prediction['task'] == 'classification'
    assert json.loads(Path(results[1].json).read_text())['label'] == results[1].prediction['label']
