"""Double-discriminators multimodal adversarial network, DDMA (paper 3.3.2, eq. 7-10), with the
modality-specific discriminator Ds (3.3.3), and the one-discriminator adversarial baseline [30].

DDMA, per item and modality m, with ``c_m = I(e_m)``:

- ``D0`` classifies ``c_m.detach()`` into its modality; ``L_D0 = CE(D0(c_m), m)`` trains D0 alone
  (its gradient does not reach ``I``). ``w_m = 1 - softmax(D0(c_m))[m]``, a constant.
- ``L_ADV = sum_m w_m CE(D1(c_m), m)`` (eq. 7: a sum over the modalities of each item), the game
  ``min_I max_D1`` of eq. 10, played through a gradient reversal layer as in Ganin and Lempitsky
  [8]: D1 learns to discriminate from the full gradient of ``L_ADV``, ``I`` learns to confuse D1
  from ``-lambda`` times it. ``lambda`` lives in :mod:`marn_rec.models.loss`, not here, so the game
  is returned as two losses of the same value: ``"d1"``, D1's side (on ``c_m.detach()``, not scaled
  by lambda), and ``"adv"``, ``I``'s side (through the GRL and D1's weights taken as constants,
  scaled by lambda). Their gradients sum to those of a GRL of scale lambda.
- The ``c_m`` that D1 sees are computed from embeddings detached from the embedding layer (the
  caller passes them as ``adversarial_input``): eq. 10 minimises ``L_ADV`` over ``I`` only; the
  embedding layer ``E`` appears under ``L_CTR`` alone.
- ``Ds`` shares D1's discriminating matrix and classifies ``s_m = S_m(e_m)``, computed on embeddings
  detached from the embedding layer; ``L_Ds = CE(Ds(s_m), m)`` makes the ``s_m`` separable.
- ``c = max_m(w_m * c_m)``, element-wise, on the undetached ``c_m`` (the CTR loss trains ``I`` and
  ``E`` through it).

Losses are returned unweighted; :mod:`marn_rec.models.loss` weights them. ``L_D0`` and ``L_Ds`` are
means over (item, modality) pairs (eq. 10's expectations over pairs ``(e, y)``); ``L_ADV`` is a mean
over items of the sum over modalities (eq. 7). Every mean over items is weighted by the item's
number of slots in the batch, so that a deduplicated batch has the per-slot objective.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from marn_rec.modules.grl import grad_reverse


class AdversarialOutput(NamedTuple):
    invariant: torch.Tensor  # [U, d], c
    losses: Dict[str, torch.Tensor]  # unweighted scalar losses
    modality_weights: torch.Tensor  # [U, M], w_m (ones for the plain adversarial network)
    # Detached scalars for logging (discriminator accuracies, ...); empty while tracing.
    diagnostics: Dict[str, torch.Tensor] = {}


def item_mean(values: torch.Tensor, item_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over items (dim 0 of [U] ``values``), each item weighted by its slot count."""
    if item_weights is None:
        return values.mean()
    w = item_weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1e-12)


def _modality_ce(logits: torch.Tensor, old_step_kernels: bool = False) -> torch.Tensor:
    """[U, M] cross-entropy of classifying slot m of each item as modality m; logits [U, M, M].

    ``logsumexp_k(logits[u, m, k]) - logits[u, m, m]``, in at least fp32 (as autocast runs a
    cross-entropy). With M = 4 classes this is about 3x faster forward and backward
    than ``F.cross_entropy`` over [U * M, M] rows (the kernel of 2026-12-01, ``old_step_kernels``),
    whose CPU log-softmax pays per row for rows of 4 values.
    """
    u, m, _ = logits.shape
    if old_step_kernels:
        target = torch.arange(m, device=logits.device).expand(u, m)
        return F.cross_entropy(logits.reshape(u * m, m), target.reshape(-1), reduction="none").view(u, m)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(logits, dim=-1) - logits.diagonal(dim1=1, dim2=2)


