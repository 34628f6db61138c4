"""The users: Zipf-distributed activity and hashed latent interests (no per-user table).

A user's interests are a pure function of ``(seed, user ID)``: shared, image and title interest
vectors (matched against the item factors of :mod:`.catalog`), a sensitivity to item quality (what
the statistics show) and a few favourite categories, drawn with the catalog's category mass.
"""

from dataclasses import dataclass

import torch

from marn_rec.data.synthetic.config import SyntheticTaobaoConfig
from marn_rec.data.synthetic.hashing import (
    _TAG_FAVORITE,
    _TAG_USER,
    _derive_seed,
    _hash_normal,
    _hash_uniform,
)


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


def hash_interests(
    config: SyntheticTaobaoConfig, user_ids: torch.Tensor, category_cdf: torch.Tensor
) -> UserInterests:
    """Interests of ``user_ids``; favourites are drawn from ``category_cdf`` (float64, ascending).

    Hashed per user, so a user is the same in every batch without a per-user table.
    """
    c = config
    widths = [c.shared_dim, c.image_factor_dim, c.title_factor_dim, 1]
    keys = user_ids.long()[:, None] * sum(widths) + torch.arange(sum(widths))
    normals = _hash_normal(keys, _derive_seed(c.seed, _TAG_USER))
    shared, image, title, sens = normals.split(widths, 1)
    f = c.num_favorite_categories
    fav_keys = user_ids.long()[:, None] * f + torch.arange(f)
    u = _hash_uniform(fav_keys, _derive_seed(c.seed, _TAG_FAVORITE)).double()
    favorites = torch.searchsorted(category_cdf, u.contiguous(), right=True)
    return UserInterests(
        shared=shared,
        image=image,
        title=title,
        stat_sensitivity=1.0 + c.stat_sensitivity_std * sens.squeeze(1),
        favorite_categories=favorites.clamp_(max=c.num_categories - 1),
    )


def sample_users(config: SyntheticTaobaoConfig, n: int, g: torch.Generator) -> torch.Tensor:
    """``n`` user IDs: continuous Zipf over user ranks (inverse CDF), ranks used directly as IDs.

    Active users recur, so per-user AUC has users with several samples.
    """
    c = config
    u = torch.rand(n, generator=g, dtype=torch.float64)
    s, m = c.user_zipf_exponent, c.num_users
    if abs(s - 1.0) < 1e-9:
        x = (m + 1.0) ** u - 1.0
    else:
        x = (1.0 + u * ((m + 1.0) ** (1.0 - s) - 1.0)) ** (1.0 / (1.0 - s)) - 1.0
    return x.floor().long().clamp_(0, m - 1)
