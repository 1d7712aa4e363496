"""Checkpoints that survive a kill at any moment and resume a run exactly.

:class:`AtomicCheckpointHook` is MMEngine's ``CheckpointHook`` (same arguments) with:

- every checkpoint (periodic, best, last) written through :class:`AtomicLocalBackend`: a temporary
  file in the same folder, fsynced, renamed into place; the ``last_checkpoint`` pointer the same
  way and only once its checkpoint is in place; outdated checkpoints (``max_keep_ckpts``, the
  previous best) deleted only after the new one is in place;
- temporary files of a killed run removed when training starts;
- every rank's random state (:mod:`replk_mm.engine.run_state`) in each checkpoint, restored on
  resume right before the first batch the interrupted run had not trained on; validation inside
  a training run draws from saved-and-restored generators, so it leaves training's streams as
  they were.

Fault injection for tests: ``REPLK_MM_CHECKPOINT_PAUSE=NAME:MOMENT`` (MOMENT ``write``: half the
file is on disk; ``rename``: the temporary file is complete; ``pointer``: the checkpoint is in
place, the pointer not yet updated) makes the process print ``checkpoint pause: MOMENT PATH`` to
stderr and wait there until it is killed, when it writes the checkpoint named NAME.
"""
import contextlib
import os
import os.path as osp
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from ..deploy.atomic import atomic_outputs, leftover_temporaries, write_text_atomic
from ..registry import HOOKS
from .run_state import (CHECKPOINT_KEY, capture_rng_state, gather_rng_states, own_rng_state,
                        restore_rng_state)

ATOMIC_BACKEND = 'replk_mm_atomic'
PAUSE_ENV = 'REPLK_MM_CHECKPOINT_PAUSE'
POINTER = 'last_checkpoint'


def pause_point(moment: str, path: str) -> None:
    """Wait here forever if ``REPLK_MM_CHECKPOINT_PAUSE`` asks for ``moment`` of ``path``."""
    request = os.environ.get(PAUSE_ENV, '')
    if request != f'{osp.basename(path)}:{moment}':
        return
    print(f'checkpoint pause: {moment} {path}', file=sys.stderr, flush=True)
    while True:
        time.sleep(60)


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """MMEngine's local file backend whose writes are atomic (temporary file, fsync, rename)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        path = str(filepath)
        with atomic_outputs([path], force=True) as (tmp, ):
            with open(tmp, 'wb') as f:
                half = len(obj) // 2
                f.write(obj[:half])
                f.flush()
                pause_point('write', path)
                f.write(obj[half:])
            pause_point('rename', path)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


class _DeferredRemovals:
    """A file backend whose ``remove`` / ``rmtree`` wait until :meth:`flush`."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.pending: List[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def remove(self, path: str) -> None:
        self.pending.append(path)

    def rmtree(self, path: str) -> None:
        self.pending.append(path)

    def flush(self) -> None:
        for path in self.pending:
            if self._backend.isdir(path):
                self._backend.rmtree(path)
            elif self._backend.isfile(path):
                self._backend.remove(path)
        self.pending.clear()


