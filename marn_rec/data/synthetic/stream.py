"""The stream: batch ``i`` of a split drawn from its own seeded generator, and its rank sharding.

Batch ``i`` of a split is a pure function of ``(seed, split, i)``, drawn from its own
``torch.Generator``; no batch depends on another, so a loader can resume or skip ahead for free.
Sharding: rank ``r`` of ``w`` reads global batches ``r, r + w, r + 2w, ...``
(:func:`shard_batch_indices`).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from marn_rec.batch import MARNBatch, build_batch
from marn_rec.data.synthetic import click
from marn_rec.data.synthetic.catalog import ItemCatalog
from marn_rec.data.synthetic.config import (
    _SPLIT_TAGS,
    COLD_SETS,
    EVAL,
    TRAIN,
    SyntheticTaobaoConfig,
    _check_split,
)
from marn_rec.data.synthetic.hashing import _categorical, _derive_seed
from marn_rec.data.synthetic.users import UserInterests, hash_interests, sample_users
from marn_rec.features import bucketize_time_gap


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
        if config.num_cold_set_batches:
            cold = 0 if self.catalog.cold_pool is None else len(self.catalog.cold_pool)
            if config.cold_set_size > cold:
                raise ValueError(
                    f"cold_set_size={config.cold_set_size} exceeds the {cold} cold items"
                )

    def num_batches(self, split: str) -> int:
        return self.config.num_batches(split)

    def shard(self, split: str, rank: int = 0, world_size: int = 1) -> range:
        """Global batch indices of ``split`` read by ``rank`` (see :func:`shard_batch_indices`)."""
        return shard_batch_indices(self.num_batches(split), rank, world_size)

    # ---- users ----

    def user_interests(self, user_ids: torch.Tensor) -> UserInterests:
        """Hashed per user, so a user is the same in every batch without a per-user table."""
        return hash_interests(self.config, user_ids, self._category_cdf)

    # ---- click model (see click.py) ----

    def affinity(self, users: UserInterests, ranks: torch.Tensor) -> torch.Tensor:
        """User-item match: see :func:`marn_rec.data.synthetic.click.affinity`."""
        return click.affinity(self.config, self.catalog, users, ranks)

    def sequence_effect(
        self,
        candidates: torch.Tensor,
        history: torch.Tensor,
        lengths: torch.Tensor,
        types: torch.Tensor,
        gaps: torch.Tensor,
    ) -> torch.Tensor:
        """Behaviour term: see :func:`marn_rec.data.synthetic.click.sequence_effect`."""
        return click.sequence_effect(
            self.config, self.catalog, candidates, history, lengths, types, gaps
        )

    def click_logit(self, slots: Slots, interests: UserInterests) -> torch.Tensor:
        """``base + a_pop pop(cand) + id_bias(cand) + a_int affinity(user, cand) + a_seq seq``."""
        return click.click_logit(
            self.config,
            self.catalog,
            interests,
            slots.candidates,
            slots.history,
            slots.lengths,
            slots.types,
            slots.gaps,
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

    def _cold_set_candidates(
        self, interests: UserInterests, g: torch.Generator
    ) -> torch.Tensor:
        """[users, cold_set_size] distinct cold items per user: weighted sampling without
        replacement (Gumbel top-k) with the law of one eval candidate from the cold pool, i.e.
        weight ``zipf(item) * (focus * sum_k fav_k [cat = f_k] / mass(f_k) + (1 - focus) / mass)``
        (a favourite category without cold items gives its share to any category, as
        :meth:`_PopularityPool.sample` does)."""
        c = self.config
        pool = self.catalog.cold_pool
        assert pool is not None  # checked at construction
        ranks = pool.ranks
        zipf = self.catalog.zipf_weight[ranks]
        cats = self.catalog.category[ranks]
        n_users = interests.shared.shape[0]
        fav = interests.favorite_categories  # [users, F]
        fav_mass = pool.mass[fav]  # [users, F]
        share = torch.where(fav_mass > 0, self._favorite_weights[None, :], torch.zeros_like(fav_mass))
        any_share = (1.0 - c.candidate_focus) + c.candidate_focus * (1.0 - share.sum(1))
        per_cat = torch.zeros(n_users, c.num_categories, dtype=torch.float64)
        per_cat.scatter_add_(1, fav, c.candidate_focus * share / fav_mass.clamp_min(1e-300))
        weight = zipf[None, :] * (per_cat[:, cats] + (any_share / pool.total)[:, None])
        uniform = torch.rand(weight.shape, generator=g, dtype=torch.float64).clamp_(1e-300, 1.0)
        keys = torch.log(weight) - torch.log(-torch.log(uniform))
        return ranks[torch.topk(keys, c.cold_set_size, dim=1).indices]

    def sample_cold_set_slots(
        self, index: int
    ) -> Tuple[Slots, UserInterests, torch.Tensor, torch.Tensor]:
        """Raw draws of cold-set batch ``index`` (see :meth:`sample_slots`): each of
        ``cold_set_users_per_batch`` users has one history and ``cold_set_size`` distinct cold
        candidates, one sample each, user after user."""
        c = self.config
        if not 0 <= index < c.num_cold_set_batches:
            raise ValueError(
                f"cold-set batch index must be in [0, {c.num_cold_set_batches}), got {index}"
            )
        g = self._generator(COLD_SETS, index)
        k, size = c.cold_set_users_per_batch, c.cold_set_size
        users = sample_users(c, k, g)
        interests = self.user_interests(users)
        lengths = self._sample_lengths(k, g)
        owner = torch.repeat_interleave(torch.arange(k), lengths)
        history = self._sample_history(interests, owner, g)
        type_probs = torch.tensor(c.behavior_type_probs, dtype=torch.float64)
        types = _categorical(type_probs, owner.numel(), g)
        gaps = self._sample_gaps(lengths, g)
        candidates = self._cold_set_candidates(interests, g).reshape(-1)
        # Every candidate of a user's set sees that user's history.
        sample_user = torch.arange(k).repeat_interleave(size)
        starts = torch.cumsum(lengths, 0) - lengths
        sample_lengths = lengths[sample_user]
        within = torch.arange(int(sample_lengths.sum())) - torch.repeat_interleave(
            torch.cumsum(sample_lengths, 0) - sample_lengths, sample_lengths
        )
        behaviour = torch.repeat_interleave(starts[sample_user], sample_lengths) + within
        slots = Slots(
            users[sample_user],
            candidates,
            history[behaviour],
            sample_lengths,
            types[behaviour],
            gaps[behaviour],
        )
        sample_interests = interests.take(sample_user)
        prob = torch.sigmoid(self.click_logit(slots, sample_interests))
        labels = torch.bernoulli(prob, generator=g)
        return slots, sample_interests, prob, labels

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
        if split == COLD_SETS:
            return self.sample_cold_set_slots(index)
        if split == EVAL and index >= c.num_eval_batches and c.num_cold_set_batches:
            return self.sample_cold_set_slots(index - c.num_eval_batches)
        g = self._generator(split, index)
        users = sample_users(c, c.batch_size, g)
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
        c = self.config
        if split != TRAIN and c.num_cold_set_batches:
            # -1 outside a set; a set's ID is unique over the cold-set batches.
            set_index = index - c.num_eval_batches if split == EVAL else index
            if set_index >= 0:
                first = set_index * c.cold_set_users_per_batch
                sets = first + torch.arange(cand.numel()) // c.cold_set_size
            else:
                sets = torch.full((cand.numel(),), -1, dtype=torch.long)
            meta["candidate_set"] = sets
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
