"""Tables 4 and 5 as the paper measures them, the true-factor reference and the figures, against
brute-force definitions."""

import itertools
import json
import math
from collections import Counter

import pytest
import torch

from marn_rec.config import ABLATIONS, ablation, small, tiny
from marn_rec.data.synthetic import SyntheticTaobao, SyntheticTaobaoConfig
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.models.reference import (
    REFERENCE_ABLATION,
    TrueFactorTower,
    gap_share,
    install_reference_tower,
    item_truth_vectors,
    reference_tower,
    truth_layout,
)
from marn_rec.training import figures
from marn_rec.training.evaluation import (
    CANDIDATE_ITEM,
    CANDIDATE_SET,
    COLD,
    evaluation_metrics,
    predict,
)
from marn_rec.training.metrics import (
    observed_popularity_levels,
    popularity_level_summary,
    random_recall_at_n,
)


def _brute_auc(p, y) -> float:
    pos = [a for a, l in zip(p.tolist(), y.tolist()) if l == 1]
    neg = [a for a, l in zip(p.tolist(), y.tolist()) if l == 0]
    if not pos or not neg:
        return 0.5
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _zipf_items(n: int, seed: int, universe: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weights = (torch.arange(universe, dtype=torch.float64) + 1) ** -1.1
    ranks = torch.multinomial(weights, n, replacement=True, generator=g)
    return (ranks * 7919 + 13) % 100_003  # item IDs unrelated to popularity


# ---- Table 4: equal-frequency levels from the test set's counts ----


@pytest.mark.parametrize("levels", [10, 3, 7])
def test_levels_hold_equal_numbers_of_items_sorted_by_observed_count(levels: int) -> None:
    items = _zipf_items(3000, seed=levels)
    level = observed_popularity_levels(items, levels)
    counts = Counter(items.tolist())
    item_level = {}
    for item, k in zip(items.tolist(), level.tolist()):
        assert item_level.setdefault(item, k) == k  # all samples of an item share its level
    per_level = Counter(item_level.values())
    u = len(counts)
    # Equal numbers of items: the k-th of the U sorted items is in level k * L // U.
    assert sorted(per_level) == list(range(levels))
    assert {per_level[k] for k in range(levels)} <= {u // levels, -(-u // levels)}
    for k in range(levels - 1):  # more popular levels never hold a less interacted item
        here = [counts[i] for i, lv in item_level.items() if lv == k]
        above = [counts[i] for i, lv in item_level.items() if lv == k + 1]
        assert max(here) <= min(above)


def test_levels_without_ties_equal_brute_force() -> None:
    # Item i appears i + 1 times: distinct counts, so the order is the counts' alone.
    items = torch.tensor([i for i in range(23) for _ in range(i + 1)])
    items = items[torch.randperm(items.numel())]
    level = observed_popularity_levels(items, 10)
    expected = {i: i * 10 // 23 for i in range(23)}  # item i is the i-th least popular
    assert [expected[i] for i in items.tolist()] == level.tolist()
    by_samples = observed_popularity_levels(items, 4, unit="samples")
    before = {i: sum(j + 1 for j in range(i)) for i in range(23)}
    assert [before[i] * 4 // items.numel() for i in items.tolist()] == by_samples.tolist()


def test_tie_order_is_a_fixed_function_of_the_ids() -> None:
    items = torch.arange(1000)  # every item once: the order is the tie order alone
    level = observed_popularity_levels(items, 10)
    assert torch.equal(level, observed_popularity_levels(items.flip(0), 10).flip(0))
    assert torch.equal(torch.bincount(level), torch.full((10,), 100))
    # Not the ID order: level 0 is not the 100 smallest IDs.
    assert not torch.equal(level[:100], torch.zeros(100, dtype=torch.long))


def test_summary_counts_items_and_samples() -> None:
    items = torch.tensor([5, 5, 5, 9, 9, 2])
    level = observed_popularity_levels(items, 3)
    assert level.tolist() == [2, 2, 2, 1, 1, 0]
    assert popularity_level_summary(items, level) == {
        0: {"items": 1, "samples": 1, "min_count": 1, "max_count": 1},
        1: {"items": 1, "samples": 2, "min_count": 2, "max_count": 2},
        2: {"items": 1, "samples": 3, "min_count": 3, "max_count": 3},
    }


def test_bad_level_arguments_raise() -> None:
    with pytest.raises(ValueError, match="unit"):
        observed_popularity_levels(torch.arange(4), 2, unit="mass")
    with pytest.raises(ValueError, match="integer"):
        observed_popularity_levels(torch.rand(4), 2)
    assert observed_popularity_levels(torch.zeros(0, dtype=torch.long)).numel() == 0


def _eval_facts(n: int = 1500, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = _zipf_items(n, seed)
    truth = torch.rand(n, generator=g)
    label = (torch.rand(n, generator=g) < truth).float()
    score = truth + 0.5 * torch.rand(n, generator=g)
    user = torch.randint(0, 200, (n,), generator=g)
    return {"score": score, "label": label, "user": user, "click_prob": truth, CANDIDATE_ITEM: items}


def test_auc_by_popularity_level_is_the_auc_within_each_observed_level() -> None:
    e = _eval_facts()
    out = evaluation_metrics(e)
    level = observed_popularity_levels(e[CANDIDATE_ITEM], 10)
    for k in range(10):
        sel = level == k
        assert abs(out["auc_by_popularity_level"][k] - _brute_auc(e["score"][sel], e["label"][sel])) < 1e-9
        assert abs(out["bayes_auc_by_popularity_level"][k]
                   - _brute_auc(e["click_prob"][sel], e["label"][sel])) < 1e-9
    assert sum(v["samples"] for v in out["popularity_levels"].values()) == 1500
    assert "cold_recall" not in out and "auc_by_latent_popularity_level" not in out


def test_cold_and_warm_auc_split_the_samples_by_the_cold_flag() -> None:
    e = _eval_facts()
    cold = torch.arange(e["score"].numel()) % 7 == 0
    # Cold candidates scored as a block below the rest: each part ranks well on its own, the
    # whole does not, which is what warm_auc beside cold_auc shows.
    e["score"] = torch.where(cold, e["score"] - 10.0, e["score"])
    e[COLD] = cold.long()
    out = evaluation_metrics(e)
    assert out["cold_samples"] == int(cold.sum())
    assert abs(out["cold_auc"] - _brute_auc(e["score"][cold], e["label"][cold])) < 1e-9
    assert abs(out["warm_auc"] - _brute_auc(e["score"][~cold], e["label"][~cold])) < 1e-9
    assert abs(out["bayes_warm_auc"] - _brute_auc(e["click_prob"][~cold], e["label"][~cold])) < 1e-9
    assert out["auc"] < min(out["cold_auc"], out["warm_auc"])
    e[COLD] = torch.ones_like(e[COLD])
    assert "warm_auc" not in evaluation_metrics(e)


# ---- Table 5: recall@N over per-user candidate sets ----


def _brute_recall(score, label, sets, n) -> float:
    total, users = 0.0, 0
    for s in sorted(set(sets.tolist())):
        idx = [i for i in range(len(sets)) if int(sets[i]) == s]
        clicks = sum(float(label[i]) for i in idx)
        if clicks == 0:
            continue
        ranked = sorted(idx, key=lambda i: -float(score[i]))[:n]
        total += sum(float(label[i]) for i in ranked) / clicks
        users += 1
    return total / users


def test_cold_recall_over_candidate_sets_equals_brute_force() -> None:
    e = _eval_facts(600, seed=3)
    g = torch.Generator().manual_seed(4)
    sets = torch.full((600,), -1)
    sets[100:220], sets[220:340], sets[340:460], sets[460:600] = 0, 1, 2, 3  # 120-140 per set
    e[CANDIDATE_SET] = sets
    e["label"][100:220] = 0.0  # a set without a click does not count
    e["score"] = e["score"] + 1e-6 * torch.rand(600, generator=g)  # no ties
    out = evaluation_metrics(e, recall_at=(10, 50, 100))
    in_set = sets >= 0
    for n in (10, 50, 100):
        assert abs(out["cold_recall"][n] - _brute_recall(e["score"][in_set], e["label"][in_set],
                                                         sets[in_set], n)) < 1e-9
        assert abs(out["bayes_cold_recall"][n] - _brute_recall(e["click_prob"][in_set], e["label"][in_set],
                                                               sets[in_set], n)) < 1e-9
        assert abs(out["random_cold_recall"][n] - sum(min(n, s) / s for s in (120, 120, 140)) / 3) < 1e-12
    assert (out["cold_sets"], out["cold_set_size_min"], out["cold_set_size_max"]) == (4, 120, 140)
    # The sets' samples are left out of the other metrics.
    ordinary = ~in_set
    assert out["samples"] == 100
    assert abs(out["auc"] - _brute_auc(e["score"][ordinary], e["label"][ordinary])) < 1e-9


def test_random_recall() -> None:
    labels = torch.tensor([1.0, 0, 0, 0, 0, 1, 0, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])  # group 2 has no click
    assert random_recall_at_n(labels, groups, (1, 2, 5)) == {1: (1 / 4 + 1 / 2) / 2, 2: (2 / 4 + 1) / 2, 5: 1.0}


# ---- predict: items from the batch, consistent columns ----


def _tiny_model():
    cfg = tiny()
    model = MARNTrain(MARN(cfg, validate=False), total_steps=1).eval()
    return cfg, model


def test_predict_reads_candidate_items_from_the_item_id_feature_without_meta() -> None:
    cfg, model = _tiny_model()
    data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(cfg, batch_size=16, num_eval_batches=2))
    batches = [data.batch("eval", i) for i in range(2)]
    with_meta = predict(model, batches, torch.device("cpu"), cfg)
    for b in batches:
        b.meta.clear()
    without = predict(model, batches, torch.device("cpu"), cfg)
    assert torch.equal(with_meta[CANDIDATE_ITEM], without[CANDIDATE_ITEM])
    assert torch.equal(with_meta["score"], without["score"])
    assert "auc_by_popularity_level" in evaluation_metrics(without)


def test_predict_refuses_batches_with_different_meta_keys() -> None:
    cfg, model = _tiny_model()
    data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(cfg, batch_size=8, num_eval_batches=2))
    first, second = data.batch("eval", 0), data.batch("eval", 1)
    del second.meta["click_prob"]
    with pytest.raises(ValueError, match="different meta keys"):
        predict(model, [first, second], torch.device("cpu"), cfg)


def test_eval_split_with_cold_sets_gives_table5() -> None:
    cfg = small()
    data_cfg = SyntheticTaobaoConfig.from_model_config(
        cfg, batch_size=64, num_eval_batches=2, num_cold_set_batches=2, cold_set_size=100,
        cold_set_users_per_batch=2)
    data = SyntheticTaobao(data_cfg)
    batches = [data.batch("eval", i) for i in range(data.num_batches("eval"))]
    e = {k: torch.cat([b.meta[k] for b in batches]) for k in batches[0].meta}
    e.update(score=e["click_prob"], label=torch.cat([b.labels for b in batches]),
             user=torch.cat([b.user_ids for b in batches]))
    out = evaluation_metrics(e)
    assert out["samples"] == 128 and out["cold_sets"] == 4 and out["cold_set_size_min"] == 100
    assert out["cold_recall"] == out["bayes_cold_recall"]
    assert out["cold_recall"][100] == 1.0 and out["random_cold_recall"][10] == pytest.approx(0.1)
    assert out["cold_recall"][10] > out["random_cold_recall"][10]


# ---- the reference on the true item factors ----


def test_reference_tower_looks_up_the_truth_of_each_item() -> None:
    cfg = tiny()
    data_cfg = SyntheticTaobaoConfig.from_model_config(cfg, batch_size=16)
    data = SyntheticTaobao(data_cfg)
    tower = reference_tower(data_cfg, cfg.tower.hidden_dim, catalog=data.catalog)
    n = data.catalog.num_catalog_items
    ids = data.catalog.ids_of_ranks(torch.arange(n))
    assert torch.equal(tower.ranks(ids), torch.arange(n))
    truth = item_truth_vectors(data.catalog)
    assert truth.shape == (n, sum(w for _, w in truth_layout(data_cfg)))
    batch = data.batch("train", 0)
    out = tower(batch.item_sparse)
    rows = data.catalog.ranks_of_ids(batch.item_sparse["item_id"].values())
    assert torch.allclose(out.representation, truth[rows] @ tower.weight.T + tower.bias)
    assert out.losses == {} and out.modality_weights is None


def test_reference_marn_trains_and_builds_on_meta() -> None:
    cfg = ablation("BaseModel+CONC", tiny())
    data_cfg = SyntheticTaobaoConfig.from_model_config(cfg, batch_size=16)
    model = MARNTrain(install_reference_tower(MARN(cfg), data_cfg), total_steps=2)
    loss, _ = model(SyntheticTaobao(data_cfg).batch("train", 0))
    loss.backward()
    tower = model.model.tower
    assert isinstance(tower, TrueFactorTower) and tower.weight.grad is not None
    meta = install_reference_tower(MARN(cfg, device=torch.device("meta")), data_cfg)
    assert meta.tower.truth.is_meta
    meta.tower.to_empty(device="cpu")
    meta.tower.reset_parameters()  # what DMP calls when it materialises the module
    assert torch.equal(meta.tower.truth, tower.truth)
    with pytest.raises(ValueError, match="gru"):
        install_reference_tower(MARN(ablation("MARN", tiny())), data_cfg)
    assert {k: v for k, v in ABLATIONS["BaseModel+CONC"].items()} == REFERENCE_ABLATION


def test_gap_share() -> None:
    assert gap_share(0.70, 0.65, 0.75) == pytest.approx(0.5)
    assert math.isnan(gap_share(0.70, 0.65, 0.60))


# ---- figures ----


def test_attention_norms_at_initialisation_are_those_of_conc() -> None:
    cfg = tiny()
    data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(cfg, batch_size=8))
    tower = MARN(cfg).tower
    ids, groups = figures.items_by_group(data.catalog, per_group=5)
    norms = figures.maf_attention_norms(tower, data.catalog.features, ids, groups, 3, chunk=4)
    # MAF starts as CONC: atten_m = 1/sqrt(3) in each of the d dimensions.
    expected = math.sqrt(cfg.tower.hidden_dim / 3)
    assert norms.shape == (3, len(cfg.tower.modalities))
    assert torch.allclose(norms, torch.full_like(norms, expected), atol=1e-5)
    # After a change of the attention: the mean over items of the per-item norms, by brute force.
    with torch.no_grad():
        tower.fusion.attention.weight.normal_()
    norms = figures.maf_attention_norms(tower, data.catalog.features, ids, groups, 3, chunk=4)
    for k in range(3):
        per_item = []
        for i in ids[groups == k].tolist():
            f = data.catalog.features(torch.tensor([i]))
            e = tower.embedding(*figures._tower_inputs(f))
            per_item.append(tower.fusion.weights(tower.projection.specific(e))[0].norm(dim=1))
        assert torch.allclose(norms[k], torch.stack(per_item).mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="MAF"):
        figures.maf_attention_norms(MARN(ablation("BaseModel+CONC", cfg)).tower,
                                    data.catalog.features, ids, groups, 3)


def test_linear_probe_accuracy_reads_what_a_linear_map_can() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (3000,), generator=g)
    centres = torch.randn(3, 5, generator=g) * 3
    noise = torch.randn(3000, 5, generator=g)
    # Classes at separated centres: a linear read-out tells them apart.
    assert figures.linear_probe_accuracy(centres[labels] + noise, labels, 3) > 0.9
    # Features independent of the class: chance, whatever the fit does on its own rows.
    assert abs(figures.linear_probe_accuracy(noise, labels, 3) - 1 / 3) < 0.05
    # Classes that differ only in a feature's magnitude, not linearly (XOR-like): no better.
    sign = torch.where(labels == 0, 1.0, -1.0)
    xor = torch.stack([noise[:, 0], noise[:, 0].abs() * sign], 1) * noise[:, 1:2].sign()
    assert figures.linear_probe_accuracy(xor, (labels == 0).long(), 2) < 0.72
    with pytest.raises(ValueError, match="rows"):
        figures.linear_probe_accuracy(noise[:1], labels[:1], 3)


def test_modality_group_probe_sees_the_group_where_the_image_shows_it() -> None:
    """The probe of Figure 4: per modality, can a linear map of s_m alone (eq. 3's gate) tell the
    category groups apart? With the image showing its group (image_group_weight), the image's can."""
    cfg = tiny()
    for weight in (0.0, 3.0):
        data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(
            cfg, batch_size=8, image_group_weight=weight, max_catalog_items=3000))
        tower = MARN(cfg).tower
        ids, groups = figures.items_by_group(data.catalog, per_group=400)
        probe = figures.modality_group_probe(tower, data.catalog.features, ids, groups, 3, chunk=256)
        assert set(probe) == set(cfg.tower.modalities) | {"chance"}
        assert probe["chance"] == pytest.approx(float(torch.bincount(groups).max()) / groups.numel())
        if weight:
            assert probe["image"] > 0.9
        else:
            assert probe["image"] < 0.7


