"""Kinds over a whole batch: histories (too long, empty, full) and their placeholder, soft labels,
``meta``, the batch's structure (empty, no items, unused items, not deduplicated), and inputs that
are not a batch at all."""

from dataclasses import fields, replace
from typing import Any, Callable

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch
from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE, TITLE_WORDS
from marn_rec.fuzzing.build_kinds import _built
from marn_rec.fuzzing.cases import KINDS, Case, Ctx, KindFn, kind
from marn_rec.fuzzing.kjt import _with, kjt_from_parts, kjt_parts
from marn_rec.testing import random_batch

@kind("history_lengths_above_max_length")
def _hl_above_max(ctx: Ctx) -> Case:
    """A history longer than max_length, with consistent slots and properties: only the
    max_length bound can catch it (the model pads to max_length)."""
    t = ctx.config.behavior.max_length
    lengths = torch.randint(0, t + 1, (ctx.rng.randint(1, 6),), generator=ctx.gen)
    lengths[ctx.rng.randrange(lengths.numel())] = t + ctx.rng.randint(1, 5)
    return Case(_built(ctx, lengths), valid=False)


@kind("history_lengths_all_zero")
def _hl_zero(ctx: Ctx) -> Case:
    """Valid: no user has a behaviour (N = 0, one placeholder property)."""
    return Case(_built(ctx, torch.zeros(ctx.rng.randint(1, 6), dtype=torch.long)), valid=True)


@kind("history_lengths_all_max")
def _hl_full(ctx: Ctx) -> Case:
    """Valid: every history exactly max_length long."""
    t = ctx.config.behavior.max_length
    return Case(_built(ctx, torch.full((ctx.rng.randint(1, 6),), t, dtype=torch.long)), valid=True)


@kind("history_property_no_placeholder")
def _no_placeholder(ctx: Ctx) -> Case:
    """N = 0 but history_property of stride 0 (no placeholder behaviour)."""
    b = _built(ctx, torch.zeros(ctx.rng.randint(1, 6), dtype=torch.long))
    empty = torch.zeros(0, dtype=torch.long)
    kjt = KeyedJaggedTensor(keys=[BEHAVIOR_TYPE, BEHAVIOR_TIME], values=empty, lengths=empty)
    return Case(_with(b, "history_property", kjt), valid=False)


@kind("history_property_placeholder_out_of_range")
def _placeholder_bad(ctx: Ctx) -> Case:
    b = _built(ctx, torch.zeros(ctx.rng.randint(1, 6), dtype=torch.long))
    bad = torch.tensor([ctx.config.behavior.num_behavior_types, 0])
    ones = torch.ones(2, dtype=torch.long)
    kjt = KeyedJaggedTensor(keys=[BEHAVIOR_TYPE, BEHAVIOR_TIME], values=bad, lengths=ones)
    return Case(_with(b, "history_property", kjt), valid=False)


@kind("labels_soft")
def _soft_labels(ctx: Ctx) -> Case:
    """Valid: labels anywhere in [0, 1]."""
    b = ctx.batch()
    return Case(_with(b, "labels", torch.rand(b.batch_size, generator=ctx.gen)), valid=True)


def _meta_case(edit: Callable[[MARNBatch], Any], valid: bool) -> KindFn:
    def make(ctx: Ctx) -> Case:
        b = ctx.batch()
        return Case(replace(b, meta=edit(b)), valid, reference=b if valid else None,
                    model_checked=False)

    return make


