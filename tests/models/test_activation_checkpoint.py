"""``checkpointed``: the recomputed block gives the plain block's outputs and gradients, through
one autograd node when its input requires grad and through saved-tensor hooks when it does not."""
import torch
import torch.nn as nn

from replk_mm.models.utils import checkpointed


def block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GELU(), nn.Dropout(0.5))


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
