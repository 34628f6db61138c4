"""Gradient reversal layer (Ganin and Lempitsky 2015), used by the adversarial network (paper 3.3.2).

Identity forward; the backward multiplies the gradient by ``-scale``. A discriminator behind it
learns to discriminate while everything before it learns to confuse the discriminator.
"""

import torch


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad.neg() * ctx.scale, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Returns ``x``; its gradient flows back as ``-scale * grad``."""
    return _GradientReversal.apply(x, scale)


class GradientReversal(torch.nn.Module):
    """Module form of :func:`grad_reverse`.

    Args:
        scale (float): factor of the reversed gradient.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.scale)
