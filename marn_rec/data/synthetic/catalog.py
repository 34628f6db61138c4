"""The items: Zipf popularity, categories, shops, brands, latent factors and their modality views.

Items are indexed internally by popularity rank (0 = most popular) and mapped to model item IDs by
a seeded affine bijection of ``[0, num_items)``, so popular items are spread over the ID space.
Only per-item factors and a few scalars are materialised; images, titles, shops and brands are
computed on request from counter-based hashes (:mod:`.hashing`), bit-identical in every batch.
"""

import math
import random
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from marn_rec.batch import ItemFeatures
from marn_rec.config import IMAGE, STATISTIC, TITLE
from marn_rec.data.synthetic.config import SyntheticTaobaoConfig
from marn_rec.data.synthetic.hashing import (
    _TAG_BRAND,
    _TAG_BRAND_BIAS,
    _TAG_CATALOG,
    _TAG_ID_MAP,
    _TAG_IMAGE_GROUP,
    _TAG_IMAGE_NOISE,
    _TAG_IMAGE_QUALITY,
    _TAG_SHOP,
    _TAG_SHOP_BIAS,
    _TAG_STAT_NOISE,
    _TAG_STAT_QUALITY,
    _TAG_TITLE_DIM,
    _TAG_TITLE_KIND,
    _TAG_TITLE_LENGTH,
    _TAG_TITLE_QUALITY,
    _TAG_TITLE_SLOT,
    _categorical,
    _derive_seed,
    _hash_bits,
    _hash_normal,
    _hash_uniform,
)
from marn_rec.features import (
    BRAND_ID,
    CATEGORY_ID,
    ITEM_ID,
    SHOP_ID,
    bucketize_statistic,
    quantile_boundaries,
    statistic_feature,
)

# Which modality carries a category's click signal; meta["candidate_group"] indexes this tuple.
MODALITY_GROUPS: Tuple[str, ...] = (IMAGE, STATISTIC, TITLE)
_GROUP_IMAGE, _GROUP_STATISTIC, _GROUP_TITLE = 0, 1, 2
NUM_POPULARITY_LEVELS = 10
_IMAGE_NOISE_ROWS = 1024  # rows of the shared noise table whose signed sums give per-item noise
_QUANTILE_SAMPLE = 1 << 20  # statistic boundaries come from at most this many catalog items


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


@dataclass
class ModalityQuality:
    """Which modality views of a set of items are degraded (the quality knobs of
    :class:`SyntheticTaobaoConfig`); rows aligned with the ranks asked for, bool each."""

    image_missing: torch.Tensor
    image_uninformative: torch.Tensor
    title_empty: torch.Tensor
    title_generic: torch.Tensor
    statistics_empty: torch.Tensor


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
        self.category_centers = centers  # the part of the shared factor an item's category sets
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
        # Its own generator, so that the default stream (weight 0) stays bit-identical.
        look = torch.Generator().manual_seed(self._salt(_TAG_IMAGE_GROUP))
        self.image_group_look = torch.randn(len(MODALITY_GROUPS), c.image_dim, generator=look)
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

    def modality_quality(self, ranks: torch.Tensor) -> ModalityQuality:
        """Which of the items' modality views the quality knobs degraded (all False by default)."""
        c = self.config
        image_missing, image_uninformative = self._image_quality(ranks)
        u_len = _hash_uniform(ranks, self._salt(_TAG_TITLE_LENGTH))
        return ModalityQuality(
            image_missing=image_missing,
            image_uninformative=image_uninformative,
            title_empty=u_len < c.empty_title_prob,
            title_generic=self._generic_title(ranks),
            statistics_empty=self._empty_statistics(ranks),
        )

    def _image_quality(self, ranks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(missing, uninformative) per item, from one hashed uniform: exclusive."""
        c = self.config
        if c.missing_image_prob == 0 and c.uninformative_image_prob == 0:
            none = torch.zeros(ranks.shape, dtype=torch.bool)
            return none, none.clone()
        u = _hash_uniform(ranks, self._salt(_TAG_IMAGE_QUALITY))
        missing = u < c.missing_image_prob
        return missing, ~missing & (u < c.missing_image_prob + c.uninformative_image_prob)

    def _generic_title(self, ranks: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.generic_title_prob == 0:
            return torch.zeros(ranks.shape, dtype=torch.bool)
        return _hash_uniform(ranks, self._salt(_TAG_TITLE_QUALITY)) < c.generic_title_prob

    def _empty_statistics(self, ranks: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.cold_empty_statistics_prob == 0:
            return torch.zeros(ranks.shape, dtype=torch.bool)
        u = _hash_uniform(ranks, self._salt(_TAG_STAT_QUALITY))
        return self.is_cold[ranks] & (u < c.cold_empty_statistics_prob)

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
        if c.cold_empty_statistics_prob > 0:
            # A new item's statistics show no history: least popular, nothing of its quality.
            empty = self._empty_statistics(ranks)
            blank = torch.tensor([-2.0, 0.0, 0.0]).expand_as(drivers)
            drivers = torch.where(empty[:, None], blank, drivers)
        keys = ranks[:, None] * c.num_statistics + torch.arange(c.num_statistics)
        noise = _hash_normal(keys, self._salt(_TAG_STAT_NOISE))
        return drivers @ self.stat_loadings.T + c.stat_noise * noise

    def images(self, ranks: torch.Tensor) -> torch.Tensor:
        """[len(ranks), image_dim] ReLU(projection of shared + image factors + per-item noise).

        Built from element-wise ops in a fixed order (no matmul, no transcendental functions), so an
        item's image is bit-identical whichever other items are in the call (dedup on or off).
        """
        c = self.config
        shared = self.shared[ranks]
        if c.shared_view_weight != 1.0:
            shared = shared * c.shared_view_weight
        latent = torch.cat([shared, self.image_factor[ranks]], 1)
        signal = torch.zeros(ranks.numel(), c.image_dim)
        for k in range(latent.shape[1]):
            signal += latent[:, k : k + 1] * self.image_projection[k]
        missing, uninformative = self._image_quality(ranks)
        if c.uninformative_image_prob > 0:
            signal = torch.where(uninformative[:, None], torch.zeros_like(signal), signal)
        if c.image_group_weight > 0:  # a placeholder image still looks like its category
            group = self.category_group[self.category[ranks]]
            signal = signal + c.image_group_weight * self.image_group_look[group]
        # Signed sum of 3 rows of a fixed table: ~1e9 distinct noise vectors from a 1024-row table.
        keys = ranks[:, None] * 3 + torch.arange(3)
        bits = _hash_bits(keys, self._salt(_TAG_IMAGE_NOISE))
        rows = bits % _IMAGE_NOISE_ROWS
        signs = ((bits >> 16) & 1).float() * 2.0 - 1.0
        noise = self.image_noise_table[rows[:, 0]] * signs[:, 0:1]
        for j in (1, 2):
            noise += self.image_noise_table[rows[:, j]] * signs[:, j : j + 1]
        image = torch.relu(signal + (c.image_noise / math.sqrt(3.0)) * noise)
        if c.missing_image_prob > 0:
            image = torch.where(missing[:, None], torch.zeros_like(image), image)
        return image

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
        if c.generic_title_prob > 0:  # a generic title names the category, not the item
            is_category = is_category | self._generic_title(ranks)[:, None]
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
        shared = self.shared[ranks]
        if self.config.shared_view_weight != 1.0:
            shared = shared * self.config.shared_view_weight
        z = torch.cat([shared, self.title_factor[ranks]], 1)
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