KINDS["meta_none"] = _meta_case(lambda b: None, False)
KINDS["meta_list"] = _meta_case(lambda b: [torch.zeros(b.batch_size)], False)
KINDS["meta_key_not_str"] = _meta_case(lambda b: {1: torch.zeros(b.batch_size)}, False)
KINDS["meta_value_not_tensor"] = _meta_case(lambda b: {"x": [0.0] * b.batch_size}, False)
KINDS["meta_value_wrong_rows"] = _meta_case(lambda b: {"x": torch.zeros(b.batch_size + 1)}, False)
KINDS["meta_value_0d"] = _meta_case(lambda b: {"x": torch.tensor(1.0)}, False)
KINDS["meta_value_meta_device"] = _meta_case(
    lambda b: {"x": torch.zeros(b.batch_size, device="meta")}, False
)
KINDS["meta_extra_entry"] = _meta_case(lambda b: {"click_prob": torch.rand(b.batch_size, 3)}, True)


@kind("batch_identity")
def _identity(ctx: Ctx) -> Case:
    b = ctx.batch()
    return Case(b, valid=True, reference=b)


@kind("batch_not_deduplicated")
def _not_dedup(ctx: Ctx) -> Case:
    """Valid: one item row per slot instead of per unique item: the same predictions (to float
    rounding)."""
    seed = ctx.rng.randrange(2**31)
    size = ctx.rng.randint(1, 8)
    dedup = random_batch(ctx.config, size, seed=seed, catalog=ctx.catalog)
    per_slot = random_batch(ctx.config, size, seed=seed, catalog=ctx.catalog, dedup=False)
    return Case(per_slot, valid=True, reference=dedup, exact=False)


@kind("batch_empty")
def _empty(ctx: Ctx) -> Case:
    """No sample at all (TorchRec used to fail inside with an IndexError)."""
    return Case(_built(ctx, torch.zeros(0, dtype=torch.long)), valid=False)


@kind("batch_zero_items")
def _zero_items(ctx: Ctx) -> Case:
    """Samples whose candidates point into zero unique items."""
    b = _built(ctx, torch.zeros(ctx.rng.randint(1, 4), dtype=torch.long))
    empty = torch.zeros(0, dtype=torch.long)
    sparse = KeyedJaggedTensor(keys=b.item_sparse.keys(), values=empty, lengths=empty)
    title = KeyedJaggedTensor(keys=[TITLE_WORDS], values=empty, lengths=empty)
    image = torch.zeros(0, ctx.config.tower.image_dim)
    return Case(replace(b, item_sparse=sparse, item_title=title, item_image=image), valid=False)


@kind("batch_more_items_than_used")
def _unused_items(ctx: Ctx) -> Case:
    """Valid: item rows that no slot refers to (they get zero weight)."""
    b = ctx.batch()
    ids = torch.randint(0, ctx.config.tower.num_items, (3,), generator=ctx.gen)
    extra = ctx.catalog.features(ids)
    sparse_keys, sv, sl = kjt_parts(b.item_sparse)
    for i, k in enumerate(sparse_keys):
        sv[i] = torch.cat([sv[i], extra.sparse[k]])
        sl[i] = torch.cat([sl[i], torch.ones(3, dtype=torch.long)])
    tk, tv, tl = kjt_parts(b.item_title)
    title = kjt_from_parts(
        tk, [torch.cat([tv[0], extra.title_values])], [torch.cat([tl[0], extra.title_lengths])]
    )
    return Case(replace(b, item_sparse=kjt_from_parts(sparse_keys, sv, sl), item_title=title,
                        item_image=torch.cat([b.item_image, extra.image])), valid=True)


def _not_a_batch(make: Callable[[MARNBatch], Any]) -> KindFn:
    def fn(ctx: Ctx) -> Case:
        return Case(make(ctx.batch()), valid=False, model_checked=False)

    return fn


KINDS["not_a_batch_none"] = _not_a_batch(lambda b: None)
KINDS["not_a_batch_dict"] = _not_a_batch(lambda b: b.model_inputs())
KINDS["not_a_batch_tuple"] = _not_a_batch(lambda b: tuple(getattr(b, f.name) for f in fields(b)))
KINDS["not_a_batch_string"] = _not_a_batch(lambda b: "batch")
KINDS["not_a_batch_tensor"] = _not_a_batch(lambda b: b.candidate_index)
