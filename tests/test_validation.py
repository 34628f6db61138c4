"""Bad input gets a ValueError naming the feature and the problem, before any state changes."""

from dataclasses import replace
from typing import Callable

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch
from marn_rec.config import tiny
from marn_rec.training.sharding import apply_embedding_optimizer, training_optimizer
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.testing import random_batch
from marn_rec.validation import validate_batch

CFG = tiny()


def _batch() -> MARNBatch:
    return random_batch(CFG, 6, seed=4, min_length=1)


def _edit_kjt(kjt: KeyedJaggedTensor, key: str, fn: Callable[[torch.Tensor], torch.Tensor]):
    """The KJT with the values of ``key`` replaced by ``fn(values)``."""
    d = kjt.to_dict()
    values = [fn(d[k].values()) if k == key else d[k].values() for k in kjt.keys()]
    return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=kjt.lengths())


def _set_first(value):
    def fn(v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        v[0] = value
        return v

    return fn


def _nan_image(b: MARNBatch) -> MARNBatch:
    img = b.item_image.clone()
    img[1, 2] = float("nan")
    return replace(b, item_image=img)


def _bad_lengths(b: MARNBatch) -> MARNBatch:
    k = b.item_title
    lengths = k.lengths().clone()
    lengths[0] += 1
    return replace(b, item_title=KeyedJaggedTensor(keys=k.keys(), values=k.values(), lengths=lengths))


CASES = {
    "item id out of range": (
        lambda b: replace(b, item_sparse=_edit_kjt(b.item_sparse, "item_id", _set_first(CFG.tower.num_items))),
        r"item_sparse: feature 'item_id' has id 50 out of range for its table of 50 rows",
    ),
    "negative shop id": (
        lambda b: replace(b, item_sparse=_edit_kjt(b.item_sparse, "shop_id", _set_first(-3))),
        r"item_sparse: feature 'shop_id' has negative id -3",
    ),
    "statistic bucket out of range": (
        lambda b: replace(b, item_sparse=_edit_kjt(b.item_sparse, "stat1_b10", _set_first(10))),
        r"feature 'stat1_b10' has id 10 out of range for its table of 10 rows",
    ),
    "title word out of range": (
        lambda b: replace(b, item_title=_edit_kjt(b.item_title, "title_words", _set_first(10**6))),
        r"item_title: feature 'title_words' has id 1000000 out of range",
    ),
    "behaviour type out of range": (
        lambda b: replace(b, history_property=_edit_kjt(b.history_property, "behavior_type", _set_first(3))),
        r"history_property: feature 'behavior_type' has id 3 out of range for its table of 3 rows",
    ),
    "non-finite image": (_nan_image, r"item_image: 1 non-finite values"),
    "lengths do not match values": (
        _bad_lengths,
        r"item_title: lengths add up to \d+ but there are \d+ values",
    ),
    "image rows differ from items": (
        lambda b: replace(b, item_image=b.item_image[:-1]),
        r"item_image: has \d+ rows but the other item inputs have \d+ items",
    ),
    "image width": (
        lambda b: replace(b, item_image=b.item_image[:, :-1]),
        r"item_image: expected shape \[num_items, 10\]",
    ),
    "history lengths of another batch size": (
        lambda b: replace(b, history_lengths=b.history_lengths[:-1]),
        r"history_lengths: expected 6 entries",
    ),
    "history index count differs from lengths": (
        lambda b: replace(b, history_index=b.history_index[:-1]),
        r"history_index: expected \d+ entries",
    ),
    "candidate index beyond the items": (
        lambda b: replace(b, candidate_index=b.candidate_index + b.num_unique_items),
        r"candidate_index: indices must be in \[0, \d+\)",
    ),
    "float ids": (
        lambda b: replace(b, item_sparse=KeyedJaggedTensor(keys=b.item_sparse.keys(), values=b.item_sparse.values().float(), lengths=b.item_sparse.lengths())),
        r"item_sparse values: expected int32 or int64 values, got torch.float32",
    ),
    "integer image": (
        lambda b: replace(b, item_image=b.item_image.long()),
        r"item_image: expected float32 values, got torch.int64",
    ),
    "float candidate index": (
        lambda b: replace(b, candidate_index=b.candidate_index.float()),
        r"candidate_index: expected int32 or int64 values, got torch.float32",
    ),
    "missing feature": (
        lambda b: replace(b, item_sparse=KeyedJaggedTensor.from_lengths_sync(
            keys=["item_id"], values=torch.zeros(b.num_unique_items, dtype=torch.long),
            lengths=torch.ones(b.num_unique_items, dtype=torch.long))),
        r"item_sparse: missing features \['shop_id'",
    ),
    "property stride": (
        lambda b: replace(b, history_property=KeyedJaggedTensor(
            keys=b.history_property.keys(), values=b.history_property.values()[:-2],
            lengths=torch.ones(b.history_property.values().numel() - 2, dtype=torch.long))),
        r"history_property: batch size \d+ does not match the \d+ items",
    ),
    "labels out of range": (
        lambda b: replace(b, labels=b.labels + 2.0),
        r"labels: must be finite and in \[0, 1\]",
    ),
    "labels of another batch size": (
        lambda b: replace(b, labels=b.labels[:-1]),
        r"labels: expected shape \[6\]",
    ),
}


# Checked by validate_batch only: MARN.forward does not read labels or users.
BATCH_ONLY = {"labels out of range", "labels of another batch size"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_clear_error_and_leaves_state_untouched(case: str) -> None:
    edit, message = CASES[case]
    model = MARNTrain(MARN(CFG), total_steps=10)
    apply_embedding_optimizer(model)
    opt = training_optimizer(model)
    good = _batch()
    loss, _ = model(validate_batch(good, CFG))  # one good step first: optimizer state exists
    loss.backward()
    opt.step()
    opt.zero_grad()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = repr(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        validate_batch(edit(good), CFG)  # the entry point of the loop and the pipelines
    if case not in BATCH_ONLY:
        with pytest.raises(ValueError, match=message):
            model(edit(good))  # eager MARN checks its own inputs too (validate=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert repr(opt.state_dict()) == opt_before
    # Training goes on after the error.
    loss, _ = model(validate_batch(good, CFG))
    assert torch.isfinite(loss)


def test_valid_batch_passes() -> None:
    batch = _batch()
    assert validate_batch(batch, CFG) is batch  # keys already in the model's order: unchanged
    MARNTrain(MARN(CFG))(batch)


def test_validation_can_be_switched_off() -> None:
    model = MARN(CFG, validate=False)
    b = _batch()
    bad = replace(b, item_image=b.item_image.clone().fill_(float("nan")))
    assert torch.isnan(model(**bad.model_inputs()).logits).all()


def test_standalone_tower_validates_its_inputs() -> None:
    from marn_rec.models.tower import MARNTower

    b = _batch()
    bad = _edit_kjt(b.item_sparse, "brand_id", _set_first(CFG.tower.num_brands))
    with pytest.raises(ValueError, match="feature 'brand_id' has id 5 out of range"):
        MARNTower(CFG.tower)(bad, b.item_title, b.item_image)
