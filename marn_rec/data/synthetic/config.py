"""What the synthetic stream is: table sizes, population, latent factors, behaviours, click model.

The config is validated on construction; ``SyntheticTaobaoConfig.from_model_config(cfg)`` copies the
table sizes of a model so that every generated ID fits its table.
"""

import math
from dataclasses import dataclass, fields
from typing import Dict, Tuple

from marn_rec.config import MARNConfig

TRAIN = "train"
EVAL = "eval"
# Per-user candidate sets of cold items (paper Table 5); also appended to EVAL, see
# ``num_cold_set_batches``.
COLD_SETS = "cold_sets"
SPLITS: Tuple[str, ...] = (TRAIN, EVAL, COLD_SETS)
# Salts of the per-batch generators (the per-item and per-user salts are in hashing.py).
_SPLIT_TAGS = {TRAIN: 1, EVAL: 2, COLD_SETS: 3}


@dataclass(frozen=True)
class SyntheticTaobaoConfig:
    """Everything the generator needs; :meth:`from_model_config` copies the table sizes of a model.

    Table sizes (copied from :class:`MARNConfig`):
        num_items, num_shops, num_brands, num_categories, title_vocab_size, title_length (max
        words), image_dim, num_statistics, statistic_buckets, max_history (T), num_time_buckets.

    Stream:
        seed: every batch and the catalog derive from it.
        batch_size: samples per batch (B).
        num_train_batches, num_eval_batches: global batches per split (before rank sharding).

    Population:
        num_users: users, sampled with Zipf exponent ``user_zipf_exponent`` (active users recur, so
            per-user AUC has users with several samples).
        zipf_exponent: item popularity skew, weight ``(rank + 1) ** -zipf_exponent``.
        category_zipf_exponent: skew of category sizes.
        max_catalog_items: items that exist; at most ``num_items``. Caps memory at paper size (800M
            IDs): the catalog's items are then spread over the ID space by the affine ID map.
        cold_fraction: share of catalog items that never appear in training.
        eval_cold_share: probability that an eval candidate is a cold item.

    Cold candidate sets (paper Table 5: recall@N of clicked new items among a user's candidates):
        num_cold_set_batches: batches of the ``"cold_sets"`` split, each ``cold_set_users_per_batch``
            users with ``cold_set_size`` distinct cold candidates each (and one history per user,
            shared by its candidates). They are also appended to the eval split, as eval batches
            ``num_eval_batches ..``, so a training run evaluates them (the eval batches then carry
            ``meta["candidate_set"]``, -1 outside a set). 0 (default): no sets, the eval split as
            before.
        cold_set_size: candidates per set, drawn without replacement from the cold items with the
            law of one eval candidate (a favourite category with probability ``candidate_focus``,
            Zipf-weighted within it).
        cold_set_users_per_batch: sets per batch.

    Latent factors and views:
        shared_dim, image_factor_dim, title_factor_dim: sizes of the factor parts.
        category_center_weight: share of the shared factor that is the category's centre.
        image_noise: std of the per-item image noise (the signal has unit std per dimension).
        title_noise_prob, title_category_prob: probability that a title word is a random word / a
            category word; the rest are factor words, which pick a shared or title factor dimension
            with weight ``z ** 2`` and name its sign.
        empty_title_prob: probability of an item without title words.
        stat_noise: std of the noise of each statistic.

    Per-item modality quality and cross-modal redundancy (what MAF and DDMA claim to exploit; every
    default leaves the stream bit-identical, and none of them changes a click probability or a
    label: they degrade or reweight what the modalities show of the same latent truth):
        missing_image_prob: share of items whose image vector is all zeros (no image).
        uninformative_image_prob: share of items whose image shows none of their factors (the
            per-item noise alone, a placeholder or stock photo); exclusive of a missing image.
        generic_title_prob: share of items whose title has no factor word (category words and
            random words only, "women's dress"); on top of ``empty_title_prob``.
        cold_empty_statistics_prob: share of the cold (new) items whose statistics show no
            history: popularity at the catalogue's minimum, quality and the shared factor not
            shown, noise only (their buckets still come from the same quantile boundaries).
        shared_view_weight: weight of the shared (modality-invariant) factor in the image and title
            views against their own factors, i.e. the redundancy between image and title: 0 shows
            each its own factor only, 1 (default) the shared and own factors at equal weight per
            dimension, larger values make the two views mostly the same information.
        image_group_weight: weight of the look of the item's category group in its image (clothing
            looks like clothing, paper 1 and Figure 4). 0 (default): the image shows its category
            only through the category's centre in the shared factor; centres are random and the
            groups a random third of the categories each, so the group is barely visible in the
            image. w > 0 adds w times a fixed random image-space vector per group (the signal has
            unit std per dimension), so that eq. 3's gate, which sees only the image, can tell
            the group.

    Behaviours:
        behavior_type_probs: click, cart, purchase.
        empty_history_prob, full_history_prob: shares of samples with 0 and with T behaviours; the
            rest have a uniform length in [1, T].
        num_favorite_categories, interest_focus: favourite categories per user and the probability
            that a behaviour comes from one of them.
        affinity_proposals, affinity_sharpness: a behaviour is the pick, with weights
            ``exp(sharpness * affinity)``, among this many popularity-sampled proposals.
        min_gap_s, max_gap_s: time between consecutive behaviours (and from the latest to now),
            log-uniform.

    Click model (logit, see :meth:`SyntheticTaobao.click_logit`):
        base_logit, popularity_weight, item_bias_std, shop_bias_std, brand_bias_std,
        interest_weight, shared_interest_weight, stat_sensitivity_std, sequence_weight,
        same_category_similarity, recency_half_life_s, behavior_type_weights,
        candidate_focus (probability that a candidate comes from a favourite category).
    """

    num_items: int
    num_shops: int
    num_brands: int
    num_categories: int
    title_vocab_size: int
    title_length: int
    image_dim: int
    num_statistics: int = 4
    statistic_buckets: Tuple[int, ...] = (10, 100)
    max_history: int = 50
    num_time_buckets: int = 32
    seed: int = 0
    batch_size: int = 1024
    num_train_batches: int = 1000
    num_eval_batches: int = 50
    num_users: int = 20_000
    user_zipf_exponent: float = 0.8
    zipf_exponent: float = 1.1
    category_zipf_exponent: float = 0.6
    max_catalog_items: int = 1_000_000
    cold_fraction: float = 0.1
    eval_cold_share: float = 0.2
    num_cold_set_batches: int = 0
    cold_set_size: int = 200
    cold_set_users_per_batch: int = 4
    shared_dim: int = 8
    image_factor_dim: int = 8
    title_factor_dim: int = 8
    category_center_weight: float = 0.6
    image_noise: float = 1.0
    title_noise_prob: float = 0.15
    title_category_prob: float = 0.2
    empty_title_prob: float = 0.02
    stat_noise: float = 0.5
    missing_image_prob: float = 0.0
    uninformative_image_prob: float = 0.0
    generic_title_prob: float = 0.0
    cold_empty_statistics_prob: float = 0.0
    shared_view_weight: float = 1.0
    image_group_weight: float = 0.0
    behavior_type_probs: Tuple[float, float, float] = (0.9, 0.05, 0.05)
    empty_history_prob: float = 0.05
    full_history_prob: float = 0.3
    num_favorite_categories: int = 3
    interest_focus: float = 0.8
    affinity_proposals: int = 8
    affinity_sharpness: float = 2.0
    min_gap_s: float = 1.0
    max_gap_s: float = 2 * 86_400.0
    base_logit: float = -2.4
    popularity_weight: float = 1.0
    item_bias_std: float = 0.3
    shop_bias_std: float = 0.2
    brand_bias_std: float = 0.2
    interest_weight: float = 1.0
    shared_interest_weight: float = 0.5
    stat_sensitivity_std: float = 0.3
    sequence_weight: float = 1.0
    same_category_similarity: float = 0.5
    recency_half_life_s: float = 12 * 3600.0
    behavior_type_weights: Tuple[float, float, float] = (1.0, 2.0, 3.0)
    candidate_focus: float = 0.5

    def __post_init__(self) -> None:
        self._check_sizes()
        self._check_probabilities()
        self._check_reals()

    def _check_sizes(self) -> None:
        at_least = {
            "num_items": 2,
            "num_shops": 1,
            "num_brands": 1,
            "num_categories": 1,
            "title_vocab_size": 1,
            "title_length": 1,
            "image_dim": 1,
            "num_statistics": 1,
            "max_history": 1,
            "num_time_buckets": 1,
            "batch_size": 1,
            "num_train_batches": 0,
            "num_eval_batches": 0,
            "num_users": 1,
            "max_catalog_items": 2,
            "shared_dim": 1,
            "image_factor_dim": 1,
            "title_factor_dim": 1,
            "num_favorite_categories": 1,
            "affinity_proposals": 1,
            "num_cold_set_batches": 0,
            "cold_set_size": 1,
            "cold_set_users_per_batch": 1,
        }
        for name, low in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(
                    f"SyntheticTaobaoConfig.{name} must be an int >= {low}, got {value!r}"
                )
        if self.num_items >= 2**31:
            raise ValueError(f"num_items must be < 2**31 (int64-safe ID map), got {self.num_items}")
        if not self.statistic_buckets or any(b < 2 for b in self.statistic_buckets):
            raise ValueError(
                f"statistic_buckets must be non-empty, each >= 2, got {self.statistic_buckets}"
            )

    def _check_probabilities(self) -> None:
        for name in (
            "eval_cold_share",
            "title_noise_prob",
            "title_category_prob",
            "empty_title_prob",
            "empty_history_prob",
            "full_history_prob",
            "interest_focus",
            "candidate_focus",
            "missing_image_prob",
            "uninformative_image_prob",
            "generic_title_prob",
            "cold_empty_statistics_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticTaobaoConfig.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ValueError(f"cold_fraction must be in [0, 1), got {self.cold_fraction}")
        if self.title_noise_prob + self.title_category_prob > 1.0:
            raise ValueError("title_noise_prob + title_category_prob must be <= 1")
        if self.missing_image_prob + self.uninformative_image_prob > 1.0:
            raise ValueError("missing_image_prob + uninformative_image_prob must be <= 1")
        if self.num_cold_set_batches and self.cold_fraction == 0:
            raise ValueError("num_cold_set_batches needs cold items (cold_fraction > 0)")
        if self.empty_history_prob + self.full_history_prob > 1.0:
            raise ValueError("empty_history_prob + full_history_prob must be <= 1")
        probs = self.behavior_type_probs
        if len(probs) != 3 or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(
                f"behavior_type_probs must be 3 non-negative numbers summing to 1, got {probs}"
            )
        weights = self.behavior_type_weights
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError(f"behavior_type_weights must be 3 non-negative numbers, got {weights}")

    def _check_reals(self) -> None:
        non_negative = (
            "user_zipf_exponent",
            "category_zipf_exponent",
            "category_center_weight",
            "image_noise",
            "stat_noise",
            "affinity_sharpness",
            "item_bias_std",
            "shop_bias_std",
            "brand_bias_std",
            "stat_sensitivity_std",
            "shared_view_weight",
            "image_group_weight",
        )
        for name in non_negative:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SyntheticTaobaoConfig.{name} must be a finite number >= 0, got {value}")
        if self.zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent must be > 0, got {self.zipf_exponent}")
        if self.category_center_weight > 1:
            raise ValueError("category_center_weight must be <= 1 (a share of the shared factor)")
        if not 0 < self.min_gap_s <= self.max_gap_s:
            raise ValueError(
                f"need 0 < min_gap_s <= max_gap_s, got {self.min_gap_s} and {self.max_gap_s}"
            )
        if self.recency_half_life_s <= 0:
            raise ValueError(f"recency_half_life_s must be > 0, got {self.recency_half_life_s}")

    @classmethod
    def from_model_config(cls, cfg: MARNConfig, **overrides: object) -> "SyntheticTaobaoConfig":
        """Table sizes from ``cfg`` (so every ID fits its table), the rest defaults or overrides."""
        tower, behavior = cfg.tower, cfg.behavior
        sizes: Dict[str, object] = dict(
            num_items=tower.num_items,
            num_shops=tower.num_shops,
            num_brands=tower.num_brands,
            num_categories=tower.num_categories,
            title_vocab_size=tower.title_vocab_size,
            title_length=tower.title_length,
            image_dim=tower.image_dim,
            num_statistics=tower.num_statistics,
            statistic_buckets=tuple(tower.statistic_buckets),
            max_history=behavior.max_length,
            num_time_buckets=behavior.num_time_buckets,
        )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown SyntheticTaobaoConfig fields {unknown}")
        sizes.update(overrides)
        return cls(**sizes)  # type: ignore[arg-type]

    def check_fits(self, cfg: MARNConfig) -> None:
        """Raises ValueError unless every ID this data can produce fits a table of ``cfg``."""
        tower, behavior = cfg.tower, cfg.behavior
        limits = (
            ("num_items", self.num_items, tower.num_items),
            ("num_shops", self.num_shops, tower.num_shops),
            ("num_brands", self.num_brands, tower.num_brands),
            ("num_categories", self.num_categories, tower.num_categories),
            ("title_vocab_size", self.title_vocab_size, tower.title_vocab_size),
            ("title_length", self.title_length, tower.title_length),
            ("num_time_buckets", self.num_time_buckets, behavior.num_time_buckets),
            ("max_history", self.max_history, behavior.max_length),
        )
        for name, ours, theirs in limits:
            if ours > theirs:
                raise ValueError(f"data {name}={ours} exceeds the model's {theirs}")
        exact = (
            ("image_dim", self.image_dim, tower.image_dim),
            ("num_statistics", self.num_statistics, tower.num_statistics),
            ("statistic_buckets", tuple(self.statistic_buckets), tuple(tower.statistic_buckets)),
        )
        for name, ours, theirs in exact:
            if ours != theirs:
                raise ValueError(f"data {name}={ours} differs from the model's {theirs}")
        if behavior.num_behavior_types < 3:
            raise ValueError("the data has 3 behaviour types; the model's table has fewer rows")

    @property
    def num_catalog_items(self) -> int:
        return min(self.num_items, self.max_catalog_items)

    def num_batches(self, split: str) -> int:
        """Global batches of ``split``; the eval split includes the cold-set batches."""
        _check_split(split)
        if split == TRAIN:
            return self.num_train_batches
        if split == COLD_SETS:
            return self.num_cold_set_batches
        return self.num_eval_batches + self.num_cold_set_batches


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
