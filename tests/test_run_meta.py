"""Resuming checkpoints written before a field existed: a field the checkpoint lacks is accepted at
its dataclass default and refused otherwise, with no per-field list to keep up to date."""

from dataclasses import fields

import pytest

from marn_rec.config import ItemTowerConfig
from marn_rec.data import SyntheticTaobaoConfig
from marn_rec.training.run_meta import differences
from marn_rec.training.loop import TrainConfig
from marn_rec.training.run_meta import NOT_CHECKED, meta_defaults, run_meta
from marn_rec.training.sharding import ADAGRAD_INITIAL_ACCUMULATOR


def _meta(cfg: TrainConfig):
    data = SyntheticTaobaoConfig.from_model_config(cfg.model_config())
    from dataclasses import asdict
    return (run_meta(cfg, cfg.model_config(), asdict(data)),
            meta_defaults(cfg, cfg.model_config(), SyntheticTaobaoConfig))


def test_defaults_are_the_dataclasses_own() -> None:
    cfg = TrainConfig(preset="tiny")
    meta, defaults = _meta(cfg)
    assert defaults["train"]["dense_initial_accumulator"] == ADAGRAD_INITIAL_ACCUMULATOR
    assert defaults["model"]["tower"]["table_dtype"] == "fp32"
    assert defaults["data"]["shared_view_weight"] == 1.0 and defaults["data"]["missing_image_prob"] == 0.0
    # Every checked field of every section has its default listed (all fields have one here) ...
    assert set(defaults["train"]) == set(meta["train"]) == {f.name for f in fields(TrainConfig)} - set(NOT_CHECKED)
    assert set(defaults["model"]["tower"]) == {f.name for f in fields(ItemTowerConfig)}
    # Fields without a default (the catalogue's sizes) cannot be missing from a checkpoint.
    assert "num_items" not in defaults["data"] and set(defaults["data"]) < set(meta["data"])
    # ... and the meta itself is complete: nothing is left out at its default any more.
    assert meta["model"]["tower"]["table_dtype"] == "fp32"
    assert meta["train"]["dense_initial_accumulator"] == ADAGRAD_INITIAL_ACCUMULATOR


@pytest.mark.parametrize("section,key", [("train", "dense_initial_accumulator"), ("data", "missing_image_prob"),
                                         ("data", "shared_view_weight")])
def test_a_field_the_checkpoint_lacks_is_accepted_at_its_default_only(section, key) -> None:
    meta, defaults = _meta(TrainConfig(preset="tiny"))
    old = {s: dict(v) for s, v in meta.items()}
    del old[section][key]  # written before the field existed
    assert differences(old, meta, defaults) == []
    changed = {s: dict(v) for s, v in meta.items()}
    changed[section][key] = 0.5
    assert differences(old, changed, defaults) == [f"{section}.{key}: checkpoint absent, this run 0.5"]
    # Without the defaults (a field with no default), absence is a difference.
    assert differences(old, meta) == [f"{section}.{key}: checkpoint absent, this run {meta[section][key]!r}"]


def test_a_nested_model_field_and_a_field_this_run_lacks() -> None:
    meta, defaults = _meta(TrainConfig(preset="tiny"))
    old = {"train": meta["train"], "data": meta["data"],
           "model": {**meta["model"], "tower": {k: v for k, v in meta["model"]["tower"].items() if k != "table_dtype"}}}
    assert differences(old, meta, defaults) == []
    fp16 = {**meta, "model": {**meta["model"], "tower": {**meta["model"]["tower"], "table_dtype": "fp16"}}}
    assert differences(old, fp16, defaults) == ["model.tower.table_dtype: checkpoint absent, this run 'fp16'"]
    # A field the checkpoint has and this code does not (removed since): always a difference.
    extra = {**meta, "train": {**meta["train"], "retired_option": 3}}
    assert differences(extra, meta, defaults) == ["train.retired_option: checkpoint 3, this run absent"]


def test_fields_added_to_the_id_features_of_prepared_data() -> None:
    """``tower.id_features`` is a tuple of dataclasses: a field added to ``IdFeature`` is compared
    element by element, at its default, like any other."""
    from dataclasses import replace

    from marn_rec.config import IdFeature

    cfg = TrainConfig(preset="tiny")
    feats = (IdFeature("item_id", 10, 8), IdFeature("genres", 5, 4, multi_valued=True))
    model = replace(cfg.model_config(), tower=replace(cfg.model_config().tower, id_features=feats))
    meta, defaults = run_meta(cfg, model, {}), meta_defaults(cfg, model)
    assert defaults["model"]["tower"]["id_features"][1]["multi_valued"] is False
    old = {**meta, "model": {**meta["model"], "tower": {
        **meta["model"]["tower"],
        "id_features": [{k: v for k, v in f.items() if k != "multi_valued"} for f in meta["model"]["tower"]["id_features"]]}}}
    # item_id is at the default (single-valued): accepted; genres is multi-valued: refused.
    assert differences(old, meta, defaults) == [
        "model.tower.id_features.1.multi_valued: checkpoint absent, this run True"]
    assert differences(meta, meta, defaults) == []
