"""Modality-specific and modality-invariant projections (paper 3.2): ``s_m = S_m(e_m)``, ``c_m = I(e_m)``."""

import math

import torch
from torch import nn


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
        return torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight).transpose(0, 1)


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

    def specific(self, e: torch.Tensor) -> torch.Tensor:
        """``s_m = S_m(e_m)``: [U, M, modality_dim] -> [U, M, hidden_dim]."""
        return torch.relu(self.specific_projection(e))

    def invariant(self, e: torch.Tensor) -> torch.Tensor:
        """``c_m = I(e_m)``: [U, M, modality_dim] -> [U, M, hidden_dim]."""
        if self.invariant_projection is None:
            raise RuntimeError("this ModalityProjection was built without the invariant projection")
        return torch.relu(self.invariant_projection(e))
