"""The online scorer: parity with the whole MARN, fp16 / int8 stores against fp32, and bad requests.

Stores are extracted from in-memory models (tiny preset, random catalogue); checkpoints are in
tests/test_serving_checkpoint.py, export in tests/test_serving_export.py.
"""

from dataclasses import replace
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

from marn_rec import MARN, ablation, small, tiny
from marn_rec.config import MARNConfig
from marn_rec.serving import (
    ItemSource,
    MARNScorer,
    RepresentationStore,
    StoreError,
    UnknownItemsError,
    head_fingerprint,
    head_from_marn,
    scorer_from_marn,
)
from marn_rec.serving.extract import extract
from marn_rec.serving.testing import full_model_logits
from marn_rec.testing import RandomCatalog
from marn_rec.training.metrics import auc

FP32_TOLERANCE = 1e-5


def _setup(tmp: Path, config: MARNConfig, dtype: str = "fp32", seed: int = 0, name: str = "store",
           batch_size: int = 17):
    torch.manual_seed(seed)
    model = MARN(config).eval()
    catalog = RandomCatalog(config, seed=seed)
    source = ItemSource(features=catalog.features, count=config.tower.num_items)
    head_fp = head_fingerprint(head_from_marn(model).state_dict())
    extract(model.tower, source, str(tmp / name), config, None, head_fp, dtype=dtype, batch_size=batch_size, progress=False)
    return model, catalog, RepresentationStore(str(tmp / name))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory):
    return _setup(tmp_path_factory.mktemp("tiny"), tiny())


def _request(config: MARNConfig, lengths, counts, seed: int = 1) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, c = sum(lengths), sum(counts)
    b = config.behavior
    return dict(
        history_items=torch.randint(0, config.tower.num_items, (n,), generator=g),
        behavior_types=torch.randint(0, b.num_behavior_types, (n,), generator=g),
        time_buckets=torch.randint(0, b.num_time_buckets, (n,), generator=g),
        candidate_items=torch.randint(0, config.tower.num_items, (c,), generator=g),
        history_lengths=torch.tensor(lengths),
        candidate_counts=torch.tensor(counts),
    )


# --------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("lengths,counts", [
    ([6], [37]),                      # one user, full history
    ([3], [1]),                       # one candidate
    ([0], [4]),                       # a user without history
    ([6, 0, 3, 1, 6], [5, 2, 0, 4, 9]),  # a batch of users, one without candidates
])
def test_scorer_equals_full_model_fp32(tiny_setup, lengths, counts) -> None:
    model, catalog, store = tiny_setup
    scorer = scorer_from_marn(model, store)
    request = _request(model.config, lengths, counts)
    expected = full_model_logits(model, catalog.features, **request)
    got = scorer(**request)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= FP32_TOLERANCE


def test_single_user_call_without_offsets(tiny_setup) -> None:
    model, catalog, store = tiny_setup
    scorer = scorer_from_marn(model, store)
    r = _request(model.config, [5], [8])
    got = scorer(r["history_items"].tolist(), r["behavior_types"].tolist(), r["time_buckets"].tolist(),
                 r["candidate_items"].numpy())
    assert (got - full_model_logits(model, catalog.features, **r)).abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("name", ["BaseModel+MAF+DDMA", "BaseModel+IDs", "MARN-ATTENTION", "MARN-PROPERTY"])
def test_gru_baselines_equal_full_model(tmp_path: Path, name: str) -> None:
    model, catalog, store = _setup(tmp_path, ablation(name, tiny()))
    request = _request(model.config, [6, 2, 0], [3, 4, 2])
    got = scorer_from_marn(model, store)(**request)
    assert (got - full_model_logits(model, catalog.features, **request)).abs().max() <= FP32_TOLERANCE


def test_store_holds_the_towers_representations(tiny_setup) -> None:
    model, catalog, store = tiny_setup
    ids = torch.tensor([0, 7, 49, 3])
    from marn_rec.serving.extract import tower_inputs

    with torch.no_grad():
        expected = model.tower(*tower_inputs(catalog.features(ids), model.config.tower)).representation
    assert torch.allclose(store.gather(store.lookup(ids)), expected, atol=1e-6)
    assert store.num_items == model.config.tower.num_items and store.manifest["bad_items"] == 0


# ---------------------------------------------------------------------------- fp16 / int8 stores


