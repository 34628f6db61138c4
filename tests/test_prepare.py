"""Preparation (marn_rec.data.prepare) against brute-force recomputations on small raw directories:
the DIN protocol's samples, vocabularies, training-only statistics, cold flags, negatives, no
leakage of test-period events, seeded reproducibility, and every kind of bad data."""

import json
import math
import os
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from marn_rec.data.prepare import PrepareConfig, prepare, tokenize
from marn_rec.data.prepare.partition import hash_ids
from marn_rec.data.schema import DataError
from marn_rec.features import bucketize_statistic, quantile_boundaries

CFG = PrepareConfig(progress=False)


def write_raw(root, items: Dict, events: Dict, image: Optional[np.ndarray] = None, name: str = "raw") -> str:
    path = os.path.join(str(root), name)
    os.makedirs(path, exist_ok=True)
    pq.write_table(pa.table(items), os.path.join(path, "items.parquet"))
    pq.write_table(pa.table(events), os.path.join(path, "interactions.parquet"))
    if image is not None:
        np.save(os.path.join(path, "image_vectors.npy"), image)
    return path


def read(out: str, name: str) -> List[Dict]:
    return pq.read_table(os.path.join(out, name)).to_pylist()


def vocab(out: str, name: str) -> Dict:
    """raw value -> row of a vocabulary file."""
    return {r["value"]: r["row"] for r in read(out, os.path.join("vocab", name))}


def manifest(out: str) -> Dict:
    with open(os.path.join(out, "manifest.json")) as f:
        return json.load(f)


def random_log(seed: int, n_users: int = 30, n_items: int = 25, n_events: int = 400) -> tuple:
    """Items (with a price and a category) and a log of distinct (user, timestamp) events."""
    rng = np.random.default_rng(seed)
    items = {
        "item_id": [f"i{k}" for k in range(n_items)],
        "category_id": pa.array(rng.integers(0, 4, n_items)),
        "price": pa.array(rng.random(n_items) * 100, mask=rng.random(n_items) < 0.2),
    }
    users = rng.integers(0, n_users, n_events)
    ts = rng.permutation(n_events * 10)[:n_events].astype(np.int64) * 37  # distinct: no ties
    events = {
        "user_id": pa.array(users.astype(np.int64)),
        "item_id": [f"i{k}" for k in (rng.pareto(1.0, n_events) * 3).astype(int) % n_items],
        "timestamp": pa.array(ts),
        "rating": pa.array(rng.integers(1, 6, n_events).astype(np.float64)),
    }
    return items, events


def time_bucket(gap: int, buckets: int = 32) -> int:
    return min(buckets - 1, int(math.floor(math.log2(max(gap, 1)))))


def brute_force_last(events: Dict, max_length: int, user_min: int = 2):
    """The DIN 'last' protocol by hand: {user: sorted [(ts, row, item, rating)]}, training and test
    positives as (user, candidate, history items, time buckets, history behaviour labels), and the
    training events per item."""
    seq: Dict = {}
    columns = (events["user_id"].to_pylist(), events["item_id"], events["timestamp"].to_pylist(), events["rating"].to_pylist())
    for row, (u, i, t, r) in enumerate(zip(*columns)):
        seq.setdefault(u, []).append((t, row, i, r))
    train, test, train_events = [], [], Counter()
    for u, evs in seq.items():
        evs.sort()
        if len(evs) < user_min:
            continue
        for j in range(1, len(evs)):
            hist = evs[max(0, j - max_length) : j]
            sample = (
                u,
                evs[j][2],
                tuple(e[2] for e in hist),
                tuple(time_bucket(evs[j][0] - e[0]) for e in hist),
                tuple(f"rating={e[3]:g}" for e in hist),
            )
            (test if j == len(evs) - 1 else train).append(sample)
        for e in evs[:-1]:
            train_events[e[2]] += 1
    return seq, train, test, train_events


def decoded(out: str, split: str):
    """Samples of a prepared split with raw user / item IDs."""
    users = {v: k for k, v in vocab(out, "user.parquet").items()}
    items = {v: k for k, v in vocab(out, "item_row.parquet").items()}
    rows = read(out, f"{split}.parquet")
    return [
        dict(r, user_raw=users[r["user"]], cand_raw=items[r["candidate"]], hist_raw=tuple(items[h] for h in r["history"]))
        for r in rows
    ]


