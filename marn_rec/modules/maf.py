"""Multimodal attention fusion, MAF (paper 3.2, eq. 2-3), and the plain sum it is compared with.

eq. 3: ``atten_m = tanh(W_m^T s_m + b_m)`` with ``W_m`` d x d (vector attention, one per modality);
eq. 2: ``s = sum_m atten_m * s_m``. BaseModel+CONC (Table 3) sums the ``s_m`` with fixed weights.

MAF starts as CONC: ``W_m = 0`` and every entry of ``b_m`` is :data:`ATTENTION_BIAS_INIT`, so at
initialisation ``atten_m = tanh(b) = 1/sqrt(3)`` for every item, modality and dimension and
``s = sum_m s_m / sqrt(3)``, CONC's fusion up to a constant. The paper gives no initialisation;
``nn.Linear``'s random one starts MAF as a random re-weighting of the modalities (mean |atten|
0.09, half of the weights negative, ``s`` at cosine -0.12 with CONC's sum on the small preset), from
which it must first unlearn its way back to the plain sum that CONC gets for free.
"""

import math

import torch
from torch import nn

from marn_rec.modules.projection import PerModalityLinear

# atten = tanh(b) = 1/sqrt(3) maximises atten * (1 - atten^2): the product of the factor atten by
# which MAF passes the gradient to S_m and the slope 1 - atten^2 with which the attention itself
# learns (W_m, b_m). tanh(b) near 1 would pass S_m's gradient whole but freeze the attention.
ATTENTION_BIAS_INIT: float = math.atanh(1.0 / math.sqrt(3.0))


class MultimodalAttentionFusion(nn.Module):
    """Eq. 2-3: per-dimension attention weights for each modality from its own specific features.

    Starts as CONC (``W_m = 0``, ``tanh(b_m) = 1/sqrt(3)``, see the module docstring).

    Args:
        num_modalities (int): M.
        hidden_dim (int): d.
        device (torch.device | None): parameter device.

    Example::

        maf = MultimodalAttentionFusion(4, 256)
        s = maf(s_m)  # s_m: [U, 4, 256] -> s: [U, 256]; at init s = s_m.sum(1) / sqrt(3)
    """

    def __init__(
        self, num_modalities: int, hidden_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.attention = PerModalityLinear(
            num_modalities, hidden_dim, hidden_dim, bias_init=ATTENTION_BIAS_INIT, device=device
        )

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
