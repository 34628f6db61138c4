"""Multimodal attention fusion, MAF (paper 3.2, eq. 2-3), and the plain sum it is compared with.

eq. 3: ``atten_m = tanh(W_m^T s_m + b_m)`` with ``W_m`` d x d (vector attention, one per modality);
eq. 2: ``s = sum_m atten_m * s_m``. BaseModel+CONC (Table 3) sums the ``s_m`` with fixed weights.
"""

import torch
from torch import nn

from marn_rec.modules.projection import PerModalityLinear


class MultimodalAttentionFusion(nn.Module):
    """Eq. 2-3: per-dimension attention weights for each modality from its own specific features.

    Args:
        num_modalities (int): M.
        hidden_dim (int): d.
        device (torch.device | None): parameter device.

    Example::

        maf = MultimodalAttentionFusion(4, 256)
        s = maf(s_m)  # s_m: [U, 4, 256] -> s: [U, 256]
    """

    def __init__(
        self, num_modalities: int, hidden_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.attention = PerModalityLinear(num_modalities, hidden_dim, hidden_dim, device=device)

    def forward(self, specific: torch.Tensor) -> torch.Tensor:
        """
        Args:
            specific (torch.Tensor): [U, M, d] modality-specific features ``s_m``.

        Returns:
            torch.Tensor: [U, d], the fused modality-specific representation ``s``.
        """
        return (self.weights(specific) * specific).sum(dim=1)

    def weights(self, specific: torch.Tensor) -> torch.Tensor:
        """[U, M, d] attention weights ``atten_m`` (eq. 3; paper Figure 4 plots them)."""
        return torch.tanh(self.attention(specific))


class SumFusion(nn.Module):
    """BaseModel+CONC: ``s = sum_m s_m``, every modality with the same fixed weight."""

    def forward(self, specific: torch.Tensor) -> torch.Tensor:
        """
        Args:
            specific (torch.Tensor): [U, M, d].

        Returns:
            torch.Tensor: [U, d].
        """
        return specific.sum(dim=1)