def test_din_last_protocol_matches_brute_force(tmp_path):
    items, events = random_log(0)
    raw = write_raw(tmp_path, items, events)
    out = str(tmp_path / "out")
    summary = prepare(raw, out, PrepareConfig(max_length=4, progress=False))
    _, train, test, train_events = brute_force_last(events, max_length=4)
    labels = manifest(out)["behavior_types"]
    assert labels == ["<missing>", "rating=1", "rating=2", "rating=3", "rating=4", "rating=5"]
    for split, expected in (("train", train), ("test", test)):
        rows = decoded(out, split)
        got = Counter(
            (r["user_raw"], r["cand_raw"], r["hist_raw"], tuple(r["history_time_bucket"]),
             tuple(labels[t] for t in r["history_behavior"]))
            for r in rows
            if r["label"] == 1.0
        )
        assert got == Counter(expected), split
        # One negative per positive, with the same user and history.
        assert len(rows) == 2 * len(expected)
        by_key = Counter((r["user"], tuple(r["history"]), r["label"]) for r in rows)
        for (u, h, label), n in by_key.items():
            assert by_key[(u, h, 1.0 - label)] == n
        # Cold flags: the candidate has no training event.
        for r in rows:
            assert r["candidate_cold"] == (train_events[r["cand_raw"]] == 0)
    # Test samples stay in order: each positive, then its negative, never the positive itself.
    test_rows = read(out, "test.parquet")
    for pos, neg in zip(test_rows[::2], test_rows[1::2]):
        assert (pos["label"], neg["label"]) == (1.0, 0.0) and pos["history"] == neg["history"]
        assert pos["candidate"] != neg["candidate"]
    assert summary["train_samples"] == len(train) * 2 and summary["test_samples"] == len(test) * 2
    assert manifest(out)["splits"] == {"train": summary["train_samples"], "test": summary["test_samples"]}


def test_history_types_follow_ratings(tmp_path):
    items = {"item_id": ["a", "b", "c"]}
    events = {
        "user_id": ["u", "u", "u"], "item_id": ["a", "b", "c"],
        "timestamp": pa.array([1, 2, 10], pa.int64()), "rating": [5.0, None, 3.0],
    }
    out = str(tmp_path / "out")
    prepare(write_raw(tmp_path, items, events), out, CFG)
    labels = manifest(out)["behavior_types"]
    (pos,) = [r for r in read(out, "test.parquet") if r["label"] == 1.0]
    # History a (rating 5), b (rating missing -> row 0); types of the training period only.
    assert [labels[t] for t in pos["history_behavior"]] == ["rating=5", "<missing>"]
    assert pos["history_time_bucket"] == [time_bucket(9), time_bucket(8)]


