"""Layer-wise lr decay: the paper's RepLKNet layer ids, the ConvNeXt-style UniRepLKNet ids, the
param groups the constructor builds from mmseg / mmdet configs."""
import pytest
import torch.nn as nn
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

import replk_mm  # noqa: F401
from replk_mm.engine.layer_decay import (LayerDecayOptimWrapperConstructor, replknet_layer_id,
                                         unireplknet_layer_id)
from replk_mm.models import RepLKNet


@pytest.mark.parametrize('name, expected', [
    ('stem.0.conv.weight', 0),
    ('stem.3.bn.bias', 0),
    ('stages.0.blocks.3.pw1.conv.weight', 1),
    ('transitions.0.1.conv.weight', 1),
    ('stages.1.blocks.0.prelkb_bn.weight', 2),
    ('transitions.1.0.bn.weight', 2),
    ('stages.2.blocks.0.pw1.conv.weight', 3),
    ('stages.2.blocks.3.pw1.conv.weight', 3),
    ('stages.2.blocks.4.pw1.conv.weight', 4),
    ('stages.2.blocks.35.pw2.bn.weight', 11),
    ('transitions.2.0.conv.weight', 11),
    ('stages.3.blocks.3.pw2.conv.weight', 12),
    ('stages.3.norm.weight', 12),
    ('head.weight', 13),
])
def test_replknet_layer_ids_are_the_papers(name, expected):
    assert replknet_layer_id(name, 12) == expected


@pytest.mark.parametrize('name, expected', [
    ('downsample_layers.0.0.weight', 0),
    ('stages.0.2.dwconv.weight', 1),
    ('downsample_layers.1.1.weight', 2),
    ('stages.1.0.gamma', 2),
    ('downsample_layers.2.0.weight', 3),
    ('stages.2.0.pwconv1.1.weight', 3),
    ('stages.2.26.pwconv1.1.weight', 11),
    ('downsample_layers.3.0.weight', 12),
    ('stages.3.2.norm.weight', 12),
    ('norm3.weight', 13),
])
def test_unireplknet_layer_ids(name, expected):
    assert unireplknet_layer_id(name, 12) == expected


class Segmentor(nn.Module):

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.Conv2d(16, 4, 1)


def tiny_replknet() -> RepLKNet:
    return RepLKNet(arch=dict(large_kernel_sizes=(7, 7, 7, 7), layers=(1, 1, 4, 1),
                              channels=(8, 8, 16, 16)), drop_path_rate=0.)


def test_constructor_groups_lr_and_weight_decay():
    model = Segmentor(tiny_replknet())
    constructor = OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type='replk_mm.LayerDecayOptimWrapperConstructor',
        optim_wrapper_cfg=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        paramwise_cfg=dict(decay_rate=0.5, num_layers=6)))
    optimizer = constructor(model).optimizer
    lr_of, wd_of = {}, {}
    for group in optimizer.param_groups:
        for p in group['params']:
            lr_of[p], wd_of[p] = group['lr'], group['weight_decay']
    params = dict(model.named_parameters())
    assert set(lr_of) == set(params.values()), 'every parameter is in exactly one group'
    # ids: stem 0 ... stage 3 = num_layers (6), head 7; lr = 1e-3 * 0.5 ** (7 - id)
    assert lr_of[params['backbone.stem.0.conv.weight']] == pytest.approx(1e-3 * 0.5**7)
    assert lr_of[params['backbone.stages.2.blocks.4.pw1.conv.weight']] == pytest.approx(
        1e-3 * 0.5**(7 - 4))
    assert lr_of[params['backbone.transitions.2.0.conv.weight']] == pytest.approx(
        1e-3 * 0.5**(7 - 5))  # the last stage-2 id is num_layers - 1
    assert lr_of[params['backbone.stages.3.blocks.0.pw1.conv.weight']] == pytest.approx(
        1e-3 * 0.5)
    assert lr_of[params['decode_head.weight']] == pytest.approx(1e-3)
    assert wd_of[params['decode_head.weight']] == 0.05
    assert wd_of[params['decode_head.bias']] == 0.
    assert wd_of[params['backbone.stem.0.bn.weight']] == 0.
    # one AdamW step runs with these groups
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()


def test_constructor_rejects_unknown_backbones_and_options():
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
    with pytest.raises(ValueError, match='decay_rate required'):
        LayerDecayOptimWrapperConstructor(cfg, dict(num_layers=12))
    with pytest.raises(ValueError, match='custom_keys'):
        LayerDecayOptimWrapperConstructor(cfg, dict(decay_rate=0.9, custom_keys={}))
    model = Segmentor(nn.Sequential(nn.Conv2d(3, 16, 3)))
    with pytest.raises(TypeError, match='RepLKNet .* UniRepLKNet'):
        LayerDecayOptimWrapperConstructor(cfg, dict(decay_rate=0.9))(model)
