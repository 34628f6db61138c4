"""The item tower runs once per unique item and is gathered back: same answers as one row per slot."""

from dataclasses import replace

import pytest
import torch

from marn_rec.batch import build_batch
from marn_rec.config import ABLATIONS, ablation, tiny
from marn_rec.models.loss import marn_loss
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.testing import RandomCatalog, random_batch


@pytest.mark.parametrize("name", ["MARN", "BaseModel+MAF+ADV", "BaseModel+CONC"])
def test_unique_items_equal_per_slot(name: str) -> None:
    cfg = ablation(name, tiny())
    model = MARNTrain(MARN(cfg), total_steps=11)
    catalog = RandomCatalog(cfg)
    dedup = random_batch(cfg, 12, seed=3, catalog=catalog, dedup=True)
    per_slot = random_batch(cfg, 12, seed=3, catalog=catalog, dedup=False)
    slots = dedup.batch_size + int(dedup.history_lengths.sum())
    assert per_slot.num_unique_items == slots
    assert dedup.num_unique_items < slots  # the Zipf draw repeats items

    results = []
    for batch in (dedup, per_slot):
        model.zero_grad(set_to_none=True)
        model.step.fill_(2)  # lambda > 0: the adversarial losses count
        loss, (_, logits, _) = model(batch)
        losses = model.losses
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((losses, logits, grads))
    (l1, y1, g1), (l2, y2, g2) = results
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-5)
    assert l1.keys() == l2.keys()
    for k in l1:
        torch.testing.assert_close(l1[k], l2[k], atol=1e-6, rtol=1e-5)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], atol=1e-6, rtol=1e-4, msg=n)


def test_every_ablation_runs_and_uses_every_parameter() -> None:
    """DDP's static graph (DMP's default) fails on parameters that get no gradient."""
    for name in ABLATIONS:
        cfg = ablation(name, tiny())
        model = MARNTrain(MARN(cfg), total_steps=11)
        model.step.fill_(2)
        loss, _ = model(random_batch(cfg, 8, seed=1))
        loss.backward()
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert unused == [], f"{name}: parameters without gradient {unused}"


def test_empty_histories_get_predictions() -> None:
    cfg = tiny()
    model = MARN(cfg)
    catalog = RandomCatalog(cfg)
    batch = build_batch(
        candidate_items=torch.tensor([1, 2, 3]),
        history_items=torch.tensor([4, 5, 6]),
        history_lengths=torch.tensor([2, 0, 1]),
        behavior_types=torch.tensor([0, 1, 0]),
        behavior_time_buckets=torch.tensor([0, 3, 1]),
        labels=torch.tensor([1.0, 0.0, 1.0]),
        item_features=catalog.features,
    )
    # Whole batch without behaviours, and one sample without behaviours among others.
    no_history = replace(cfg, behavior=replace(cfg.behavior, max_length=0))
    empty = random_batch(no_history, 4, catalog=catalog)
    for b in (batch, empty):
        out = model(**b.model_inputs())
        assert out.logits.shape == (b.batch_size,)
        assert torch.isfinite(out.logits).all()
    assert int(empty.history_lengths.sum()) == 0
    # The user without history is scored from the candidate alone: other samples don't matter.
    alone = build_batch(
        torch.tensor([2]), torch.tensor([], dtype=torch.long), torch.tensor([0]),
        torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
        torch.tensor([0.0]), catalog.features,
    )
    torch.testing.assert_close(
        model(**alone.model_inputs()).logits, model(**batch.model_inputs()).logits[1:2]
    )


def test_batch_to_keeps_every_field() -> None:
    cfg = tiny()
    b = random_batch(cfg, 4)
    b.meta["click_prob"] = torch.rand(4)
    c = b.to(torch.device("cpu"))
    assert torch.equal(c.item_image, b.item_image) and torch.equal(c.labels, b.labels)
    assert torch.equal(c.item_sparse.values(), b.item_sparse.values())
    assert torch.equal(c.meta["click_prob"], b.meta["click_prob"])
