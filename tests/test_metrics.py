"""Evaluation metrics against brute-force pairwise definitions."""

import itertools

import pytest
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


def _nan_inputs():
    g = torch.Generator().manual_seed(3)
    users = torch.randint(0, 5, (40,), generator=g)
    y = (torch.arange(40) % 2).float()
    p = torch.rand(40, generator=g)
    return p, y, users


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("metric", ["auc", "user_auc", "auc_by_level", "recall_at_n"])
def test_non_finite_scores_are_refused(metric: str, bad: float) -> None:
    p, y, users = _nan_inputs()
    p[[3, 7, 11]] = bad
    kind = "NaN" if bad != bad else "infinite"
    name = "scores" if metric == "recall_at_n" else "predictions"
    call = {
        "auc": lambda: auc(p, y),
        "user_auc": lambda: user_auc(p, y, users),
        "auc_by_level": lambda: auc_by_level(p, y, users % 3, 3),
        "recall_at_n": lambda: recall_at_n(p, y, users, ns=(1,)),
    }[metric]
    with pytest.raises(ValueError, match=rf"^{metric}: 3 of 40 {name} are not finite \(.*3 {kind}"):
        call()


def test_all_nan_scores_are_refused_not_scored() -> None:
    p, y, users = _nan_inputs()
    with pytest.raises(ValueError, match=r"auc: 40 of 40 predictions are not finite \(40 NaN, 0 infinite\)"):
        auc(torch.full_like(p, float("nan")), y)


@pytest.mark.parametrize("metric", ["auc", "user_auc", "auc_by_level", "recall_at_n"])
def test_non_finite_labels_are_refused(metric: str) -> None:
    p, y, users = _nan_inputs()
    y[0] = float("nan")
    call = {
        "auc": lambda: auc(p, y),
        "user_auc": lambda: user_auc(p, y, users),
        "auc_by_level": lambda: auc_by_level(p, y, users % 3, 3),
        "recall_at_n": lambda: recall_at_n(p, y, users, ns=(1,), mask=users > 0),
    }[metric]
    with pytest.raises(ValueError, match=rf"^{metric}: 1 of 40 labels are not finite"):
        call()


def test_non_finite_popularity_is_refused() -> None:
    pop = torch.arange(10.0)
    pop[2] = float("inf")
    with pytest.raises(ValueError, match=r"popularity_levels: 1 of 10 popularity are not finite"):
        popularity_levels(pop, 2)


def test_tied_scores_count_one_half() -> None:
    y = torch.tensor([0, 1, 1, 0, 1])
    p = torch.tensor([1, 3, 2, 2, 5])
    assert auc(p, y) == _brute_auc(p, y) == 11 / 12
    y10 = (torch.arange(10) % 2).float()
    assert auc(torch.ones(10), y10) == auc(torch.ones(10), y10.flip(0)) == 0.5
    g = torch.Generator().manual_seed(4)
    y = (torch.rand(500, generator=g) < 0.3).float()
    p = torch.round((torch.rand(500, generator=g) + 0.3 * y) * 8) / 8  # many ties
    assert abs(auc(p, y) - _brute_auc(p, y)) < 1e-12
    perm = torch.randperm(500, generator=g)
    assert abs(auc(p[perm], y[perm]) - auc(p, y)) < 1e-12


def test_untied_scores_give_the_samples_auc_exactly() -> None:
    from torchrec.metrics.auc import compute_auc

    g = torch.Generator().manual_seed(5)
    y = (torch.rand(1000, generator=g) < 0.3).float()
    p = torch.rand(1000, generator=g) + 0.3 * y
    raw = float(compute_auc(1, [p.double()[None]], [y.double()[None]], [torch.ones(1, 1000).double()])[0])
    assert auc(p, y) == raw