def _auc_by_dtype(tmp: Path) -> Tuple[Dict[str, float], Dict[str, float]]:
    """AUC of the scorer on fp32 / fp16 / int8 stores of one model (small preset, 3,000 items),
    against labels drawn from the fp32 model's own click probabilities (so AUC is informative)."""
    config = replace(small(), tower=replace(small().tower, num_items=3000))
    users, per_user = 120, 25
    lengths = torch.randint(0, config.behavior.max_length + 1, (users,), generator=torch.Generator().manual_seed(3))
    request = _request(config, lengths.tolist(), [per_user] * users, seed=4)
    logits = {}
    for dtype in ("fp32", "fp16", "int8"):
        model, _, store = _setup(tmp, config, dtype, name=dtype, batch_size=1000)
        logits[dtype] = scorer_from_marn(model, store)(**request)
    z = (logits["fp32"] - logits["fp32"].mean()) / logits["fp32"].std()
    labels = torch.bernoulli(torch.sigmoid(3 * z), generator=torch.Generator().manual_seed(5))
    aucs = {k: auc(v, labels) for k, v in logits.items()}
    diffs = {k: float((v - logits["fp32"]).abs().max()) for k, v in logits.items()}
    return aucs, diffs


def test_fp16_and_int8_auc_within_0001_of_fp32(tmp_path: Path) -> None:
    aucs, diffs = _auc_by_dtype(tmp_path)
    assert 0.6 < aucs["fp32"] < 0.95  # the labels carry signal
    for dtype in ("fp16", "int8"):
        assert abs(aucs[dtype] - aucs["fp32"]) <= 0.001, (dtype, aucs)
        assert diffs[dtype] > 0  # really quantised
    # int8 stores take a quarter of fp32's bytes (plus 8 per row for scale and offset).
    assert diffs["fp16"] < diffs["int8"]


def test_int8_quantisation_is_row_wise_and_bounded() -> None:
    from marn_rec.serving.store import dequantize_rows, quantize_rows

    x = torch.randn(50, 16) * torch.logspace(-3, 2, 50).unsqueeze(1)
    x[7] = 3.0  # a constant row is exact
    q, so = quantize_rows(x)
    back = dequantize_rows(q, so)
    step = (x.max(1).values - x.min(1).values) / 255
    assert q.dtype == torch.int8 and torch.equal(back[7], x[7])
    assert bool(((back - x).abs() <= step.unsqueeze(1) / 2 + 1e-6 * x.abs().amax(1, keepdim=True)).all())


# ----------------------------------------------------------------------------------- bad input


def test_unknown_items_are_named(tiny_setup) -> None:
    model, _, store = tiny_setup
    scorer = scorer_from_marn(model, store)
    with pytest.raises(UnknownItemsError, match=r"1 candidates \(50\); 2 history \(-1, 999\)") as e:
        scorer([1, 999, -1], [0, 0, 0], [0, 0, 0], [2, 50])
    assert e.value.candidates == [50] and e.value.history == [-1, 999]


@pytest.mark.parametrize("policy", ["mean", "zero"])
def test_missing_items_fallback_is_counted(tiny_setup, policy: str) -> None:
    model, catalog, store = tiny_setup
    scorer = scorer_from_marn(model, store, missing=policy)
    out = scorer([1, 999], [0, 0], [0, 0], [2, 50, 3])
    assert torch.isfinite(out).all() and out.shape == (3,)
    assert scorer.stats["missing_candidates"] == 1 and scorer.stats["missing_history"] == 1
    # Known candidates keep their own scores; the unknown one is scored with the fallback vector.
    fallback = store.mean if policy == "mean" else torch.zeros(store.dim)
    head = scorer.head
    inputs = list(scorer.prepare([1, 999], [0, 0], [0, 0], [2, 50, 3]))
    assert torch.equal(inputs[4][1], fallback) and torch.equal(inputs[0][0, 1], fallback)
    assert torch.allclose(head(*inputs), out)


def test_empty_history_is_valid_and_matches_the_full_model(tiny_setup) -> None:
    model, catalog, store = tiny_setup
    out = scorer_from_marn(model, store)([], [], [], [4, 5])
    ref = full_model_logits(model, catalog.features, history_items=torch.zeros(0, dtype=torch.long),
                            behavior_types=torch.zeros(0, dtype=torch.long),
                            time_buckets=torch.zeros(0, dtype=torch.long), candidate_items=torch.tensor([4, 5]))
    assert (out - ref).abs().max() <= FP32_TOLERANCE