def test_figure_plots_write_pngs(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "split": "train", "lambda": 0.01 * s, "total_loss": 1.0 / s,
                "ctr_loss": 0.5, "d1_loss": 1.3, "adv_loss": 1.3, "d1_ce": 1.38} for s in (1, 2, 3)]
    records.append({"step": 3, "split": "eval", "auc": 0.6})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    curves = figures.adversarial_curves(str(path))
    assert curves["step"] == [1, 2, 3] and curves["d1_ce"] == [1.38] * 3
    figures.plot_adversarial_loss(str(path), str(tmp_path / "6a.png"))
    sweep = [{"lambda0": 0.05, "auc": 0.66, "bayes_auc": 0.8, "diverged": None},
             {"lambda0": 1.8, "diverged": "CTR loss 2013"}]
    figures.plot_lambda_sweep(sweep, str(tmp_path / "6b.png"))
    figures.plot_attention_heatmap({"norms": [[1.0, 2.0], [3.0, 4.0]], "groups": ["a", "b"],
                                    "modalities": ["ids", "image"]}, str(tmp_path / "4.png"))
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("6a.png", "6b.png", "4.png"))
    table = figures.ceiling_tables([
        {"model": "BaseModel+IDs", "seed": 0, "auc": 0.65, "user_auc": 0.6, "cold_auc": 0.5},
        {"model": "MARN", "seed": 0, "auc": 0.67, "user_auc": 0.6, "cold_auc": 0.6},
        {"model": "Reference", "seed": 0, "auc": 0.73, "user_auc": 0.7, "cold_auc": 0.7},
    ])
    assert "| MARN | 0.6700 | 0.6000 | 0.6000 | +0.25 |" in table


