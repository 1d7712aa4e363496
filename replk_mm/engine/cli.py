"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, pre-flight checks that turn
the usual mistakes (missing dataset, missing or foreign checkpoint, bad backbone arguments) into a
one-line error naming the fix, and the guard that prints it.

Set ``REPLK_MM_TRACEBACK=1`` to get the full traceback instead of the one line.
"""
import gc
import logging
import os
import os.path as osp
import re
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..checkpoint import (CorruptCheckpointError, UnsafeCheckpointError, checkpoint_file_problem,
                          extract_state_dict, load_checkpoint_file, load_state_dict_checked)
from ..deploy.atomic import write_text_atomic
from ..models.layers import use_package_batch_norm
from .checkpoint_hook import POINTER
from .distributed import setup_cpu_distributed
from .nonfinite_loss import NonFiniteLossError

DEMO_HINT = 'for the synthetic demo data run `python tools/misc/make_demo_data.py`'


class ToolError(Exception):
    """A mistake in the command line, config or files, reported by the tools in one line."""


# what the tools report in one line: mistakes, unreadable or unsafe checkpoints (wherever they are
# loaded: load_from, resume, init_cfg Pretrained), a diverged run
ONE_LINE_ERRORS = (ToolError, CorruptCheckpointError, UnsafeCheckpointError, NonFiniteLossError)


def run_tool(main: Callable[[], None]) -> None:
    """Run ``main``; a :data:`ONE_LINE_ERRORS` error becomes ``error: ...`` on stderr and exit
    status 1.

    A distributed run's process group is destroyed on the way out, while the interpreter is still
    whole (a gloo group left to interpreter shutdown can abort a finished process), and after a
    successful run only once every rank has arrived, so no rank tears it down while a peer is
    still saving. The run's objects (the DDP wrapper in the runner) hold the group in reference
    cycles, so they are collected right after it is destroyed: that joins gloo's worker threads
    before interpreter shutdown, where a late one aborts the process (docs/faq.md).
    """
    try:
        main()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
    except ONE_LINE_ERRORS as err:
        if os.environ.get('REPLK_MM_TRACEBACK') == '1':
            raise
        print('error: ' + ' '.join(str(err).split()), file=sys.stderr)
        sys.exit(1)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            gc.collect()


def load_config(path: str, cfg_options: Optional[dict], work_dir: Optional[str],
                launcher: str) -> Config:
    """Read ``path``, apply ``--cfg-options``, set ``work_dir`` (default ``work_dirs/<name>``)."""
    if not osp.isfile(path):
        raise ToolError(f'config {path} does not exist; the configs live under configs/ '
                        '(e.g. configs/demo/)')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(path))[0])
    cfg.launcher = launcher
    setup_cpu_distributed(cfg, launcher)
    return cfg


def _datasets(dataset_cfg: dict) -> Iterator[dict]:
    """The leaf dataset configs under wrappers (RepeatDataset, ConcatDataset, ...)."""
    if 'dataset' in dataset_cfg:
        yield from _datasets(dataset_cfg['dataset'])
    elif 'datasets' in dataset_cfg:
        for sub in dataset_cfg['datasets']:
            yield from _datasets(sub)
    else:
        yield dataset_cfg


def _dataset_paths(dataset_cfg: dict) -> List[Tuple[str, str]]:
    """``[(what, path)]`` a dataset config reads: data_root, ann_file, data_prefix entries."""
    root = dataset_cfg.get('data_root') or ''
    paths = [('data_root', root)] if root else []
    if dataset_cfg.get('ann_file'):
        paths.append(('ann_file', osp.join(root, dataset_cfg['ann_file'])))
    prefix = dataset_cfg.get('data_prefix') or {}
    if isinstance(prefix, str):
        prefix = {'data_prefix': prefix}
    paths.extend((f'data_prefix.{k}', osp.join(root, v)) for k, v in prefix.items() if v)
    return paths


def check_data_paths(cfg: Config, modes: Tuple[str, ...]) -> None:
    """Every file and folder the ``{mode}_dataloader`` datasets read must exist."""
    for mode in modes:
        loader = cfg.get(f'{mode}_dataloader')
        if not loader:
            continue
        for dataset_cfg in _datasets(loader['dataset']):
            for what, path in _dataset_paths(dataset_cfg):
                if not osp.exists(path):
                    raise ToolError(
                        f'{mode}_dataloader: the {dataset_cfg.get("type", "dataset")} {what} '
                        f'{path} does not exist. Prepare the dataset there (docs/get_started.md, '
                        f'"Datasets") or pass --cfg-options {mode}_dataloader.dataset.data_root='
                        f'YOUR_PATH; {DEMO_HINT}')


def _pretrained_checkpoints(node) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and node.get('checkpoint'):
            yield node['checkpoint']
        for value in node.values():
            yield from _pretrained_checkpoints(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _pretrained_checkpoints(value)


def check_pretrained(cfg: Config) -> None:
    """Local ``init_cfg=dict(type='Pretrained', checkpoint=...)`` files must exist."""
    for ckpt in _pretrained_checkpoints(cfg.get('model', {})):
        if '://' not in ckpt and not osp.isfile(ckpt):
            raise ToolError(
                f'pretrained weights {ckpt} (model init_cfg) not found. Download the ImageNet '
                'checkpoint to that path (docs/get_started.md, "Pretrained weights") or train '
                'from scratch with --cfg-options model.backbone.init_cfg=None')


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg`` with model-building mistakes (bad arch, bad arguments) as ToolError.
    On one process the SyncBN layers the Runner reverted to plain BN run the package's batch norm
    (:func:`~replk_mm.models.layers.use_package_batch_norm`)."""
    try:
        runner = Runner.from_cfg(cfg)
    except (ValueError, KeyError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise ToolError(f'cannot build the model of this config: {msg}') from err
    if not runner.distributed:
        use_package_batch_norm(runner.model)
    return runner


def _few(keys: List[str], n: int = 3) -> str:
    return ', '.join(keys[:n]) + (', ...' if len(keys) > n else '') if keys else 'none'


def checked_state_dict(model: nn.Module, path: str) -> Dict[str, torch.Tensor]:
    """Read the weights of checkpoint ``path`` and make sure they are a checkpoint of ``model``:
    same keys, same shapes. Returns the state dict."""
    try:
        state_dict = extract_state_dict(load_checkpoint_file(path))
    except (FileNotFoundError, UnsafeCheckpointError, CorruptCheckpointError, TypeError) as err:
        raise ToolError(str(err)) from err
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise ToolError(
            f'checkpoint {path} is not a checkpoint of this model: {len(missing)} of its '
            f'{len(own)} keys are missing ({_few(missing)}) and {len(unexpected)} checkpoint keys '
            f'match nothing ({_few(unexpected)}). Pass a checkpoint trained with this config; '
            f'for one converted by tools/deploy.py pass the config it wrote next to it '
            f'({osp.splitext(path)[0]}.py)')
    shapes = [f'{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}'
              for k, v in state_dict.items() if v.shape != own[k].shape]
    if shapes:
        raise ToolError(f'checkpoint {path} has the keys of this model but other shapes '
                        f'({_few(shapes)}): it was trained with another arch or number of '
                        'classes; pass the config it was trained with')
    return state_dict


_CHECKPOINT_NAME = re.compile(r'(?:iter|epoch)_(\d+)\.pth')


def _checkpoints_newest_first(folder: str) -> List[str]:
    """The ``iter_N.pth`` / ``epoch_N.pth`` files of ``folder``, highest N first."""
    found = [(int(m.group(1)), name) for name in os.listdir(folder)
             if (m := _CHECKPOINT_NAME.fullmatch(name))] if osp.isdir(folder) else []
    return [osp.join(folder, name) for _, name in sorted(found, reverse=True)]


def _set_aside(path: str) -> str:
    """Rename a damaged checkpoint to ``<path>.corrupt[.N]`` (never over another file)."""
    target, n = f'{path}.corrupt', 0
    while osp.exists(target):
        n += 1
        target = f'{path}.corrupt.{n}'
    os.replace(path, target)
    return target


def newest_intact_checkpoint(folder: str, set_aside: bool = False) -> Optional[str]:
    """The newest checkpoint of ``folder`` whose every byte checks out (CRC); with ``set_aside``
    newer damaged ones are renamed out of the way, one warning each (name, reason)."""
    for path in _checkpoints_newest_first(folder):
        try:
            problem = checkpoint_file_problem(path, verify_data=True)
        except FileNotFoundError:
            continue  # set aside meanwhile by the main process
        if problem is None:
            return path
        if set_aside:
            print_log(f'checkpoint {path} is {problem}; it is kept aside as {_set_aside(path)} '
                      'and training resumes from the newest intact one', logger='current',
                      level=logging.WARNING)
    return None


def resolve_resume(cfg: Config, requested: str) -> None:
    """Point ``cfg`` at the checkpoint ``--resume [CKPT]`` continues from.

    ``auto``: the newest intact checkpoint of the work dir (newer damaged ones are set aside; none
    at all: training starts afresh). A path: it must be intact, else a :class:`ToolError` naming
    it and the newest intact one. Without ``randomness.seed`` the interrupted run's seed is taken,
    so that data order and augmentation continue as they were.
    """
    main_process = int(os.environ.get('RANK', '0')) == 0  # the process group may not exist yet
    if requested == 'auto':
        pointer = osp.join(cfg.work_dir, POINTER)
        folder = cfg.work_dir
        if osp.isfile(pointer):
            with open(pointer) as f:
                folder = osp.dirname(f.read().strip()) or folder
        path = newest_intact_checkpoint(folder, set_aside=main_process)
        if path is None:
            print_log(f'--resume: no intact checkpoint in {folder}; training starts afresh',
                      logger='current', level=logging.WARNING)
            cfg.resume, cfg.load_from = False, None
            return
        if main_process and osp.isfile(pointer):
            write_text_atomic(pointer, path)
    else:
        path = requested
        if not osp.isfile(path):
            raise ToolError(f'--resume {path}: no such file')
        problem = checkpoint_file_problem(path, verify_data=True)
        if problem:
            intact = newest_intact_checkpoint(osp.dirname(path) or '.')
            raise ToolError(
                f'cannot resume from checkpoint {path}: it is {problem}. The newest intact '
                f'checkpoint there is {intact or "none"}' +
                ('; pass it to --resume (or --resume alone picks it)' if intact else ''))
    cfg.resume, cfg.load_from = True, path
    randomness = cfg.setdefault('randomness', {})
    if randomness.get('seed') is None:
        randomness['seed'] = load_checkpoint_file(path).get('meta', {}).get('seed')


def build_test_runner(cfg: Config, checkpoint: str) -> Runner:
    """The Runner that evaluates ``checkpoint`` with ``cfg`` (``runner.test()``): test data
    checked, weights checked against the model and loaded strictly. Shared by ``tools/test.py``
    and ``tools/analysis_tools/benchmark_downstream.py``."""
    cfg.load_from, cfg.resume = None, False
    check_data_paths(cfg, ('test', ))
    runner = build_runner(cfg)
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    load_state_dict_checked(model, checked_state_dict(model, checkpoint), strict=True,
                            source=checkpoint)
    return runner


def format_metrics(metrics: dict) -> str:
    """The line ``tools/test.py`` prints: ``metrics: key=value ...``, floats with 4 decimals."""
    return 'metrics: ' + ' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                                  for k, v in metrics.items())
