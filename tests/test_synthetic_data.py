"""The synthetic Taobao-like stream: determinism, sharding, table ranges, planted truth, resume."""

from dataclasses import replace
from typing import Iterable, Iterator, List

import pytest
import torch

from marn_rec.batch import MARNBatch
from marn_rec.config import IMAGE, STATISTIC, TITLE, MARNConfig, paper, small, tiny
from marn_rec.data import (
    EVAL,
    MODALITY_GROUPS,
    TRAIN,
    SyntheticBatchDataset,
    SyntheticTaobao,
    SyntheticTaobaoConfig,
    make_loader,
    shard_batch_indices,
)
from marn_rec.features import (
    BEHAVIOR_TIME,
    BEHAVIOR_TYPE,
    TITLE_WORDS,
    id_tables,
    property_tables,
    statistic_tables,
    title_table,
)


def pairwise_auc(score: torch.Tensor, label: torch.Tensor) -> float:
    """AUC by brute force over all (positive, negative) pairs; ties count one half."""
    pos = score[label > 0.5].double()
    neg = score[label <= 0.5].double()
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.float(), b.float()]))[0, 1])


def batches_equal(a: MARNBatch, b: MARNBatch) -> bool:
    tensors = lambda x: [  # noqa: E731
        x.item_sparse.values(),
        x.item_sparse.lengths(),
        x.item_title.values(),
        x.item_title.lengths(),
        x.item_image,
        x.candidate_index,
        x.history_index,
        x.history_lengths,
        x.history_property.values(),
        x.labels,
        x.user_ids,
        *[x.meta[k] for k in sorted(x.meta)],
    ]
    if a.item_sparse.keys() != b.item_sparse.keys() or sorted(a.meta) != sorted(b.meta):
        return False
    return all(s.shape == t.shape and torch.equal(s, t) for s, t in zip(tensors(a), tensors(b)))


def tiny_data(**overrides: object) -> SyntheticTaobao:
    params = dict(batch_size=32, num_train_batches=6, num_eval_batches=4)
    params.update(overrides)
    return SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(tiny(), **params))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Generation runs in loader workers with one thread each; on a busy 2-core machine two OpenMP
    # threads mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_data() -> SyntheticTaobao:
    return SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(small(), batch_size=1024))


@pytest.fixture(scope="module")
def small_train(small_data: SyntheticTaobao) -> List:
    return [small_data.sample_slots(TRAIN, i) for i in range(4)]


# ---- determinism and sharding ----


def test_batches_are_pure_functions_of_seed_split_index() -> None:
    data = tiny_data()
    first = [data.batch(TRAIN, i) for i in range(4)]
    assert batches_equal(first[2], data.batch(TRAIN, 2))
    fresh = tiny_data()  # a new catalog from the same seed, batch 3 without batches 0..2
    assert batches_equal(first[3], fresh.batch(TRAIN, 3))
    assert not batches_equal(first[0], first[1])
    assert not batches_equal(first[0], data.batch(EVAL, 0))
    assert not batches_equal(first[0], tiny_data(seed=1).batch(TRAIN, 0))


