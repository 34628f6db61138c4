"""The knobs of preparation (:class:`PrepareConfig`), with the protocol each default follows."""

from dataclasses import dataclass
from typing import Optional, Tuple

SPLITS = ("last", "time")
UNKNOWN_ITEMS = ("error", "drop")


@dataclass(frozen=True)
class PrepareConfig:
    """How a raw directory (the user format) becomes training samples (the prepared format).

    Vocabularies:
        min_count: 1. A categorical value (item ID, shop, genre...) counted fewer times than this in
            the training period goes to row 0, the out-of-vocabulary row. A value's count is the
            number of training-period events on items carrying it, so that no row is kept whose
            embedding training never updates. With 1, exactly the values never seen in training
            are out of vocabulary (an item's other features still describe it: the point of MARN
            on cold items).
        title_length: 32 (``ItemTowerConfig.title_length``): titles keep their first words.
        word_vectors: a GloVe-format text file (``word v1 v2 ...``, an optional word2vec header
            line ``count dim`` is skipped) whose vectors initialise the title words:
            ``title_vectors.npy`` [title vocab, dim] is saved aligned with the title vocabulary
            (row 0 zeros; words the file lacks get N(0, std of the found vectors), seeded).

    Samples (DIN / MARN Amazon protocol):
        max_length: 50 (T, ``BehaviorConfig.max_length``): a history keeps its latest T behaviours.
        negatives: 1. Per positive, this many negatives drawn uniformly from the catalogue with
            the seed, never the positive itself. Training negatives are drawn only among items with
            a training-period event (never a held-out or test-only item: those have no embedding row
            of their own, and as training negatives would teach the model that the OOV row is never
            clicked). Ignored when the log has a ``label`` column: impressions carry their own labels.
        seed: 0. Negatives, held-out items and the shuffle of train.parquet derive from it.
        split: "last": per user in time order, training predicts behaviour j+1 from the first j,
            the test sample predicts the user's LAST behaviour from all earlier ones. (Impression
            logs: the test period of a user starts at their last positive event.) "time": events
            at or after a global cutoff (the ``1 - test_fraction`` quantile of the timestamps) are
            the test period.
        test_fraction: 0.2, for ``split="time"``.
        cold_item_fraction: 0.0. This fraction of the catalogue (seeded) is held out from the
            training period entirely (its training-period events are dropped and counted), so that
            evaluation has cold candidates.
        user_min_behaviors: 2. Users with fewer behaviours (events; positive events in impression
            logs) give no sample (counted).
        min_history: 1. A sample needs at least this many behaviours in its history (DIN: the
            first behaviour of a user is no candidate); others are counted and dropped.
        num_time_buckets: 32 (``BehaviorConfig.num_time_buckets``), see ``bucketize_time_gap``.
        statistic_buckets: (10, 100), the granularities of every statistic. Bucket 0 of each is
            "missing" (e.g. the mean rating of an item nobody rated); values fill the other
            ``b - 1`` equal-frequency buckets, boundaries computed on the items of the training
            period only. The counts of an item without a training-period event are missing, not
            0: the training period never observed it.

    Bad data:
        unknown_items: "error": an event whose item_id is not in items.parquet is a DataError;
            "drop": such events are dropped and counted.

    Memory and output layout (none changes the positives, histories, vocabularies or statistics;
    shards and chunks do decide the user row numbers, the seeded negative draws and the shuffle):
        shard_events: 500,000 events per temporary user shard: the largest unit held in memory.
        chunk_samples: 16,384 candidates turned into samples at a time.
        bucket_samples: 100,000 training samples per shuffle bucket (train.parquet is shuffled
            through buckets of about this size).
        read_rows: 262,144 rows per record batch read from interactions.parquet.
        row_group_size: 4,096 samples per row group of train/test.parquet (the loader decodes one
            row group at a time).

    Reporting:
        source: free-form description stored in the manifest (default: the raw directory).
        progress: tqdm progress bars.
    """

    min_count: int = 1
    max_length: int = 50
    negatives: int = 1
    seed: int = 0
    split: str = "last"
    test_fraction: float = 0.2
    cold_item_fraction: float = 0.0
    title_length: int = 32
    word_vectors: Optional[str] = None
    num_time_buckets: int = 32
    statistic_buckets: Tuple[int, ...] = (10, 100)
    user_min_behaviors: int = 2
    min_history: int = 1
    unknown_items: str = "error"
    shard_events: int = 500_000
    chunk_samples: int = 16_384
    bucket_samples: int = 100_000
    read_rows: int = 262_144
    row_group_size: int = 4_096
    source: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.unknown_items not in UNKNOWN_ITEMS:
            raise ValueError(f"unknown_items must be one of {UNKNOWN_ITEMS}, got {self.unknown_items!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.cold_item_fraction < 1.0:
            raise ValueError(f"cold_item_fraction must be in [0, 1), got {self.cold_item_fraction}")
        if not self.statistic_buckets or min(self.statistic_buckets) < 2:
            raise ValueError(f"statistic_buckets must be >= 2 each, got {self.statistic_buckets}")
        positive = dict(
            min_count=self.min_count, max_length=self.max_length, title_length=self.title_length,
            num_time_buckets=self.num_time_buckets, shard_events=self.shard_events,
            chunk_samples=self.chunk_samples, bucket_samples=self.bucket_samples,
            read_rows=self.read_rows, row_group_size=self.row_group_size,
        )
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("negatives", "user_min_behaviors", "min_history"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
