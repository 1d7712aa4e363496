"""tools/analysis_tools/erf.py: the paper's ERF measure, and large kernels see wider at init."""
import csv
import runpy
from pathlib import Path

import cv2
import numpy as np
import pytest

from .conftest import ROOT, run_tool

ERF = runpy.run_path(str(ROOT / 'tools' / 'analysis_tools' / 'erf.py'))
BACKBONE_CFG = """
custom_imports = dict(imports=['replk_mm'], allow_failed_imports=False)
model = dict(type='replk_mm.RepLKNet', drop_path_rate=0.0,
             arch=dict(large_kernel_sizes=(13, 11, 9, 7), layers=(1, 1, 1, 1),
                       channels=(8, 16, 32, 32), small_kernel=5))
"""


def test_area_ratio() -> None:
    data = np.zeros((9, 9))
    data[4, 4] = 1.0
    assert ERF['area_ratio'](data, 0.5) == (1, 1 / 81)
    data[2:7, 2:7] += 1.0  # 25 + 1 in the centred 5x5 square
    assert ERF['area_ratio'](data, 0.3) == (3, 9 / 81)
    assert ERF['area_ratio'](data, 0.99) == (5, 25 / 81)
    assert ERF['area_ratio'](np.ones((4, 4)), 0.99) == (4, 1.0)
    scaled = ERF['scaled_erf'](np.array([[0.0, 9.0], [99.0, 999.0]]))
    np.testing.assert_allclose(scaled, [[0, 1 / 3], [2 / 3, 1]])


def test_large_kernels_have_a_larger_erf_at_init(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    images = tmp_path / 'images'
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(images / f'{i}.png'), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    cfg = tmp_path / 'tiny.py'
    cfg.write_text(BACKBONE_CFG)
    ratios = {}
    for name, options in (('large', []), ('small', [
            'model.arch.large_kernel_sizes=(3,3,3,3)', 'model.arch.small_kernel=None'])):
        args = [cfg, '--images', images, '--size', 128, '--out-dir', tmp_path / 'out',
                '--name', name]
        assert run_tool('analysis_tools/erf.py', args + (['--cfg-options', *options] if options
                                                         else []), monkeypatch) == 0
        erf = np.load(tmp_path / 'out' / f'{name}_erf.npy')
        assert erf.shape == (128, 128) and erf.min() >= 0 and erf.max() > 0
        with open(tmp_path / 'out' / f'{name}_erf.csv') as f:
            ratios[name] = {float(r['threshold']): float(r['area_ratio']) for r in csv.DictReader(f)}
        assert (tmp_path / 'out' / f'{name}_erf.png').stat().st_size > 1000
    assert list(ratios['large']) == [0.2, 0.3, 0.5, 0.99]
    for t in (0.3, 0.5, 0.99):
        assert ratios['large'][t] > ratios['small'][t], (t, ratios)


def test_checkpointed_configs_give_the_same_map(tmp_path: Path) -> None:
    """Segmentation configs set with_cp=True; the map (a gradient w.r.t. the input) is the same."""
    import torch
    maps = []
    for with_cp in (False, True):
        cfg = tmp_path / f'cp_{with_cp}.py'
        cfg.write_text(BACKBONE_CFG.replace('drop_path_rate=0.0,', f'drop_path_rate=0.0, with_cp={with_cp},'))
        torch.manual_seed(0)
        backbone, _, _ = ERF['build_backbone'](str(cfg), None, None)
        maps.append(ERF['contribution_map'](backbone, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))))
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-7)
    assert maps[0].max() > 0
