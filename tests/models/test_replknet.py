"""RepLKNet: the authors' parameter counts, re-parameterization equivalence for every preset, every
option doing what it says, and checkpoints in the authors', mmpretrain's and our formats."""
import importlib.util
import os
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer

from replk_mm.deploy import reparameterize_model
from replk_mm.models import RepLKNet
from replk_mm.models.backbones.replknet import (ARCH_SETTINGS, REPLKNET_KEY_MAPPING,
                                                arch_from_state_dict)
from replk_mm.models.utils import load_pretrained
from replk_mm.ops import DepthwiseConv2d, use_dw_impl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(large_kernel_sizes=[13, 11, 9, 7], layers=[1, 1, 2, 1], channels=[8, 8, 16, 16],
            small_kernel=3)


def load_tool(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(ROOT, path))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def randomize_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.3, 2)
            m.bias.data.uniform_(-1, 1)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(**kwargs) -> RepLKNet:
    torch.manual_seed(0)
    model = RepLKNet(dict(TINY), **kwargs)
    randomize_norms(model)
    return model


# The authors' counts (SPEC.md section 1), 1000-class head, training / deploy form.
@pytest.mark.parametrize('arch, train, deploy', [
    ('31B', 79_864_168, 79_527_272),
    ('31L', 172_671_016, 172_165_672),
    ('XL', 335_435_752, 335_399_656),
])
def test_parameter_counts_equal_the_authors(arch, train, deploy):
    counts = []
    for deployed in (False, True):
        with torch.device('meta'):
            model = RepLKNet(arch, out_indices=(3, ), norm_intermediate_features=True,
                             deploy=deployed)
        counts.append(count(model) + 1000 * model.arch['channels'][-1] + 1000)
    assert counts == [train, deploy]


def test_classifier_configs_build_the_authors_model():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs/replknet/replknet-XL_32xb16_in1k-320px.py'))
    init_default_scope('mmpretrain')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    assert count(model) == 335_435_752
    assert cfg.model.data_preprocessor.mean == [127.5] * 3 == cfg.model.data_preprocessor.std
    assert set(k for k in model.state_dict() if 'norm' in k and 'stages.3.norm' in k)


@pytest.mark.parametrize('config', [
    'replknet-31B_32xb32_in1k-384px.py', 'replknet-31L_32xb16_in1k-384px.py',
    'replknet-XL_32xb16_in1k-320px.py'
])
def test_finetune_configs_decay_the_lr_layer_by_layer(config):
    """The authors' fine-tunes (--layer_decay 0.7): lr 4e-4 * 0.7 ** (13 - layer id) per group."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'replknet', config))
    init_default_scope('mmpretrain')
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
        groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    lr_of = {id(p): g['lr'] for g in groups for p in g['params']}
    wd_of = {id(p): g['weight_decay'] for g in groups for p in g['params']}
    assert len(lr_of) == len(list(model.parameters()))
    backbone, lr = model.backbone, 4e-4
    for param, layer_id in [(backbone.stem[0].conv.weight, 0),
                            (backbone.stages[1].blocks[0].pw1.conv.weight, 2),
                            (backbone.stages[2].blocks[9].pw1.conv.weight, 3 + 9 // 4),
                            (backbone.stages[2].blocks[35].pw2.conv.weight, 11),
                            (backbone.stages[3].blocks[0].pw1.conv.weight, 12),
                            (model.head.fc.weight, 13)]:
        assert lr_of[id(param)] == pytest.approx(lr * 0.7**(13 - layer_id))
    assert wd_of[id(model.head.fc.weight)] == 1e-8 and wd_of[id(model.head.fc.bias)] == 0.
    assert wd_of[id(backbone.stem[0].bn.weight)] == 0.


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_reparam_equivalence_every_preset(arch):
    """Each preset's kernels, small kernel and dw_ratio at reduced width and depth."""
    settings = dict(ARCH_SETTINGS[arch], layers=(1, 1, 1, 1), channels=(4, 8, 8, 8))
    torch.manual_seed(1)
    model = RepLKNet(settings, drop_path_rate=0.2)
    randomize_norms(model)
    model.eval()
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-4)):
        model = model.to(dtype)
        x = torch.randn(1, 3, 32, 32, dtype=dtype)
        with torch.no_grad(), use_dw_impl('torch'):
            expected = model(x)
            fused = reparameterize_model(RepLKNet(settings, deploy=True).to(dtype))
            fused.load_state_dict(
                reparameterize_model(_copy(model, settings)).state_dict())
            out = fused.eval()(x)
        for a, b in zip(expected, out):
            assert ((a - b).abs().max() / a.abs().max()).item() <= tol