def test_vocabularies_and_statistics_from_training_only(tmp_path):
    items, events = random_log(1)
    raw = write_raw(tmp_path, items, events)
    out = str(tmp_path / "out")
    prepare(raw, out, PrepareConfig(min_count=2, progress=False))
    seq, _, _, train_events = brute_force_last(events, max_length=50)
    # item_id: items with >= 2 training events, by count desc then id; the rest -> row 0.
    kept = sorted((i for i in items["item_id"] if train_events[i] >= 2), key=lambda i: (-train_events[i], i))
    assert vocab(out, "item/item_id.parquet") == {i: r + 1 for r, i in enumerate(kept)}
    item_rows = vocab(out, "item_row.parquet")
    assert item_rows == {i: r + 1 for r, i in enumerate(items["item_id"])}
    table = read(out, "items.parquet")
    assert table[0]["item_id"] == 0 and table[0]["image_row"] == -1 and table[0]["title_words"] == []
    for i, r in item_rows.items():
        assert table[r]["item_id"] == (kept.index(i) + 1 if i in kept else 0)
    # category: counts are training events of its items.
    cat_count = Counter()
    for k, i in enumerate(items["item_id"]):
        cat_count[items["category_id"][k].as_py()] += train_events[i]
    cats = sorted((c for c in cat_count if cat_count[c] >= 2), key=lambda c: (-cat_count[c], c))
    assert vocab(out, "item/category_id.parquet") == {c: r + 1 for r, c in enumerate(cats)}
    # Statistics: interactions, distinct users, mean rating of the training period, then price.
    users_of, ratings_of = {}, {}
    for u, evs in seq.items():
        if len(evs) >= 2:
            for t, _, i, rating in evs[:-1]:
                users_of.setdefault(i, set()).add(u)
                ratings_of.setdefault(i, []).append(rating)
    m = manifest(out)
    assert m["statistics"] == ["interactions", "users", "mean_rating", "price"]
    n = len(items["item_id"])
    prices = items["price"].to_pylist()
    # An item without a training event was never observed: its counts are missing, not 0.
    unseen = lambda i, v: float(v) if train_events[i] > 0 else math.nan  # noqa: E731
    values = {
        "interactions": [unseen(i, train_events[i]) for i in items["item_id"]],
        "users": [unseen(i, len(users_of.get(i, ()))) for i in items["item_id"]],
        "mean_rating": [float(np.mean(ratings_of[i])) if i in ratings_of else math.nan for i in items["item_id"]],
        "price": [math.nan if p is None else p for p in prices],
    }
    in_training = [train_events[i] > 0 for i in items["item_id"]]
    for k, name in enumerate(m["statistics"]):
        v = torch.tensor(values[name], dtype=torch.float64)
        fit = v[torch.tensor(in_training) & ~v.isnan()]
        for b in (10, 100):
            bounds = quantile_boundaries(fit, b - 1)
            assert np.allclose(m["statistic_boundaries"][name][str(b)], bounds.tolist()), (name, b)
            expected = torch.where(v.isnan(), 0, 1 + bucketize_statistic(v.nan_to_num(), bounds))
            assert [table[r + 1][f"stat{k}_b{b}"] for r in range(n)] == expected.tolist(), (name, b)
            assert table[0][f"stat{k}_b{b}"] == 0  # the OOV item: missing


def test_no_test_period_event_leaks(tmp_path):
    """Changing only test-period events leaves train.parquet, the item table, its statistics and
    the item vocabularies byte-identical (both splits, with held-out cold items)."""
    for split in ("last", "time"):
        items, events = random_log(2)
        cfg = PrepareConfig(split=split, cold_item_fraction=0.2, progress=False)
        out_a = str(tmp_path / f"a-{split}")
        summary = prepare(write_raw(tmp_path, items, events, name=f"ra-{split}"), out_a, cfg)
        ts = np.array(events["timestamp"].to_pylist())
        if split == "time":
            test = ts >= summary["time_cutoff"]
        else:
            users = np.array(events["user_id"].to_pylist())
            test = np.zeros(len(ts), dtype=bool)
            for u in np.unique(users):
                idx = np.flatnonzero(users == u)
                test[idx[np.argmax(ts[idx])]] = True
        assert test.any() and not test.all()
        changed = dict(events)
        changed["item_id"] = [("i0" if i != "i0" else "i1") if t else i for i, t in zip(events["item_id"], test)]
        changed["rating"] = pa.array(np.where(test, 1.0, events["rating"].to_numpy()))
        out_b = str(tmp_path / f"b-{split}")
        prepare(write_raw(tmp_path, items, changed, name=f"rb-{split}"), out_b, cfg)
        same = ["train.parquet", "items.parquet", "item_statistics.parquet", "vocab/item/item_id.parquet",
                "vocab/item/category_id.parquet", "vocab/behavior_type.parquet", "vocab/user.parquet"]
        for name in same:
            with open(os.path.join(out_a, name), "rb") as fa, open(os.path.join(out_b, name), "rb") as fb:
                assert fa.read() == fb.read(), (split, name)
        assert read(out_a, "test.parquet") != read(out_b, "test.parquet")
        assert manifest(out_a)["statistic_boundaries"] == manifest(out_b)["statistic_boundaries"]


