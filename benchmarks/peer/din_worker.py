"""DIN from deepctr-torch on a prepared directory: runs in benchmarks/peer/.venv (see setup.sh), not
in marn_rec's environment, and imports nothing of marn_rec.

    benchmarks/peer/.venv/bin/python benchmarks/peer/din_worker.py --data data/ml-100k/prepared \\
        --seed 1 --epochs 3 --out runs/peer_din/din_seed1.npz

Reads the prepared directory's files as marn_rec's loader does (docs/data_format.md, the prepared
layout): ``items.parquet`` (row r = item row r; the ID features' table rows, out-of-vocabulary = 0,
so a held-out cold item has item_id 0 and keeps its other features) and ``train.parquet`` /
``test.parquet`` (candidate item row, history item rows oldest first, label, user, cold flag).

Features, each an embedding of deepctr-torch's (``SparseFeat`` / ``VarLenSparseFeat``), widths those
of marn_rec's ``small`` preset (item 32, the others 16):

- the candidate's ``item_id``, ``release_year`` and first genre (``genre``), and all its genres as a
  mean-pooled ``VarLenSparseFeat`` (``genres``);
- the history as ``hist_item_id``, ``hist_release_year``, ``hist_genre`` (``VarLenSparseFeat``,
  maxlen = the manifest's max_length, ``length_name="seq_length"``), attended by DIN's local
  activation unit with the candidate's ``item_id``, ``release_year``, ``genre`` as the query;
- with ``--statistics``, also the statistic buckets of the candidate and of the history items
  (``stat{k}_b{b}``, the same buckets marn_rec's statistic modality embeds).

Generic over the manifest: any single-valued ID feature is used as above, any multi-valued one by
its first value (history) and pooled (candidate).

Trains with deepctr-torch's documented API (``DIN(dnn_feature_columns, history_feature_list, ...)``,
``model.compile(optimizer, "binary_crossentropy")``, ``model.fit``) one epoch per call, predicts the
test split after each epoch, and writes ``--out`` (npz): ``scores`` [epochs, N] (the click
probability after each epoch), ``label``, ``user``, ``candidate_cold`` and ``candidate`` of the N
test samples in file order, ``steps_per_epoch`` and ``seconds`` (training time per epoch). The
metrics are computed by the caller with marn_rec's own functions (marn_rec/benchmarks/peer.py).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq


def _no_version_check() -> None:
    """deepctr_torch's ``__init__`` starts a thread that asks PyPI for its latest version on
    every import; a benchmark makes no such call. Its check catches the error and prints a line."""
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("version check disabled by din_worker.py")

    requests.get = offline


def _jagged(column):
    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    return lengths, values


def _padded(lengths, values, width, dtype=np.int32):
    """[n, width] rows of a jagged list, left-aligned, zero-padded (longer rows keep their first
    ``width`` values; the prepared histories are at most max_length already)."""
    n = len(lengths)
    out = np.zeros((n, width), dtype=dtype)
    offsets = np.r_[0, np.cumsum(lengths)]
    clipped = np.minimum(lengths, width)
    rows = np.repeat(np.arange(n), clipped)
    cols = np.arange(int(clipped.sum())) - np.repeat(np.cumsum(clipped) - clipped, clipped)
    out[rows, cols] = values[np.repeat(offsets[:-1], clipped) + cols]
    return out


class ItemTable:
    """Per item row: the single-valued features, the first value and the padded values of the
    multi-valued ones."""

    def __init__(self, data_dir, manifest, statistics):
        table = pq.read_table(os.path.join(data_dir, "items.parquet"))
        self.single = {}  # name -> [num_items] int64
        self.multi = {}  # name -> [num_items, width] int32 (padded values)
        self.sizes = {}
        for f in manifest["id_features"]:
            name, size = f["name"], int(f["num_embeddings"])
            self.sizes[name] = size
            if f["multi_valued"]:
                lengths, values = _jagged(table.column(name))
                width = max(1, int(lengths.max()))
                self.multi[name] = _padded(lengths, values, width)
                first = self.multi[name][:, 0].astype(np.int64)
                self.single[_first(name)] = first
                self.sizes[_first(name)] = size
            else:
                self.single[name] = table.column(name).to_numpy().astype(np.int64)
        if statistics:
            for k in range(len(manifest["statistics"])):
                for b in manifest["statistic_buckets"]:
                    name = f"stat{k}_b{b}"
                    self.single[name] = table.column(name).to_numpy().astype(np.int64)
                    self.sizes[name] = int(b) + 1


def _first(name):
    """The single-valued stand-in of a multi-valued feature: its first value ("genres" -> "genre")."""
    return name[:-1] if name.endswith("s") and len(name) > 1 else f"{name}_first"


def load_split(data_dir, split, items, max_length):
    t = pq.read_table(os.path.join(data_dir, f"{split}.parquet"))
    cand = t.column("candidate").to_numpy().astype(np.int64)
    lengths, hist = _jagged(t.column("history"))
    hist_rows = _padded(lengths, hist, max_length, dtype=np.int64)
    mask = np.arange(max_length)[None, :] < np.minimum(lengths, max_length)[:, None]
    x = {}
    for name, per_item in items.single.items():
        x[name] = per_item[cand].astype(np.int32)
        x[f"hist_{name}"] = np.where(mask, per_item[hist_rows], 0).astype(np.int32)
    for name, per_item in items.multi.items():
        x[name] = per_item[cand]
    x["seq_length"] = np.minimum(lengths, max_length).astype(np.int32)
    facts = {
        "label": t.column("label").to_numpy().astype(np.float32),
        "user": t.column("user").to_numpy().astype(np.int64),
        "candidate_cold": t.column("candidate_cold").to_numpy(zero_copy_only=False).astype(bool),
        "candidate": cand,
    }
    return x, facts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared directory")
    p.add_argument("--seed", type=int, required=True, help="DIN's seed (initial weights, batch order)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adagrad", "sgd", "rmsprop"],
                   help="deepctr-torch's optimizer by name, with its default learning rate "
                        "(adam 0.001, adagrad 0.01)")
    p.add_argument("--item-dim", type=int, default=32, help="item_id embedding width")
    p.add_argument("--feature-dim", type=int, default=16, help="width of the other embeddings")
    p.add_argument("--statistics", action="store_true", help="also the statistic buckets")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", required=True, help="npz of the test scores after every epoch")
    a = p.parse_args(argv)

    _no_version_check()
    import torch

    torch.set_num_threads(a.threads)
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIN

    with open(os.path.join(a.data, "manifest.json")) as f:
        manifest = json.load(f)
    max_length = int(manifest["max_length"])
    items = ItemTable(a.data, manifest, a.statistics)

    def dim(name):
        return a.item_dim if name == "item_id" else a.feature_dim

    query = list(items.single)  # the candidate's single-valued features, attended against history
    columns = [SparseFeat(n, items.sizes[n], embedding_dim=dim(n)) for n in query]
    columns += [
        VarLenSparseFeat(SparseFeat(n, items.sizes[n], embedding_dim=dim(n)), maxlen=items.multi[n].shape[1],
                         combiner="mean")
        for n in items.multi
    ]
    columns += [
        VarLenSparseFeat(SparseFeat(f"hist_{n}", items.sizes[n], embedding_dim=dim(n), embedding_name=n),
                         maxlen=max_length, length_name="seq_length")
        for n in query
    ]
    train_x, train_facts = load_split(a.data, "train", items, max_length)
    test_x, test_facts = load_split(a.data, "test", items, max_length)
    model = DIN(columns, query, device="cpu", seed=a.seed)
    model.compile(a.optimizer, "binary_crossentropy")
    n = len(train_facts["label"])
    steps_per_epoch = (n - 1) // a.batch_size + 1
    print(f"DIN seed {a.seed}: {n} training samples ({steps_per_epoch} steps of {a.batch_size} per "
          f"epoch), {len(test_facts['label'])} test samples, features {query} + "
          f"{list(items.multi)} (pooled) + history of {query}", flush=True)
    scores, seconds = [], []
    for epoch in range(a.epochs):
        start = time.perf_counter()
        model.fit(dict(train_x), train_facts["label"], batch_size=a.batch_size, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - start)
        scores.append(model.predict(dict(test_x), batch_size=1024).reshape(-1))
        print(f"epoch {epoch + 1}/{a.epochs}: {seconds[-1]:.0f} s", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp.npz"
    np.savez(tmp, scores=np.stack(scores), steps_per_epoch=steps_per_epoch,
             seconds=np.array(seconds), **test_facts)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