def _copy(model: RepLKNet, settings: dict) -> RepLKNet:
    clone = RepLKNet(settings).to(next(model.parameters()).dtype)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def test_deploy_preset_counts_and_flops_are_counted_for_the_dw_op():
    """The custom DW module is seen by MMEngine's FLOP counter (multiply-adds = C*H*W*K^2)."""
    model = RepLKNet(dict(large_kernel_sizes=[7], layers=[1], channels=[4], small_kernel=None),
                     out_indices=(0, ), deploy=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, (x, ))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = analyzer.by_module()
    assert isinstance(model.stages[0].blocks[0].large_kernel.lkb_reparam, DepthwiseConv2d)
    assert by_module['stages.0.blocks.0.large_kernel'] == 4 * 8 * 8 * 7 * 7


def test_flops_tool_counts_training_and_deploy_forms():
    tool = load_tool('tools/analysis_tools/get_flops.py')
    model = RepLKNet(dict(TINY), out_indices=(3, )).eval()
    params, flops = tool.count(model, (64, 64))
    params_d, flops_d = tool.count(reparameterize_model(model), (64, 64))
    assert params == count(model.__class__(dict(TINY), out_indices=(3, )))
    # fusing removes the small kernels' MACs (C*H*W*k^2 per block), adds none
    small = sum(c * (64 // 2**(i + 2))**2 * 9 * n
                for i, (c, n) in enumerate(zip(TINY['channels'], TINY['layers'])))
    assert flops - flops_d >= small
    assert params_d < params


def test_out_indices_shapes_and_order():
    model = tiny(out_indices=(1, 3)).eval()
    outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 8, 8), (2, 16, 2, 2)]
    full = tiny().eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in full] == [(1, 8, 16, 16), (1, 8, 8, 8), (1, 16, 4, 4),
                                              (1, 16, 2, 2)]
    assert tiny(out_indices=(-1, )).out_indices == (3, )
    for bad in [(3, 1), (0, 4), (), (1, 1)]:
        with pytest.raises(ValueError, match='out_indices must be increasing'):
            RepLKNet(dict(TINY), out_indices=bad)


def test_in_channels():
    assert tiny(in_channels=1, out_indices=(0, )).eval()(torch.randn(1, 1, 32, 32))[0].shape == (1, 8, 8, 8)


def test_frozen_stages_get_no_gradient_and_keep_bn_statistics():
    for frozen in range(-1, 5):
        model = tiny(frozen_stages=frozen, drop_path_rate=0.1)
        model.train()
        frozen_parts = ([] if frozen < 0 else [model.stem] + list(model.stages[:frozen]) +
                        list(model.transitions[:max(frozen - 1, 0)]))
        frozen_ids = {id(p) for part in frozen_parts for p in part.parameters()}
        before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
        x = torch.randn(2, 3, 32, 32, requires_grad=True)
        sum(o.sum() for o in model(x)).backward()
        for name, p in model.named_parameters():
            assert (p.grad is None) == (id(p) in frozen_ids), (frozen, name)
        for part in frozen_parts:
            assert not any(m.training for m in part.modules())
        after = model.state_dict()
        for key, value in before.items():
            in_frozen = any(key.startswith(prefix) for prefix in _prefixes(frozen))
            assert torch.equal(value, after[key]) == in_frozen, (frozen, key)


def _prefixes(frozen: int) -> list:
    if frozen < 0:
        return []
    return (['stem.'] + [f'stages.{i}.' for i in range(frozen)] +
            [f'transitions.{i}.' for i in range(frozen - 1)])


def test_norm_eval_and_train_returns_self():
    model = tiny(norm_eval=True)
    assert model.train() is model and model.eval() is model
    model.train()
    assert model.training
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert any(m.training for m in model.modules() if isinstance(m, nn.Conv2d))


def test_with_cp_gives_the_same_gradients():
    grads = []
    for with_cp in (False, True):
        model = tiny(with_cp=with_cp, drop_path_rate=0.3)
        x = torch.randn(2, 3, 64, 64, requires_grad=True)
        torch.manual_seed(7)
        sum(o.square().sum() for o in model(x)).backward()
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_with_cp_after_frozen_stages_still_trains_the_rest():
    """Behind frozen stages the blocks' input carries no gradient: checkpointing must still give
    the trainable parameters the gradients of the plain model (re-entrant checkpointing would give
    them none)."""
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = tiny(with_cp=with_cp, frozen_stages=0, drop_path_rate=0.3)  # the stem
        model.train()
        x = torch.randn(2, 3, 64, 64)
        torch.manual_seed(7)
        sum(o.square().sum() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_drop_path_rises_linearly_over_block_pairs():
    model = tiny(drop_path_rate=0.4)
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for s in model.stages for b in s.blocks]
    expected = torch.linspace(0, 0.4, sum(TINY['layers'])).repeat_interleave(2).tolist()
    assert rates == pytest.approx(expected)