def test_time_split_cutoff_and_histories(tmp_path):
    items, events = random_log(3)
    out = str(tmp_path / "out")
    summary = prepare(write_raw(tmp_path, items, events), out, PrepareConfig(split="time", test_fraction=0.25, progress=False))
    ts = sorted(events["timestamp"].to_pylist())
    assert summary["time_cutoff"] == ts[int(math.floor(0.75 * len(ts)))]
    seq, *_ = brute_force_last(events, max_length=50)
    cutoff = summary["time_cutoff"]
    expected = {"train": Counter(), "test": Counter()}
    for u, evs in seq.items():
        if len(evs) < 2:
            continue
        for j in range(1, len(evs)):
            hist = tuple(e[2] for e in evs[max(0, j - 50) : j])
            expected["test" if evs[j][0] >= cutoff else "train"][(u, evs[j][2], hist)] += 1
    for split in ("train", "test"):
        got = Counter((r["user_raw"], r["cand_raw"], r["hist_raw"]) for r in decoded(out, split) if r["label"] == 1.0)
        assert got == expected[split], split


def test_negatives_never_positive_and_never_held_out(tmp_path):
    items = {"item_id": ["a", "b", "c"]}
    rng = np.random.default_rng(4)
    n = 300
    events = {
        "user_id": pa.array(rng.integers(0, 10, n).astype(np.int64)),
        "item_id": [["a", "b", "c"][k] for k in rng.integers(0, 3, n)],
        "timestamp": pa.array(np.arange(n, dtype=np.int64)),
    }
    out = str(tmp_path / "out")
    summary = prepare(write_raw(tmp_path, items, events), out, PrepareConfig(negatives=3, cold_item_fraction=0.34, progress=False))
    assert summary["held_out_items"] == 1 and summary["dropped"]["held_out_training_events"] > 0
    m = manifest(out)
    assert m["behavior_types"] == ["<missing>", "interaction"]
    train = read(out, "train.parquet")
    # The held-out item never appears in a training history.
    (held,) = [r for r in range(1, 4) if all(r not in s["history"] for s in train)]
    groups = {}
    for s in train:
        groups.setdefault((s["user"], tuple(s["history"])), []).append(s)
    for rows in groups.values():
        pos = [s["candidate"] for s in rows if s["label"] == 1.0]
        for s in rows:
            if s["label"] == 0.0:
                assert s["candidate"] not in pos and s["candidate"] != held
    test = read(out, "test.parquet")
    for k in range(0, len(test), 4):
        assert test[k]["label"] == 1.0 and test[k]["candidate"] not in [t["candidate"] for t in test[k + 1 : k + 4]]


def test_training_negatives_are_items_of_the_training_period(tmp_path):
    """Items whose only events are test-period ones (a user's last behaviour), and catalogue items
    without any event, are never training negatives; they stay possible test negatives."""
    rng = np.random.default_rng(7)
    names = [f"i{k}" for k in range(12)]
    users, item_ids, ts = [], [], []
    for u in range(30):
        # Training behaviours among i0-i5; each user's last behaviour among i6-i8 (test only).
        for j in range(4):
            users.append(u), item_ids.append(names[rng.integers(0, 6)]), ts.append(100 * u + j)
        users.append(u), item_ids.append(names[6 + u % 3]), ts.append(100 * u + 50)
    events = {"user_id": pa.array(np.array(users, np.int64)), "item_id": item_ids,
              "timestamp": pa.array(np.array(ts, np.int64))}
    out = str(tmp_path / "out")
    summary = prepare(write_raw(tmp_path, {"item_id": names}, events), out,
                      PrepareConfig(negatives=5, progress=False))
    assert summary["training_negative_pool"] == 6
    train = decoded(out, "train")
    negatives = [s["cand_raw"] for s in train if s["label"] == 0.0]
    assert len(negatives) == 5 * sum(s["label"] == 1.0 for s in train) > 0
    assert set(negatives) <= set(names[:6]), "a training negative outside the training period's items"
    assert not any(s["candidate_cold"] for s in train)
    test_negatives = {s["cand_raw"] for s in decoded(out, "test") if s["label"] == 0.0}
    assert test_negatives - set(names[:6]), "test negatives come from the whole catalogue"
    # With min_count, items below it have no row of their own either: they leave the pool too.
    counts = Counter(item for item in item_ids if item in names[:6])  # every training-period event
    out2 = str(tmp_path / "out2")
    summary = prepare(write_raw(tmp_path, {"item_id": names}, events, name="raw2"), out2,
                      PrepareConfig(negatives=5, min_count=min(counts.values()) + 1, progress=False))
    kept = {n for n, c in counts.items() if c >= min(counts.values()) + 1}
    assert summary["training_negative_pool"] == len(kept) < 6
    assert {s["cand_raw"] for s in decoded(out2, "train") if s["label"] == 0.0} <= kept


