"""Random valid inputs for tests and benchmarks (no click structure: see ``marn_rec.data`` for that)."""

from typing import Optional

import torch

from marn_rec.batch import ItemFeatures, MARNBatch, build_batch
from marn_rec.config import MARNConfig
from marn_rec.features import ID_FEATURES, statistic_feature


class RandomCatalog:
    """Fixed random features for every item ID of a config's tables (materialised: small configs).

    Args:
        config (MARNConfig): table sizes.
        seed (int): seed of the features.
        max_title_length (int | None): longest title (defaults to ``title_length``; longer titles
            are truncated by the model).
    """

    def __init__(
        self, config: MARNConfig, seed: int = 0, max_title_length: Optional[int] = None
    ) -> None:
        c = config.tower
        g = torch.Generator().manual_seed(seed)
        n = c.num_items
        self.sparse = {
            name: torch.randint(0, rows, (n,), generator=g)
            for name, rows in zip(
                ID_FEATURES, (n, c.num_shops, c.num_brands, c.num_categories)
            )
        }
        self.sparse[ID_FEATURES[0]] = torch.arange(n)
        for s in range(c.num_statistics):
            for b in c.statistic_buckets:
                self.sparse[statistic_feature(s, b)] = torch.randint(0, b, (n,), generator=g)
        longest = c.title_length if max_title_length is None else max_title_length
        self.title_lengths = torch.randint(0, longest + 1, (n,), generator=g)
        self.title_offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(self.title_lengths)
        self.title_values = torch.randint(
            0, c.title_vocab_size, (int(self.title_lengths.sum()),), generator=g
        )
        self.image = torch.randn(n, c.image_dim, generator=g)

    def features(self, ids: torch.Tensor) -> ItemFeatures:
        """Features of the items ``ids`` (1-d, any order, repeats allowed)."""
        lengths = self.title_lengths[ids]
        starts = self.title_offsets[ids]
        # Positions of each selected title's words, title after title.
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
            torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)[:-1], lengths
        )
        values = self.title_values[torch.repeat_interleave(starts, lengths) + within]
        return ItemFeatures(
            sparse={k: v[ids] for k, v in self.sparse.items()},
            title_values=values,
            title_lengths=lengths,
            image=self.image[ids],
        )


def random_batch(
    config: MARNConfig,
    batch_size: int,
    seed: int = 0,
    catalog: Optional[RandomCatalog] = None,
    dedup: bool = True,
    zipf: float = 1.1,
    min_length: int = 0,
) -> MARNBatch:
    """A batch of random samples whose items follow a Zipf-like popularity.

    Args:
        config (MARNConfig): table sizes and the longest history.
        batch_size (int): B.
        seed (int): seed of the samples.
        catalog (RandomCatalog | None): item features; a new one of seed 0 if None.
        dedup (bool): one row per unique item, or one per slot.
        zipf (float): popularity exponent of the item draw.
        min_length (int): shortest history.
    """
    catalog = catalog or RandomCatalog(config)
    g = torch.Generator().manual_seed(seed)
    n = config.tower.num_items
    popularity = torch.arange(1, n + 1, dtype=torch.float64).pow(-zipf)
    lengths = torch.randint(min_length, config.behavior.max_length + 1, (batch_size,), generator=g)
    total = int(lengths.sum())
    items = torch.multinomial(popularity, batch_size + total, replacement=True, generator=g)
    return build_batch(
        candidate_items=items[:batch_size],
        history_items=items[batch_size:],
        history_lengths=lengths,
        behavior_types=torch.randint(0, config.behavior.num_behavior_types, (total,), generator=g),
        behavior_time_buckets=torch.randint(
            0, config.behavior.num_time_buckets, (total,), generator=g
        ),
        labels=torch.randint(0, 2, (batch_size,), generator=g).float(),
        item_features=catalog.features,
        user_ids=torch.randint(0, max(batch_size // 4, 1), (batch_size,), generator=g),
        dedup=dedup,
    )