def test_custom_norm_cfg_reaches_every_norm():
    model = RepLKNet(dict(TINY), norm_cfg=dict(type='GN', num_groups=2),
                     norm_intermediate_features=True)
    norms = [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == 2 for m in norms)
    # 4 stem + 2 per transition * 3 + per pair (prelkb, pw1, lk, small, pw2, preffn, pw1, pw2)
    assert len(norms) == 4 + 6 + 8 * sum(TINY['layers']) + 4
    sync = RepLKNet(dict(TINY), norm_cfg=dict(type='SyncBN'))
    assert not any(type(m) is nn.BatchNorm2d for m in sync.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())


def test_norm_intermediate_features_only_on_output_stages():
    model = tiny(out_indices=(1, 3), norm_intermediate_features=True).eval()
    assert [hasattr(s, 'norm') for s in model.stages] == [False, True, False, True]
    plain = tiny(out_indices=(1, 3)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[1], model.stages[3].norm(plain(x)[1]))
    assert not any(hasattr(s, 'norm') for s in tiny().stages)


def test_bad_arch_messages():
    with pytest.raises(ValueError, match=r"unknown RepLKNet arch '31X'.*'31B'"):
        RepLKNet('31X')
    with pytest.raises(ValueError, match='positive odd integers.*use an odd size like 15'):
        RepLKNet(dict(TINY, large_kernel_sizes=[13, 11, 9, 14]))
    with pytest.raises(ValueError, match='small_kernel=5 is larger than the large kernel 3'):
        RepLKNet(dict(TINY, large_kernel_sizes=[3, 3, 3, 3], small_kernel=5))
    with pytest.raises(ValueError, match=r"unknown keys \['kernels'\].*missing keys "
                                         r"\['large_kernel_sizes'\]"):
        RepLKNet(dict(layers=[1], channels=[8], kernels=[7]))
    with pytest.raises(ValueError, match='one entry per stage'):
        RepLKNet(dict(TINY, channels=[8, 8, 16]))
    with pytest.raises(ValueError, match='frozen_stages'):
        RepLKNet(dict(TINY), frozen_stages=5)


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet', 'mmpretrain'])
def test_builds_from_downstream_registries(scope):
    from mmengine.registry import DefaultScope, init_default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    init_default_scope(scope)
    try:
        model = registry.build(dict(type='replk_mm.RepLKNet', arch=dict(TINY)))
    finally:
        DefaultScope._instance_dict.pop(DefaultScope.get_current_instance().instance_name, None)
    assert isinstance(model, RepLKNet)


# ---------------------------------------------------------------- checkpoints


def authors_checkpoint(model: RepLKNet) -> dict:
    """The authors' ImageNet classifier format: backbone keys, `norm.*`, `head.*`, in 'model'."""
    state = {k.replace('stages.3.norm.', 'norm.'): v for k, v in model.state_dict().items()}
    state['head.weight'] = torch.randn(10, 16)
    state['head.bias'] = torch.randn(10)
    return {'model': state}


def features(model: RepLKNet, x: torch.Tensor) -> tuple:
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def classifier_backbone():
    return tiny(out_indices=(3, ), norm_intermediate_features=True).eval()