def test_statistics_of_items_never_observed_are_missing(tmp_path):
    """An item without a training-period event (test-only, held out, or without any event) has
    unknown counts: bucket 0 ("missing") of every computed statistic, never the bucket of the least
    popular training items. An item shown in training but never clicked keeps its observed 0."""
    names = [f"i{k}" for k in range(8)]
    users, item_ids, ts = [], [], []
    for u in range(12):  # training behaviours among i0-i3, the last one (test) among i4-i5
        for j in range(3):
            users.append(u), item_ids.append(names[(u + j) % 4]), ts.append(100 * u + j)
        users.append(u), item_ids.append(names[4 + u % 2]), ts.append(100 * u + 50)
    events = {"user_id": pa.array(np.array(users, np.int64)), "item_id": item_ids,
              "timestamp": pa.array(np.array(ts, np.int64))}
    out = str(tmp_path / "out")
    prepare(write_raw(tmp_path, {"item_id": names}, events), out, PrepareConfig(progress=False))
    m, table = manifest(out), read(out, "items.parquet")
    row = vocab(out, "item_row.parquet")
    assert m["statistics"] == ["interactions", "users"]
    for k in range(2):
        for b in (10, 100):
            got = {n: table[row[n]][f"stat{k}_b{b}"] for n in names}
            assert all(got[n] >= 1 for n in names[:4]), got  # observed: a bucket of their own
            assert all(got[n] == 0 for n in names[4:]), got  # test-only (i4, i5), no event (i6, i7)

    # Impressions: "b" is shown in training and never clicked; its 0 interactions are observed.
    items = {"item_id": ["a", "b", "c"]}
    events = {"user_id": ["u", "u", "u", "v", "v", "v"], "item_id": ["a", "b", "a", "a", "b", "c"],
              "timestamp": pa.array([1, 2, 3, 1, 2, 3], pa.int64()), "label": [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]}
    out = str(tmp_path / "out2")
    prepare(write_raw(tmp_path, items, events, name="raw2"), out, PrepareConfig(progress=False))
    m, table, row = manifest(out), read(out, "items.parquet"), vocab(out, "item_row.parquet")
    k = m["statistics"].index("interactions")
    assert table[row["b"]][f"stat{k}_b10"] >= 1 and table[row["c"]][f"stat{k}_b10"] == 0


def test_seeded_reproducibility(tmp_path):
    items, events = random_log(5)
    raw = write_raw(tmp_path, items, events)
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = str(tmp_path / name)
        prepare(raw, out, PrepareConfig(seed=seed, cold_item_fraction=0.1, progress=False))
        outs.append([open(os.path.join(out, f), "rb").read() for f in ("train.parquet", "test.parquet")])
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[2][0] and outs[0][1] != outs[2][1]


def test_train_file_is_shuffled_in_row_groups(tmp_path):
    items, events = random_log(6, n_events=800)
    out = str(tmp_path / "out")
    prepare(write_raw(tmp_path, items, events), out, PrepareConfig(bucket_samples=100, row_group_size=64, progress=False))
    meta = pq.ParquetFile(os.path.join(out, "train.parquet")).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert all(s == 64 for s in sizes[:-1]) and 0 < sizes[-1] <= 64
    users = [r["user"] for r in read(out, "train.parquet")]
    assert users != sorted(users)  # not grouped by user


