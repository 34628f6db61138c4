"""Names of the prepared format ("B"): files, columns and vocabularies, shared by preparation and
the loader (:mod:`marn_rec.data.prepared`).

A prepared directory holds ``manifest.json``, ``items.parquet`` (row r = item row r, row 0 the
out-of-vocabulary item), ``train.parquet`` and ``test.parquet`` (one row per sample), ``vocab/``
(raw value -> row of every vocabulary), ``item_statistics.parquet`` (the raw statistic values the
buckets were cut from) and, where the data has them, ``image_vectors.npy`` and
``title_vectors.npy``.
"""

FORMAT = "marn_rec.prepared/1"
# What the files mean, within one format: bumped when preparation computes something differently
# (the files' layout unchanged). 2 (2026-12-02): the counts of items without a training-period
# event are missing, not 0. A manifest without the key is version 1.
PREPARE_VERSION = 2
PREPARE_VERSION_CHANGES = {2: "the counts of items without a training-period event are missing (bucket 0), not 0"}


def changes_since(manifest: dict) -> str:
    """What preparation computes differently since ``manifest`` was written ("" when current)."""
    version = manifest.get("prepare_version", 1)
    return "; ".join(PREPARE_VERSION_CHANGES[v] for v in range(version + 1, PREPARE_VERSION + 1))

MANIFEST = "manifest.json"
ITEMS = "items.parquet"
ITEM_STATISTICS = "item_statistics.parquet"
IMAGE_VECTORS = "image_vectors.npy"
TITLE_VECTORS = "title_vectors.npy"
VOCAB_DIR = "vocab"
TRAIN, TEST = "train", "test"
SPLIT_NAMES = (TRAIN, TEST)


def split_file(split: str) -> str:
    return f"{split}.parquet"


# Vocabulary files under vocab/: columns ``value`` (the raw value) and ``row`` (int64; row 0, the
# out-of-vocabulary row, is not listed), plus ``count`` where the vocabulary was counted.
USER_VOCAB = "user.parquet"  # raw user_id -> the `user` column of the samples
ITEM_ROW_VOCAB = "item_row.parquet"  # raw item_id -> item row (items.parquet / samples)
TITLE_VOCAB = "title_words.parquet"  # word -> title word row
BEHAVIOR_VOCAB = "behavior_type.parquet"  # behaviour label -> behaviour type row
FEATURE_VOCAB_DIR = "item"  # vocab/item/{feature}.parquet: value -> row of the feature's table

# items.parquet
TITLE_WORDS = "title_words"
IMAGE_ROW = "image_row"

# train.parquet / test.parquet
USER = "user"
CANDIDATE = "candidate"
LABEL = "label"
HISTORY = "history"
HISTORY_BEHAVIOR = "history_behavior"
HISTORY_TIME_BUCKET = "history_time_bucket"
CANDIDATE_COLD = "candidate_cold"
SAMPLE_COLUMNS = (USER, CANDIDATE, LABEL, HISTORY, HISTORY_BEHAVIOR, HISTORY_TIME_BUCKET, CANDIDATE_COLD)

MISSING_LABEL = "<missing>"  # label of row 0 of the behaviour types

# Statistics preparation counts over the training period (manifest "statistics" lists them first,
# then the item table's float columns, which may not reuse these names).
INTERACTIONS, USERS, MEAN_RATING, IMPRESSIONS = "interactions", "users", "mean_rating", "impressions"
TRAINING_STATISTICS = (INTERACTIONS, USERS, MEAN_RATING, IMPRESSIONS)
