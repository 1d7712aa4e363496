"""Every model config under configs/ builds its model and runs one training forward + backward on
the CPU (mmseg, mmdet and mmpretrain configs alike).

The configs are globbed (all but ``_base_/`` and the ``benchmarks/`` lists), so a new config is
covered without editing this file. Inputs are small (64x64, two images) and the R-CNN stages sample 16
RoIs per image instead of 512 (the architecture is untouched); SyncBN is reverted to BN as MMEngine's
Runner does on one device; pretrained weights are not loaded (no init_weights call).
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import PixelData

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True)
    if not {'_base_', 'benchmarks'} & set(osp.relpath(p, ROOT).split(osp.sep)))
SIZE = 64


def seg_batch(num_classes: int) -> dict:
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=gen))
        sample = SegDataSample(metainfo=dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                                             pad_shape=(SIZE, SIZE)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, SIZE, SIZE), generator=gen))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def det_batch(num_classes: int, with_mask: bool) -> dict:
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch_size=2, image_shapes=(3, SIZE, SIZE), num_items=[3, 2],
                          num_classes=num_classes, with_mask=with_mask)


def cls_batch(num_classes: int) -> dict:
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(0)
    return dict(
        inputs=[torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
                for _ in range(2)],
        data_samples=[DataSample().set_gt_label(i % num_classes) for i in range(2)])


def num_classes_of(model_cfg) -> int:
    if 'head' in model_cfg:
        return model_cfg.head.num_classes
    if 'decode_head' in model_cfg:
        return model_cfg.decode_head.num_classes
    if 'bbox_head' in model_cfg:
        return model_cfg.bbox_head.num_classes
    return model_cfg.roi_head.bbox_head[0].num_classes


@pytest.fixture(autouse=True)
def fixed_dw_impl(monkeypatch):
    """The compiled depth-wise op when built: no per-shape auto-tuning of 31x31 kernels."""
    from replk_mm.ops import dwconv_ext
    monkeypatch.setenv('REPLK_MM_DW_IMPL', 'ext' if dwconv_ext.extension_loaded() else 'torch')


def test_configs_found():
    assert 'configs/upernet_replknet31b_ade20k.py' in CONFIGS
    assert len(CONFIGS) >= 15


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds_and_trains_one_step(config):
    cfg = Config.fromfile(osp.join(ROOT, config))
    assert cfg.custom_imports['imports'] == ['replk_mm']
    assert cfg.model.backbone.type.startswith('replk_mm.')
    init_default_scope(cfg.default_scope)
    import replk_mm  # noqa: F401
    if cfg.default_scope == 'mmseg':
        cfg.model.data_preprocessor.size = (SIZE, SIZE)
    for stage in cfg.model.get('train_cfg', {}).get('rcnn', []):
        stage.sampler.num = 16
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.train()
    num_classes = num_classes_of(cfg.model)
    if cfg.default_scope == 'mmseg':
        batch = seg_batch(num_classes)
    elif cfg.default_scope == 'mmpretrain':
        batch = cls_batch(num_classes)
    else:
        batch = det_batch(num_classes, with_mask='mask_head' in cfg.model.get('roi_head', {}))
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss), log_vars
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), 'every backbone parameter gets a gradient'
    assert any(g.abs().sum() > 0 for g in grads)
    assert getattr(model.backbone, 'deployed', False) == cfg.model.backbone.get('deploy', False)
