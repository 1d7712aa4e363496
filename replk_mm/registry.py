"""The package's registries: children of MMEngine's root registries under the scope ``replk_mm``.

Because every OpenMMLab 2.x library (mmseg, mmdet, mmpretrain) hangs its own registries under the
same MMEngine roots, ``type='replk_mm.RepLKNet'`` resolves from any of their configs once
``custom_imports=dict(imports=['replk_mm'], allow_failed_imports=False)`` has imported this package.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry(
    'model', parent=MMENGINE_MODELS, scope='replk_mm',
    locations=['replk_mm.models'])
DATASETS = Registry(
    'dataset', parent=MMENGINE_DATASETS, scope='replk_mm',
    locations=['replk_mm.datasets'])
TRANSFORMS = Registry(
    'transform', parent=MMENGINE_TRANSFORMS, scope='replk_mm',
    locations=['replk_mm.datasets'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='replk_mm',
    locations=['replk_mm.engine'])
METRICS = Registry(
    'metric', parent=MMENGINE_METRICS, scope='replk_mm',
    locations=['replk_mm.evaluation'])
MODEL_WRAPPERS = Registry(
    'model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope='replk_mm',
    locations=['replk_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='replk_mm',
    locations=['replk_mm.engine'])