def test_bad_data_dropped_and_counted(tmp_path):
    items = {"item_id": pa.array([1, 2, 3], pa.int64())}
    events = {
        "user_id": ["x", "x", "x", "x", "y", "z", "z"],
        "item_id": pa.array([1, 2, 2, 3, 1, 3, 9], pa.int64()),
        # x: duplicate (2 @ 20) and out of order (3 @ 5); y: one behaviour; 9: unknown item.
        "timestamp": pa.array([10, 20, 20, 5, 1, 1, 2], pa.int64()),
    }
    raw = write_raw(tmp_path, items, events)
    with pytest.raises(DataError, match=r"interactions.parquet.*item_id.*row 6"):
        prepare(raw, str(tmp_path / "o1"), CFG)
    out = str(tmp_path / "o2")
    s = prepare(raw, out, PrepareConfig(unknown_items="drop", progress=False))
    assert s["dropped"] == {
        "unknown_item_events": 1, "duplicate_events": 1, "users_too_few_behaviors": 2,
        "events_of_users_too_few_behaviors": 2, "held_out_training_events": 0, "candidates_short_history": 1,
    }
    assert s["unsorted_timestamps_sorted"] == 1
    assert manifest(out)["summary"] == s
    # x sorted: 3 @ 5, 1 @ 10, 2 @ 20 -> train predicts 1 from [3], test 2 from [3, 1].
    (pos,) = [r for r in decoded(out, "test") if r["label"] == 1.0]
    assert (pos["cand_raw"], pos["hist_raw"]) == (2, (3, 1))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda i, e: e.update(user_id=pa.array(["x", None, "y"])), r"interactions.parquet.*user_id.*row 1"),
        (lambda i, e: i.update(price=pa.array([1.0, float("nan"), 2.0])), r"items.parquet.*price.*row 1"),
        (lambda i, e: e.update(rating=pa.array([0.5, 1.5, 2.5])), None),
        (lambda i, e: e.update(label=pa.array([0.0, 2.0, 1.0])), r"label.*row 1"),
        (lambda i, e: i.update(stat0_b10=pa.array([1, 2, 3])), r"stat0_b10"),
    ],
)
def test_bad_data_raises(tmp_path, change, match, monkeypatch):
    items = {"item_id": ["a", "b", "c"]}
    events = {"user_id": ["x", "x", "y"], "item_id": ["a", "b", "c"], "timestamp": pa.array([1, 2, 3], pa.int64())}
    change(items, events)
    if match is None:  # too many distinct ratings to be behaviour types
        monkeypatch.setattr("marn_rec.data.prepare.partition.MAX_RATING_TYPES", 2)
        match = r"rating.*distinct"
    with pytest.raises(DataError, match=match):
        prepare(write_raw(tmp_path, items, events), str(tmp_path / "out"), CFG)


def test_impressions_use_logged_labels(tmp_path):
    items = {"item_id": ["a", "b", "c", "d"]}
    events = {
        "user_id": ["u"] * 6,
        "item_id": ["a", "b", "c", "d", "a", "c"],
        "timestamp": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
        "label": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
    }
    out = str(tmp_path / "out")
    s = prepare(write_raw(tmp_path, items, events), out, CFG)
    got = {split: [(r["cand_raw"], r["label"], r["hist_raw"]) for r in decoded(out, split)] for split in ("train", "test")}
    # Histories hold earlier positives only; the test period starts at the last positive (a @ 5).
    assert sorted(got["train"]) == sorted([("b", 0.0, ("a",)), ("c", 1.0, ("a",)), ("d", 0.0, ("a", "c"))])
    assert got["test"] == [("a", 1.0, ("a", "c")), ("c", 0.0, ("a", "c", "a"))]
    assert manifest(out)["labelled"] and s["dropped"]["candidates_short_history"] == 1