def test_items_by_image_quality_follow_the_generator_flags() -> None:
    data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(
        small(), batch_size=8, missing_image_prob=0.3, uninformative_image_prob=0.2))
    ids, groups = figures.items_by_image_quality(data.catalog, per_group=50)
    assert torch.equal(torch.bincount(groups), torch.full((3,), 50))
    q = data.catalog.modality_quality(data.catalog.ranks_of_ids(ids))
    assert bool(q.image_missing[groups == 2].all()) and bool(q.image_uninformative[groups == 1].all())
    assert not bool((q.image_missing | q.image_uninformative)[groups == 0].any())


def test_reference_selected_by_name_trains_in_the_loop(tmp_path) -> None:
    """``model="Reference"`` goes through the ordinary training loop (meta device, DMP, checkpoint)
    with the true-factor tower; its run says so, and real data is refused."""
    from marn_rec.config import REFERENCE
    from marn_rec.training.loop import TrainConfig

    cfg = TrainConfig(preset="tiny", model="BaseModel+CONC", steps=4, batch_size=16, eval_every=4,
                      eval_batches=2, out_dir=str(tmp_path / "ref"), progress=False, resume="never")
    (record,) = figures.train_runs([(cfg, True)], jobs=1)
    assert record["model"] == REFERENCE and record["diverged"] is None and 0.0 <= record["auc"] <= 1.0
    meta = json.loads(next((tmp_path / "ref" / "checkpoints").glob("step_*/meta.json")).read_text())
    assert REFERENCE in json.dumps(meta)
    with pytest.raises(ValueError, match="true item factors"):
        TrainConfig(model=REFERENCE, data_dir=str(tmp_path))


