"""``checkpointed``: the recomputed block gives the plain block's outputs, gradients and batch-norm
running statistics, through one autograd node when its input requires grad and through
saved-tensor hooks when it does not."""
import os

import pytest
import torch
import torch.nn as nn

from replk_mm.models.layers import UniRepLKNetBlock
from replk_mm.models.layers.batch_norm import BatchNorm2d
from replk_mm.models.utils import checkpointed


def block(norm: type = nn.BatchNorm2d, momentum: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), norm(4, momentum=momentum), nn.GELU(),
                         nn.Dropout(0.5))


def run(module: nn.Module, x: torch.Tensor, with_cp: bool):
    torch.manual_seed(3)  # the same dropout mask in both runs, and in the recomputation
    y = checkpointed(module, x) if with_cp else module(x)
    y.square().sum().backward()
    return y, [p.grad.clone() for p in module.parameters()]


def test_input_with_grad_uses_one_recomputing_node():
    module, x = block(), torch.randn(2, 4, 9, 9, requires_grad=True)
    y = checkpointed(module, x)
    assert type(y.grad_fn).__name__ == 'CheckpointFunctionBackward'
    y_plain, grads_plain = run(block(), x, False)
    x_grad_plain, x.grad = x.grad.clone(), None
    y_cp, grads_cp = run(block(), x, True)
    torch.testing.assert_close(y_cp, y_plain)
    torch.testing.assert_close(x.grad, x_grad_plain)
    for a, b in zip(grads_cp, grads_plain):
        torch.testing.assert_close(a, b)


def test_input_without_grad_still_gives_parameter_gradients():
    x = torch.randn(2, 4, 9, 9)
    y_plain, grads_plain = run(block(), x, False)
    y_cp, grads_cp = run(block(), x, True)
    torch.testing.assert_close(y_cp, y_plain)
    for a, b in zip(grads_cp, grads_plain):
        torch.testing.assert_close(a, b)


def test_no_grad_runs_the_block_plainly():
    module, x = block(), torch.randn(2, 4, 9, 9, requires_grad=True)
    with torch.no_grad():
        y = checkpointed(module, x)
    assert y.grad_fn is None


def _norm_state(module: nn.Module) -> list:
    return [b.clone() for name, b in module.named_buffers()
            if name.rsplit('.', 1)[-1] in ('running_mean', 'running_var', 'num_batches_tracked')]


@pytest.mark.parametrize('norm', [nn.BatchNorm2d, BatchNorm2d], ids=['torch_bn', 'package_bn'])
@pytest.mark.parametrize('momentum', [0.1, None])
@pytest.mark.parametrize('input_grad', [True, False], ids=['reentrant', 'non_reentrant'])
def test_running_statistics_update_once_per_step(norm, momentum, input_grad):
    """The recomputation normalizes with the batch statistics but does not update the running
    ones a second time: after three steps they equal the plain block's exactly (before, both
    passes updated them: an effective momentum of 0.19 instead of 0.1, the count doubled)."""
    states = []
    for with_cp in (False, True):
        module = block(norm, momentum)
        for step in range(3):
            x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(step),
                            requires_grad=input_grad)
            run(module, x, with_cp)
        assert module[1].momentum == momentum  # restored after the recomputation
        states.append(_norm_state(module))
    for plain, ckpt in zip(*states):
        assert torch.equal(plain, ckpt)


@pytest.mark.parametrize('input_grad', [True, False], ids=['reentrant', 'non_reentrant'])
def test_compiled_checkpointing_matches_the_plain_block(input_grad):
    """Under ``torch.compile`` the block checkpoints through Dynamo's own checkpoint op (it takes
    no ``context_fn``): it compiles, and gives the plain block's statistics and gradients."""
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        # (no conv bias: a bias before a batch norm has a gradient of zero up to rounding)
        module = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4),
                               nn.GELU())
        step = torch.compile(lambda t: checkpointed(module, t)) if compiled else module
        for i in range(2):
            x = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(i),
                            requires_grad=input_grad)
            step(x).square().sum().backward()
        results.append(_norm_state(module) + [p.grad for p in module.parameters()])
    for plain, compiled in zip(*results):
        torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)


def test_unireplknet_block_updates_running_statistics_once():
    """The bound-method form (``checkpointed(self._forward, x)``) finds the block's batch norms."""
    states, grads = [], []
    for with_cp in (False, True):
        torch.manual_seed(0)
        block = UniRepLKNetBlock(8, 7, drop_path=0.5, with_cp=with_cp)
        for step in range(2):
            x = torch.randn(2, 8, 10, 10, generator=torch.Generator().manual_seed(step),
                            requires_grad=True)
            torch.manual_seed(5)
            block(x).square().sum().backward()
        states.append(_norm_state(block))
        grads.append([p.grad.clone() for p in block.parameters()])
    assert len(states[0]) == 6 * 3  # dwconv's 4 (K = 7 and its 3 dilated branches), norm, pwconv2.2
    for plain, ckpt in zip(*states):
        assert torch.equal(plain, ckpt)
    for plain, ckpt in zip(*grads):
        torch.testing.assert_close(ckpt, plain)


def _ddp_rank(rank: int, init_file: str, out_dir: str) -> None:
    """Two SGD steps of a tiny RepLKNet (drop path 0.3) under DDP, without and with checkpointing;
    the final parameters and batch-norm statistics of each."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from replk_mm.models import RepLKNet
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    torch.set_num_threads(1)
    arch = dict(large_kernel_sizes=[13, 11, 9, 7], layers=[1, 1, 2, 1], channels=[8, 8, 16, 16],
                small_kernel=3)
    state = {}
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = DistributedDataParallel(RepLKNet(dict(arch), drop_path_rate=0.3, with_cp=with_cp))
        optim = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(10 + rank)  # each rank its own data and drop-path draws
        for _ in range(2):
            optim.zero_grad()
            sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
            optim.step()
        state[str(with_cp)] = dict(params=[p.detach().clone() for p in model.module.parameters()],
                                   norms=_norm_state(model.module))
    torch.save(state, os.path.join(out_dir, f'{rank}.pt'))
    dist.destroy_process_group()


def test_ddp_trains_the_same_with_checkpointing(tmp_path):
    """DDP's gradient hooks fire inside the re-entrant recomputation: the two ranks end with the
    parameters and batch-norm running statistics of the run without checkpointing (the
    statistics are each rank's own: its last batch updated them after the broadcast)."""
    torch.multiprocessing.spawn(_ddp_rank, (str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    runs = [torch.load(tmp_path / f'{rank}.pt') for rank in range(2)]
    for run in runs:
        for part in ('params', 'norms'):
            for plain, ckpt in zip(run['False'][part], run['True'][part]):
                torch.testing.assert_close(ckpt, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(runs[0]['True']['params'], runs[1]['True']['params']):
        torch.testing.assert_close(a, b)
