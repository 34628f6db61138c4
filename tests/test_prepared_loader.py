"""The prepared-data loader (marn_rec.data.prepared): batch layout, dedup vs per-slot features,
sharding (every sample once), seeded batch order, resume from a state_dict, images and titles."""

import os
import pickle
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from marn_rec.data.prepare import PrepareConfig, prepare
from marn_rec.data.prepared import PreparedBatchDataset, PreparedDataset, batch_bounds, make_prepared_loader

IMAGE_DIM = 5


def _write_raw(root, name: str, with_image: bool, with_title: bool, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    n_items, n_events = 40, 600
    items = {
        "item_id": pa.array(np.arange(100, 100 + n_items, dtype=np.int64)),
        "shop_id": [f"s{k}" for k in rng.integers(0, 6, n_items)],
        "genres": pa.array([[f"g{g}" for g in rng.integers(0, 5, rng.integers(0, 3))] for _ in range(n_items)]),
        "price": pa.array(rng.random(n_items)),
    }
    if with_title:
        items["title"] = [" ".join(f"w{w}" for w in rng.integers(0, 30, rng.integers(0, 5))) for _ in range(n_items)]
    image = None
    if with_image:
        items["image_row"] = pa.array([int(k % 7) if k % 4 else None for k in range(n_items)], pa.int64())
        image = rng.standard_normal((7, IMAGE_DIM)).astype(np.float32)
    events = {
        "user_id": [f"u{u}" for u in rng.integers(0, 40, n_events)],
        "item_id": pa.array(100 + (rng.pareto(1.0, n_events) * 4).astype(np.int64) % n_items),
        "timestamp": pa.array(rng.integers(0, 10**6, n_events).astype(np.int64)),
        "behavior": [["click", "cart", "buy"][k] for k in rng.integers(0, 3, n_events)],
    }
    path = os.path.join(str(root), name)
    os.makedirs(path)
    pq.write_table(pa.table(items), os.path.join(path, "items.parquet"))
    pq.write_table(pa.table(events), os.path.join(path, "interactions.parquet"))
    if image is not None:
        np.save(os.path.join(path, "image_vectors.npy"), image)
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("prepared")
    out = str(root / "out")
    prepare(
        _write_raw(root, "raw", with_image=True, with_title=True),
        out,
        PrepareConfig(max_length=6, cold_item_fraction=0.1, row_group_size=50, progress=False),
    )
    return out


def _samples(path: str, split: str):
    return pq.read_table(os.path.join(path, f"{split}.parquet")).to_pylist()


def _per_item(kjt, key: str):
    """Values of ``key`` per item of a KJT (a list of lists)."""
    jt = kjt[key]
    return [v.tolist() for v in torch.split(jt.values(), jt.lengths().tolist())]


def test_batch_layout(prepared):
    data = PreparedDataset(prepared)
    m = data.manifest
    loader = make_prepared_loader(prepared, "train", batch_size=64, data=data)
    batch = next(iter(loader))
    stats = [f"stat{k}_b{b}" for k in range(len(m["statistics"])) for b in (10, 100)]
    assert batch.item_sparse.keys() == ["item_id", "shop_id", "genres"] + stats
    u = batch.num_unique_items
    assert batch.item_sparse.stride() == u and batch.item_title.stride() == u
    lengths = batch.item_sparse.length_per_key()
    assert all(lengths[k] == u for k in (0, 1, *range(3, 3 + len(stats))))  # one value each
    assert batch.item_sparse.values().dtype == torch.int64 and batch.item_sparse.lengths().dtype == torch.int64
    assert batch.item_image.shape == (u, IMAGE_DIM) and batch.item_image.dtype == torch.float32
    assert batch.item_title.keys() == ["title_words"]
    assert int(batch.item_title.lengths().max()) <= m["title"]["max_length"]
    assert batch.batch_size <= 64 and batch.labels.dtype == torch.float32
    assert batch.history_index.numel() == int(batch.history_lengths.sum())
    assert int(batch.history_lengths.max()) <= 6
    assert batch.history_property.keys() == ["behavior_type", "behavior_time"]
    assert int(batch.history_property["behavior_type"].values().max()) < m["num_behavior_types"]
    assert batch.meta["candidate_cold"].dtype == torch.bool
    # Every ID is inside its table: an EmbeddingBagCollection over the manifest's sizes runs.
    sizes = {f["name"]: f["num_embeddings"] for f in m["id_features"]}
    sizes.update({s: int(s.split("_b")[1]) for s in stats})
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name=f"t_{k}", embedding_dim=4, num_embeddings=n, feature_names=[k]) for k, n in sizes.items()]
    )
    pooled = ebc(batch.item_sparse)
    assert pooled.values().shape == (u, 4 * len(sizes))