def modality_cross_entropy(
    logits: torch.Tensor,
    item_weights: Optional[torch.Tensor],
    pair_weights: Optional[torch.Tensor] = None,
    reduce_modalities: str = "mean",
    old_step_kernels: bool = False,
) -> torch.Tensor:
    """Cross-entropy of classifying slot m of each item as modality m, averaged over items.

    Args:
        logits: [U, M, M] class scores for each (item, modality) pair.
        item_weights: [U] weight of each item (its slot count), or None for equal weights.
        pair_weights: [U, M] extra weight of each pair (DDMA's w_m), or None.
        reduce_modalities: ``"mean"`` over the M pairs of an item (a mean over pairs: ``L_D0``,
            ``L_Ds``) or ``"sum"`` (eq. 7's sum over modalities: ``L_ADV``).
        old_step_kernels (bool): the kernel of 2026-12-01 (see :func:`_modality_ce`).
    """
    ce = _modality_ce(logits, old_step_kernels)
    if pair_weights is not None:
        ce = ce * pair_weights
    per_item = ce.sum(dim=1) if reduce_modalities == "sum" else ce.mean(dim=1)
    return item_mean(per_item, item_weights)


def max_pool(x: torch.Tensor, old_step_kernels: bool = False) -> torch.Tensor:
    """``max_m`` over dim 1 of [U, M, d] ``x`` (eq. 7's pooling). ``max``'s backward routes the
    gradient through the argmax alone; ``amax`` (the kernel of 2026-12-01, ``old_step_kernels``)
    splits it over ties at a pass more over ``x``. Ties aside, which have measure zero, they agree."""
    return x.amax(dim=1) if old_step_kernels else x.max(dim=1).values