def test_rank_sharding_is_disjoint_and_covering() -> None:
    for total, world in ((12, 3), (10, 2), (7, 1)):
        shards = [list(shard_batch_indices(total, r, world)) for r in range(world)]
        flat = sorted(i for s in shards for i in s)
        assert flat == list(range(total))
        assert all(s == list(range(r, total, world)) for r, s in enumerate(shards))
    # Uneven: every rank gets the same number of batches, the tail is dropped.
    shards = [list(shard_batch_indices(10, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(i for s in shards for i in s) == list(range(9))

    data = tiny_data()
    for r in range(2):
        dataset = SyntheticBatchDataset(data, TRAIN, rank=r, world_size=2)
        assert len(dataset) == 3
        assert batches_equal(dataset[1], data.batch(TRAIN, r + 2))


# ---- IDs fit the model's tables ----


def check_ids_fit(batch: MARNBatch, cfg: MARNConfig) -> None:
    tower = cfg.tower
    item_tables = id_tables(tower) + statistic_tables(tower)
    tables = item_tables + property_tables(cfg.behavior) + [title_table(tower)]
    rows = {name: t.num_embeddings for t in tables for name in t.feature_names}
    sparse = batch.item_sparse.to_dict()
    assert set(sparse) == {name for t in item_tables for name in t.feature_names}
    for name, jt in sparse.items():
        assert torch.all(jt.lengths() == 1), name
        values = jt.values()
        assert values.dtype == torch.int64
        assert int(values.min()) >= 0 and int(values.max()) < rows[name], name
    words = batch.item_title.values()
    assert words.numel() == 0 or (int(words.min()) >= 0 and int(words.max()) < rows[TITLE_WORDS])
    lengths = batch.item_title.lengths()
    assert lengths.numel() == batch.num_unique_items
    assert int(lengths.max()) <= tower.title_length and int(lengths.min()) >= 0
    prop = batch.history_property.to_dict()
    for name in (BEHAVIOR_TYPE, BEHAVIOR_TIME):
        v = prop[name].values()
        assert v.numel() == batch.history_index.numel()
        assert v.numel() == 0 or (int(v.min()) >= 0 and int(v.max()) < rows[name])
    u = batch.num_unique_items
    assert batch.item_image.shape == (u, tower.image_dim)
    assert batch.item_image.dtype == torch.float32
    assert int(batch.candidate_index.max()) < u and int(batch.candidate_index.min()) >= 0
    assert batch.history_index.numel() == int(batch.history_lengths.sum())
    if batch.history_index.numel():
        assert int(batch.history_index.max()) < u
    assert int(batch.history_lengths.max()) <= cfg.behavior.max_length
    assert int(batch.history_lengths.min()) >= 0
    assert set(batch.labels.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("preset", [tiny, small])
def test_ids_fit_every_table(preset) -> None:
    cfg = preset()
    data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(cfg, batch_size=256))
    for split in (TRAIN, EVAL):
        for i in range(2):
            check_ids_fit(data.batch(split, i), cfg)


def test_paper_sizes_with_a_capped_catalog() -> None:
    cfg = paper()
    data_cfg = SyntheticTaobaoConfig.from_model_config(cfg, batch_size=16, max_catalog_items=5000)
    data = SyntheticTaobao(data_cfg)
    batch = data.batch(TRAIN, 0)
    check_ids_fit(batch, cfg)
    # The catalog's items are spread over the whole 800M ID space by the affine ID map.
    ids = data.catalog.ids_of_ranks(torch.arange(5000))
    assert ids.unique().numel() == 5000 and int(ids.max()) > cfg.tower.num_items // 2
    assert torch.equal(data.catalog.ranks_of_ids(ids), torch.arange(5000))


def test_id_map_is_a_bijection() -> None:
    catalog = tiny_data().catalog
    n = catalog.num_catalog_items
    ids = catalog.ids_of_ranks(torch.arange(n))
    assert sorted(ids.tolist()) == list(range(n))
    assert torch.equal(catalog.ranks_of_ids(ids), torch.arange(n))


# ---- planted structure ----


def test_click_rate_and_bayes_auc(small_train: List) -> None:
    prob = torch.cat([p for _, _, p, _ in small_train])
    labels = torch.cat([l for _, _, _, l in small_train])
    ctr = float(labels.mean())
    assert 0.10 <= ctr <= 0.30
    assert abs(ctr - float(prob.mean())) < 0.03
    bayes = pairwise_auc(prob, labels)
    assert 0.70 <= bayes <= 0.85, bayes


def test_cold_items_only_in_eval(small_data: SyntheticTaobao) -> None:
    catalog = small_data.catalog
    share = float(catalog.is_cold.float().mean())
    assert abs(share - small_data.config.cold_fraction) < 0.01
    for i in range(2):
        batch = small_data.batch(TRAIN, i)
        ranks = catalog.ranks_of_ids(batch.item_sparse["item_id"].values())
        assert not bool(catalog.is_cold[ranks].any())
        assert not bool(batch.meta["candidate_cold"].any())
    batch = small_data.batch(EVAL, 0)
    cold = batch.meta["candidate_cold"]
    cand_ranks = catalog.ranks_of_ids(batch.meta["candidate_item"])
    assert torch.equal(cold, catalog.is_cold[cand_ranks])
    assert abs(float(cold.float().mean()) - small_data.config.eval_cold_share) < 0.05
    item_ids = batch.item_sparse["item_id"].values()
    history_ids = item_ids[batch.history_index]
    assert not bool(catalog.is_cold[catalog.ranks_of_ids(history_ids)].any())


def test_popularity_is_zipf_skewed(small_train: List, small_data: SyntheticTaobao) -> None:
    top = small_data.catalog.num_catalog_items // 100
    cands = torch.cat([s.candidates for s, _, _, _ in small_train])
    history = torch.cat([s.history for s, _, _, _ in small_train])
    # Uniform popularity would give the top 1% of items 1% of the slots.
    assert float((cands < top).float().mean()) > 0.4
    assert float((history < top).float().mean()) > 0.4
    batch = small_data.batch(EVAL, 0)
    levels = torch.bincount(batch.meta["candidate_popularity_level"], minlength=10)
    assert levels.numel() == 10 and int(levels.min()) > 0  # equal-mass levels are all populated


def test_behavior_types_and_times(small_train: List) -> None:
    types = torch.cat([s.types for s, _, _, _ in small_train])
    shares = torch.bincount(types, minlength=3).float() / types.numel()
    assert torch.allclose(shares, torch.tensor([0.90, 0.05, 0.05]), atol=0.015), shares
    slots = small_train[0][0]
    assert 0 in slots.lengths.tolist() and int(slots.lengths.max()) == small().behavior.max_length
    # Oldest behaviour first: seconds since the behaviour fall along each sequence.
    owner = torch.repeat_interleave(torch.arange(slots.lengths.numel()), slots.lengths)
    same_sample = owner[1:] == owner[:-1]
    assert bool((slots.gaps[1:][same_sample] < slots.gaps[:-1][same_sample]).all())
    assert bool((slots.gaps > 0).all())


def test_categories_differ_in_which_modality_carries_the_signal(
    small_train: List, small_data: SyntheticTaobao
) -> None:
    catalog = small_data.catalog
    terms = {IMAGE: [], STATISTIC: [], TITLE: []}
    logits, groups = [], []
    for slots, interests, prob, _ in small_train:
        truth = catalog.truth(slots.candidates)
        terms[IMAGE].append((interests.image * truth.image).sum(1))
        terms[TITLE].append((interests.title * truth.title).sum(1))
        terms[STATISTIC].append(interests.stat_sensitivity * truth.quality)
        logits.append(torch.logit(prob.double()).float())
        groups.append(truth.group)
    logit, group = torch.cat(logits), torch.cat(groups)
    term = {k: torch.cat(v) for k, v in terms.items()}

    for g, signal in enumerate(MODALITY_GROUPS):
        mask = group == g
        assert int(mask.sum()) > 300
        own = corr(logit[mask], term[signal][mask])
        others = [corr(logit[mask], term[m][mask]) for m in MODALITY_GROUPS if m != signal]
        assert own > 0.5 and all(own > o + 0.3 for o in others), (signal, own, others)


def test_history_reveals_user_interests(small_train: List, small_data: SyntheticTaobao) -> None:
    """Behaviours lean towards the user's interests, so a sequence model can infer them."""
    catalog = small_data.catalog
    slots, interests, _, _ = small_train[0]
    owner = torch.repeat_interleave(torch.arange(slots.lengths.numel()), slots.lengths)
    image_items = catalog.truth(slots.history).group == MODALITY_GROUPS.index(IMAGE)
    match = (interests.image[owner] * catalog.image_factor[slots.history]).sum(1)[image_items]
    others = torch.randint(0, interests.image.shape[0], (int(image_items.sum()),))
    baseline = (interests.image[others] * catalog.image_factor[slots.history][image_items]).sum(1)
    assert float(match.mean()) > float(baseline.mean()) + 0.5


def test_modalities_are_views_of_the_factors(small_data: SyntheticTaobao) -> None:
    catalog = small_data.catalog
    ranks = torch.arange(2000)
    images = catalog.images(ranks)
    assert bool((images >= 0).all())  # post-ReLU like VGG fc7
    assert torch.equal(images, catalog.images(ranks.flip(0)).flip(0))  # per item, not per call
    # A least-squares readout of the image recovers the image factor far above chance.
    truth = catalog.truth(ranks)
    x = torch.cat([images, torch.ones(2000, 1)], 1)
    fit = torch.linalg.lstsq(x[:1500], truth.image[:1500]).solution
    pred = x[1500:] @ fit
    held_out = truth.image[1500:]
    r = [corr(pred[:, k], held_out[:, k]) for k in range(held_out.shape[1])]
    assert min(r) > 0.7, r
    stats = catalog.statistic_buckets(ranks)
    assert corr(stats["stat1_b100"], truth.quality) > 0.7  # the click-rate statistic shows quality
    words, lengths = catalog.titles(ranks)
    assert words.numel() == int(lengths.sum()) and int(lengths.max()) == small().tower.title_length
    assert int((lengths == 0).sum()) > 0


# ---- dedup and loading ----


def test_dedup_and_per_slot_batches_describe_the_same_slots() -> None:
    data = tiny_data(batch_size=48)
    dedup, per_slot = data.batch(TRAIN, 1, dedup=True), data.batch(TRAIN, 1, dedup=False)
    slots = dedup.batch_size + dedup.history_index.numel()
    assert per_slot.num_unique_items == slots and dedup.num_unique_items < slots
    pairs = (
        (dedup.candidate_index, per_slot.candidate_index),
        (dedup.history_index, per_slot.history_index),
    )
    for a, b in pairs:
        assert torch.equal(dedup.item_image[a], per_slot.item_image[b])
        for key in dedup.item_sparse.keys():
            values_a, values_b = dedup.item_sparse[key].values(), per_slot.item_sparse[key].values()
            assert torch.equal(values_a[a], values_b[b])
        titles_a = dedup.item_title[TITLE_WORDS].to_dense()
        titles_b = per_slot.item_title[TITLE_WORDS].to_dense()
        assert all(torch.equal(titles_a[i], titles_b[j]) for i, j in zip(a.tolist(), b.tolist()))
    for name in ("labels", "history_lengths", "user_ids"):
        assert torch.equal(getattr(dedup, name), getattr(per_slot, name))
    assert torch.equal(dedup.history_property.values(), per_slot.history_property.values())
    assert all(torch.equal(dedup.meta[k], per_slot.meta[k]) for k in dedup.meta)


def take(loader: Iterable, n: int) -> List[MARNBatch]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_resumes_exactly(num_workers: int) -> None:
    cfg = tiny()
    data_cfg = SyntheticTaobaoConfig.from_model_config(cfg, batch_size=16, num_train_batches=7)
    full = list(make_loader(data_cfg, cfg, TRAIN))
    assert len(full) == 7
    for k in (0, 3):
        loader = make_loader(data_cfg, cfg, TRAIN, num_workers=num_workers)
        seen = take(loader, k) if k else []
        state = loader.state_dict()
        resumed = make_loader(data_cfg, cfg, TRAIN, num_workers=num_workers)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(seen) + len(rest) == 7  # nothing skipped, nothing twice
        assert all(batches_equal(a, b) for a, b in zip(seen + rest, full))


def test_sharded_eval_loader() -> None:
    cfg = tiny()
    data_cfg = SyntheticTaobaoConfig.from_model_config(cfg, batch_size=8, num_eval_batches=5)
    source = SyntheticTaobao(data_cfg)
    ranks = [list(make_loader(data_cfg, cfg, EVAL, r, 2, source=source)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]
    assert batches_equal(ranks[1][1], source.batch(EVAL, 3))


# ---- validation ----


def test_bad_config_values_raise() -> None:
    cfg = tiny()
    bad = [
        (dict(num_users=-3), "num_users"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_items=-1), "num_items"),
        (dict(cold_fraction=1.0), "cold_fraction"),
        (dict(zipf_exponent=0.0), "zipf_exponent"),
        (dict(behavior_type_probs=(0.5, 0.5, 0.5)), "behavior_type_probs"),
        (dict(statistic_buckets=(10, 1)), "statistic_buckets"),
        (dict(image_noise=-0.1), "image_noise"),
        (dict(no_such_field=1), "no_such_field"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            SyntheticTaobaoConfig.from_model_config(cfg, **overrides)
    data_cfg = SyntheticTaobaoConfig.from_model_config(small())
    with pytest.raises(ValueError, match="num_items"):
        data_cfg.check_fits(tiny())
    with pytest.raises(ValueError, match="image_dim"):
        data_cfg.check_fits(replace(small(), tower=replace(small().tower, image_dim=128)))
    data = tiny_data()
    with pytest.raises(ValueError, match="split"):
        data.batch("test", 0)
    with pytest.raises(ValueError, match="index"):
        data.batch(TRAIN, -1)
    with pytest.raises(ValueError, match="rank"):
        make_loader(data.config, cfg, TRAIN, rank=2, world_size=2)


# ---- defaults keep the stream bit-identical ----


def fingerprint(batch: MARNBatch) -> str:
    """SHA-256 (16 hex digits) of every tensor of a batch, its meta keys and its features' keys."""
    import hashlib

    h = hashlib.sha256()
    parts = [batch.item_sparse.values(), batch.item_sparse.lengths(), batch.item_title.values(),
             batch.item_title.lengths(), batch.item_image, batch.candidate_index, batch.history_index,
             batch.history_lengths, batch.history_property.values(), batch.labels, batch.user_ids]
    parts += [batch.meta[k] for k in sorted(batch.meta)]
    for t in parts:
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr(sorted(batch.meta)).encode())
    h.update(repr(batch.item_sparse.keys()).encode())
    return h.hexdigest()[:16]


# Measured on the generator before the cold-set split and the modality-quality knobs existed.
GOLDEN = {
    ("tiny", 64, TRAIN, 0): ("6d7a5bae2fe03605", "576985b4e053dacc"),
    ("tiny", 64, EVAL, 5): ("b2a5f854705384e4", "2036a2607a96bb46"),
    ("small", 256, TRAIN, 0): ("9e08f053a4a14ed9", "a6d55f3b01971be6"),
    ("small", 256, EVAL, 0): ("3628012c4b0febfe", "32e5668536f8a0c4"),
}


def test_default_stream_is_bit_identical_to_the_earlier_generator() -> None:
    sources = {}
    for (preset, batch_size, split, index), (dedup, per_slot) in GOLDEN.items():
        if preset not in sources:
            cfg = {"tiny": tiny, "small": small}[preset]()
            sources[preset] = SyntheticTaobao(
                SyntheticTaobaoConfig.from_model_config(cfg, batch_size=batch_size)
            )
        data = sources[preset]
        assert fingerprint(data.batch(split, index)) == dedup, (preset, split, index)
        assert fingerprint(data.batch(split, index, dedup=False)) == per_slot, (preset, split, index)


# ---- cold candidate sets (paper Table 5) ----


@pytest.fixture(scope="module")
def cold_set_data(small_data: SyntheticTaobao) -> SyntheticTaobao:
    cfg = replace(small_data.config, batch_size=64, num_eval_batches=3, num_cold_set_batches=2,
                  cold_set_size=150, cold_set_users_per_batch=3)
    return SyntheticTaobao(cfg)


def test_cold_sets_are_distinct_cold_items_per_user_with_one_history(
    cold_set_data: SyntheticTaobao,
) -> None:
    from marn_rec.data.synthetic import COLD_SETS

    data, catalog = cold_set_data, cold_set_data.catalog
    assert data.num_batches(COLD_SETS) == 2 and data.num_batches(EVAL) == 5
    seen_sets = []
    for index in range(2):
        batch = data.batch(COLD_SETS, index)
        assert batches_equal(batch, data.batch(EVAL, 3 + index))  # appended to the eval split
        check_ids_fit(batch, small())
        sets = batch.meta["candidate_set"]
        assert batch.batch_size == 3 * 150 and bool(batch.meta["candidate_cold"].all())
        ranks = catalog.ranks_of_ids(batch.meta["candidate_item"])
        assert bool(catalog.is_cold[ranks].all())
        item_ids = batch.item_sparse["item_id"].values()
        offsets = torch.cumsum(batch.history_lengths, 0) - batch.history_lengths
        for s in sets.unique().tolist():
            rows = (sets == s).nonzero().squeeze(1)
            assert rows.numel() == 150 and ranks[rows].unique().numel() == 150
            assert batch.user_ids[rows].unique().numel() == 1
            histories = {tuple(item_ids[batch.history_index[o : o + n]].tolist())
                         for o, n in zip(offsets[rows].tolist(), batch.history_lengths[rows].tolist())}
            assert len(histories) == 1  # every candidate of a set sees the user's one history
            seen_sets.append(s)
    assert sorted(seen_sets) == list(range(6))
    ordinary = data.batch(EVAL, 0)
    assert bool((ordinary.meta["candidate_set"] == -1).all())
    assert "candidate_set" not in data.batch(TRAIN, 0).meta


def test_cold_set_labels_follow_the_click_model(cold_set_data: SyntheticTaobao) -> None:
    from marn_rec.data.synthetic import COLD_SETS

    slots, interests, prob, labels = cold_set_data.sample_slots(COLD_SETS, 1)
    again = torch.sigmoid(cold_set_data.click_logit(slots, interests))
    assert torch.equal(prob, again)
    # Candidates lean towards the users' favourite categories, as eval candidates do.
    fav = interests.favorite_categories
    in_fav = (cold_set_data.catalog.category[slots.candidates][:, None] == fav).any(1)
    share = cold_set_data.catalog.cold_pool.mass[fav].sum() / cold_set_data.catalog.cold_pool.total
    assert float(in_fav.float().mean()) > float(share) / len(fav) + 0.2
    assert 0.02 < float(labels.mean()) < 0.4


def test_cold_set_config_is_checked() -> None:
    cfg = tiny()
    with pytest.raises(ValueError, match="cold_set_size"):
        SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(
            cfg, num_cold_set_batches=1, cold_set_size=1000))
    with pytest.raises(ValueError, match="cold items"):
        SyntheticTaobaoConfig.from_model_config(cfg, num_cold_set_batches=1, cold_fraction=0.0)
    with pytest.raises(ValueError, match="cold-set batch index"):
        tiny_data(num_cold_set_batches=1, cold_set_size=2).batch("cold_sets", 1)


# ---- per-item modality quality and redundancy ----


@pytest.mark.parametrize(
    "knobs",
    [dict(missing_image_prob=0.2, uninformative_image_prob=0.3), dict(generic_title_prob=0.4),
     dict(cold_empty_statistics_prob=0.8), dict(shared_view_weight=0.0), dict(image_group_weight=1.0)],
)
def test_quality_knobs_change_views_only(small_data: SyntheticTaobao, knobs) -> None:
    data = SyntheticTaobao(replace(small_data.config, batch_size=128, **knobs))
    base = SyntheticTaobao(replace(small_data.config, batch_size=128))
    for split in (TRAIN, EVAL):
        a, b = data.sample_slots(split, 1), base.sample_slots(split, 1)
        assert all(torch.equal(x, y) for x, y in zip(vars(a[0]).values(), vars(b[0]).values()))
        assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])  # truth and labels unchanged
    ranks = torch.arange(3000)
    q = data.catalog.modality_quality(ranks)
    cat, ref = data.catalog, base.catalog
    if "missing_image_prob" in knobs:
        images, ref_images = cat.images(ranks), ref.images(ranks)
        assert abs(float(q.image_missing.float().mean()) - 0.2) < 0.03
        assert abs(float(q.image_uninformative.float().mean()) - 0.3) < 0.03
        assert not bool((q.image_missing & q.image_uninformative).any())
        assert bool((images[q.image_missing] == 0).all())
        fine = ~(q.image_missing | q.image_uninformative)
        assert torch.equal(images[fine], ref_images[fine])
        # An uninformative image is the item's noise alone: nothing of its factors.
        x = torch.cat([images[q.image_uninformative], torch.ones(int(q.image_uninformative.sum()), 1)], 1)
        fit = torch.linalg.lstsq(x[:500], cat.image_factor[ranks][q.image_uninformative][:500]).solution
        r = corr((x[500:] @ fit)[:, 0], cat.image_factor[ranks][q.image_uninformative][500:, 0])
        assert abs(r) < 0.2, r
    if "generic_title_prob" in knobs:
        words, lengths = cat.titles(ranks)
        ref_words, ref_lengths = ref.titles(ranks)
        assert torch.equal(lengths, ref_lengths)
        per_item = torch.repeat_interleave(ranks, lengths)
        generic = q.title_generic[per_item]
        assert torch.equal(words[~generic], ref_words[~generic])
        factor_words = words < cat.category_word_offset
        # Only random (noise) words can fall among the factor words of a generic title.
        assert float(factor_words[generic].float().mean()) < 0.2
        assert float(factor_words[~generic].float().mean()) > 0.5
    if "cold_empty_statistics_prob" in knobs:
        assert not bool((q.statistics_empty & ~cat.is_cold[ranks]).any())
        empty = q.statistics_empty
        assert int(empty.sum()) > 100
        assert torch.equal(cat.statistics[ranks][~empty], ref.statistics[ranks][~empty])
        assert abs(corr(cat.statistics[ranks][empty, 1], cat.quality[ranks][empty])) < 0.2
    if "shared_view_weight" in knobs:
        # No redundancy: the image shows nothing of the shared factor.
        images = cat.images(ranks)
        x = torch.cat([images, torch.ones(3000, 1)], 1)
        fit = torch.linalg.lstsq(x[:2000], cat.shared[ranks][:2000]).solution
        assert abs(corr((x[2000:] @ fit)[:, 0], cat.shared[ranks][2000:, 0])) < 0.2
        ref_x = torch.cat([ref.images(ranks), torch.ones(3000, 1)], 1)
        ref_fit = torch.linalg.lstsq(ref_x[:2000], ref.shared[ranks][:2000]).solution
        assert corr((ref_x[2000:] @ ref_fit)[:, 0], ref.shared[ranks][2000:, 0]) > 0.6
    if "image_group_weight" in knobs:
        # The group becomes readable from the image by a linear map; by default it barely is.
        group = cat.category_group[cat.category[ranks]]
        target = torch.nn.functional.one_hot(group, 3).float()

        def probe_accuracy(images: torch.Tensor) -> float:
            x = torch.cat([images, torch.ones(3000, 1)], 1)
            fit = torch.linalg.lstsq(x[:2000], target[:2000]).solution
            return float(((x[2000:] @ fit).argmax(1) == group[2000:]).float().mean())

        assert probe_accuracy(cat.images(ranks)) > 0.8 > 0.6 > probe_accuracy(ref.images(ranks))


def test_quality_knobs_are_checked() -> None:
    cfg = tiny()
    for overrides, message in (
        (dict(missing_image_prob=1.5), "missing_image_prob"),
        (dict(missing_image_prob=0.6, uninformative_image_prob=0.6), "uninformative_image_prob"),
        (dict(shared_view_weight=-1.0), "shared_view_weight"),
        (dict(image_group_weight=float("nan")), "image_group_weight"),
    ):
        with pytest.raises(ValueError, match=message):
            SyntheticTaobaoConfig.from_model_config(cfg, **overrides)
    default = tiny_data().catalog.modality_quality(torch.arange(10))
    assert not any(bool(getattr(default, f).any()) for f in
                   ("image_missing", "image_uninformative", "title_generic", "statistics_empty"))
