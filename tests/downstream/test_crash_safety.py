"""Training that survives crashes, on the segmentation demo as configured (its drop path, dropout,
random flip and data loading): SIGKILL at five moments (three of them inside a checkpoint write)
and resumes end with exactly the weights of an uninterrupted run; a truncated newest checkpoint is
set aside on resume and answered with one error line by every tool; a NaN loss stops the run (or
its steps are skipped) with no checkpoint of the broken state."""
import os
import os.path as osp
import shutil
import signal
import subprocess

import pytest
import torch
from test_downstream_tools import PYTHON, ROOT, SEG_DEMO, data_root, last_line, run_tool  # noqa: F401
from test_downstream_tools import dw_impl, seg_options, weights

from replk_mm.deploy.atomic import leftover_temporaries
from replk_mm.engine.checkpoint_hook import PAUSE_ENV

ITERS = 6
TRAIN = [PYTHON, osp.join(ROOT, 'tools', 'train.py'), SEG_DEMO]


def options(data_root: str) -> list:
    """Six iterations, a checkpoint after each, a validation after the third (it must not move
    the training's random streams)."""
    return seg_options(data_root, ITERS, 1) + ['train_cfg.val_interval=3']


def start(work: str, data_root: str, resume: bool, pause: str = '') -> subprocess.Popen:
    # One depth-wise conv implementation for both runs: auto-tuning times the candidates, and
    # two uninterrupted runs that chose differently round differently (a resumed run takes the
    # choices of the run it continues from the checkpoint; test_atomic_checkpoint_hook.py).
    env = dict(os.environ, PYTHONPATH=ROOT, REPLK_MM_DW_IMPL=dw_impl(), **{PAUSE_ENV: pause})
    return subprocess.Popen(
        TRAIN + ['--work-dir', work, *(['--resume'] if resume else []), '--cfg-options',
                 *options(data_root)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(proc: subprocess.Popen, marker: str) -> str:
    """SIGKILL ``proc`` as soon as a line of its output contains ``marker``; its output."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    code = proc.wait()
    assert code == -signal.SIGKILL, f'finished before "{marker}":\n' + ''.join(seen[-30:])
    return ''.join(seen)


def finish(proc: subprocess.Popen) -> str:
    """Wait for a run that must succeed; its output."""
    out = proc.communicate()[0]
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope='module')
def uninterrupted(data_root, tmp_path_factory) -> str:
    work = str(tmp_path_factory.mktemp('uninterrupted'))
    finish(start(work, data_root, resume=False))
    return work


def assert_same_weights(path: str, reference: str) -> None:
    a, b = weights(reference), weights(path)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f'{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}'


def test_killed_five_times_ends_with_the_uninterrupted_weights(data_root, uninterrupted, tmp_path):
    work = str(tmp_path / 'killed')
    # (pause the checkpoint writer at, or kill when the output shows): the moment of each kill
    kills = [
        ('iter_1.pth:write', 'checkpoint pause'),  # half of the first checkpoint on disk
        ('iter_2.pth:rename', 'checkpoint pause'),  # complete temporary file, not renamed
        ('iter_3.pth:pointer', 'checkpoint pause'),  # iter_3 in place, pointer at iter_2
        ('', 'Iter(train) [5/6]'),  # anywhere in iteration 5's hooks or its checkpoint
        ('', 'Advance dataloader'),  # while the resumed run skips the trained batches
    ]
    for i, (pause, marker) in enumerate(kills):
        kill_when(start(work, data_root, resume=i > 0, pause=pause), marker)
        if i == 0:
            assert leftover_temporaries(work) and not osp.exists(osp.join(work, 'iter_1.pth'))
    out = finish(start(work, data_root, resume=True))
    assert 'resumed epoch' in out
    assert not leftover_temporaries(work)
    assert_same_weights(osp.join(work, f'iter_{ITERS}.pth'), osp.join(uninterrupted, f'iter_{ITERS}.pth'))


def test_truncated_newest_checkpoint(data_root, uninterrupted, tmp_path, capsys):
    work = str(tmp_path / 'torn')
    shutil.copytree(uninterrupted, work)
    newest = osp.join(work, f'iter_{ITERS}.pth')
    with open(newest, 'r+b') as f:
        f.truncate(os.path.getsize(newest) // 2)
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(newest)  # the pointer names the torn file

    # every tool: one error line naming the file and what is wrong with it
    opts = ['--cfg-options', *options(data_root)]
    lines = {}
    for tool, argv in [
        ('test', [SEG_DEMO, newest, '--work-dir', str(tmp_path / 'test'), *opts]),
        ('convert_checkpoint', [newest, str(tmp_path / 'out.pth')]),
        ('train', [SEG_DEMO, '--work-dir', work, '--resume', newest, *opts]),
        ('train', [SEG_DEMO, '--work-dir', str(tmp_path / 'ft'), *opts, f'load_from={newest}']),
        ('train', [SEG_DEMO, '--work-dir', str(tmp_path / 'pre'), *opts,
                   'model.backbone.init_cfg.type=Pretrained',
                   f'model.backbone.init_cfg.checkpoint={newest}']),
        ('deploy', [SEG_DEMO, newest, str(tmp_path / 'deploy')]),
        ('export_onnx', [SEG_DEMO, newest, str(tmp_path / 'model.onnx')]),
        ('infer', [SEG_DEMO, newest, osp.join(data_root, 'ade20k', 'images', 'validation'),
                   '--out-dir', str(tmp_path / 'vis')]),
    ]:
        code, _, err = run_tool(tool, argv, capsys)
        assert code == 1, (tool, argv, err[-2000:])
        lines[tool, argv[-1]] = line = last_line(err)
        assert line.startswith('error: ') and newest in line and 'truncated' in line, (argv, err)
        assert 'Traceback' not in err, argv
    previous = osp.join(work, f'iter_{ITERS - 1}.pth')
    assert f'newest intact checkpoint there is {previous}' in lines['train', opts[-1]]
    # --resume: from the previous checkpoint, one warning, the damaged file kept aside
    log = finish(start(work, data_root, resume=True))
    warnings = [line for line in log.splitlines() if 'kept aside' in line]
    assert len(warnings) == 1 and newest in warnings[0] and 'truncated' in warnings[0]
    assert osp.isfile(newest + '.corrupt')
    assert f'resumed epoch: 0, iter: {ITERS - 1}' in log
    assert_same_weights(newest, osp.join(uninterrupted, f'iter_{ITERS}.pth'))


@pytest.mark.parametrize('skip', [False, True])
def test_nonfinite_loss(data_root, tmp_path, capsys, skip):
    work = str(tmp_path / 'nan')
    code, out, err = run_tool('train', [
        SEG_DEMO, '--work-dir', work, '--cfg-options', *seg_options(data_root, 3, 1),
        'optim_wrapper.optimizer.lr=1e30', f'default_hooks.nonfinite_loss.skip={skip}'], capsys)
    saved = sorted(f for f in os.listdir(work) if f.endswith('.pth'))
    for name in saved:
        assert all(torch.isfinite(t).all() for t in weights(osp.join(work, name)).values()), name
    if skip:
        assert code == 0, err[-2000:]
        assert saved == ['iter_1.pth', 'iter_2.pth', 'iter_3.pth']
        assert 'step skipped (2 skipped so far)' in out + err
    else:
        assert code == 1, err[-2000:]
        line = last_line(err)
        assert line.startswith('error: non-finite loss at iteration 2: loss=')
        assert 'decode.loss_ce=' in line and osp.join(work, 'iter_1.pth') in line
        assert saved == ['iter_1.pth']
        assert 'Traceback' not in err