def test_ablation_report_gives_each_models_share_of_the_reference_gap() -> None:
    from marn_rec.training.ablation.report import gap_share_table

    runs = [{"model": m, "seed": s, "auc": a} for m, s, a in (
        ("BaseModel+IDs", 1, 0.60), ("Reference", 1, 0.70), ("MARN", 1, 0.65),
        ("BaseModel+IDs", 2, 0.62), ("Reference", 2, 0.66), ("MARN", 2, 0.652))]
    table = gap_share_table(runs)
    assert "| MARN | +0.65 | +0.50 | +0.80 |" in table and "| (gap, AUC points) | 7.00 | 10.00 | 4.00 |" in table
    assert gap_share_table([r for r in runs if r["model"] != "Reference"]) == ""


def test_learning_curve_evaluations_leave_out_the_cold_sets_and_the_last_scores_them(tmp_path) -> None:
    """Evaluations before the last score the ordinary batches only (the curve); the last one adds
    Table 5's cold candidate sets, and its ordinary metrics are those of the same batches: a run
    that ends at step 2 reports at its end what a longer run's curve reports at step 2
    (BaseModel+CONC: no lambda schedule, so the weights at step 2 are the same)."""
    from marn_rec.training.loop import TrainConfig, train

    def run(name: str, steps: int):
        cfg = TrainConfig(preset="tiny", model="BaseModel+CONC", steps=steps, batch_size=16, eval_every=2,
                          eval_batches=2, out_dir=str(tmp_path / name), progress=False, resume="never",
                          data_overrides={"num_cold_set_batches": 2, "cold_set_size": 4,
                                          "cold_set_users_per_batch": 2})
        train(cfg)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r.get("split") == "eval"]

    long, short = run("long", 4), run("short", 2)
    assert [e["step"] for e in long] == [2, 4] and [e["step"] for e in short] == [2]
    assert "cold_recall" not in long[0] and long[0]["samples"] == 32
    assert long[1]["cold_sets"] == 4 and "cold_recall" in long[1] and long[1]["samples"] == 32
    assert "cold_recall" in short[0]
    for key in ("auc", "user_auc", "cold_auc", "samples", "click_rate"):
        assert short[0][key] == long[0][key], key


