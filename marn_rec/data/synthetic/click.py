"""The planted truth: the click probability of a (user, behaviours, candidate) sample.

``logit = base + a_pop pop(cand) + id_bias(cand) + a_int affinity(user, cand) + a_seq seq``:

* ``pop``: 1 for the most popular item, falling with log rank (``ItemCatalog.popularity_feature``);
* ``id_bias``: item, shop and brand offsets visible only through the IDs (``ItemCatalog.id_bias``);
* ``affinity``: shared interests plus the term of the modality that carries the candidate's
  category signal (image, statistics or title, paper Figure 4);
* ``seq``: recency- and type-weighted similarity of the candidate to the behaviours.

The labels are Bernoulli draws of ``sigmoid(logit)``, so the Bayes-optimal AUC of any eval set is
the AUC of ``meta["click_prob"]`` against the labels.
"""

import math

import torch

from marn_rec.data.synthetic.catalog import _GROUP_IMAGE, _GROUP_STATISTIC, ItemCatalog
from marn_rec.data.synthetic.config import SyntheticTaobaoConfig
from marn_rec.data.synthetic.users import UserInterests


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    return torch.zeros(num_segments, dtype=values.dtype).index_add_(0, segment, values)


def affinity(
    config: SyntheticTaobaoConfig,
    catalog: ItemCatalog,
    users: UserInterests,
    ranks: torch.Tensor,
) -> torch.Tensor:
    """User-item match: shared interests plus the term of the item's signal modality.

    image group: ``u_image . z_image``; statistic group: ``sensitivity * quality``; title group:
    ``u_title . z_title`` (dot products scaled by 1/sqrt(dim) to unit variance).
    """
    c = config
    cat = catalog
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
    config: SyntheticTaobaoConfig,
    catalog: ItemCatalog,
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
    c = config
    cat = catalog
    b = candidates.numel()
    owner = torch.repeat_interleave(torch.arange(b), lengths)
    cand = candidates[owner]
    dot = (cat.shared[cand] * cat.shared[history]).sum(1) / math.sqrt(c.shared_dim)
    same = (cat.category[cand] == cat.category[history]).float()
    sim = torch.tanh(dot) + c.same_category_similarity * same
    type_w = torch.tensor(c.behavior_type_weights, dtype=torch.float32)[types]
    w = type_w * torch.exp2(-gaps.float() / c.recency_half_life_s)
    return _segment_sum(w * sim, owner, b) / (1.0 + _segment_sum(w, owner, b))


def click_logit(
    config: SyntheticTaobaoConfig,
    catalog: ItemCatalog,
    interests: UserInterests,
    candidates: torch.Tensor,
    history: torch.Tensor,
    lengths: torch.Tensor,
    types: torch.Tensor,
    gaps: torch.Tensor,
) -> torch.Tensor:
    """``base + a_pop pop(cand) + id_bias(cand) + a_int affinity(user, cand) + a_seq seq``."""
    c = config
    cat = catalog
    seq = sequence_effect(c, cat, candidates, history, lengths, types, gaps)
    return (
        c.base_logit
        + c.popularity_weight * cat.popularity_feature(candidates)
        + cat.id_bias(candidates)
        + c.interest_weight * affinity(c, cat, interests, candidates)
        + c.sequence_weight * seq
    )
