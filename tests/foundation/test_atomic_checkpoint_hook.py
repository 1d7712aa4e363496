"""replk_mm.AtomicCheckpointHook on a tiny MMEngine Runner: a run stopped and resumed (with dropout
and a validation in between) ends with exactly the uninterrupted run's weights; the pointer and
max_keep_ckpts keep the newest checkpoint; killed writers' temporary files are removed."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset

import replk_mm  # noqa: F401
from replk_mm.checkpoint import load_checkpoint_file
from replk_mm.deploy.atomic import leftover_temporaries
from replk_mm.ops import clear_dw_impl_cache, dw_impl_choices, set_dw_impl_choices


class _Noisy(BaseModel):
    """Dropout in the model, a numpy draw in the data: both streams must continue on resume."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 16)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(16, 1)

    def forward(self, x, y=None, mode='loss'):
        pred = self.out(self.drop(self.fc(x))).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((pred - y)**2).mean())
        return [dict(err=float(e)) for e in (pred - y).abs()]


class _Jittered(Dataset):
    metainfo = dict(classes=('a', ))

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i):
        x = torch.tensor([i / 12, np.random.rand()], dtype=torch.float32)
        return dict(x=x, y=x.sum())


class _Error(BaseMetric):

    def process(self, data_batch, data_samples) -> None:
        self.results.extend(s['err'] for s in data_samples)

    def compute_metrics(self, results) -> dict:
        return dict(err=float(np.mean(results)))


def _runner(work_dir, max_iters: int, resume: bool = False, max_keep: int = -1) -> Runner:
    loader = dict(dataset=_Jittered(), batch_size=4, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=True),
                  collate_fn=dict(type='default_collate'))
    torch.manual_seed(0)  # the model is built before the Runner seeds
    return Runner(
        model=_Noisy(), work_dir=str(work_dir), train_dataloader=loader,
        val_dataloader=dict(loader, sampler=dict(type='DefaultSampler', shuffle=False)),
        val_evaluator=[_Error(prefix="val")], val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2),
        default_hooks=dict(checkpoint=dict(type='replk_mm.AtomicCheckpointHook', interval=2,
                                           by_epoch=False, max_keep_ckpts=max_keep)),
        randomness=dict(seed=0), resume=resume)


def _weights(path) -> dict:
    return load_checkpoint_file(str(path))['state_dict']


@pytest.fixture(scope='module')
def full(tmp_path_factory):
    """The final weights of an uninterrupted 8-iteration run."""
    work = tmp_path_factory.mktemp('full')
    _runner(work, 8).train()
    return _weights(work / 'iter_8.pth')


def test_resumed_run_repeats_the_uninterrupted_one(tmp_path, full):
    choice = ('cpu', torch.float32, 31, True, False)
    clear_dw_impl_cache()  # of earlier tests in this process
    set_dw_impl_choices({choice: 'torch_channels_last'})  # as if measured by the first part
    _runner(tmp_path / 'split', 4).train()
    clear_dw_impl_cache()
    leftover = tmp_path / 'split' / '.iter_6.abcd1234.tmp.pth'
    leftover.write_bytes(b'PK\x03\x04half')
    _runner(tmp_path / 'split', 8, resume=True).train()
    assert dw_impl_choices() == {choice: 'torch_channels_last'}  # the resumed run's, not new ones
    clear_dw_impl_cache()
    assert not leftover_temporaries(str(tmp_path / 'split'))
    split = _weights(tmp_path / 'split' / 'iter_8.pth')
    assert all(torch.equal(full[k], split[k]) for k in full)
    checkpoint = load_checkpoint_file(str(tmp_path / 'split' / 'iter_8.pth'))
    assert len(checkpoint['rng_states']) == 1 and {'torch', 'numpy', 'python'} <= set(
        checkpoint['rng_states'][0])


def test_without_the_saved_states_the_run_differs(tmp_path, full):
    """The check above can fail: resumed from a checkpoint without the random states, dropout
    and the data draw take new samples."""
    _runner(tmp_path / 'split', 4).train()
    path = tmp_path / 'split' / 'iter_4.pth'
    checkpoint = load_checkpoint_file(str(path))
    del checkpoint['rng_states']
    torch.save(checkpoint, path)
    _runner(tmp_path / 'split', 8, resume=True).train()
    split = _weights(tmp_path / 'split' / 'iter_8.pth')
    assert not all(torch.equal(full[k], split[k]) for k in full)


def test_pointer_and_max_keep_keep_the_newest(tmp_path):
    _runner(tmp_path, 6, max_keep=1).train()
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == ['iter_6.pth']
    with open(tmp_path / 'last_checkpoint') as f:
        assert f.read() == str(tmp_path / 'iter_6.pth')
    assert not leftover_temporaries(str(tmp_path))
