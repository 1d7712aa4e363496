"""The guard against a diverged run: a NaN or Inf loss (or gradient) never reaches the weights.

:class:`NonFiniteLossHook` drops the optimizer step whose gradients are not finite (an optimizer
step pre-hook sets them to None, so the step changes nothing: no update, no moment, no weight
decay). By default it then stops the run with :class:`NonFiniteLossError` naming the iteration,
the loss terms that are not finite and the last checkpoint written; no checkpoint is written from
that state. With ``skip=True`` the run goes on, and each skipped step is logged with the count
(the model's buffers, e.g. batch-norm statistics the non-finite forward updated, are put back).
"""
from typing import Any, Dict, List, Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapperDict

from ..registry import HOOKS


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients of a training step are NaN or Inf."""


def _nonfinite_terms(outputs: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """The loss terms (keys with ``loss``) of a train step's log variables that are not finite."""
    terms = {}
    for name, value in (outputs or {}).items():
        value = torch.as_tensor(value).detach()
        if 'loss' in name and not torch.isfinite(value).all():
            terms[name] = float(value.float().mean())
    return terms


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop (default) or skip the training steps whose loss or gradients are not finite.

    Args:
        skip: go on without the step (its gradients are dropped) instead of stopping the run.
    """

    priority = 'NORMAL'

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip
        self.skipped = 0
        self._dropped = False
        self._buffers: List[torch.Tensor] = []

    def before_train(self, runner) -> None:
        wrappers = runner.optim_wrapper.values() if isinstance(
            runner.optim_wrapper, OptimWrapperDict) else [runner.optim_wrapper]
        for wrapper in wrappers:
            wrapper.optimizer.register_step_pre_hook(self._drop_nonfinite_step)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.skip:
            self._buffers = [b.detach().clone() for b in runner.model.buffers()]

    def _drop_nonfinite_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads: List[torch.Tensor] = [p.grad for group in optimizer.param_groups
                                     for p in group['params'] if p.grad is not None]
        if grads and not bool(torch.stack([g.isfinite().all() for g in grads]).all()):
            for group in optimizer.param_groups:
                for param in group['params']:
                    param.grad = None
            self._dropped = True

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        terms = _nonfinite_terms(outputs)
        flag = torch.tensor(float(bool(terms) or self._dropped))
        self._dropped = False
        if get_world_size() > 1:
            all_reduce(flag, op='max')  # every rank stops or skips at the same step
        if not flag.item():
            return
        what = ', '.join(f'{k}={v}' for k, v in terms.items()) or (
            'gradients (the loss terms on this rank are finite)')
        iteration = runner.iter + 1
        if self.skip:
            for buffer, saved in zip(runner.model.buffers(), self._buffers):
                buffer.copy_(saved)
            self.skipped += 1
            runner.logger.warning(f'iteration {iteration}: non-finite {what}; step skipped '
                                  f'({self.skipped} skipped so far)')
            return
        last = runner.message_hub.get_info('last_ckpt') or 'none yet'
        raise NonFiniteLossError(
            f'non-finite loss at iteration {iteration}: {what}. The run stops here and writes no '
            f'checkpoint of this state; the last checkpoint written is {last}. Lower the learning '
            'rate or clip gradients (optim_wrapper.clip_grad), then resume from it; or skip such '
            'steps with --cfg-options default_hooks.nonfinite_loss.skip=True')

    def after_train(self, runner) -> None:
        if self.skipped:
            runner.logger.warning(f'{self.skipped} training steps with a non-finite loss or '
                                  'gradients were skipped')
