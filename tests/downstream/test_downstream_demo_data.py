"""The demo data generator: real ADE20K / COCO layouts that mmseg's and mmdet's datasets load
unchanged, deterministic for a seed."""
import hashlib
import json
import os
import os.path as osp
import sys

import numpy as np
import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'misc'))
from make_demo_data import ADE_SHAPES, make_demo_data  # noqa: E402


def digest(folder: str) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(osp.join(dirpath, name), 'rb') as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('demo'))
    make_demo_data(root, seed=3, size=64, num_train=6, num_val=4)
    return root


def test_deterministic_and_replaced_atomically(demo_root, tmp_path):
    make_demo_data(str(tmp_path), seed=3, size=64, num_train=6, num_val=4)
    make_demo_data(str(tmp_path), seed=3, size=64, num_train=6, num_val=4)  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ['ade20k', 'coco']  # no temp folders left
    assert digest(str(tmp_path)) == digest(demo_root)
    make_demo_data(str(tmp_path), seed=4, size=64, num_train=6, num_val=4)
    assert digest(str(tmp_path)) != digest(demo_root)


def test_ade20k_layout_loads_in_mmseg(demo_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.datasets.transforms import LoadAnnotations
    root = osp.join(demo_root, 'ade20k')
    ds = ADE20KDataset(data_root=root, data_prefix=dict(
        img_path='images/validation', seg_map_path='annotations/validation'), pipeline=[])
    assert len(ds) == 4
    info = LoadAnnotations(reduce_zero_label=True)(ds[0])
    seg = info['gt_seg_map']
    raw = np.array(__import__('PIL.Image', fromlist=['Image']).open(ds[0]['seg_map_path']))
    assert raw.shape == (64, 64) and raw.dtype == np.uint8
    assert set(np.unique(raw)) <= {0, 1, 4, *ADE_SHAPES.values()}
    assert (raw == 0).any(), 'outlines are unlabeled, as in ADE20K'
    # reduce_zero_label: 0 -> 255 (ignored), k -> k - 1
    np.testing.assert_array_equal(seg[raw == 0], 255)
    np.testing.assert_array_equal(seg[raw > 0], raw[raw > 0].astype(np.int64) - 1)


def test_coco_layout_loads_in_mmdet(demo_root):
    from mmdet.datasets import CocoDataset
    root = osp.join(demo_root, 'coco')
    with open(osp.join(root, 'annotations', 'instances_train2017.json')) as f:
        coco = json.load(f)
    assert [c['name'] for c in coco['categories']] == ['circle', 'square', 'triangle']
    assert len(coco['images']) == 6 and coco['annotations']
    ds = CocoDataset(data_root=root, ann_file='annotations/instances_train2017.json',
                     data_prefix=dict(img='train2017/'),
                     metainfo=dict(classes=('circle', 'square', 'triangle')), pipeline=[])
    assert len(ds) == 6
    inst = ds[0]['instances'][0]
    x0, y0, x1, y1 = inst['bbox']
    poly = np.array(inst['mask'][0]).reshape(-1, 2)
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    np.testing.assert_allclose(poly.min(0), [x0, y0], atol=0.01)
    np.testing.assert_allclose(poly.max(0), [x1, y1], atol=0.01)
    assert osp.isfile(ds[0]['img_path'])