def test_authors_format_loads_through_init_cfg(tmp_path, classifier_backbone, log_records):
    path = str(tmp_path / 'authors.pth')
    torch.save(authors_checkpoint(classifier_backbone), path)
    model = RepLKNet(dict(TINY), out_indices=(3, ), norm_intermediate_features=True,
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(features(model, x), features(classifier_backbone, x))
    # a downstream backbone (no final norm): the classifier BN is left out in an INFO line, not
    # warned about; keys that are not expected still warn
    downstream = RepLKNet(dict(TINY))
    records, logger = log_records, log_records.logger
    missing, unexpected = load_pretrained(downstream, path, REPLKNET_KEY_MAPPING, logger=logger)
    assert missing == [] and unexpected == []
    assert [r.levelname for r in records.records if 'stages.3.norm.' in r.getMessage()] == ['INFO']
    assert "the classifier's final norm" in records.text('INFO')
    assert records.text('WARNING') == ''
    ckpt = torch.load(path)
    ckpt['model']['stages.0.stray.weight'] = torch.zeros(1)
    torch.save(ckpt, path)
    assert load_pretrained(downstream, path, REPLKNET_KEY_MAPPING, logger=logger)[1] == [
        'stages.0.stray.weight']
    assert 'stages.0.stray.weight' in records.text('WARNING')


def test_mmpretrain_format_and_features_equal_mmpretrain(tmp_path):
    """mmpretrain's RepLKNet has the authors' layer order and ops: same weights, same features."""
    from mmpretrain.models.backbones import RepLKNet as MMPretrainRepLKNet
    torch.manual_seed(3)
    theirs = MMPretrainRepLKNet(arch=dict(TINY, dw_ratio=1), out_indices=(0, 1, 2, 3))
    randomize_norms(theirs)
    state = {'backbone.' + k: v for k, v in theirs.state_dict().items()}
    state['head.fc.weight'] = torch.randn(10, 16)
    path = str(tmp_path / 'mmpretrain.pth')
    torch.save({'state_dict': state, 'meta': {'epoch': 3}}, path)
    ours = RepLKNet(dict(TINY), norm_intermediate_features=True,
                    init_cfg=dict(type='Pretrained', checkpoint=path))
    ours.init_weights()
    x = torch.randn(2, 3, 64, 64)
    theirs.eval()  # (mmpretrain's train() returns None)
    with torch.no_grad():
        expected = theirs(x)
    for a, b in zip(features(ours, x), expected):
        torch.testing.assert_close(a, b)


def test_deploy_model_loads_a_reparameterized_state_dict(tmp_path, classifier_backbone):
    x = torch.randn(1, 3, 64, 64)
    expected = features(classifier_backbone, x)
    fused = reparameterize_model(classifier_backbone)
    path = str(tmp_path / 'deploy.pth')
    torch.save({'state_dict': fused.state_dict()}, path)
    model = RepLKNet(dict(TINY), out_indices=(3, ), norm_intermediate_features=True, deploy=True,
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    assert sorted(model.state_dict()) == sorted(fused.state_dict())
    model.init_weights()
    torch.testing.assert_close(features(model, x), expected, rtol=1e-4, atol=1e-5)


def test_training_checkpoint_into_deploy_model_is_fused(tmp_path, classifier_backbone):
    path = str(tmp_path / 'authors.pth')
    torch.save(authors_checkpoint(classifier_backbone), path)
    model = RepLKNet(dict(TINY), out_indices=(3, ), norm_intermediate_features=True, deploy=True,
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(features(model, x), features(classifier_backbone, x),
                               rtol=1e-4, atol=1e-5)


def test_deploy_checkpoint_into_training_model_says_what_to_fix(tmp_path, classifier_backbone):
    path = str(tmp_path / 'deploy.pth')
    torch.save(reparameterize_model(classifier_backbone).state_dict(), path)
    model = RepLKNet(dict(TINY), init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match='build the backbone with deploy=True'):
        model.init_weights()


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    wide = RepLKNet(dict(TINY, channels=[8, 8, 16, 24]))
    path = str(tmp_path / 'wide.pth')
    torch.save(wide.state_dict(), path)
    model = RepLKNet(dict(TINY), init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(ValueError, match=r'stages\.3\.blocks\.0\.prelkb_bn\.weight: \S+ \(24,\) '
                                         r'vs model \(16,\)'):
        model.init_weights()


def test_convert_checkpoint_tool(tmp_path, monkeypatch, classifier_backbone):
    src = str(tmp_path / 'authors.pth')
    torch.save(authors_checkpoint(classifier_backbone), src)
    x = torch.randn(1, 3, 64, 64)
    expected = features(classifier_backbone, x)
    tool = load_tool('tools/convert_checkpoint.py')
    cls, bb = str(tmp_path / 'cls.pth'), str(tmp_path / 'bb_deploy.pth')
    for dst, extra in ((cls, ['--to', 'classifier']), (bb, ['--deploy'])):
        monkeypatch.setattr(sys, 'argv', ['convert_checkpoint.py', src, dst, *extra])
        tool.main()
    classifier = torch.load(cls, weights_only=True)
    assert classifier['meta']['arch']['large_kernel_sizes'] == TINY['large_kernel_sizes']
    keys = classifier['state_dict'].keys()
    assert 'head.fc.weight' in keys and 'backbone.stages.3.norm.weight' in keys
    assert all(k.startswith(('backbone.', 'head.fc.')) for k in keys)
    for path, deploy in ((cls, False), (bb, True)):
        model = RepLKNet(dict(TINY), out_indices=(3, ), norm_intermediate_features=True,
                         deploy=deploy, init_cfg=dict(type='Pretrained', checkpoint=path))
        model.init_weights()
        torch.testing.assert_close(features(model, x), expected, rtol=1e-4, atol=1e-5)


def test_arch_from_state_dict():
    for arch in ('31B', 'XL', '3-3-3-3'):
        with torch.device('meta'):
            state = RepLKNet(arch).state_dict()
        inferred = arch_from_state_dict(state)
        settings = ARCH_SETTINGS[arch]
        for key in ('large_kernel_sizes', 'layers', 'channels'):
            assert tuple(inferred[key]) == tuple(settings[key])
        assert inferred['small_kernel'] == settings['small_kernel']
        assert inferred['dw_ratio'] == settings['dw_ratio'] and inferred['ffn_ratio'] == 4
