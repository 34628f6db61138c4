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
        r"history_property: batch size \d+ does not match the \d+ behaviours",
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


# Gaps closed after the validator's rewrite (found by marn_rec.fuzzing; tests/test_fuzz.py runs
# every kind): derived values a KJT carries, tensor layouts, meta, and zero items. On the rewrite
# these passed validation and then crashed inside TorchRec, misread features or raised other
# exceptions than ValueError.


def _rebuilt(kjt: KeyedJaggedTensor, **kwargs) -> KeyedJaggedTensor:
    args = dict(keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths())
    args.update(kwargs)
    return KeyedJaggedTensor(**args)


def _swapped_to_dict(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    d = _rebuilt(kjt).to_dict()
    d["item_id"], d["shop_id"] = d["shop_id"], d["item_id"]
    return _rebuilt(kjt, jt_dict=d)


GAP_CASES = {
    "declared batch size": (
        lambda b: replace(b, item_title=_rebuilt(b.item_title, stride=b.item_title.stride() + 1)),
        r"item_title: declares batch size \d+ but its lengths give \d+ per feature",
    ),
    "declared length per key": (
        lambda b: replace(b, history_property=_rebuilt(
            b.history_property,
            length_per_key=[n + d for n, d in zip(b.history_property.length_per_key(), (1, -1))])),
        r"history_property: length per key \[\d+, \d+\] does not match its lengths",
    ),
    "to_dict cache of other features": (
        lambda b: replace(b, item_sparse=_swapped_to_dict(b.item_sparse)),
        r"item_sparse: feature 'item_id' of its per-feature views \(to_dict\(\)\) does not match",
    ),
    "per-value weights": (
        lambda b: replace(b, item_sparse=_rebuilt(
            b.item_sparse, weights=torch.ones(b.item_sparse.values().numel()))),
        r"item_sparse: has per-value weights, which the model's tables do not read",
    ),
    "inverse indices": (
        lambda b: replace(b, item_title=_rebuilt(
            b.item_title, inverse_indices=(["title_words"], torch.zeros(1, 3, dtype=torch.long)))),
        r"item_title: inverse indices \(variable batch size\) are not supported",
    ),
    "neither lengths nor offsets": (
        lambda b: replace(b, item_title=KeyedJaggedTensor(
            keys=b.item_title.keys(), values=b.item_title.values())),
        r"item_title: has neither lengths nor offsets",
    ),
    "sparse image": (
        lambda b: replace(b, item_image=b.item_image.to_sparse()),
        r"item_image: has layout torch.sparse_coo; expected a dense \(strided\) tensor",
    ),
    "meta not a dict": (
        lambda b: replace(b, meta=None),
        r"meta: expected a dict of tensors, got NoneType",
    ),
}
GAP_BATCH_ONLY = {"meta not a dict"}


@pytest.mark.parametrize("case", list(GAP_CASES))
def test_gaps_closed_after_the_rewrite(case: str) -> None:
    edit, message = GAP_CASES[case]
    bad = edit(_batch())
    with pytest.raises(ValueError, match=message):
        validate_batch(bad, CFG)
    if case not in GAP_BATCH_ONLY:
        with pytest.raises(ValueError, match=message):
            MARN(CFG)(**bad.model_inputs())


def test_consistent_derived_values_and_views_are_accepted() -> None:
    b = _batch()
    sparse = _rebuilt(b.item_sparse, stride=b.item_sparse.stride(),
                      length_per_key=b.item_sparse.length_per_key())
    sparse.to_dict()  # a cached per-feature view that matches
    title = KeyedJaggedTensor(  # offsets only, values a non-contiguous view
        keys=b.item_title.keys(),
        values=torch.stack([b.item_title.values()] * 2, dim=1)[:, 0],
        offsets=b.item_title.offsets(),
    )
    same = replace(b, item_sparse=sparse, item_title=title, history_lengths=b.history_lengths.int())
    model = MARN(CFG)
    torch.testing.assert_close(
        model(**validate_batch(same, CFG).model_inputs()).logits,
        model(**b.model_inputs()).logits, rtol=0, atol=0,
    )


def test_tower_rejects_zero_items() -> None:
    from marn_rec.models.tower import MARNTower

    b = _batch()
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"items: none \(U = 0\)"):
        MARNTower(CFG.tower)(
            KeyedJaggedTensor(keys=b.item_sparse.keys(), values=empty, lengths=empty),
            KeyedJaggedTensor(keys=["title_words"], values=empty, lengths=empty),
            b.item_image[:0],
        )


