"""Safe checkpoint loading: real Runner checkpoints resume, crafted pickles are refused."""
import os

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader
from torch.utils.data import Dataset

import replk_mm  # noqa: F401
from replk_mm.checkpoint import (TRUST_ENV, CorruptCheckpointError, UnsafeCheckpointError,
                                 checkpoint_file_problem, extract_state_dict, load_checkpoint_file,
                                 load_state_dict_checked)


class _Regressor(BaseModel):

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 1)

    def forward(self, x, y=None, mode='loss'):
        pred = self.out(self.bn(self.fc(x))).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((pred - y)**2).mean())
        return pred


class _Points(Dataset):
    metainfo = dict(classes=('a', 'b'), palette=[[0, 0, 0], [255, 255, 255]])

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 2, generator=gen)
        self.y = self.x.sum(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return dict(x=self.x[i], y=self.y[i])


def _runner(work_dir, max_iters, **kwargs) -> Runner:
    return Runner(
        model=_Regressor(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_Points(), batch_size=4, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=4)],
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False)),
        randomness=dict(seed=0, deterministic=True),
        **kwargs)


def test_runner_checkpoint_resumes(tmp_path):
    full = _runner(tmp_path / 'full', max_iters=8)
    full.train()
    ckpt = tmp_path / 'full' / 'iter_4.pth'
    # Plain torch >= 2.6 (weights_only by default) can read it now, through the allow-list.
    meta = torch.load(ckpt, weights_only=True)['message_hub']
    assert 'log_scalars' in meta

    resumed = _runner(tmp_path / 'resumed', max_iters=8, load_from=str(ckpt), resume=True)
    resumed.train()
    assert resumed.iter == 8
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6)


class _Payload:
    """Unpickling this runs ``os.system`` — what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


def _write_malicious(path, marker) -> None:
    torch.save({'state_dict': {}, 'meta': _Payload(str(marker))}, path)


def test_malicious_checkpoint_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    _write_malicious(path, marker)
    with pytest.raises(UnsafeCheckpointError, match=TRUST_ENV):
        load_checkpoint_file(path)
    # The same through MMEngine's loader (load_from / resume / init_cfg Pretrained use it).
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(str(path))
    assert not marker.exists(), 'the payload ran'


def test_mmengine_names_the_local_backend(tmp_path, log_records):
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {'a': torch.zeros(1)}}, path)
    CheckpointLoader.load_checkpoint(str(path), logger=log_records.logger)
    assert f'Loads checkpoint by local backend from path: {path}' in log_records.text('INFO')


def test_trusted_opt_in_is_explicit(tmp_path, monkeypatch):
    path, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    _write_malicious(path, marker)
    monkeypatch.setenv(TRUST_ENV, '1')
    load_checkpoint_file(path)
    assert marker.exists()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')


def test_extract_state_dict_unwraps():
    weights = {'a': torch.zeros(1)}
    assert extract_state_dict({'model': weights}) == weights
    assert extract_state_dict({'state_dict': weights, 'meta': {}}) == weights
    assert extract_state_dict({'module.a': weights['a']}).keys() == {'a'}


def test_load_state_dict_checked_reports(tmp_path):
    module = nn.Linear(2, 3)
    missing, unexpected = load_state_dict_checked(
        module, {'weight': torch.ones(3, 2), 'extra.key': torch.zeros(1)})
    assert missing == ['bias'] and unexpected == ['extra.key']
    torch.testing.assert_close(module.weight, torch.ones(3, 2))
    with pytest.raises(ValueError, match=r'weight: checkpoint \(4, 2\) vs model \(3, 2\)'):
        load_state_dict_checked(module, {'weight': torch.ones(4, 2)})
    with pytest.raises(KeyError, match='bias'):
        load_state_dict_checked(module, {'weight': torch.ones(3, 2)}, strict=True)


class _GetattrGadget:
    """``getattr`` is allowed only for HistoryBuffer's statistics methods, not as a gadget."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_getattr_is_restricted(tmp_path):
    path = tmp_path / 'gadget.pth'
    torch.save({'meta': _GetattrGadget()}, path)
    with pytest.raises(UnsafeCheckpointError, match='__init__'):
        load_checkpoint_file(path)


@pytest.mark.parametrize('damage, says', [
    (lambda data: b'', 'empty'),
    (lambda data: b'step,loss\n1,0.5\n', 'not a PyTorch file'),
    (lambda data: data[:len(data) // 2], 'truncated'),
    (lambda data: data[:-30], 'truncated'),
    (lambda data: data[:4] + bytes(40), 'truncated'),
])
def test_damaged_file_is_named_with_what_is_wrong(tmp_path, damage, says):
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.arange(1000.)}}, good)
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(damage(good.read_bytes()))
    for trust in (None, True):
        with pytest.raises(CorruptCheckpointError, match=f'checkpoint {bad} is .*{says}'):
            load_checkpoint_file(bad, trust=trust)
    assert checkpoint_file_problem(str(good), verify_data=True) is None


def test_flipped_bytes_are_found_by_the_crc_check(tmp_path):
    path = tmp_path / 'flipped.pth'
    torch.save({'w': torch.arange(1000.)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor's bytes: torch.load does not notice
    path.write_bytes(bytes(data))
    assert checkpoint_file_problem(str(path)) is None
    assert 'CRC' in checkpoint_file_problem(str(path), verify_data=True)