class _RestoreAfterSkip:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator`` while the loop skips the batches
    the interrupted run trained on (which draws from the generators as loading them did); before
    the first new batch it restores the saved state and hands the loop its iterator back."""

    def __init__(self, loop: Any, state: Dict[str, Any], skip: int) -> None:
        self._loop, self._inner = loop, loop.dataloader_iterator
        self._state, self._left = state, skip

    def __iter__(self) -> '_RestoreAfterSkip':
        return self

    def __next__(self) -> Any:
        if self._left > 0:
            self._left -= 1
        else:
            restore_rng_state(self._state, self._loop.dataloader)
            self._loop.dataloader_iterator = self._inner
        return next(self._inner)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` with atomic writes, safe deletions and exact resumption (module doc).

    Takes CheckpointHook's arguments; without ``backend_args`` (and with a local ``out_dir``) it
    writes through :class:`AtomicLocalBackend`.
    """

    def __init__(self, *args, backend_args: Optional[dict] = None, **kwargs) -> None:
        out_dir = kwargs.get('out_dir')
        local = out_dir is None or '://' not in str(out_dir)
        if backend_args is None and local and kwargs.get('file_client_args') is None:
            backend_args = dict(backend=ATOMIC_BACKEND)
        super().__init__(*args, backend_args=backend_args, **kwargs)
        self._rng_states: Optional[List[Dict[str, Any]]] = None
        self._resumed: Optional[Dict[str, Any]] = None
        self._before_val: Optional[Dict[str, Any]] = None
        self._training = False

    # ---- writing ----------------------------------------------------------------------------

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._training = True
        if is_main_process() and '://' not in str(self.out_dir):
            for tmp in sorted({*leftover_temporaries(self.out_dir),
                               *leftover_temporaries(runner.work_dir)}):
                runner.logger.warning(f'removing {tmp}, a file a killed run left unfinished')
                os.remove(tmp)
        self._start_resumed_streams(runner)

    def after_train(self, runner) -> None:
        super().after_train(runner)
        self._training = False

    def _gather_rng_states(self, runner) -> None:
        """Every rank's training random state, for the checkpoint about to be written (inside a
        validation: the state the validation started from)."""
        local = self._before_val or capture_rng_state(runner.train_dataloader)
        self._rng_states = gather_rng_states(local)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._rng_states is not None:
            checkpoint[CHECKPOINT_KEY] = self._rng_states

    @contextlib.contextmanager
    def _removals_after_save(self) -> Iterator[_DeferredRemovals]:
        backend, deferred = self.file_backend, _DeferredRemovals(self.file_backend)
        self.file_backend = deferred
        try:
            yield deferred
        finally:
            self.file_backend = backend
        if is_main_process():
            deferred.flush()

    def _save_checkpoint_with_step(self, runner, step: int, meta: dict) -> None:
        """Write checkpoint ``step``, then the pointer to it, then delete the outdated ones."""
        self._gather_rng_states(runner)
        with self._removals_after_save():
            if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                                and self.keep_ckpt_ids[-1] == step):
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    self.file_backend.remove(self.file_backend.join_path(
                        self.out_dir, self.filename_tmpl.format(self.keep_ckpt_ids.popleft())))
                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
            filename = self.filename_tmpl.format(step)
            self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
            runner.message_hub.update_info('last_ckpt', self.last_ckpt)
            runner.save_checkpoint(
                self.out_dir, filename, self.file_client_args, save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                backend_args=self.backend_args, **self.args)
            if is_main_process():
                pause_point('pointer', self.last_ckpt)
                write_text_atomic(osp.join(runner.work_dir, POINTER), self.last_ckpt)

    def _save_best_checkpoint(self, runner, metrics: dict) -> None:
        self._gather_rng_states(runner)
        with self._removals_after_save():
            super()._save_best_checkpoint(runner, metrics)

    # ---- resuming ---------------------------------------------------------------------------

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY)
        meta = checkpoint.get('meta', {})
        self._resumed = dict(states=states, iter=meta.get('iter'), epoch=meta.get('epoch'))

    def _start_resumed_streams(self, runner) -> None:
        """On resume (not ``load_from``): restore this rank's saved random state, for an
        iteration-based loop after it has skipped the batches already trained."""
        resumed, self._resumed = self._resumed, None
        if not resumed or runner.iter == 0 or runner.iter != resumed['iter']:
            return
        if resumed['states'] is None:
            runner.logger.warning(
                'the checkpoint holds no random states (written without replk_mm\'s '
                'AtomicCheckpointHook): drop path, dropout and augmentation draw new samples, '
                'so the resumed run will not repeat the interrupted one exactly')
            return
        state = own_rng_state(resumed['states'])
        if state is None:
            return
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):
            loop.dataloader_iterator = _RestoreAfterSkip(loop, state, runner.iter)
        else:
            restore_rng_state(state, runner.train_dataloader)

    # ---- validation inside training ---------------------------------------------------------

    def before_val(self, runner) -> None:
        if self._training:
            self._before_val = capture_rng_state(runner.train_dataloader)

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            restore_rng_state(self._before_val, runner.train_dataloader)
        self._before_val = None
