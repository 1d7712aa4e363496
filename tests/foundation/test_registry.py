"""The package's registries resolve ``replk_mm.X`` from the mmseg, mmdet and mmpretrain scopes."""
import pytest
import torch.nn as nn
from mmengine.registry import DefaultScope, init_default_scope

import replk_mm  # noqa: F401
from replk_mm.registry import MODELS


@MODELS.register_module(name='_RegistryProbe', force=True)
class _RegistryProbe(nn.Module):

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)


@pytest.mark.parametrize('scope, registry_path', [
    ('mmseg', 'mmseg.registry'),
    ('mmdet', 'mmdet.registry'),
    ('mmpretrain', 'mmpretrain.registry'),
])
def test_build_from_downstream_scope(scope, registry_path):
    registry = __import__(registry_path, fromlist=['MODELS']).MODELS
    init_default_scope(scope)
    try:
        module = registry.build(dict(type='replk_mm._RegistryProbe', width=3))
    finally:
        DefaultScope._instance_dict.pop(DefaultScope.get_current_instance().instance_name, None)
    assert isinstance(module, _RegistryProbe)
    assert module.fc.in_features == 3


def test_registry_scope_and_parent():
    from mmengine.registry import MODELS as ROOT
    assert MODELS.scope == 'replk_mm'
    assert MODELS.parent is ROOT
    assert ROOT.children['replk_mm'] is MODELS


@pytest.mark.parametrize('scope', ['mmseg', 'mmdet', 'mmpretrain'])
def test_cpu_ddp_wrapper_resolves_as_the_runner_looks_it_up(scope):
    # the Runner builds model_wrapper_cfg from MMEngine's root MODEL_WRAPPERS under its scope
    from mmengine.registry import MODEL_WRAPPERS as ROOT_WRAPPERS

    from replk_mm.engine import CPUDistributedDataParallel
    init_default_scope(scope)
    try:
        with ROOT_WRAPPERS.switch_scope_and_registry(scope) as registry:
            found = registry.get('replk_mm.CPUDistributedDataParallel')
    finally:
        DefaultScope._instance_dict.pop(DefaultScope.get_current_instance().instance_name, None)
    assert found is CPUDistributedDataParallel
    assert 'CPUDistributedDataParallel' not in ROOT_WRAPPERS.module_dict  # ours, not the root's
