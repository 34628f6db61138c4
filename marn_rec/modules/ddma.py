"""Double-discriminators multimodal adversarial network, DDMA (paper 3.3.2, eq. 7-10), with the
modality-specific discriminator Ds (3.3.3), and the one-discriminator adversarial baseline [30].

DDMA, per item and modality m, with ``c_m = I(e_m)``:
- ``D0`` classifies ``c_m.detach()`` into its modality; ``L_D0 = CE(D0(c_m), m)`` trains D0 alone
  (its gradient does not reach ``I``). ``w_m = 1 - softmax(D0(c_m))[m]``, a constant.
- ``D1`` classifies ``GRL(c_m)``; ``L_ADV = sum_m w_m CE(D1(c_m), m)``: D1 learns to discriminate,
  ``I`` (through the reversed gradient) learns to confuse it, weighted towards the modalities that
  D0 finds common.
- ``Ds`` shares D1's discriminating matrix and classifies ``s_m = S_m(e_m)``, computed on embeddings
  detached from the embedding layer; ``L_Ds = CE(Ds(s_m), m)`` makes the ``s_m`` separable.
- ``c = max_m(w_m * c_m)``, element-wise.
Losses are returned unweighted; eq. 10's ``lambda`` multiplies ``L_ADV`` and ``L_Ds`` in
:mod:`marn_rec.models.loss`. Every cross-entropy is a mean over (item, modality) pairs, weighted by the
item's number of slots in the batch so that a deduplicated batch has the per-slot objective.
"""

from typing import Dict, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from marn_rec.modules.grl import grad_reverse


class AdversarialOutput(NamedTuple):
    invariant: torch.Tensor  # [U, d], c
    losses: Dict[str, torch.Tensor]  # unweighted scalar losses
    modality_weights: torch.Tensor  # [U, M], w_m (ones for the plain adversarial network)


def modality_cross_entropy(
    logits: torch.Tensor,
    item_weights: Optional[torch.Tensor],
    pair_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean cross-entropy of classifying slot m of each item as modality m.

    Args:
        logits: [U, M, M] class scores for each (item, modality) pair.
        item_weights: [U] weight of each item (its slot count), or None for equal weights.
        pair_weights: [U, M] extra weight of each pair (DDMA's w_m), or None.
    """
    u, m, _ = logits.shape
    target = torch.arange(m, device=logits.device).expand(u, m)
    ce = F.cross_entropy(logits.reshape(u * m, m), target.reshape(-1), reduction="none").view(u, m)
    if pair_weights is not None:
        ce = ce * pair_weights
    per_item = ce.mean(dim=1)
    if item_weights is None:
        return per_item.mean()
    w = item_weights.to(per_item.dtype)
    return (per_item * w).sum() / w.sum().clamp_min(1e-12)


class DoubleDiscriminatorAdversarial(nn.Module):
    """DDMA with the modality-specific discriminator (3.3.2-3.3.3).

    Args:
        num_modalities (int): M, the classes of every discriminator.
        hidden_dim (int): d, the size of ``c_m`` and ``s_m``.
        device (torch.device | None): parameter device.

    Example::

        ddma = DoubleDiscriminatorAdversarial(4, 256)
        out = ddma(c, s_detached)  # out.invariant: [U, 256]; out.losses: d0, adv, ds
    """

    def __init__(
        self, num_modalities: int, hidden_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.d0 = nn.Linear(hidden_dim, num_modalities, device=device)
        # D1's discriminating matrix, used by Ds as well (3.3.3).
        self.d1 = nn.Linear(hidden_dim, num_modalities, device=device)

    def forward(
        self,
        invariant: torch.Tensor,
        specific_detached: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
    ) -> AdversarialOutput:
        """
        Args:
            invariant (torch.Tensor): [U, M, d] ``c_m = I(e_m)``.
            specific_detached (torch.Tensor | None): [U, M, d] ``S_m(e_m)`` with ``e_m`` detached
                from the embedding layer, for Ds; None skips Ds.
            item_weights (torch.Tensor | None): [U] slot count of each item.

        Returns:
            AdversarialOutput: ``c``, losses ``d0``, ``adv`` (and ``ds``), and ``w_m``.
        """
        d0_logits = self.d0(invariant.detach())
        losses = {"d0": modality_cross_entropy(d0_logits, item_weights)}
        with torch.no_grad():
            # w_m = 1 - D0^m(c_m): the probability D0 gives to the true modality, inverted.
            weights = 1.0 - torch.softmax(d0_logits, dim=-1).diagonal(dim1=1, dim2=2)
        losses["adv"] = modality_cross_entropy(
            self.d1(grad_reverse(invariant)), item_weights, pair_weights=weights
        )
        if specific_detached is not None:
            losses["ds"] = modality_cross_entropy(self.d1(specific_detached), item_weights)
        c = (weights.unsqueeze(-1) * invariant).amax(dim=1)
        return AdversarialOutput(c, losses, weights)


class ModalityAdversarial(nn.Module):
    """The one-discriminator adversarial network of [30] (Table 3's +ADV): D1 and the GRL alone.

    No D0, so no modality weights: ``L_ADV = CE(D1(GRL(c_m)), m)`` and ``c = max_m c_m``.

    Args:
        num_modalities (int): M.
        hidden_dim (int): d.
        device (torch.device | None): parameter device.
    """

    def __init__(
        self, num_modalities: int, hidden_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.d1 = nn.Linear(hidden_dim, num_modalities, device=device)

    def forward(
        self,
        invariant: torch.Tensor,
        specific_detached: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
    ) -> AdversarialOutput:
        """
        Args:
            invariant (torch.Tensor): [U, M, d] ``c_m``.
            specific_detached: unused (no Ds in this baseline); accepted for a common signature.
            item_weights (torch.Tensor | None): [U] slot count of each item.
        """
        losses = {"adv": modality_cross_entropy(self.d1(grad_reverse(invariant)), item_weights)}
        ones = torch.ones(invariant.shape[:2], dtype=invariant.dtype, device=invariant.device)
        return AdversarialOutput(invariant.amax(dim=1), losses, ones)