def test_item_side_titles_lists_images_and_word_vectors(tmp_path):
    items = {
        "item_id": ["a", "b", "c", "d"],
        "title": ["Red Shoe!", "big_red-HAT 2000", None, "shoe shoe shoe shoe"],
        "genres": pa.array([["x", "y"], [], None, ["y"]], pa.list_(pa.string())),
        "image_row": pa.array([1, None, 0, 1], pa.int64()),
    }
    events = {"user_id": ["u"] * 4, "item_id": ["a", "b", "c", "d"], "timestamp": pa.array([1, 2, 3, 4], pa.int64())}
    glove = tmp_path / "glove.txt"
    glove.write_text("2 3\nred 1 2 3\nshoe 4 5 6\nzzz 7 8 9\n")
    image = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = str(tmp_path / "out")
    s = prepare(write_raw(tmp_path, items, events, image=image), out,
                PrepareConfig(title_length=3, word_vectors=str(glove), progress=False))
    assert tokenize("big_red-HAT 2000") == ["big", "red", "hat", "2000"]
    words = vocab(out, "title_words.parquet")
    # Per item truncated to 3 words: red shoe / big red hat / - / shoe shoe shoe.
    assert list(words) == ["red", "shoe", "big", "hat"]
    table = read(out, "items.parquet")
    assert [r["title_words"] for r in table] == [[], [1, 2], [3, 1, 4], [], [2, 2, 2]]
    # genres: null list -> [0] (out of vocabulary), empty list -> [] (no value).
    g = vocab(out, "item/genres.parquet")
    assert [r["genres"] for r in table] == [[0], [g["x"], g["y"]], [], [0], [g["y"]]]
    assert [r["image_row"] for r in table] == [-1, 1, -1, 0, 1]
    vectors = np.load(os.path.join(out, "title_vectors.npy"))
    assert vectors.shape == (5, 3) and s["word_vectors_found"] == 2
    assert (vectors[0] == 0).all() and (vectors[1] == [1, 2, 3]).all() and (vectors[2] == [4, 5, 6]).all()
    assert np.array_equal(np.load(os.path.join(out, "image_vectors.npy")), image)
    m = manifest(out)
    assert m["image_dim"] == 4 and m["title"]["vocab_size"] == 5
    assert [f["name"] for f in m["id_features"]] == ["item_id", "genres"] and m["id_features"][1]["multi_valued"]


def test_behavior_column_gives_types(tmp_path):
    items = {"item_id": ["a", "b", "c"]}
    events = {
        "user_id": ["u"] * 4, "item_id": ["a", "b", "c", "a"],
        "timestamp": pa.array([1, 2, 3, 4], pa.int64()), "behavior": ["cart", "click", None, "buy"],
        "rating": [1.0, 2.0, 3.0, 4.0],
    }
    out = str(tmp_path / "out")
    prepare(write_raw(tmp_path, items, events), out, CFG)
    m = manifest(out)
    # "buy" appears only in the test period: not a type.
    assert m["behavior_types"] == ["<missing>", "cart", "click"] and m["behavior_source"] == "behavior"
    (pos,) = [r for r in read(out, "test.parquet") if r["label"] == 1.0]
    assert pos["history_behavior"] == [1, 2, 0]


def test_user_hash_is_stable_and_spread():
    strings = pa.array([f"user{k}" for k in range(1000)] + [""])
    h = hash_ids(strings)
    assert np.array_equal(h, hash_ids(pa.array(strings.to_pylist(), pa.large_string())))
    assert np.array_equal(hash_ids(strings.slice(500)), h[500:])
    assert len(set((h % np.uint64(4)).tolist())) == 4
    ints = hash_ids(pa.array(np.arange(1000, dtype=np.int64)))
    assert np.bincount((ints % np.uint64(4)).astype(np.int64)).min() > 200


def test_many_shards_give_the_same_samples(tmp_path):
    items, events = random_log(7)
    raw = write_raw(tmp_path, items, events)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare(raw, a, CFG)
    prepare(raw, b, PrepareConfig(shard_events=37, chunk_samples=5, read_rows=50, progress=False))
    key = lambda r: (r["user_raw"], r["cand_raw"], r["hist_raw"], tuple(r["history_time_bucket"]))  # noqa: E731
    for split in ("train", "test"):
        pa_ = Counter(key(r) for r in decoded(a, split) if r["label"] == 1.0)
        pb = Counter(key(r) for r in decoded(b, split) if r["label"] == 1.0)
        assert pa_ == pb
    assert read(a, "items.parquet") == read(b, "items.parquet")
