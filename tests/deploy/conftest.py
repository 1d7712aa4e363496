"""Tiny configs and trained-like checkpoints (random BN statistics, so fusing them is not trivial)."""
import runpy
import sys
from pathlib import Path
from typing import List

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config

import replk_mm  # noqa: F401
from replk_mm.deploy import build_model

ROOT = Path(__file__).resolve().parents[2]
TINY_ARCH = ("dict(large_kernel_sizes=(13, 11, 9, 7), layers=(1, 1, 1, 1), "
             "channels=(8, 16, 16, 32), small_kernel=5)")
CLASSIFIER_CFG = f"""
custom_imports = dict(imports=['replk_mm'], allow_failed_imports=False)
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='replk_mm.RepLKNet', arch={TINY_ARCH}, out_indices=(3, ),
                  drop_path_rate=0.1, norm_intermediate_features=True),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=5, in_channels=32,
              loss=dict(type='CrossEntropyLoss')))
"""
BACKBONE_CFG = f"""
custom_imports = dict(imports=['replk_mm'], allow_failed_imports=False)
model = dict(type='replk_mm.RepLKNet', arch={TINY_ARCH}, drop_path_rate=0.0)
"""


@pytest.fixture(autouse=True)
def plain_torch_dw(monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-kernel timing of the depth-wise implementations: not what these tests are about."""
    monkeypatch.setenv('REPLK_MM_DW_IMPL', 'torch')


def randomize_norms(model: nn.Module, seed: int = 1) -> None:
    """Give every BN non-trivial running statistics and affine parameters (as training would)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))


def write_case(tmp_path: Path, name: str, text: str) -> Path:
    """Write a config and a Runner-style checkpoint of its model; returns the config path."""
    cfg_path = tmp_path / f'{name}.py'
    cfg_path.write_text(text)
    torch.manual_seed(0)
    model = build_model(Config.fromfile(str(cfg_path)))
    randomize_norms(model)
    torch.save({'state_dict': model.state_dict(),
                'meta': dict(epoch=3, iter=30, dataset_meta=dict(classes=list('abcde'))),
                'optimizer': dict(state={}, param_groups=[dict(lr=0.1)])},
               tmp_path / f'{name}.pth')
    return cfg_path


@pytest.fixture
def classifier_case(tmp_path: Path) -> Path:
    return write_case(tmp_path, 'cls_tiny', CLASSIFIER_CFG)


@pytest.fixture
def backbone_case(tmp_path: Path) -> Path:
    return write_case(tmp_path, 'backbone_tiny', BACKBONE_CFG)


def run_tool(script: str, args: List[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run ``tools/{script}`` in this process (no interpreter start-up); returns its exit code."""
    monkeypatch.setattr(sys, 'argv', [script, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / 'tools' / script), run_name='__main__')
    return exit_info.value.code