def test_batches_match_the_file_and_dedup_matches_per_slot(prepared):
    data = PreparedDataset(prepared)
    rows = _samples(prepared, "test")
    items = pq.read_table(os.path.join(prepared, "items.parquet")).to_pylist()
    image = np.load(os.path.join(prepared, "image_vectors.npy"))
    dedup = list(make_prepared_loader(prepared, "test", batch_size=32, data=data))
    slots = list(make_prepared_loader(prepared, "test", batch_size=32, data=data, dedup=False))
    seen = 0
    for a, b in zip(dedup, slots):
        assert b.num_unique_items == a.batch_size + a.history_index.numel()
        assert a.num_unique_items < b.num_unique_items  # popular items repeat
        file_rows = rows[seen : seen + a.batch_size]
        seen += a.batch_size
        assert a.labels.tolist() == [r["label"] for r in file_rows]
        assert a.user_ids.tolist() == [r["user"] for r in file_rows]
        assert a.meta["candidate_cold"].tolist() == [r["candidate_cold"] for r in file_rows]
        assert a.history_lengths.tolist() == [len(r["history"]) for r in file_rows]
        assert a.history_property["behavior_type"].values().tolist() == sum((r["history_behavior"] for r in file_rows), [])
        assert a.history_property["behavior_time"].values().tolist() == sum((r["history_time_bucket"] for r in file_rows), [])
        # Slot s (candidates, then history) has the features of its item row in items.parquet.
        slot_rows = [r["candidate"] for r in file_rows] + sum((r["history"] for r in file_rows), [])
        for batch, index in ((a, torch.cat([a.candidate_index, a.history_index])), (b, torch.arange(len(slot_rows)))):
            for key in batch.item_sparse.keys():
                per_item = _per_item(batch.item_sparse, key)
                got = [per_item[i] for i in index.tolist()]
                want = [items[r][key] if isinstance(items[r][key], list) else [items[r][key]] for r in slot_rows]
                assert got == want, key
            titles = _per_item(batch.item_title, "title_words")
            assert [titles[i] for i in index.tolist()] == [items[r]["title_words"] for r in slot_rows]
            want_image = np.stack([image[items[r]["image_row"]] if items[r]["image_row"] >= 0 else np.zeros(IMAGE_DIM, np.float32) for r in slot_rows])
            assert np.array_equal(batch.item_image[index].numpy(), want_image)
    assert seen == len(rows)
    assert any(r["image_row"] < 0 for r in items[1:])  # items without image were exercised


@pytest.mark.parametrize("world_size", [1, 3])
def test_sharding_reads_every_sample_once(prepared, world_size):
    data = PreparedDataset(prepared)
    rows = _samples(prepared, "train")
    seen, steps = Counter(), set()
    for rank in range(world_size):
        loader = make_prepared_loader(prepared, "train", rank, world_size, batch_size=40, seed=3, data=data)
        ds = loader.dataset
        steps.add(len(loader))
        for g, batch in zip(ds.indices, loader):
            lo, hi = int(ds.bounds[g]), int(ds.bounds[g + 1])
            assert 0 < batch.batch_size == hi - lo <= 40
            assert batch.user_ids.tolist() == [r["user"] for r in rows[lo:hi]]
            assert batch.history_lengths.tolist() == [len(r["history"]) for r in rows[lo:hi]]
            seen.update(range(lo, hi))
    assert len(steps) == 1  # every rank takes the same number of steps
    assert seen == Counter(range(len(rows)))  # and every sample is read exactly once


def test_batch_bounds():
    for n, b, w in [(1000, 256, 1), (1000, 256, 3), (7, 2, 2), (5, 100, 5), (0, 4, 2)]:
        bounds = batch_bounds(n, b, w)
        sizes = np.diff(bounds)
        assert bounds[-1] == n and (len(bounds) - 1) % w == 0 and sizes.max(initial=0) <= b
        assert n == 0 or sizes.max() - sizes.min() <= 1
    with pytest.raises(ValueError):
        batch_bounds(2, 8, 3)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_gives_the_remaining_batches(prepared, num_workers):
    data = PreparedDataset(prepared)
    make = lambda: make_prepared_loader(prepared, "train", batch_size=30, num_workers=num_workers, seed=1, data=data)  # noqa: E731
    full = list(make())
    loader = make()
    it = iter(loader)
    k = 3
    for _ in range(k):
        next(it)
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - k
    for a, b in zip(rest, full[k:]):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.user_ids, b.user_ids)
        assert torch.equal(a.candidate_index, b.candidate_index) and torch.equal(a.history_index, b.history_index)
        assert torch.equal(a.item_sparse.values(), b.item_sparse.values())
        assert torch.equal(a.item_image, b.item_image)


def test_seed_permutes_batch_order(prepared):
    data = PreparedDataset(prepared)
    first = lambda seed: [b.user_ids.tolist() for b in make_prepared_loader(prepared, "train", batch_size=50, seed=seed, data=data)]  # noqa: E731
    plain, a, b, c = first(None), first(5), first(5), first(6)
    assert a == b and a != c and a != plain
    assert sorted(map(tuple, a)) == sorted(map(tuple, plain))


