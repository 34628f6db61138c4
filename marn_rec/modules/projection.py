"""Modality-specific and modality-invariant projections (paper 3.2): ``s_m = S_m(e_m)``, ``c_m = I(e_m)``."""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from marn_rec.validation import is_tracing


def _modality_major(x: torch.Tensor) -> torch.Tensor:
    """[U, M, in] -> [M, U, in], contiguous: the batched matmul over modalities, forward and
    backward, took 0.7x the time on it than on the strided transposed view in fp32 on our CPU
    (0.93x under bf16)."""
    return x.transpose(0, 1).contiguous()


class _ProjectedTwice(torch.autograd.Function):
    """``relu(x W + b)`` computed once and returned twice: the first output's gradient reaches ``x``
    and the parameters, the second's only the parameters, as if projected from ``x.detach()``.

    DDMA needs both (eq. 10: its discriminators see the projections of detached embeddings, the
    CTR loss those of the embeddings themselves); their values are equal, so projecting twice costs
    a forward GEMM and a weight-gradient GEMM per projection for nothing. ``per_modality``: ``W``
    is [M, in, out] (:class:`PerModalityLinear`), else [out, in] (``nn.Linear``). Under autocast
    the forward runs as autocast makes it, and the backward in the output's dtype with the
    gradients cast back to the inputs' dtypes, as autocast's own casts do.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, per_modality: bool):
        if per_modality:
            x_t = _modality_major(x)
            z = torch.baddbmm(bias.unsqueeze(1), x_t, weight).transpose(0, 1)
        else:
            x_t = x
            z = F.linear(x, weight, bias)
        y = torch.relu(z)
        ctx.per_modality = per_modality
        ctx.save_for_backward(x_t, weight, y)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no GEMM for it
        # Two outputs of one value: the second a view, so that autograd gives each its own
        # gradient without a copy (an in-place change of either would raise, not go unseen).
        return y, y.view_as(y)

    @staticmethod
    def backward(ctx, grad: Optional[torch.Tensor], grad_detached: Optional[torch.Tensor]):
        x, weight, y = ctx.saved_tensors  # x: [M, U, in] for per_modality, else as given
        dtype = y.dtype
        # relu's backward (the gradient where y > 0) in one kernel, as autograd runs it.
        relu_backward = torch.ops.aten.threshold_backward
        grad = grad.to(dtype) if grad is not None else None
        grad_z = relu_backward(grad, y, 0) if grad is not None else None
        if grad is not None and grad_detached is not None:
            grad_all = relu_backward(grad + grad_detached.to(dtype), y, 0)
        elif grad_detached is not None:
            grad_all = relu_backward(grad_detached.to(dtype), y, 0)
        else:
            grad_all = grad_z
        if grad_all is None:
            return None, None, None, None
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        w, xs = weight.to(dtype), x.to(dtype)
        grad_x = grad_w = grad_b = None
        if ctx.per_modality:  # z[:, m] = x[:, m] @ W[m] + b[m]
            if need_x and grad_z is not None:
                grad_x = torch.bmm(grad_z.transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)
            if need_w:
                grad_w = torch.bmm(xs.transpose(1, 2), grad_all.transpose(0, 1))
            if need_b:
                grad_b = grad_all.sum(dim=0)
        else:  # z = x @ W^T + b
            flat = grad_all.reshape(-1, grad_all.shape[-1])
            if need_x and grad_z is not None:
                grad_x = grad_z @ w
            if need_w:
                grad_w = flat.t() @ xs.reshape(-1, xs.shape[-1])
            if need_b:
                grad_b = flat.sum(dim=0)
        return (
            grad_x.to(x.dtype) if grad_x is not None else None,  # [U, M, in] either way
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(weight.dtype) if grad_b is not None else None,
            None,
        )


class PerModalityLinear(nn.Module):
    """M independent linear maps applied to the M modality slots at once (one batched matmul).

    Args:
        num_modalities (int): M.
        in_features (int): input size of every slot.
        out_features (int): output size of every slot.
        bias_init (float | None): None: ``nn.Linear``'s default initialisation, slot by slot. A
            number: every weight 0 and every bias entry this value, so that each map starts as
            that constant (MAF's attention starts as CONC this way, see
            :class:`marn_rec.modules.maf.MultimodalAttentionFusion`).
        device (torch.device | None): parameter device.

    Example::

        lin = PerModalityLinear(4, 256, 256)
        y = lin(torch.randn(10, 4, 256))  # y[:, m] = x[:, m] @ W[m] + b[m]
    """

    def __init__(
        self,
        num_modalities: int,
        in_features: int,
        out_features: int,
        bias_init: float | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.bias_init = bias_init
        self.weight = nn.Parameter(
            torch.empty(num_modalities, in_features, out_features, device=device)
        )
        self.bias = nn.Parameter(torch.empty(num_modalities, out_features, device=device))
        # True: the batched matmul on the transposed view of x, as on 2026-12-01 (see forward).
        self.old_step_kernels = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # DistributedModelParallel calls this on the module that owns meta-device parameters, so
        # the initialisation lives here (not in a parent module).
        if self.bias_init is not None:
            nn.init.zeros_(self.weight)
            nn.init.constant_(self.bias, self.bias_init)
            return
        # nn.Linear's default initialisation, slot by slot.
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): [U, M, in_features].

        Returns:
            torch.Tensor: [U, M, out_features].
        """
        x_t = x.transpose(0, 1) if self.old_step_kernels else _modality_major(x)  # [M, U, in]
        return torch.baddbmm(self.bias.unsqueeze(1), x_t, self.weight).transpose(0, 1)


