"""Evaluation as in the paper: AUC, per-user AUC (eq. 11), AUC by popularity level (Table 4) and
recall@N on cold items (Table 5), with the Bayes-optimal value beside each where the truth is known.

Table 4's levels are the paper's (section 4.6.1): "we uniformly divide all items in the test set
into 10 equal frequency popularity levels according to their frequencies of interactions"; here
:func:`observed_popularity_levels` counts each candidate item's samples in the evaluation set, sorts
the items by that count and cuts them into levels of equal numbers of items (equal-frequency
binning of the items); a sample takes its candidate's level. Table 5 ranks each user's candidate
set (:func:`recall_at_n`, grouped by set); :func:`random_recall_at_n` is the RANDOM row.

AUC and per-user AUC use ``torchrec.metrics``' computations (``compute_auc``, ``get_auc_states``),
on predictions gathered from every rank, so every rank's samples count once.

Every metric refuses non-finite scores or labels (a ``ValueError`` naming the metric and how many
values are NaN or infinite): a diverged model must not be reported with a plausible number (torchrec's
AUC of all-NaN scores is about 0.5).
"""

from typing import Any, Dict, Optional, Sequence, Tuple

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


# Equal-frequency levels: equal numbers of items (the paper's wording), or equal numbers of samples.
LEVEL_UNITS = ("items", "samples")


def _tie_key(items: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random int64 per item ID (splitmix64's finaliser, wrapping int64 arithmetic),
    to order items of equal counts: not by ID, which on real data may follow the listing date."""
    x = items.long() * -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
    x = x ^ ((x >> 30) & 0x3FFFFFFFF)
    x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
    x = x ^ ((x >> 27) & 0x1FFFFFFFFF)
    x = x * -7723592293110705685  # 0x94D049BB133111EB
    return x ^ ((x >> 31) & 0x1FFFFFFFF)


def observed_popularity_levels(
    items: torch.Tensor, levels: int = 10, unit: str = "items"
) -> torch.Tensor:
    """Paper Table 4's popularity level of each sample, from the evaluation set itself.

    Each distinct item of ``items`` (the candidate item of every evaluation sample) is counted
    (its number of samples, i.e. its interactions in the test set); items are sorted by count
    (equal counts in a fixed pseudo-random order of their IDs) and cut into ``levels``
    equal-frequency levels, 0 (least popular) to ``levels - 1``; every sample takes its candidate's
    level.

    Args:
        items: [n] int candidate item ID of every sample.
        unit: "items" (the paper: "uniformly divide all items in the test set into 10 equal
            frequency popularity levels"): the k-th of the U sorted items gets level
            ``k * levels // U``, so levels differ by at most one item. "samples": levels take equal
            shares of the samples instead, an item's level being ``levels * (samples of the items
            before it) // n``; an item's samples never straddle two levels.
    """
    if unit not in LEVEL_UNITS:
        raise ValueError(f"unit must be one of {LEVEL_UNITS}, got {unit!r}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    items = torch.as_tensor(items)
    if items.is_floating_point() or items.is_complex() or items.dim() != 1:
        raise ValueError(f"observed_popularity_levels: items must be a 1-d integer tensor, got "
                         f"{items.dtype} of shape {list(items.shape)}")
    if items.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    unique, inverse, counts = torch.unique(items.long(), return_inverse=True, return_counts=True)
    order = torch.argsort(_tie_key(unique), stable=True)
    order = order[torch.argsort(counts[order], stable=True)]  # by count, ties by the key
    item_level = torch.empty_like(order)
    if unit == "items":
        item_level[order] = torch.arange(order.numel()) * levels // order.numel()
    else:
        before = torch.cumsum(counts[order], 0) - counts[order]
        item_level[order] = before * levels // items.numel()
    return item_level[inverse]


def popularity_level_summary(items: torch.Tensor, level: torch.Tensor) -> Dict[int, Dict[str, int]]:
    """Per level: distinct ``items``, ``samples``, and the fewest and most samples of one of its
    items (``min_count``, ``max_count``), to read Table 4 with: levels of items seen once each
    differ only by the tie order."""
    items = torch.as_tensor(items).long()
    out: Dict[int, Dict[str, int]] = {}
    for k in torch.unique(level).tolist():
        sel = items[level == k]
        _, counts = torch.unique(sel, return_counts=True)
        out[int(k)] = {"items": int(counts.numel()), "samples": int(sel.numel()),
                       "min_count": int(counts.min()), "max_count": int(counts.max())}
    return out


def random_recall_at_n(
    labels: torch.Tensor, groups: torch.Tensor, ns: Sequence[int]
) -> Dict[int, float]:
    """Table 5's RANDOM row: the expected :func:`recall_at_n` of a uniformly random order, per
    group ``min(N, size) / size``, averaged over the groups with at least one click."""
    check_finite("random_recall_at_n", labels=labels)
    totals = {n: 0.0 for n in ns}
    counted = 0
    for g in torch.unique(groups):
        sel = groups == g
        if float(labels[sel].sum()) == 0:
            continue
        size = int(sel.sum())
        for n in ns:
            totals[n] += min(n, size) / size
        counted += 1
    return {n: totals[n] / counted if counted else 0.0 for n in ns}