@pytest.mark.parametrize("eval_batches,cold_sets", [(16, 16), (3, 2), (50, 2)])
def test_every_rank_evaluates_as_many_batches(eval_batches, cold_sets) -> None:
    """Each forward of the sharded model is a collective: in the curve evaluations and in the last
    one every rank must get the same number of batches, whatever the split of the two kinds."""
    from marn_rec.training.loop import TrainConfig
    from marn_rec.training.sources import synthetic_data

    for world in (2, 3, 4):
        cfg = TrainConfig(preset="tiny", batch_size=8 * world, eval_batches=eval_batches,
                          data_overrides={"num_cold_set_batches": cold_sets, "cold_set_size": 4,
                                          "cold_set_users_per_batch": 2})
        curve, final = set(), set()
        for rank in range(world):
            data = synthetic_data(cfg, cfg.model_config(), rank, world)
            curve.add(sum(1 for _ in data.curve_eval_batches()))
            final.add(sum(1 for _ in data.eval_batches()))
        assert curve == {eval_batches // world} and final == {(eval_batches + cold_sets) // world}, world


# ---- APGRU's candidate attention profile ----


def test_attention_profile_matches_a_brute_force_over_the_weights() -> None:
    from marn_rec.testing import random_batch
    from marn_rec.training.attention_profile import attention_profile

    torch.manual_seed(3)
    config = tiny()
    model = MARN(config).eval()
    batches = [random_batch(config, 8, seed=s, min_length=0) for s in range(3)]
    profile = attention_profile(model, batches, distances=4)
    seen = []
    for batch in batches:
        captured = {}
        handle = model.attention.register_forward_hook(lambda m, a, o: captured.update(args=a))
        with torch.no_grad():
            model(**batch.model_inputs())
        handle.remove()
        states, lengths, candidate = captured["args"]
        for i in range(len(lengths)):
            n = int(lengths[i])
            if n < 2:
                continue
            # the weights by hand: the attention MLP's scores of [h_t, candidate], softmax over t < n
            pairs = torch.cat([states[i, :n], candidate[i].expand(n, -1)], dim=1)
            with torch.no_grad():
                a = torch.softmax(model.attention.score(model.attention.mlp(pairs)).squeeze(1), 0).double()
            seen.append((n, a))
    assert profile["samples"] == len(seen) > 0
    assert profile["latest_weight"] == pytest.approx(sum(float(a[-1]) for _, a in seen) / len(seen), abs=1e-6)
    entropy = sum(float(-(a * a.log()).sum() / math.log(n)) for n, a in seen) / len(seen)
    assert profile["entropy"] == pytest.approx(entropy, abs=1e-6)
    for d in range(4):
        at = [float(a[-1 - d]) for n, a in seen if n > d]
        assert profile["samples_by_distance"][d] == len(at)
        assert profile["weight_by_distance"][d] == pytest.approx(sum(at) / len(at), abs=1e-6)
    assert profile["uniform_latest_weight"] == pytest.approx(sum(1 / n for n, _ in seen) / len(seen))


def test_attention_profile_refuses_a_model_without_attention() -> None:
    from marn_rec.testing import random_batch
    from marn_rec.training.attention_profile import attention_profile

    model = MARN(ablation("MARN-ATTENTION", tiny()))
    with pytest.raises(ValueError, match="no candidate attention"):
        attention_profile(model, [random_batch(tiny(), 4)])


def test_attention_profile_of_a_synthetic_checkpoint_reads_its_evaluation_batches(tmp_path) -> None:
    from marn_rec.training.attention_profile import attention_profile_from_checkpoint, plot_attention_profile
    from marn_rec.training.loop import TrainConfig, train

    cfg = TrainConfig(preset="tiny", model="MARN-PROPERTY", steps=2, batch_size=16, eval_batches=2,
                      out_dir=str(tmp_path / "run"), progress=False, resume="never")
    train(cfg)
    profile = attention_profile_from_checkpoint(str(tmp_path / "run"))
    assert profile["step"] == 2 and profile["sequence"] == "agru" and profile["samples"] > 0
    assert 0.0 < profile["entropy"] <= 1.0 + 1e-9
    plot_attention_profile({"MARN-PROPERTY": profile}, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").stat().st_size > 0
