"""Suite-wide fixtures."""
import copy

import pytest
from mmengine.registry import DefaultScope


@pytest.fixture(autouse=True)
def _isolate_default_scope():
    """Forget the MMEngine default scopes a test created.

    A scope left current by one test (``init_default_scope('mmdet')``) would otherwise leak into the
    next Runner built in the same process: the Runner reuses an existing scope instance of the same
    experiment name (a timestamp with one-second resolution) without making it current.
    """
    saved = copy.copy(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict = saved
