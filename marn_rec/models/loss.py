"""The objective of paper eq. 10 and the lambda schedule of section 4.1."""

import math
from typing import Dict

import torch
import torch.nn.functional as F


def adversarial_lambda(progress: float, lambda0: float = 0.05, gamma: float = 10.0) -> float:
    """``lambda = lambda0 * (2 / (1 + exp(-gamma * p)) - 1)``, p the training progress in [0, 1].

    Starts at 0 so that the discriminators are not trusted before the features mean anything.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return lambda0 * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def adversarial_lambda_tensor(
    step: torch.Tensor, total_steps: int, lambda0: float = 0.05, gamma: float = 10.0
) -> torch.Tensor:
    """:func:`adversarial_lambda` at progress ``step / (total_steps - 1)`` (clamped to [0, 1]), as
    a 0-d tensor computed on ``step``'s device (no host sync, traceable)."""
    progress = (step.double() / max(total_steps - 1, 1)).clamp(0.0, 1.0)
    return (lambda0 * (2.0 / (1.0 + torch.exp(-gamma * progress)) - 1.0)).float()


# eq. 10: L_Ds carries lambda; L_D0 trains D0 alone and is not scaled. L_ADV's game is played
# through a gradient reversal layer of scale lambda (Ganin and Lempitsky, the paper's [8]): D1 learns
# from the unscaled L_ADV ("d1", on detached features), I from -lambda times its gradient ("adv",
# through the GRL with D1's weights held constant). See marn_rec.modules.ddma.
_LAMBDA_SCALED = {"ds": True, "adv": True, "d0": False, "d1": False}


def marn_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    aux_losses: Dict[str, torch.Tensor],
    adv_lambda: float | torch.Tensor,
) -> Dict[str, torch.Tensor]:
    """``L = L_CTR + lambda L_Ds + L_D0 + L_ADV(D1) + lambda L_ADV(I)`` (eq. 10 with its GRL).

    ``L_ADV(D1)`` ("d1") and ``L_ADV(I)`` ("adv") have the same value, eq. 7's ``L_ADV``; the first
    trains D1 only, the second ``I`` only, through the gradient reversal layer: together they are a
    GRL of scale lambda, as in the paper's [8].

    Args:
        logits: [B] click logits.
        labels: [B] clicks in {0, 1}.
        aux_losses: the tower's unweighted auxiliary losses ("ds", "d0", "d1", "adv"; any subset).
        adv_lambda: lambda of the schedule, :func:`adversarial_lambda` (a float or 0-d tensor).

    Returns:
        Dict[str, torch.Tensor]: "ctr", each auxiliary loss (unweighted) and "total".
    """
    out = {"ctr": F.binary_cross_entropy_with_logits(logits, labels)}
    total = out["ctr"]
    for name, value in aux_losses.items():
        if name not in _LAMBDA_SCALED:
            raise ValueError(f"unknown auxiliary loss {name!r}")
        out[name] = value
        total = total + (adv_lambda * value if _LAMBDA_SCALED[name] else value)
    out["total"] = total
    return out
