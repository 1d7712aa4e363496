"""Global Response Normalization (ConvNeXt V2) on channels-last tensors."""
import torch
import torch.nn as nn


class GRN(nn.Module):
    """``(γ · N(x) + 1) · x + β`` with ``N(x) = ‖x‖₂,spatial / mean_C ‖x‖₂,spatial``.

    Input and output ``(N, H, W, C)``. Parameters ``gamma`` and ``beta`` of shape ``(1, 1, 1, C)`` as in
    the authors' checkpoints; both start at zero, so a fresh GRN is the identity.

    Args:
        channels: C.
        bias: learn β. The deploy form has none: β is moved into the next linear layer
            (see :meth:`pop_bias`).
        eps: added to the mean norm.
    """

    def __init__(self, channels: int, bias: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        else:  # the same norm, 8-15x faster on CPUs (vector_norm reduces outer dims slowly);
            # not under autograd, where sqrt's gradient at an all-zero channel would be inf
            g = x.square().sum(dim=(1, 2), keepdim=True).sqrt()
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        out = (self.gamma * n + 1) * x
        return out if self.beta is None else out + self.beta

    def pop_bias(self) -> torch.Tensor:
        """Remove β from this layer and return it as ``(C,)``, for the caller to fold downstream."""
        if self.beta is None:
            raise RuntimeError('this GRN has no bias left to remove')
        beta = self.beta.detach().reshape(-1)
        self.beta = None
        return beta

    def extra_repr(self) -> str:
        return f'{self.gamma.shape[-1]}, bias={self.beta is not None}'
