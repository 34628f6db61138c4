"""A synthetic Taobao-like click stream that plants the structure MARN exploits and knows the truth.

No public data can be downloaded here, so training runs on this generator (DESIGN.md, "Synthetic
Taobao-like data"). What it plants:

* Items with Zipf popularity: popularity rank ``r`` (0 = most popular) is sampled with weight
  ``(r + 1) ** -zipf_exponent`` and mapped to an item ID by a seeded affine bijection of
  ``[0, num_items)``, so popular items are spread over the ID space.
* Each item has a category (categories have skewed sizes), a shop and a brand tied to the category,
  and latent factors: a shared part (modality-invariant, centred on its category), an image-specific
  part, a title-specific part and a scalar quality that the statistics show.
* Its modalities are noisy views of those factors: the image is a fixed random projection of
  shared + image factors plus per-item hashed noise, after a ReLU (VGG fc7 vectors are
  non-negative); the title words come from word pools tied to the signs of the (mostly largest)
  shared and title factors, to the category, and from random noise words; the four numeric statistics
  (exposure, click rate, orders, amount) mix popularity, quality and one shared factor plus noise,
  discretised at the model's granularities (10 and 100 quantile buckets).
* Categories fall into three groups that differ in which modality carries the click signal (paper
  Figure 4): clothing-like categories (image), phone/grocery-like ones (statistics), the rest
  (title).
* Users have interest vectors and a few favourite categories. Behaviours are items of the
  favourite categories (or any category), popularity-skewed, resampled towards the user's
  interests; types are click/cart/purchase about 90/5/5; times since the behaviour are seconds,
  bucketised on a log scale.
* A known click probability (see :meth:`SyntheticTaobao.click_logit`), so the Bayes-optimal AUC of
  any eval set is the AUC of ``meta["click_prob"]`` against the labels.
* A cold slice of items never appears in training (neither as candidate nor in history) and shows up
  as eval candidates.

Streaming and determinism: batch ``i`` of a split is a pure function of ``(seed, split, i)``, drawn
from its own ``torch.Generator``; no batch depends on another. Per-item content (image noise, title
words, shop, brand) comes from a counter-based hash of ``(seed, item)``, so nothing of size
``num_items x image_dim`` is ever materialised: the catalog holds only ``[num_catalog_items, k]``
factors and a few per-item scalars. An item's features are bit-identical in every batch and with
``dedup`` on or off. Sharding: rank ``r`` of ``w`` reads global batches
``r, r + w, r + 2w, ...`` (:func:`shard_batch_indices`).
"""

import math
import random
from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

import torch

from marn_rec.batch import ItemFeatures, MARNBatch, build_batch
from marn_rec.config import IMAGE, STATISTIC, TITLE, MARNConfig
from marn_rec.features import (
    BRAND_ID,
    CATEGORY_ID,
    ITEM_ID,
    SHOP_ID,
    bucketize_statistic,
    bucketize_time_gap,
    quantile_boundaries,
    statistic_feature,
)

TRAIN = "train"
EVAL = "eval"
SPLITS: Tuple[str, ...] = (TRAIN, EVAL)
# Which modality carries a category's click signal; meta["candidate_group"] indexes this tuple.
MODALITY_GROUPS: Tuple[str, ...] = (IMAGE, STATISTIC, TITLE)
_GROUP_IMAGE, _GROUP_STATISTIC, _GROUP_TITLE = 0, 1, 2
NUM_POPULARITY_LEVELS = 10

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_SPLIT_TAGS = {TRAIN: 1, EVAL: 2}
# Hash streams: each per-item or per-user random quantity has its own salt.
_TAG_CATALOG, _TAG_ID_MAP, _TAG_USER, _TAG_FAVORITE = 11, 12, 13, 14
_TAG_SHOP, _TAG_BRAND, _TAG_SHOP_BIAS, _TAG_BRAND_BIAS = 21, 22, 23, 24
_TAG_IMAGE_NOISE, _TAG_STAT_NOISE = 31, 32
_TAG_TITLE_LENGTH, _TAG_TITLE_KIND, _TAG_TITLE_DIM, _TAG_TITLE_SLOT = 41, 42, 43, 44
_IMAGE_NOISE_ROWS = 1024  # rows of the shared noise table whose signed sums give per-item noise
_QUANTILE_SAMPLE = 1 << 20  # statistic boundaries come from at most this many catalog items


# --------------------------------------------------------------------------------------------
# Counter-based hashing: per-item / per-user randomness without materialised per-item tables.
# --------------------------------------------------------------------------------------------