def test_no_image_no_title(tmp_path):
    out = str(tmp_path / "out")
    prepare(_write_raw(tmp_path, "raw", with_image=False, with_title=False), out, PrepareConfig(progress=False))
    data = PreparedDataset(out)
    assert data.manifest["image_dim"] is None and data.manifest["title"] is None
    batch = next(iter(make_prepared_loader(out, "test", batch_size=16, data=data)))
    assert batch.item_image is None and batch.item_title is None
    assert batch.num_unique_items == batch.item_sparse.stride()


def test_dataset_pickles_for_spawned_workers(prepared):
    loader = make_prepared_loader(prepared, "test", batch_size=20)
    dataset = loader.dataset
    first = dataset[0]  # opens the file and maps the images in this process
    copy = pickle.loads(pickle.dumps(dataset))
    again = copy[0]
    assert torch.equal(first.item_image, again.item_image) and torch.equal(first.labels, again.labels)


def test_an_older_preparation_warns_and_movielens_prepares_it_again(tmp_path):
    """A directory written before ``layout.PREPARE_VERSION`` loads with a warning naming what
    changed; ``prepared_movielens`` treats it as stale (and a current one as fresh)."""
    import json
    import warnings

    from marn_rec.data.prepare import layout
    from marn_rec.data.sources.movielens import _stale

    out = str(tmp_path / "out")
    prepare(_write_raw(tmp_path, "raw", with_image=False, with_title=False), out, PrepareConfig(progress=False))
    path = os.path.join(out, layout.MANIFEST)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PreparedDataset(out)  # current: no warning
    assert not _stale(path)
    with open(path) as f:
        manifest = json.load(f)
    del manifest["prepare_version"]  # as written before the key existed
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.warns(UserWarning, match=r"out: prepared by an older marn_rec \(prepare_version 1.*missing"):
        PreparedDataset(out)
    assert _stale(path)


def test_cold_item_dropout_shows_items_as_never_observed(prepared):
    """With cold_item_dropout p, about p of each batch's items have item_id row 0 and the buckets
    of the training-period counts at 0 (missing), in every slot of the item; shop, genres, the item
    table's price, title and image stay. The draw depends on (seed, batch, item) alone."""
    data = PreparedDataset(prepared)
    m = data.manifest
    assert m["statistics"] == ["interactions", "users", "price"]
    dropped_keys = ["item_id"] + [f"stat{k}_b{b}" for k in (0, 1) for b in (10, 100)]
    assert data.unobserved_features == dropped_keys
    plain = PreparedBatchDataset(data, "train", batch_size=64, seed=3)
    drop = PreparedBatchDataset(data, "train", batch_size=64, seed=3, cold_item_dropout=0.3)
    per_slot = PreparedBatchDataset(data, "train", batch_size=64, seed=3, cold_item_dropout=0.3, dedup=False)
    items = pq.read_table(os.path.join(prepared, "items.parquet")).to_pylist()
    dropped = total = 0
    for i in range(len(plain)):
        a, b, c = plain[i], drop[i], per_slot[i]
        assert torch.equal(a.candidate_index, b.candidate_index) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.item_image, b.item_image) and torch.equal(a.item_title.values(), b.item_title.values())
        for key in b.item_sparse.keys():
            if key not in dropped_keys:
                assert torch.equal(a.item_sparse[key].values(), b.item_sparse[key].values()), key
        is_dropped = b.item_sparse["item_id"].values() != a.item_sparse["item_id"].values()
        for key in dropped_keys:
            got, before = b.item_sparse[key].values(), a.item_sparse[key].values()
            assert torch.equal(got, torch.where(is_dropped, 0, before)), key
        # Dropped items were observed ones (a row of their own) shown as unobserved.
        assert bool((a.item_sparse["item_id"].values()[is_dropped] > 0).all())
        dropped += int(is_dropped.sum())
        total += is_dropped.numel()
        # Per slot: every slot of an item shows the same draw as the deduplicated batch.
        slots = torch.cat([b.candidate_index, b.history_index])
        for key in dropped_keys:
            assert torch.equal(c.item_sparse[key].values(), b.item_sparse[key].values()[slots]), key
        # Seeded: the same batch again gives the same draw; another seed another one.
        assert torch.equal(drop[i].item_sparse.values(), b.item_sparse.values())
    assert 0.2 < dropped / total < 0.4, dropped / total
    # Another seed, or another batch, draws other items (the same rows, the same batch index).
    rows = torch.arange(1, data.num_items)
    other = PreparedBatchDataset(data, "train", batch_size=64, seed=4, cold_item_dropout=0.3)
    ids = lambda ds, g: ds._unobserved_view(g)(rows).sparse["item_id"]  # noqa: E731
    assert torch.equal(ids(drop, 0), ids(drop, 0))
    assert not torch.equal(ids(drop, 0), ids(other, 0)) and not torch.equal(ids(drop, 0), ids(drop, 1))
    assert items[0]["item_id"] == 0  # row 0: what the dropped items now read
    with pytest.raises(ValueError, match="cold_item_dropout must be in"):
        PreparedBatchDataset(data, "train", cold_item_dropout=1.0)
