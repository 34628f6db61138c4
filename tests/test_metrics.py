"""Evaluation metrics against brute-force pairwise definitions."""

import itertools

import torch

from marn_rec.training.metrics import auc, auc_by_level, popularity_levels, recall_at_n, user_auc


def _brute_auc(p, y) -> float:
    pos = [a for a, l in zip(p.tolist(), y.tolist()) if l == 1]
    neg = [a for a, l in zip(p.tolist(), y.tolist()) if l == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_pairwise_count() -> None:
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(300, generator=g) < 0.3).float()
    p = torch.rand(300, generator=g) + 0.3 * y
    assert abs(auc(p, y) - _brute_auc(p, y)) < 1e-9
    assert auc(y, y) == 1.0 and auc(-y, y) == 0.0


def test_user_auc_is_eq_11() -> None:
    g = torch.Generator().manual_seed(2)
    users = torch.randint(0, 20, (400,), generator=g)
    y = (torch.rand(400, generator=g) < 0.4).float()
    p = torch.rand(400, generator=g) + 0.2 * y
    per_user = []
    for u in users.unique():
        sel = users == u
        if 0 < y[sel].sum() < sel.sum():
            per_user.append(_brute_auc(p[sel], y[sel]))
    assert abs(user_auc(p, y, users) - sum(per_user) / len(per_user)) < 1e-6


def test_popularity_levels_and_auc_by_level() -> None:
    pop = torch.randperm(100).float()
    level = popularity_levels(pop, 10)
    assert torch.equal(torch.bincount(level), torch.full((10,), 10))
    assert level[pop.argmax()] == 9 and level[pop.argmin()] == 0
    y = (torch.arange(100) % 2).float()
    by_level = auc_by_level(y, y, level)
    assert by_level == {k: 1.0 for k in range(10)}


def test_recall_at_n() -> None:
    users = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    labels = torch.tensor([1.0, 0, 1, 0, 0, 1, 0, 0])
    scores = torch.tensor([0.9, 0.8, 0.1, 0.2, 0.5, 0.4, 0.6, 0.3])
    # user 0: ranked 1,0,0,1 -> recall@1 = 1/2, @2 = 1/2, @4 = 1; user 1: 0,0,1 -> 0, 0, 1.
    r = recall_at_n(scores, labels, users, ns=(1, 2, 4))
    assert r == {1: 0.25, 2: 0.25, 4: 1.0}
    only_user1 = recall_at_n(scores, labels, users, ns=(3,), mask=users == 1)
    assert only_user1 == {3: 1.0}