def _accuracy(logits: torch.Tensor, item_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Share of (item, modality) pairs whose argmax is their modality (items slot-weighted)."""
    u, m, _ = logits.shape
    target = torch.arange(m, device=logits.device).expand(u, m)
    hit = (logits.argmax(dim=-1) == target).to(logits.dtype).mean(dim=1)
    return item_mean(hit, item_weights)


def _d1_game(
    d1: nn.Linear,
    adversarial_input: torch.Tensor,
    item_weights: Optional[torch.Tensor],
    pair_weights: Optional[torch.Tensor],
    old_step_kernels: bool = False,
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """Eq. 7's ``min_I max_D1`` as D1's loss ``d1`` and I's loss ``adv`` (same value, see module),
    and D1's logits."""
    # D1's side: its own parameters, on constants.
    d1_logits = d1(adversarial_input.detach())
    d1_loss = modality_cross_entropy(d1_logits, item_weights, pair_weights, "sum", old_step_kernels)
    # I's side: through the GRL, D1's weights as constants (they learn from d1_loss above).
    reversed_logits = F.linear(
        grad_reverse(adversarial_input), d1.weight.detach(), d1.bias.detach()
    )
    adv_loss = modality_cross_entropy(
        reversed_logits, item_weights, pair_weights, "sum", old_step_kernels
    )
    return {"d1": d1_loss, "adv": adv_loss}, d1_logits


class DoubleDiscriminatorAdversarial(nn.Module):
    """DDMA with the modality-specific discriminator (3.3.2-3.3.3).

    Args:
        num_modalities (int): M, the classes of every discriminator.
        hidden_dim (int): d, the size of ``c_m`` and ``s_m``.
        device (torch.device | None): parameter device.

    Example::

        ddma = DoubleDiscriminatorAdversarial(4, 256)
        out = ddma(c, s_detached, adversarial_input=c_detached_e)
        # out.invariant: [U, 256]; out.losses: d0, d1, adv, ds
    """

    def __init__(
        self, num_modalities: int, hidden_dim: int, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.d0 = nn.Linear(hidden_dim, num_modalities, device=device)
        # D1's discriminating matrix, used by Ds as well (3.3.3).
        self.d1 = nn.Linear(hidden_dim, num_modalities, device=device)
        # True: the kernels of 2026-12-01: amax pooling of c (see :func:`max_pool`) and
        # F.cross_entropy for the discriminators (see :func:`_modality_ce`).
        self.old_step_kernels = False

    def forward(
        self,
        invariant: torch.Tensor,
        specific_detached: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
        adversarial_input: Optional[torch.Tensor] = None,
        diagnostics: bool = False,
    ) -> AdversarialOutput:
        """
        Args:
            invariant (torch.Tensor): [U, M, d] ``c_m = I(e_m)``, pooled into ``c``.
            specific_detached (torch.Tensor | None): [U, M, d] ``S_m(e_m)`` with ``e_m`` detached
                from the embedding layer, for Ds; None skips Ds.
            item_weights (torch.Tensor | None): [U] slot count of each item.
            adversarial_input (torch.Tensor | None): [U, M, d] ``I(e_m)`` with ``e_m`` detached
                from the embedding layer: what D1 and the GRL see, so that ``L_ADV`` trains ``I``
                and not the embedding layer. None: ``invariant`` itself.
            diagnostics (bool): also return detached accuracies and D1's unweighted CE.

        Returns:
            AdversarialOutput: ``c``, losses ``d0``, ``d1``, ``adv`` (and ``ds``), and ``w_m``.
        """
        if adversarial_input is None:
            adversarial_input = invariant
        d0_logits = self.d0(invariant.detach())
        old = self.old_step_kernels
        losses = {"d0": modality_cross_entropy(d0_logits, item_weights, old_step_kernels=old)}
        with torch.no_grad():
            # w_m = 1 - D0^m(c_m): the probability D0 gives to the true modality, inverted.
            weights = 1.0 - torch.softmax(d0_logits, dim=-1).diagonal(dim1=1, dim2=2)
        game, d1_logits = _d1_game(self.d1, adversarial_input, item_weights, weights, old)
        losses.update(game)
        ds_logits: Optional[torch.Tensor] = None
        if specific_detached is not None:
            ds_logits = self.d1(specific_detached)
            losses["ds"] = modality_cross_entropy(ds_logits, item_weights, old_step_kernels=old)
        c = max_pool(weights.unsqueeze(-1) * invariant, self.old_step_kernels)
        diag: Dict[str, torch.Tensor] = {}
        if diagnostics:
            with torch.no_grad():
                d1_logits = d1_logits.detach()
                diag["d0_accuracy"] = _accuracy(d0_logits, item_weights)
                diag["d1_accuracy"] = _accuracy(d1_logits, item_weights)
                diag["d1_ce"] = modality_cross_entropy(d1_logits, item_weights)
                if ds_logits is not None:
                    diag["ds_accuracy"] = _accuracy(ds_logits.detach(), item_weights)
        return AdversarialOutput(c, losses, weights, diag)


class ModalityAdversarial(nn.Module):
    """The one-discriminator adversarial network of [30] (Table 3's +ADV): D1 and the GRL alone.

    No D0, so no modality weights: ``L_ADV = sum_m CE(D1(c_m), m)`` (D1's side ``d1``, I's side
    ``adv``, as in DDMA) and ``c = max_m c_m``. No Ds.

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
        # True: the kernels of 2026-12-01: amax pooling of c (see :func:`max_pool`) and
        # F.cross_entropy for the discriminators (see :func:`_modality_ce`).
        self.old_step_kernels = False

    def forward(
        self,
        invariant: torch.Tensor,
        specific_detached: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
        adversarial_input: Optional[torch.Tensor] = None,
        diagnostics: bool = False,
    ) -> AdversarialOutput:
        """
        Args:
            invariant (torch.Tensor): [U, M, d] ``c_m``.
            specific_detached: unused (no Ds in this baseline); accepted for a common signature.
            item_weights (torch.Tensor | None): [U] slot count of each item.
            adversarial_input (torch.Tensor | None): ``c_m`` from detached embeddings (see
                :class:`DoubleDiscriminatorAdversarial`); None: ``invariant``.
            diagnostics (bool): also return D1's detached accuracy and CE.
        """
        if adversarial_input is None:
            adversarial_input = invariant
        losses, d1_logits = _d1_game(
            self.d1, adversarial_input, item_weights, None, self.old_step_kernels
        )
        ones = torch.ones(invariant.shape[:2], dtype=invariant.dtype, device=invariant.device)
        diag: Dict[str, torch.Tensor] = {}
        if diagnostics:
            with torch.no_grad():
                d1_logits = d1_logits.detach()
                diag["d1_accuracy"] = _accuracy(d1_logits, item_weights)
                diag["d1_ce"] = modality_cross_entropy(d1_logits, item_weights)
        return AdversarialOutput(max_pool(invariant, self.old_step_kernels), losses, ones, diag)
