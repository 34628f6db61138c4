"""A synthetic Taobao-like click stream that plants the structure MARN exploits and knows the truth.

No public data can be downloaded here, so training runs on this generator (``docs/design.md``,
"Synthetic Taobao-like data"). What it plants:

* Items with Zipf popularity: popularity rank ``r`` (0 = most popular) is sampled with weight
  ``(r + 1) ** -zipf_exponent`` and mapped to an item ID by a seeded affine bijection of
  ``[0, num_items)``, so popular items are spread over the ID space.
* Each item has a category (categories have skewed sizes), a shop and a brand tied to the category,
  and latent factors: a shared part (modality-invariant, centred on its category), an image-specific
  part, a title-specific part and a scalar quality that the statistics show.
* Its modalities are noisy views of those factors: the image is a fixed random projection of
  shared + image factors plus per-item hashed noise, after a ReLU (VGG fc7 vectors are
  non-negative); the title words come from word pools tied to the signs of the (mostly largest)
  shared and title factors, to the category, and from random noise words; the four numeric
  statistics (exposure, click rate, orders, amount) mix popularity, quality and one shared factor
  plus noise, discretised at the model's granularities (10 and 100 quantile buckets).
* Categories fall into three groups that differ in which modality carries the click signal (paper
  Figure 4): clothing-like categories (image), phone/grocery-like ones (statistics), the rest
  (title).
* Users have interest vectors and a few favourite categories. Behaviours are items of the
  favourite categories (or any category), popularity-skewed, resampled towards the user's
  interests; types are click/cart/purchase about 90/5/5; times since the behaviour are seconds,
  bucketised on a log scale.
* A known click probability (see :mod:`.click`), so the Bayes-optimal AUC of any eval set is the AUC
  of ``meta["click_prob"]`` against the labels.
* A cold slice of items never appears in training (neither as candidate nor in history) and shows up
  as eval candidates, and, with ``num_cold_set_batches``, as per-user candidate sets of at least
  ``cold_set_size`` cold items (the ``"cold_sets"`` split, paper Table 5).
* Optional per-item modality quality (missing or uninformative images, generic titles, empty
  statistics of new items) and a redundancy knob between the image and title views; their defaults
  leave the stream bit-identical and none of them changes a click probability.

Streaming and determinism: batch ``i`` of a split is a pure function of ``(seed, split, i)``, drawn
from its own ``torch.Generator``; no batch depends on another. Per-item content (image noise, title
words, shop, brand) comes from a counter-based hash of ``(seed, item)``, so nothing of size
``num_items x image_dim`` is ever materialised: the catalog holds only ``[num_catalog_items, k]``
factors and a few per-item scalars. An item's features are bit-identical in every batch and with
``dedup`` on or off. Sharding: rank ``r`` of ``w`` reads global batches
``r, r + w, r + 2w, ...`` (:func:`shard_batch_indices`).

Modules, in dependency order:

* ``config``: :class:`SyntheticTaobaoConfig` and the split names;
* ``hashing``: counter-based hashes, derived seeds and the salt of each random quantity;
* ``catalog``: :class:`ItemCatalog` (popularity, categories, factors, image/title/statistic views);
* ``users``: :class:`UserInterests`, user activity and hashed interests;
* ``click``: the click model (the planted truth);
* ``stream``: :class:`SyntheticTaobao` (one batch from its index), :class:`Slots`, sharding;
* ``loader``: :class:`SyntheticBatchDataset` and the resumable :func:`make_loader`.
"""

from marn_rec.data.synthetic.catalog import (
    MODALITY_GROUPS,
    NUM_POPULARITY_LEVELS,
    ItemCatalog,
    ItemTruth,
    ModalityQuality,
)
from marn_rec.data.synthetic.config import (
    COLD_SETS,
    EVAL,
    SPLITS,
    TRAIN,
    SyntheticTaobaoConfig,
    _check_split,
)
from marn_rec.data.synthetic.loader import SyntheticBatchDataset, make_loader
from marn_rec.data.synthetic.stream import Slots, SyntheticTaobao, shard_batch_indices
from marn_rec.data.synthetic.users import UserInterests

__all__ = [
    "COLD_SETS",
    "EVAL",
    "MODALITY_GROUPS",
    "NUM_POPULARITY_LEVELS",
    "SPLITS",
    "TRAIN",
    "ItemCatalog",
    "ItemTruth",
    "ModalityQuality",
    "Slots",
    "SyntheticBatchDataset",
    "SyntheticTaobao",
    "SyntheticTaobaoConfig",
    "UserInterests",
    "make_loader",
    "shard_batch_indices",
]
