"""Evaluation as in the paper: AUC, per-user AUC (eq. 11), AUC by popularity level (Table 4) and
recall@N on cold items (Table 5), with the Bayes-optimal value beside each where the truth is known.

AUC and per-user AUC use ``torchrec.metrics``' computations (``compute_auc``, ``get_auc_states``),
on predictions gathered from every rank, so every rank's samples count once.
"""

from typing import Dict, Optional, Sequence

import torch
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.gauc import compute_window_auc, get_auc_states


def auc(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve; 0.5 when one class is missing."""
    p, y = predictions.double().flatten(), labels.double().flatten()
    return float(compute_auc(1, [p.unsqueeze(0)], [y.unsqueeze(0)], [torch.ones_like(p).unsqueeze(0)])[0])


def user_auc(predictions: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> float:
    """Paper eq. 11: the mean over users of each user's AUC, over users with clicks and non-clicks.

    (torchrec's GAUC also skips users whose predictions are all equal, where AUC is undefined.)
    """
    order = torch.argsort(users, stable=True)
    _, counts = torch.unique_consecutive(users[order], return_counts=True)
    # float32: FBGEMM's jagged_to_padded_dense (inside get_auc_states) has no double kernel on CPU.
    p = predictions.float()[order].unsqueeze(0)
    y = labels.float()[order].unsqueeze(0)
    states = get_auc_states(y, p, torch.ones_like(p), counts)
    out = compute_window_auc(states["auc_sum"], states["num_samples"])
    return float(out["gauc"][0]) if int(out["num_samples"][0]) else 0.5


def popularity_levels(popularity: torch.Tensor, levels: int = 10) -> torch.Tensor:
    """Equal-frequency popularity level of each sample, 0 (least popular) to ``levels - 1``.

    Args:
        popularity: [n] any score that grows with the candidate's popularity (e.g. its number of
            interactions, or minus its popularity rank).
    """
    order = torch.argsort(popularity, stable=True)
    level = torch.empty_like(order)
    level[order] = torch.arange(order.numel()) * levels // max(order.numel(), 1)
    return level


def auc_by_level(
    predictions: torch.Tensor, labels: torch.Tensor, level: torch.Tensor, levels: int = 10
) -> Dict[int, float]:
    """Table 4: AUC within each popularity level."""
    return {
        k: auc(predictions[level == k], labels[level == k])
        for k in range(levels)
        if bool((level == k).any())
    }


def recall_at_n(
    scores: torch.Tensor,
    labels: torch.Tensor,
    users: torch.Tensor,
    ns: Sequence[int],
    mask: Optional[torch.Tensor] = None,
) -> Dict[int, float]:
    """Table 5: per user, rank the candidates by score; the share of clicked ones in the top N.

    Averaged over users with at least one click. ``mask`` keeps a subset (e.g. cold candidates).
    """
    if mask is not None:
        scores, labels, users = scores[mask], labels[mask], users[mask]
    totals = {n: 0.0 for n in ns}
    counted = 0
    for u in torch.unique(users):
        sel = users == u
        y = labels[sel]
        clicks = float(y.sum())
        if clicks == 0:
            continue
        ranked = y[torch.argsort(scores[sel], descending=True, stable=True)]
        hits = torch.cumsum(ranked, 0)
        for n in ns:
            totals[n] += float(hits[min(n, ranked.numel()) - 1]) / clicks
        counted += 1
    return {n: totals[n] / counted if counted else 0.0 for n in ns}