class ModalityProjection(nn.Module):
    """Splits every modality embedding into modality-specific and modality-invariant features.

    ``S_m`` is a separate nonlinear projection per modality; ``I`` one projection shared by all
    modalities, so that the adversarial network (3.3) can pull the ``c_m`` into one subspace.

    Args:
        num_modalities (int): M.
        modality_dim (int): size of ``e_m``.
        hidden_dim (int): d, the size of ``s_m`` and ``c_m`` (256 in the paper).
        with_invariant (bool): build ``I``; models without an adversarial network have no use for
            it (DDP must not see parameters that receive no gradient).
        device (torch.device | None): parameter device.

    Example::

        proj = ModalityProjection(4, 256, 256)
        s, c = proj.specific(e), proj.invariant(e)  # e: [U, 4, 256]
    """

    def __init__(
        self,
        num_modalities: int,
        modality_dim: int,
        hidden_dim: int,
        with_invariant: bool = True,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.specific_projection = PerModalityLinear(
            num_modalities, modality_dim, hidden_dim, device=device
        )
        self.invariant_projection: nn.Linear | None = (
            nn.Linear(modality_dim, hidden_dim, device=device) if with_invariant else None
        )
        # True: project e and e.detach() apart, as on 2026-12-01 (see :meth:`specific_twice`).
        self.old_step_kernels = False

    def specific(self, e: torch.Tensor) -> torch.Tensor:
        """``s_m = S_m(e_m)``: [U, M, modality_dim] -> [U, M, hidden_dim]."""
        return torch.relu(self.specific_projection(e))

    def invariant(self, e: torch.Tensor) -> torch.Tensor:
        """``c_m = I(e_m)``: [U, M, modality_dim] -> [U, M, hidden_dim]."""
        if self.invariant_projection is None:
            raise RuntimeError("this ModalityProjection was built without the invariant projection")
        return torch.relu(self.invariant_projection(e))

    def specific_twice(self, e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(S(e), S(e.detach()))``: equal values from one projection; the second's gradient
        reaches ``S``'s parameters and not ``e``. Projected apart under tracing (FX, export) and
        with ``old_step_kernels``."""
        return self._twice(e, self.specific, self.specific_projection, per_modality=True)

    def invariant_twice(self, e: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(I(e), I(e.detach()))``, as :meth:`specific_twice`."""
        return self._twice(e, self.invariant, self.invariant_projection, per_modality=False)

    def _twice(self, e: torch.Tensor, project, linear: Optional[nn.Module], per_modality: bool):
        if linear is None or self.old_step_kernels or is_tracing():
            return project(e), project(e.detach())  # (project raises for a missing I)
        return _ProjectedTwice.apply(e, linear.weight, linear.bias, per_modality)
