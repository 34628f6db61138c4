"""Evaluation as in the paper: AUC, per-user AUC (eq. 11), AUC by popularity level (Table 4) and
recall@N on cold items (Table 5), with the Bayes-optimal value beside each where the truth is known.

AUC and per-user AUC use ``torchrec.metrics``' computations (``compute_auc``, ``get_auc_states``),
on predictions gathered from every rank, so every rank's samples count once.

Every metric refuses non-finite scores or labels (a ``ValueError`` naming the metric and how many
values are NaN or infinite): a diverged model must not be reported with a plausible number (torchrec's
AUC of all-NaN scores is about 0.5).
"""

from typing import Dict, Optional, Sequence

import torch
from torchrec.metrics.auc import compute_auc
from torchrec.metrics.gauc import compute_window_auc, get_auc_states


def check_finite(metric: str, **values: torch.Tensor) -> None:
    """Raises ValueError if any of ``values`` (name=tensor) holds a NaN or an infinity."""
    for name, t in values.items():
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                nan = int(torch.isnan(t).sum())
                raise ValueError(
                    f"{metric}: {bad} of {t.numel()} {name} are not finite "
                    f"({nan} NaN, {bad - nan} infinite)"
                )


def auc(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve; 0.5 when one class is missing."""
    check_finite("auc", predictions=predictions, labels=labels)
    return _auc(predictions, labels)


def _auc(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    p, y = predictions.double().flatten(), labels.double().flatten()
    # One weighted point per distinct score (weight: its samples, label: their click share), so
    # that tied positive/negative pairs count one half whatever their order. torchrec's
    # compute_auc on the raw samples credits ties by the order argsort happens to leave them in
    # (constant scores gave 0.4 or 0.6 by the order of the labels). Without ties every point has
    # weight 1 and a 0/1 label: the computation (and the result) is the one of the raw samples.
    values, inverse, counts = torch.unique(p, return_inverse=True, return_counts=True)
    if values.numel() == 0:
        return 0.5
    weights = counts.double()
    positives = torch.zeros_like(values).index_add_(0, inverse, y)
    share = positives / weights
    area = float(
        compute_auc(1, [values.unsqueeze(0)], [share.unsqueeze(0)], [weights.unsqueeze(0)])[0]
    )
    # compute_auc's trapezoid starts at its first point, not at the origin: with a mixed first
    # (highest-score) point the triangle between them is missing. Zero without ties.
    total_pos = float(positives.sum())
    total_neg = float(weights.sum()) - total_pos
    top_pos = float(positives[-1])
    top_neg = float(weights[-1]) - top_pos
    if top_pos and top_neg:
        area += top_pos * top_neg / 2 / (total_pos * total_neg)
    return area


def user_auc(predictions: torch.Tensor, labels: torch.Tensor, users: torch.Tensor) -> float:
    """Paper eq. 11: the mean over users of each user's AUC, over users with clicks and non-clicks.

    (torchrec's GAUC also skips users whose predictions are all equal, where AUC is undefined.)
    """
    check_finite("user_auc", predictions=predictions, labels=labels)
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
    check_finite("popularity_levels", popularity=popularity)
    order = torch.argsort(popularity, stable=True)
    level = torch.empty_like(order)
    level[order] = torch.arange(order.numel()) * levels // max(order.numel(), 1)
    return level


def auc_by_level(
    predictions: torch.Tensor, labels: torch.Tensor, level: torch.Tensor, levels: int = 10
) -> Dict[int, float]:
    """Table 4: AUC within each popularity level."""
    check_finite("auc_by_level", predictions=predictions, labels=labels)
    return {
        k: _auc(predictions[level == k], labels[level == k])
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
    check_finite("recall_at_n", scores=scores, labels=labels)
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