def _mix32(x):
    """Avalanche of a 32-bit value (lowbias32-style) for Python ints and int64 tensors alike.

    Multipliers stay below 2**31, so products of 32-bit values fit in int64 without relying on
    signed overflow.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & _MASK32
    return x ^ (x >> 16)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _derive_seed(*parts: int) -> int:
    """A 64-bit seed that depends on every part (seed, tags, batch index)."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (p & _MASK64))
    return h


def _hash_bits(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """32 pseudo-random bits (int64) per non-negative int64 key; a pure function of (key, salt)."""
    k = keys.long()
    x = _mix32((k & _MASK32) ^ (salt & _MASK32))
    x = _mix32(x ^ ((k >> 32) & _MASK32))
    return _mix32(x ^ ((salt >> 32) & _MASK32))


def _hash_uniform(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """Uniform float32 in the open interval (0, 1) per key (top 24 bits, exact in float32)."""
    return ((_hash_bits(keys, salt) >> 8).float() + 0.5) * (2.0**-24)


def _hash_normal(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """About standard normal float32 per key: Irwin-Hall sum of 4 hashed uniforms, rescaled.

    Only additions and multiplications, so a key's value is bit-identical wherever it sits in a
    tensor (vectorised log/cos may differ from their scalar tails in the last bit). Range +-3.46.
    """
    total = _hash_uniform(keys, _derive_seed(salt, 0))
    for j in range(1, 4):
        total = total + _hash_uniform(keys, _derive_seed(salt, j))
    return (total - 2.0) * math.sqrt(3.0)


def _categorical(probs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws from a 1-d probability vector (works for ``n == 0``, unlike multinomial)."""
    cdf = torch.cumsum(probs.double(), 0)
    u = torch.rand(n, generator=generator, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.numel() - 1)


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    return torch.zeros(num_segments, dtype=values.dtype).index_add_(0, segment, values)


def shard_batch_indices(num_batches: int, rank: int, world_size: int) -> range:
    """Global batch indices read by ``rank`` of ``world_size``: ``rank, rank + w, rank + 2w, ...``.

    Every rank gets ``num_batches // world_size`` batches, so that all ranks take the same number
    of steps (a collective would hang otherwise); the last ``num_batches % world_size`` global
    batches are read by nobody.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if num_batches < 0:
        raise ValueError(f"num_batches must be >= 0, got {num_batches}")
    per_rank = num_batches // world_size
    return range(rank, rank + per_rank * world_size, world_size)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


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

    Latent factors and views:
        shared_dim, image_factor_dim, title_factor_dim: sizes of the factor parts.
        category_center_weight: share of the shared factor that is the category's centre.
        image_noise: std of the per-item image noise (the signal has unit std per dimension).
        title_noise_prob, title_category_prob: probability that a title word is a random word / a
            category word; the rest are factor words, which pick a shared or title factor dimension
            with weight ``z ** 2`` and name its sign.
        empty_title_prob: probability of an item without title words.
        stat_noise: std of the noise of each statistic.

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
    shared_dim: int = 8
    image_factor_dim: int = 8
    title_factor_dim: int = 8
    category_center_weight: float = 0.6
    image_noise: float = 1.0
    title_noise_prob: float = 0.15
    title_category_prob: float = 0.2
    empty_title_prob: float = 0.02
    stat_noise: float = 0.5
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
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticTaobaoConfig.{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ValueError(f"cold_fraction must be in [0, 1), got {self.cold_fraction}")
        if self.title_noise_prob + self.title_category_prob > 1.0:
            raise ValueError("title_noise_prob + title_category_prob must be <= 1")
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
        )
        for name in non_negative:
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"SyntheticTaobaoConfig.{name} must be >= 0, got {value}")
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
        _check_split(split)
        return self.num_train_batches if split == TRAIN else self.num_eval_batches


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------


class _PopularityPool:
    """A set of items sampled with Zipf weight, optionally restricted to one category.

    Items are stored sorted by (category, rank) with one cumulative weight array, so a category is
    a contiguous segment and a draw is a single ``searchsorted``: exactly the global Zipf law
    conditioned on the category.
    """

    def __init__(
        self,
        ranks: torch.Tensor,
        categories: torch.Tensor,
        weights: torch.Tensor,
        num_categories: int,
    ):
        # ``ranks`` ascend, so a stable sort by category orders by (category, rank).
        order = torch.sort(categories[ranks], stable=True).indices
        self.ranks = ranks[order]
        counts = torch.bincount(categories[self.ranks], minlength=num_categories)
        self.seg_end = torch.cumsum(counts, 0)
        self.seg_start = self.seg_end - counts
        self.cum = torch.cumsum(weights[self.ranks], 0)
        cum_excl = torch.cat([torch.zeros(1, dtype=torch.float64), self.cum])
        self.start_mass = cum_excl[self.seg_start]
        self.mass = cum_excl[self.seg_end] - self.start_mass
        self.total = float(cum_excl[-1])

    def __len__(self) -> int:
        return self.ranks.numel()

    def category_cdf(self) -> torch.Tensor:
        """Cumulative share of the pool's weight per category (for drawing categories)."""
        return torch.cumsum(self.mass, 0) / self.total

    def sample(self, categories: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Ranks drawn with uniforms ``u`` (float64) within ``categories`` (-1 or empty: any)."""
        c = categories.clamp_min(0)
        ok = (categories >= 0) & (self.mass[c] > 0)
        lo = torch.where(ok, self.start_mass[c], torch.zeros_like(u))
        width = torch.where(ok, self.mass[c], torch.full_like(u, self.total))
        idx = torch.searchsorted(self.cum, lo + u * width, right=True)
        first = torch.where(ok, self.seg_start[c], torch.zeros_like(c))
        last = torch.where(ok, self.seg_end[c], torch.full_like(c, len(self))) - 1
        return self.ranks[torch.maximum(torch.minimum(idx, last), first)]


@dataclass
class ItemTruth:
    """Latent truth of a set of items (rows aligned with the ranks asked for)."""

    ranks: torch.Tensor
    category: torch.Tensor
    group: torch.Tensor
    shared: torch.Tensor
    image: torch.Tensor
    title: torch.Tensor
    quality: torch.Tensor
    cold: torch.Tensor


class ItemCatalog:
    """The items: popularity, categories, shops, brands, latent factors and their modality views.

    Items are indexed internally by popularity rank (0 = most popular); :meth:`ids_of_ranks` and
    :meth:`ranks_of_ids` convert to and from the model's item IDs. Materialised per item: category,
    factors (``shared_dim + image_factor_dim + title_factor_dim + 1`` floats), ID bias, statistics
    and a cold flag. Images, titles, shops and brands are computed on request.
    """

    def __init__(self, config: SyntheticTaobaoConfig):
        self.config = c = config
        self.num_catalog_items = n = c.num_catalog_items
        g = torch.Generator().manual_seed(_derive_seed(c.seed, _TAG_CATALOG))
        self._init_id_map()
        self._init_categories(g)
        self._init_factors(g)
        ranks = torch.arange(n)
        self.zipf_weight = (ranks.double() + 1.0) ** -c.zipf_exponent
        # Share of all interactions taken by more popular items: popularity levels (paper Table 4).
        total = self.zipf_weight.sum()
        self.mass_before = (torch.cumsum(self.zipf_weight, 0) - self.zipf_weight) / total
        self.is_cold = self._init_cold(g)
        self.warm_pool = self._pool(ranks[~self.is_cold])
        self.cold_pool = self._pool(ranks[self.is_cold]) if bool(self.is_cold.any()) else None
        self._init_views(g)

    def _salt(self, tag: int) -> int:
        return _derive_seed(self.config.seed, tag)

    def _pool(self, ranks: torch.Tensor) -> _PopularityPool:
        return _PopularityPool(ranks, self.category, self.zipf_weight, self.config.num_categories)

    # ---- construction ----

    def _init_id_map(self) -> None:
        """Rank -> ID is ``(mult * rank + shift) mod num_items``, ``gcd(mult, num_items) = 1``."""
        n_ids = self.config.num_items
        rng = random.Random(_derive_seed(self.config.seed, _TAG_ID_MAP))
        mult = rng.randrange(1, n_ids)
        while math.gcd(mult, n_ids) != 1:
            mult = rng.randrange(1, n_ids)
        self._id_mult, self._id_shift = mult, rng.randrange(n_ids)
        self._id_mult_inv = pow(mult, -1, n_ids)

    def _init_categories(self, g: torch.Generator) -> None:
        c = self.config
        size_order = torch.randperm(c.num_categories, generator=g)
        weight = torch.empty(c.num_categories, dtype=torch.float64)
        sizes = torch.arange(c.num_categories, dtype=torch.float64) + 1
        weight[size_order] = sizes**-c.category_zipf_exponent
        self.category = _categorical(weight / weight.sum(), self.num_catalog_items, g)
        # Round-robin over a random order: each group gets a third of the categories.
        group_order = torch.randperm(c.num_categories, generator=g)
        self.category_group = torch.empty(c.num_categories, dtype=torch.long)
        self.category_group[group_order] = torch.arange(c.num_categories) % len(MODALITY_GROUPS)
        self.shops_per_category = max(1, c.num_shops // c.num_categories)
        self.brands_per_category = max(1, c.num_brands // c.num_categories)

    def _init_factors(self, g: torch.Generator) -> None:
        c, n = self.config, self.num_catalog_items
        centers = torch.randn(c.num_categories, c.shared_dim, generator=g)
        w = c.category_center_weight
        own = torch.randn(n, c.shared_dim, generator=g)
        self.shared = w * centers[self.category] + math.sqrt(1.0 - w * w) * own
        self.image_factor = torch.randn(n, c.image_factor_dim, generator=g)
        self.title_factor = torch.randn(n, c.title_factor_dim, generator=g)
        self.quality = torch.randn(n, generator=g)
        self.item_bias = c.item_bias_std * torch.randn(n, generator=g)

    def _init_cold(self, g: torch.Generator) -> torch.Tensor:
        c, n = self.config, self.num_catalog_items
        cold = torch.zeros(n, dtype=torch.bool)
        if c.cold_fraction > 0:
            count = min(n - 1, max(1, round(c.cold_fraction * n)))
            cold[torch.randperm(n, generator=g)[:count]] = True
        return cold

    def _init_views(self, g: torch.Generator) -> None:
        c = self.config
        latent = c.shared_dim + c.image_factor_dim
        self.image_projection = torch.randn(latent, c.image_dim, generator=g) / math.sqrt(latent)
        self.image_noise_table = torch.randn(_IMAGE_NOISE_ROWS, c.image_dim, generator=g)
        # Statistic loadings over (popularity, quality, shared[0]): exposure, click rate, orders,
        # amount; further statistics get random loadings.
        known = torch.tensor([[1.0, 0.3, 0.0], [0.2, 1.0, 0.0], [0.6, 0.6, 0.0], [0.1, 0.4, 0.8]])
        extra = max(0, c.num_statistics - known.shape[0])
        loadings = torch.cat([known, torch.randn(extra, 3, generator=g)])
        self.stat_loadings = loadings[: c.num_statistics]
        self.statistics = self._raw_statistics(torch.arange(self.num_catalog_items))
        sample = self.statistics
        if sample.shape[0] > _QUANTILE_SAMPLE:
            sample = sample[torch.linspace(0, sample.shape[0] - 1, _QUANTILE_SAMPLE).long()]
        self.stat_boundaries = [
            {b: quantile_boundaries(sample[:, s].contiguous(), b) for b in c.statistic_buckets}
            for s in range(c.num_statistics)
        ]
        d = c.shared_dim + c.title_factor_dim
        v = c.title_vocab_size
        self.words_per_factor_pool = max(1, min(16, v // (4 * d)))
        self.category_word_offset = 2 * d * self.words_per_factor_pool
        left = v - self.category_word_offset
        self.words_per_category = max(1, min(8, left // (2 * c.num_categories)))

    # ---- IDs and truth ----

    def ids_of_ranks(self, ranks: torch.Tensor) -> torch.Tensor:
        return (ranks.long() * self._id_mult + self._id_shift) % self.config.num_items

    def ranks_of_ids(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`ids_of_ranks`; raises for IDs that are not catalog items."""
        n_ids = self.config.num_items
        ranks = ((item_ids.long() - self._id_shift) % n_ids) * self._id_mult_inv % n_ids
        if ranks.numel() and int(ranks.max()) >= self.num_catalog_items:
            raise ValueError("item IDs outside the catalog (max_catalog_items < num_items)")
        return ranks

    def popularity_feature(self, ranks: torch.Tensor) -> torch.Tensor:
        """1 for the most popular item, falling with log rank to 0 past the last one."""
        return 1.0 - torch.log1p(ranks.float()) / math.log1p(self.num_catalog_items)

    def popularity_level(self, ranks: torch.Tensor) -> torch.Tensor:
        """0..9, 9 = most popular; levels take equal shares of the Zipf interaction mass."""
        level = torch.floor(self.mass_before[ranks] * NUM_POPULARITY_LEVELS).long()
        return (NUM_POPULARITY_LEVELS - 1) - level.clamp(0, NUM_POPULARITY_LEVELS - 1)

    def truth(self, ranks: torch.Tensor) -> ItemTruth:
        category = self.category[ranks]
        return ItemTruth(
            ranks=ranks,
            category=category,
            group=self.category_group[category],
            shared=self.shared[ranks],
            image=self.image_factor[ranks],
            title=self.title_factor[ranks],
            quality=self.quality[ranks],
            cold=self.is_cold[ranks],
        )

    def shops(self, ranks: torch.Tensor) -> torch.Tensor:
        """Shops belong to categories: a block of ``num_shops // num_categories`` per category."""
        k = self.shops_per_category
        pick = _hash_bits(ranks, self._salt(_TAG_SHOP)) % k
        return (self.category[ranks] * k + pick) % self.config.num_shops

    def brands(self, ranks: torch.Tensor) -> torch.Tensor:
        k = self.brands_per_category
        pick = _hash_bits(ranks, self._salt(_TAG_BRAND)) % k
        return (self.category[ranks] * k + pick) % self.config.num_brands

    def id_bias(self, ranks: torch.Tensor) -> torch.Tensor:
        """Click logit shift visible only through the item, shop and brand IDs."""
        c = self.config
        shop = _hash_normal(self.shops(ranks), self._salt(_TAG_SHOP_BIAS)) * c.shop_bias_std
        brand = _hash_normal(self.brands(ranks), self._salt(_TAG_BRAND_BIAS)) * c.brand_bias_std
        return self.item_bias[ranks] + shop + brand

    # ---- modality views ----

    def _raw_statistics(self, ranks: torch.Tensor) -> torch.Tensor:
        """[len(ranks), num_statistics] continuous statistics; noise hashed per (item, stat)."""
        c = self.config
        popularity = self.popularity_feature(ranks) * 4.0 - 2.0
        drivers = torch.stack([popularity, self.quality[ranks], self.shared[ranks, 0]], 1)
        keys = ranks[:, None] * c.num_statistics + torch.arange(c.num_statistics)
        noise = _hash_normal(keys, self._salt(_TAG_STAT_NOISE))
        return drivers @ self.stat_loadings.T + c.stat_noise * noise

    def images(self, ranks: torch.Tensor) -> torch.Tensor:
        """[len(ranks), image_dim] ReLU(projection of shared + image factors + per-item noise).

        Built from element-wise ops in a fixed order (no matmul, no transcendental functions), so an
        item's image is bit-identical whichever other items are in the call (dedup on or off).
        """
        c = self.config
        latent = torch.cat([self.shared[ranks], self.image_factor[ranks]], 1)
        signal = torch.zeros(ranks.numel(), c.image_dim)
        for k in range(latent.shape[1]):
            signal += latent[:, k : k + 1] * self.image_projection[k]
        # Signed sum of 3 rows of a fixed table: ~1e9 distinct noise vectors from a 1024-row table.
        keys = ranks[:, None] * 3 + torch.arange(3)
        bits = _hash_bits(keys, self._salt(_TAG_IMAGE_NOISE))
        rows = bits % _IMAGE_NOISE_ROWS
        signs = ((bits >> 16) & 1).float() * 2.0 - 1.0
        noise = self.image_noise_table[rows[:, 0]] * signs[:, 0:1]
        for j in (1, 2):
            noise += self.image_noise_table[rows[:, j]] * signs[:, j : j + 1]
        return torch.relu(signal + (c.image_noise / math.sqrt(3.0)) * noise)

    def titles(self, ranks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Concatenated title word IDs and [len(ranks)] lengths (0..title_length)."""
        c = self.config
        h = c.title_length
        u_len = _hash_uniform(ranks, self._salt(_TAG_TITLE_LENGTH))
        # Lengths: empty with small probability, otherwise uniform in [ceil(h / 2), h].
        low = (h + 1) // 2
        rescaled = (u_len - c.empty_title_prob) / max(1.0 - c.empty_title_prob, 1e-12)
        lengths = low + torch.floor(rescaled.clamp(0, 1 - 1e-7) * (h - low + 1)).long()
        lengths = torch.where(u_len < c.empty_title_prob, torch.zeros_like(lengths), lengths)
        keys = ranks[:, None] * h + torch.arange(h)
        kind = _hash_uniform(keys, self._salt(_TAG_TITLE_KIND))
        slot = _hash_bits(keys, self._salt(_TAG_TITLE_SLOT))
        factor_word = self._factor_words(ranks, keys, slot)
        category_word = (
            self.category_word_offset
            + self.category[ranks][:, None] * self.words_per_category
            + slot % self.words_per_category
        )
        noise_word = (slot >> 8) % c.title_vocab_size
        is_category = kind < c.title_category_prob + c.title_noise_prob
        words = torch.where(is_category, category_word, factor_word)
        words = torch.where(kind < c.title_noise_prob, noise_word, words) % c.title_vocab_size
        mask = torch.arange(h)[None, :] < lengths[:, None]
        return words[mask], lengths

    def _factor_words(
        self, ranks: torch.Tensor, keys: torch.Tensor, slot: torch.Tensor
    ) -> torch.Tensor:
        """Words of the pool (factor dimension, sign) for a dimension drawn with weight ``z ** 2``.

        Squares and a column-by-column running sum keep the draw bit-identical per item whatever
        the batch (vectorised transcendental functions may differ in the last bit by position).
        """
        z = torch.cat([self.shared[ranks], self.title_factor[ranks]], 1)
        weight = z * z
        cum = [weight[:, 0]]
        for d in range(1, z.shape[1]):
            cum.append(cum[-1] + weight[:, d])
        target = _hash_uniform(keys, self._salt(_TAG_TITLE_DIM)) * cum[-1][:, None]
        dim = torch.zeros_like(keys)
        for d in range(z.shape[1] - 1):
            dim += (cum[d][:, None] <= target).long()
        positive = (z.gather(1, dim) > 0).long()
        return (2 * dim + positive) * self.words_per_factor_pool + slot % self.words_per_factor_pool

    def statistic_buckets(self, ranks: torch.Tensor) -> Dict[str, torch.Tensor]:
        stats = self.statistics[ranks]
        out = {}
        for s, boundaries in enumerate(self.stat_boundaries):
            for b, bounds in boundaries.items():
                out[statistic_feature(s, b)] = bucketize_statistic(stats[:, s].contiguous(), bounds)
        return out

    def features(self, item_ids: torch.Tensor) -> ItemFeatures:
        """All modalities of ``item_ids``: the ``item_features`` callback of :func:`build_batch`."""
        ranks = self.ranks_of_ids(item_ids)
        sparse = {
            ITEM_ID: item_ids.long(),
            SHOP_ID: self.shops(ranks),
            BRAND_ID: self.brands(ranks),
            CATEGORY_ID: self.category[ranks],
        }
        sparse.update(self.statistic_buckets(ranks))
        title_values, title_lengths = self.titles(ranks)
        return ItemFeatures(
            sparse=sparse,
            title_values=title_values,
            title_lengths=title_lengths,
            image=self.images(ranks),
        )


# --------------------------------------------------------------------------------------------
# Users and the stream
# --------------------------------------------------------------------------------------------


@dataclass
class UserInterests:
    """Latent interests of users (rows aligned with the user IDs asked for)."""

    shared: torch.Tensor
    image: torch.Tensor
    title: torch.Tensor
    stat_sensitivity: torch.Tensor
    favorite_categories: torch.Tensor

    def take(self, index: torch.Tensor) -> "UserInterests":
        return UserInterests(
            shared=self.shared[index],
            image=self.image[index],
            title=self.title[index],
            stat_sensitivity=self.stat_sensitivity[index],
            favorite_categories=self.favorite_categories[index],
        )


@dataclass
class Slots:
    """The raw draws of one batch before features are attached."""

    users: torch.Tensor
    candidates: torch.Tensor
    history: torch.Tensor
    lengths: torch.Tensor
    types: torch.Tensor
    gaps: torch.Tensor


class SyntheticTaobao:
    """The generator: ``batch(split, i)`` is a pure function of ``(config.seed, split, i)``.

    Example::

        data = SyntheticTaobao(SyntheticTaobaoConfig.from_model_config(small(), batch_size=1024))
        batch = data.batch("train", 0)
        bayes_auc = auc(batch.meta["click_prob"], batch.labels)
    """

    def __init__(self, config: SyntheticTaobaoConfig, catalog: Optional[ItemCatalog] = None):
        self.config = config
        self.catalog = catalog if catalog is not None else ItemCatalog(config)
        favorites = 0.6 ** torch.arange(config.num_favorite_categories, dtype=torch.float64)
        self._favorite_weights = favorites / favorites.sum()
        self._category_cdf = self.catalog.warm_pool.category_cdf()

    def num_batches(self, split: str) -> int:
        return self.config.num_batches(split)

    def shard(self, split: str, rank: int = 0, world_size: int = 1) -> range:
        """Global batch indices of ``split`` read by ``rank`` (see :func:`shard_batch_indices`)."""
        return shard_batch_indices(self.num_batches(split), rank, world_size)

    # ---- users ----

    def user_interests(self, user_ids: torch.Tensor) -> UserInterests:
        """Hashed per user, so a user is the same in every batch without a per-user table."""
        c = self.config
        widths = [c.shared_dim, c.image_factor_dim, c.title_factor_dim, 1]
        keys = user_ids.long()[:, None] * sum(widths) + torch.arange(sum(widths))
        normals = _hash_normal(keys, _derive_seed(c.seed, _TAG_USER))
        shared, image, title, sens = normals.split(widths, 1)
        f = c.num_favorite_categories
        fav_keys = user_ids.long()[:, None] * f + torch.arange(f)
        u = _hash_uniform(fav_keys, _derive_seed(c.seed, _TAG_FAVORITE)).double()
        favorites = torch.searchsorted(self._category_cdf, u.contiguous(), right=True)
        return UserInterests(
            shared=shared,
            image=image,
            title=title,
            stat_sensitivity=1.0 + c.stat_sensitivity_std * sens.squeeze(1),
            favorite_categories=favorites.clamp_(max=c.num_categories - 1),
        )

    def _sample_users(self, n: int, g: torch.Generator) -> torch.Tensor:
        """Continuous Zipf over user ranks (inverse CDF), used directly as user IDs."""
        c = self.config
        u = torch.rand(n, generator=g, dtype=torch.float64)
        s, m = c.user_zipf_exponent, c.num_users
        if abs(s - 1.0) < 1e-9:
            x = (m + 1.0) ** u - 1.0
        else:
            x = (1.0 + u * ((m + 1.0) ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s)) - 1.0
        return x.floor().long().clamp_(0, m - 1)

    # ---- click model ----

    def affinity(self, users: UserInterests, ranks: torch.Tensor) -> torch.Tensor:
        """User-item match: shared interests plus the term of the item's signal modality.

        image group: ``u_image . z_image``; statistic group: ``sensitivity * quality``; title group:
        ``u_title . z_title`` (dot products scaled by 1/sqrt(dim) to unit variance).
        """
        c = self.config
        cat = self.catalog
        shared = (users.shared * cat.shared[ranks]).sum(1) / math.sqrt(c.shared_dim)
        image = (users.image * cat.image_factor[ranks]).sum(1) / math.sqrt(c.image_factor_dim)
        title = (users.title * cat.title_factor[ranks]).sum(1) / math.sqrt(c.title_factor_dim)
        stat = users.stat_sensitivity * cat.quality[ranks]
        group = cat.category_group[cat.category[ranks]]
        specific = torch.where(
            group == _GROUP_IMAGE, image, torch.where(group == _GROUP_STATISTIC, stat, title)
        )
        return c.shared_interest_weight * shared + specific

    def sequence_effect(
        self,
        candidates: torch.Tensor,
        history: torch.Tensor,
        lengths: torch.Tensor,
        types: torch.Tensor,
        gaps: torch.Tensor,
    ) -> torch.Tensor:
        """Recency- and type-weighted similarity of the candidate to the behaviours, per sample.

        ``sum_t w_t sim_t / (1 + sum_t w_t)`` with ``w_t = type_weight * 2 ** (-gap / half_life)``
        and ``sim = tanh(z_shared . z_shared' / sqrt(d)) + bonus * same_category``: recent carts and
        purchases of similar items raise the click probability (what APGRU's property gate can use).
        """
        c = self.config
        cat = self.catalog
        b = candidates.numel()
        owner = torch.repeat_interleave(torch.arange(b), lengths)
        cand = candidates[owner]
        dot = (cat.shared[cand] * cat.shared[history]).sum(1) / math.sqrt(c.shared_dim)
        same = (cat.category[cand] == cat.category[history]).float()
        sim = torch.tanh(dot) + c.same_category_similarity * same
        type_w = torch.tensor(c.behavior_type_weights, dtype=torch.float32)[types]
        w = type_w * torch.exp2(-gaps.float() / c.recency_half_life_s)
        return _segment_sum(w * sim, owner, b) / (1.0 + _segment_sum(w, owner, b))

    def click_logit(self, slots: Slots, interests: UserInterests) -> torch.Tensor:
        """``base + a_pop pop(cand) + id_bias(cand) + a_int affinity(user, cand) + a_seq seq``."""
        c = self.config
        cat = self.catalog
        cand = slots.candidates
        seq = self.sequence_effect(cand, slots.history, slots.lengths, slots.types, slots.gaps)
        return (
            c.base_logit
            + c.popularity_weight * cat.popularity_feature(cand)
            + cat.id_bias(cand)
            + c.interest_weight * self.affinity(interests, cand)
            + c.sequence_weight * seq
        )

    # ---- slots ----

    def _pick_categories(
        self, interests: UserInterests, focus: float, g: torch.Generator
    ) -> torch.Tensor:
        """A favourite category with probability ``focus``, else -1 (any category, by mass)."""
        n = interests.shared.shape[0]
        focused = torch.rand(n, generator=g) < focus
        which = _categorical(self._favorite_weights, n, g)
        fav = interests.favorite_categories.gather(1, which[:, None]).squeeze(1)
        return torch.where(focused, fav, torch.full_like(fav, -1))

    def _sample_lengths(self, n: int, g: torch.Generator) -> torch.Tensor:
        c = self.config
        u = torch.rand(n, generator=g)
        uniform = torch.randint(1, c.max_history + 1, (n,), generator=g)
        full = torch.full_like(uniform, c.max_history)
        lengths = torch.where(u < c.full_history_prob, full, uniform)
        empty = (u >= c.full_history_prob) & (u < c.full_history_prob + c.empty_history_prob)
        return torch.where(empty, torch.zeros_like(lengths), lengths)

    def _sample_history(
        self, interests: UserInterests, owner: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        """Behaviour items: the best of K popularity-sampled proposals under Gumbel noise."""
        c = self.config
        k = c.affinity_proposals
        proposer = interests.take(owner.repeat_interleave(k))
        cats = self._pick_categories(proposer, c.interest_focus, g)
        u = torch.rand(cats.numel(), generator=g, dtype=torch.float64)
        proposals = self.catalog.warm_pool.sample(cats, u)
        score = c.affinity_sharpness * self.affinity(proposer, proposals)
        uniform = torch.rand(score.numel(), generator=g).clamp_(1e-12, 1 - 1e-7)
        gumbel = -torch.log(-torch.log(uniform))
        pick = (score + gumbel).view(-1, k).argmax(1)
        return proposals.view(-1, k).gather(1, pick[:, None]).squeeze(1)

    def _sample_gaps(self, lengths: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Seconds since each behaviour, oldest first; log-uniform gaps between behaviours."""
        c = self.config
        n = int(lengths.sum())
        lo, hi = math.log(c.min_gap_s), math.log(c.max_gap_s)
        steps = torch.exp(lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
        # Cumulative sum from the most recent behaviour backwards, per sample: reverse, cumsum,
        # subtract each segment's start.
        rev = steps.flip(0)
        rev_lengths = lengths.flip(0)
        cum = torch.cumsum(rev, 0)
        cum_excl = torch.cat([torch.zeros(1, dtype=cum.dtype), cum])
        starts = torch.cumsum(rev_lengths, 0) - rev_lengths
        base = torch.repeat_interleave(cum_excl[starts], rev_lengths)
        return (cum - base).flip(0)

    def _sample_candidates(
        self, split: str, interests: UserInterests, g: torch.Generator
    ) -> torch.Tensor:
        c = self.config
        cats = self._pick_categories(interests, c.candidate_focus, g)
        u = torch.rand(cats.numel(), generator=g, dtype=torch.float64)
        candidates = self.catalog.warm_pool.sample(cats, u)
        cold_pool = self.catalog.cold_pool
        if split == EVAL and cold_pool is not None:
            take_cold = torch.rand(cats.numel(), generator=g) < c.eval_cold_share
            candidates = torch.where(take_cold, cold_pool.sample(cats, u), candidates)
        return candidates

    def _generator(self, split: str, index: int) -> torch.Generator:
        seed = _derive_seed(self.config.seed, _SPLIT_TAGS[split], index)
        return torch.Generator().manual_seed(seed)

    def sample_slots(
        self, split: str, index: int
    ) -> Tuple[Slots, UserInterests, torch.Tensor, torch.Tensor]:
        """Raw draws of batch ``index``: slots, the users' interests, click probabilities, labels.

        :meth:`batch` is these draws with item features attached; tests and analyses use them to
        compare labels with the truth.
        """
        _check_split(split)
        if index < 0:
            raise ValueError(f"batch index must be >= 0, got {index}")
        c = self.config
        g = self._generator(split, index)
        users = self._sample_users(c.batch_size, g)
        interests = self.user_interests(users)
        lengths = self._sample_lengths(c.batch_size, g)
        owner = torch.repeat_interleave(torch.arange(c.batch_size), lengths)
        history = self._sample_history(interests, owner, g)
        type_probs = torch.tensor(c.behavior_type_probs, dtype=torch.float64)
        types = _categorical(type_probs, owner.numel(), g)
        gaps = self._sample_gaps(lengths, g)
        candidates = self._sample_candidates(split, interests, g)
        slots = Slots(users, candidates, history, lengths, types, gaps)
        prob = torch.sigmoid(self.click_logit(slots, interests))
        labels = torch.bernoulli(prob, generator=g)
        return slots, interests, prob, labels

    def batch(self, split: str, index: int, dedup: bool = True) -> MARNBatch:
        """Global batch ``index`` of ``split`` (``dedup`` is passed to :func:`build_batch`)."""
        slots, _, prob, labels = self.sample_slots(split, index)
        cat = self.catalog
        cand = slots.candidates
        candidate_ids = cat.ids_of_ranks(cand)
        meta = {
            "click_prob": prob.float(),
            "candidate_item": candidate_ids,
            "candidate_popularity_rank": cand,
            "candidate_popularity_level": cat.popularity_level(cand),
            "candidate_cold": cat.is_cold[cand],
            "candidate_group": cat.category_group[cat.category[cand]],
        }
        return build_batch(
            candidate_items=candidate_ids,
            history_items=cat.ids_of_ranks(slots.history),
            history_lengths=slots.lengths,
            behavior_types=slots.types,
            behavior_time_buckets=bucketize_time_gap(slots.gaps, self.config.num_time_buckets),
            labels=labels,
            item_features=cat.features,
            user_ids=slots.users,
            meta=meta,
            dedup=dedup,
        )