@pytest.mark.parametrize("call,message", [
    (lambda s: s([1], [0], [0], []), "nothing to score"),
    (lambda s: s([1], [0], [0], [2], [1, 0], [2, 0]), "candidate_counts add up to 2"),
    (lambda s: s([1], [3], [0], [2]), r"behavior_types: values must be in \[0, 3\)"),
    (lambda s: s([1], [-1], [0], [2]), r"behavior_types: values must be in \[0, 3\)"),
    (lambda s: s([1], [0], [5], [2]), r"time_buckets: values must be in \[0, 5\)"),
    (lambda s: s([1.0], [0], [0], [2]), "history_items: expected integer IDs, got 1.0"),
    (lambda s: s([1], [0], [0], torch.tensor([2.5])), "candidate_items: expected integer IDs, got a torch.float32"),
    (lambda s: s([1], [0], [0], np.array([2.0])), "candidate_items: expected integer IDs, got a numpy float64"),
    (lambda s: s([1], [0], [0], ["7"]), "candidate_items: expected integer IDs, got '7'"),
    (lambda s: s([1], [0], [0], [True]), "candidate_items: expected integer IDs, got True"),
    (lambda s: s([1], [0], [0], "7"), "candidate_items: expected a tensor, numpy array or list of ints"),
    (lambda s: s([1], [0], [0], torch.tensor([[2]])), r"candidate_items: expected a 1-d list, got shape \[1, 1\]"),
    (lambda s: s([1, 2], [0], [0, 0], [2]), "one entry per behaviour"),
    (lambda s: s(list(range(7)), [0] * 7, [0] * 7, [2]), r"history_lengths: values must be in \[0, 7\)"),
    (lambda s: s([1], [0], [0], [2], history_lengths=[1]), "give both history_lengths and candidate_counts"),
    (lambda s: s([1], [0], [0], [2], [1, 0], [1]), "one entry per user"),
    (lambda s: s([1], [0], [0], [2], [-1, 2], [1, 0]), r"history_lengths: values must be in \[0, 7\)"),
])
def test_bad_requests_are_refused(tiny_setup, call, message: str) -> None:
    model, _, store = tiny_setup
    scorer = scorer_from_marn(model, store)
    with pytest.raises(ValueError, match=message):
        call(scorer)


def test_store_of_another_configuration_is_refused(tiny_setup) -> None:
    model, _, store = tiny_setup
    other = replace(tiny(), gru_hidden_dim=5)
    with pytest.raises(StoreError, match=r"another configuration.*gru_hidden_dim: store 7, model 5"):
        MARNScorer(head_from_marn(MARN(other)), store, other)


def test_store_of_other_weights_is_refused(tiny_setup) -> None:
    _, _, store = tiny_setup
    torch.manual_seed(123)
    retrained = MARN(tiny()).eval()  # same configuration, other weights
    with pytest.raises(StoreError, match="other trained weights"):
        store.check_model(store.manifest["config_fingerprint"], head_fingerprint(head_from_marn(retrained).state_dict()))


def test_incomplete_or_foreign_store_is_refused(tmp_path: Path, tiny_setup) -> None:
    with pytest.raises(StoreError, match="not a representation store"):
        RepresentationStore(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(StoreError, match="format"):
        RepresentationStore(str(tmp_path))


def test_synthetic_eval_batch_scores_like_the_full_model(tmp_path: Path) -> None:
    """A training-format batch (one user per sample) through the scorer: the model's logits."""
    from marn_rec.data import SyntheticTaobao, SyntheticTaobaoConfig
    from marn_rec.serving import synthetic_source
    from marn_rec.serving.testing import batch_request

    config = tiny()
    torch.manual_seed(0)
    model = MARN(config).eval()
    data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(config, batch_size=32, num_eval_batches=2))
    source = synthetic_source(data)
    extract(model.tower, source, str(tmp_path / "s"), config, None,
            head_fingerprint(head_from_marn(model).state_dict()), progress=False)
    scorer = scorer_from_marn(model, RepresentationStore(str(tmp_path / "s")))
    for i in range(2):
        batch = data.batch("eval", i)
        with torch.no_grad():
            expected = model(**batch.model_inputs()).logits
        assert (scorer(**batch_request(batch)) - expected).abs().max() <= FP32_TOLERANCE


def test_fp16_overflow_is_reported_not_stored(tmp_path: Path) -> None:
    """A representation beyond fp16's range would be stored as inf: the item is reported instead."""
    from types import SimpleNamespace

    config = tiny()
    catalog = RandomCatalog(config)

    def features(ids: torch.Tensor):
        f = catalog.features(ids)
        f.image = torch.where((ids == 5).unsqueeze(1), torch.full_like(f.image, 100.0), f.image.clamp(-4, 4))
        return f

    class Tower(torch.nn.Module):
        def forward(self, sparse, title, image):
            return SimpleNamespace(representation=image[:, : config.tower.hidden_dim] * 1000.0)

    report = extract(Tower(), ItemSource(features=features, count=50), str(tmp_path / "s"), config, None, "x",
                     dtype="fp16", progress=False)
    assert [b["id"] for b in report.bad_items] == [5] and "fp16 range" in report.bad_items[0]["error"]
    store = RepresentationStore(str(tmp_path / "s"))
    assert store.num_items == 49 and int(store.lookup(torch.tensor([5]))) == -1
    assert torch.isfinite(store.gather(store.lookup(torch.tensor([4, 6])))).all()
