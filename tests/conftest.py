"""Suite-wide fixtures."""
import copy
import logging
from typing import List

import pytest
from mmengine.logging import MMLogger
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


class LogRecords(logging.Handler):
    """An MMLogger of its own and the records it emits (``text(level)``: their messages)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []
        self.logger = MMLogger.get_instance(name)
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, level: str) -> str:
        return '\n'.join(r.getMessage() for r in self.records if r.levelname == level)


@pytest.fixture
def log_records(request) -> LogRecords:
    """A fresh MMLogger (``.logger``) that keeps what it logs."""
    records = LogRecords(f'log_records:{request.node.nodeid}')
    yield records
    records.logger.removeHandler(records)
