"""Extraction from a prepared real-data item table (marn_rec.data.prepared) and scoring over it:
item row r is item ID r, row 0 the out-of-vocabulary item."""

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from marn_rec import MARN, tiny
from marn_rec.data.prepare import PrepareConfig, prepare
from marn_rec.data.prepared import PreparedDataset
from marn_rec.serving import RepresentationStore, head_fingerprint, head_from_marn, prepared_source, scorer_from_marn
from marn_rec.serving.extract import extract
from marn_rec.serving.sources import source_from_checkpoint_meta
from marn_rec.serving.testing import full_model_logits
from marn_rec.training.sources import model_config_for_manifest


def _raw(root: Path) -> str:
    """40 items with a shop, genres (multi-valued), a price, a title and images for most."""
    rng = np.random.default_rng(0)
    n, events = 40, 600
    items = {
        "item_id": pa.array(np.arange(100, 100 + n, dtype=np.int64)),
        "shop_id": [f"s{k}" for k in rng.integers(0, 6, n)],
        "genres": pa.array([[f"g{g}" for g in rng.integers(0, 5, rng.integers(0, 3))] for _ in range(n)]),
        "price": pa.array(rng.random(n)),
        "title": [" ".join(f"w{w}" for w in rng.integers(0, 30, rng.integers(0, 5))) for _ in range(n)],
        "image_row": pa.array([int(k % 7) if k % 4 else None for k in range(n)], pa.int64()),
    }
    log = {
        "user_id": [f"u{u}" for u in rng.integers(0, 40, events)],
        "item_id": pa.array(100 + (rng.pareto(1.0, events) * 4).astype(np.int64) % n),
        "timestamp": pa.array(rng.integers(0, 10**6, events).astype(np.int64)),
        "behavior": [["click", "cart", "buy"][k] for k in rng.integers(0, 3, events)],
    }
    path = root / "raw"
    os.makedirs(path)
    pq.write_table(pa.table(items), path / "items.parquet")
    pq.write_table(pa.table(log), path / "interactions.parquet")
    np.save(path / "image_vectors.npy", rng.standard_normal((7, 5)).astype(np.float32))
    return str(path)


def test_prepared_item_table_extracts_and_scores(tmp_path: Path) -> None:
    out = str(tmp_path / "prepared")
    prepare(_raw(tmp_path), out, PrepareConfig(max_length=6, row_group_size=50, progress=False))
    data = PreparedDataset(out)
    config = model_config_for_manifest(data.manifest, tiny())
    torch.manual_seed(0)
    model = MARN(config).eval()
    source = prepared_source(data)
    assert len(source) == data.num_items and source.description["kind"] == "prepared"
    assert source_from_checkpoint_meta({"train": {"data_dir": out}}).description["path"] == out
    report = extract(model.tower, source, str(tmp_path / "store"), config, None,
                     head_fingerprint(head_from_marn(model).state_dict()), batch_size=16, progress=False)
    assert report.stored == data.num_items and not report.bad_items
    store = RepresentationStore(str(tmp_path / "store"))
    assert store.contiguous  # item rows 0..N-1: the index is the identity
    scorer = scorer_from_marn(model, store)
    g = torch.Generator().manual_seed(1)
    n, c = data.num_items, 9
    t = config.behavior
    request = dict(
        history_items=torch.randint(0, n, (8,), generator=g),
        behavior_types=torch.randint(0, t.num_behavior_types, (8,), generator=g),
        time_buckets=torch.randint(0, t.num_time_buckets, (8,), generator=g),
        candidate_items=torch.randint(0, n, (c,), generator=g),
        history_lengths=torch.tensor([6, 2]), candidate_counts=torch.tensor([4, 5]),
    )
    expected = full_model_logits(model, data.features, **request)
    assert (scorer(**request) - expected).abs().max() <= 1e-5
    with pytest.raises(ValueError, match=f"candidates \\({n}\\)"):
        scorer([0], [0], [0], [n])
