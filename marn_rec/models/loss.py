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


# eq. 10: L_Ds and L_ADV carry lambda; L_D0 trains D0 alone and is not scaled.
_LAMBDA_SCALED = {"ds": True, "adv": True, "d0": False}


def marn_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    aux_losses: Dict[str, torch.Tensor],
    adv_lambda: float,
) -> Dict[str, torch.Tensor]:
    """``L = L_CTR + lambda L_Ds + L_D0 + lambda L_ADV`` (eq. 10).

    Args:
        logits: [B] click logits.
        labels: [B] clicks in {0, 1}.
        aux_losses: the tower's unweighted auxiliary losses ("ds", "d0", "adv"; any subset).
        adv_lambda: lambda of the schedule, :func:`adversarial_lambda`.

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
