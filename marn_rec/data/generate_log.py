"""A generated log in the user format, and the by-hand measurements of preparation and loading.

Not part of CI (minutes and gigabytes at full size). The log has Zipf-popular items, users of
skewed activity, timestamps that drift forward with jitter (so some are out of order per user),
ratings 1-5, a few exact duplicate rows, and items with titles, a brand, a category, multi-valued
genres, a price (some null) and image rows (some items without image)::

    # 10M events; peak RSS of preparing them (bounded: does not grow with the log)
    python -m marn_rec.data.generate_log gen /tmp/raw10m --interactions 10000000 --users 600000 --items 400000
    python -m marn_rec.data.generate_log prepare /tmp/raw10m /tmp/prep10m
    # MovieLens-1M-sized data and the loader's time per batch of 256
    python -m marn_rec.data.generate_log gen /tmp/ml --interactions 1000000 --users 6040 --items 3706 --no-image
    python -m marn_rec.data.generate_log prepare /tmp/ml /tmp/mlprep
    python -m marn_rec.data.generate_log load /tmp/mlprep --batch-size 256
"""

import argparse
import os
import resource
import time
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_WORDS = 5_000
_GENRES = 20


def _ids(prefix: str, idx: np.ndarray) -> pa.Array:
    return pa.array(np.char.add(prefix, idx.astype(str)))


def write_items(out_dir: str, items: int, image_dim: Optional[int], seed: int = 0) -> None:
    rng = np.random.default_rng([seed, 1])
    words = np.char.add("w", np.arange(_WORDS).astype(str))
    title_len = rng.integers(3, 12, size=items)
    word_idx = np.minimum((rng.pareto(1.2, size=int(title_len.sum())) * 50).astype(np.int64), _WORDS - 1)
    flat = words[word_idx]
    offsets = np.r_[0, np.cumsum(title_len)]
    titles = [" ".join(flat[offsets[i] : offsets[i + 1]]) for i in range(items)]
    n_genres = rng.integers(1, 4, size=items)
    genre_values = np.char.add("g", rng.integers(0, _GENRES, size=int(n_genres.sum())).astype(str))
    price = rng.lognormal(3.0, 1.0, size=items)
    columns = {
        "item_id": _ids("i", np.arange(items)),
        "title": pa.array(titles),
        "brand_id": _ids("b", rng.integers(0, max(1, items // 20), size=items)),
        "category_id": pa.array(rng.integers(0, 100, size=items)),
        "genres": pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum(n_genres)].astype(np.int32)), pa.array(genre_values)),
        "price": pa.array(price, mask=rng.random(items) < 0.05),
    }
    if image_dim:
        has = rng.random(items) < 0.9
        rows = np.full(items, -1, dtype=np.int64)
        rows[has] = np.arange(int(has.sum()))
        columns["image_row"] = pa.array(rows, mask=~has)
        np.save(os.path.join(out_dir, "image_vectors.npy"), rng.standard_normal((int(has.sum()), image_dim), dtype=np.float32))
    pq.write_table(pa.table(columns), os.path.join(out_dir, "items.parquet"))


def generate(
    out_dir: str,
    interactions: int,
    users: int,
    items: int,
    image_dim: Optional[int] = 32,
    seed: int = 0,
    chunk: int = 1_000_000,
    duplicate_fraction: float = 0.001,
) -> None:
    """Writes items.parquet, interactions.parquet (in chunks: bounded memory) and, with
    ``image_dim``, image_vectors.npy into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    write_items(out_dir, items, image_dim, seed)
    rng = np.random.default_rng([seed, 2])
    item_perm, user_perm = rng.permutation(items), rng.permutation(users)
    t0, span = 1_300_000_000, 3 * 365 * 86_400
    writer = None
    for start in range(0, interactions, chunk):
        n = min(chunk, interactions - start)
        user = user_perm[np.minimum((rng.random(n) ** 2 * users).astype(np.int64), users - 1)]
        item = item_perm[np.minimum((rng.pareto(1.0, n) * items / 200).astype(np.int64), items - 1)]
        ts = t0 + (start + np.arange(n)) * span // interactions + rng.integers(-3600, 3600, size=n)
        rating = rng.integers(1, 6, size=n).astype(np.float64)
        dup = np.flatnonzero(rng.random(n) < duplicate_fraction)
        dup = dup[dup > 0]
        user[dup], item[dup], ts[dup], rating[dup] = user[dup - 1], item[dup - 1], ts[dup - 1], rating[dup - 1]
        table = pa.table(
            {"user_id": _ids("u", user), "item_id": _ids("i", item), "timestamp": pa.array(ts, pa.int64()),
             "rating": pa.array(rating)}
        )
        if writer is None:
            writer = pq.ParquetWriter(os.path.join(out_dir, "interactions.parquet"), table.schema)
        writer.write_table(table)
    writer.close()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_prepare(raw_dir: str, out_dir: str, **config) -> None:
    """Prepares and prints the peak RSS (the process's maximum resident set)."""
    from marn_rec.data.prepare import PrepareConfig, prepare

    base = peak_rss_mib()
    t = time.time()
    prepare(raw_dir, out_dir, PrepareConfig(**config))
    print(f"prepare: {time.time() - t:.0f} s, peak RSS {peak_rss_mib():.0f} MiB (after imports {base:.0f} MiB)")


def measure_loader(prepared: str, batch_size: int, split: str = "train", max_batches: int = 2000) -> None:
    """Prints the loader's mean time per batch (file order and shuffled batch order)."""
    from marn_rec.data.prepared import PreparedDataset, make_prepared_loader

    data = PreparedDataset(prepared)
    for seed in (None, 0):
        loader = make_prepared_loader(prepared, split, batch_size=batch_size, seed=seed, data=data)
        it, n = iter(loader), 0
        t = time.time()
        for _ in range(min(max_batches, len(loader))):
            next(it)
            n += 1
        dt = (time.time() - t) / max(1, n)
        print(f"loader {split} batch {batch_size} seed {seed}: {n} batches, {dt * 1e3:.2f} ms/batch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("out")
    g.add_argument("--interactions", type=int, default=10_000_000)
    g.add_argument("--users", type=int, default=600_000)
    g.add_argument("--items", type=int, default=400_000)
    g.add_argument("--image-dim", type=int, default=32)
    g.add_argument("--no-image", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    q = sub.add_parser("prepare")
    q.add_argument("raw")
    q.add_argument("out")
    q.add_argument("--max-length", type=int, default=50)
    q.add_argument("--no-progress", action="store_true")
    l = sub.add_parser("load")  # noqa: E741
    l.add_argument("prepared")
    l.add_argument("--batch-size", type=int, default=256)
    l.add_argument("--split", default="train")
    a = p.parse_args()
    if a.cmd == "gen":
        t = time.time()
        generate(a.out, a.interactions, a.users, a.items, None if a.no_image else a.image_dim, a.seed)
        print(f"generated {a.interactions:,} interactions in {a.out} ({time.time() - t:.0f} s)")
    elif a.cmd == "prepare":
        measure_prepare(a.raw, a.out, max_length=a.max_length, progress=not a.no_progress)
    else:
        measure_loader(a.prepared, a.batch_size, a.split)


if __name__ == "__main__":
    main()