def _build_args() -> dict:
    from marn_rec.testing import RandomCatalog

    return dict(
        candidate_items=torch.tensor([1, 2, 3]),
        history_items=torch.tensor([4, 5, 6]),
        history_lengths=torch.tensor([2, 0, 1]),
        behavior_types=torch.tensor([0, 1, 0]),
        behavior_time_buckets=torch.tensor([0, 3, 1]),
        labels=torch.tensor([1.0, 0.0, 1.0]),
        item_features=RandomCatalog(CFG).features,
        user_ids=torch.tensor([7, 7, 9]),
    )


def _float_title(lookup):
    def features(ids):
        f = lookup(ids)
        return replace_features(f, title_values=f.title_values.double() + 0.7)

    return features


def replace_features(f, **changes):
    from marn_rec.batch import ItemFeatures

    values = dict(sparse=f.sparse, title_values=f.title_values, title_lengths=f.title_lengths,
                  image=f.image, sparse_lengths=f.sparse_lengths)
    values.update(changes)
    return ItemFeatures(**values)


# build_batch converts IDs with .long() and looks item features up by ID: inputs it would turn
# into other valid-looking values are rejected there (validate_batch only sees row indices).
BUILD_CASES = {
    "float user ids": (
        lambda a: dict(a, user_ids=a["user_ids"].double() + 0.7),
        r"user_ids: expected an int32 or int64 tensor, got torch.float64",
    ),
    "negative item id": (
        lambda a: dict(a, history_items=torch.tensor([4, -1, 6])),
        r"history_items: negative item id -1",
    ),
    "behaviour without type": (  # used to take the placeholder's type and time
        lambda a: dict(a, candidate_items=a["candidate_items"][:1], labels=a["labels"][:1],
                       user_ids=a["user_ids"][:1], history_items=torch.tensor([4]),
                       history_lengths=torch.tensor([1]),
                       behavior_types=torch.tensor([], dtype=torch.long),
                       behavior_time_buckets=torch.tensor([], dtype=torch.long)),
        r"behavior_types: expected 1 entries, got 0",
    ),
    "lengths that do not add up": (
        lambda a: dict(a, history_lengths=torch.tensor([2, 1, 1])),
        r"history_lengths: add up to 4 but there are 3 history items",
    ),
    "float title words from the catalogue": (
        lambda a: dict(a, item_features=_float_title(a["item_features"])),
        r"title_values: expected integer values, got torch.float64",
    ),
    "complex labels": (
        lambda a: dict(a, labels=a["labels"].to(torch.complex64)),
        r"labels: expected a real tensor, got torch.complex64",
    ),
}


@pytest.mark.parametrize("case", list(BUILD_CASES))
def test_build_batch_rejects_what_it_would_convert_silently(case: str) -> None:
    from marn_rec.batch import build_batch

    edit, message = BUILD_CASES[case]
    build_batch(**_build_args())  # the unedited arguments build
    with pytest.raises(ValueError, match=message):
        build_batch(**edit(_build_args()))


def test_inputs_on_two_devices_are_rejected() -> None:
    # No second real device here: the check itself, on CPU and meta tensors (meta inputs are
    # rejected earlier, for holding no values).
    from marn_rec.validation import _check_one_device

    _check_one_device({"a": torch.zeros(1), "b": None, "c": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"item_image: is on meta but candidate_index is on cpu"):
        _check_one_device(
            {"candidate_index": torch.zeros(1), "item_image": torch.zeros(1, device="meta")}
        )
