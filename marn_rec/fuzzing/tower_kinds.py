"""Corruptions of the standalone tower's inputs (target ``"tower"``): item weights, and a few of
the item features it reads."""

from dataclasses import replace
from typing import Any, Callable

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.features import TITLE_WORDS
from marn_rec.fuzzing.cases import KINDS, Case, Ctx, KindFn, TowerInputs
from marn_rec.fuzzing.dense_kinds import _set_entry
from marn_rec.fuzzing.kjt import kjt_from_parts, kjt_parts
from marn_rec.validation import MAX_ABS_FLOAT

def _tower_case(edit: Callable[[TowerInputs, Ctx], TowerInputs], valid: bool) -> KindFn:
    def make(ctx: Ctx) -> Case:
        b = ctx.batch()
        u = b.num_unique_items
        inputs = TowerInputs(b.item_sparse, b.item_title, b.item_image, torch.ones(u))
        return Case(edit(inputs, ctx), valid, target="tower")

    return make


def _weights(fn: Callable[[torch.Tensor, Ctx], Any]) -> Callable[[TowerInputs, Ctx], TowerInputs]:
    return lambda t, ctx: replace(t, item_weights=fn(t.item_weights, ctx))


def _w_set(value: float) -> Callable[[torch.Tensor, Ctx], torch.Tensor]:
    def fn(w: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        w = w.clone()
        w[ctx.rng.randrange(w.numel())] = value
        return w

    return fn


_TOWER = {
    "item_weights_nan": (_weights(_w_set(float("nan"))), False),
    "item_weights_inf": (_weights(_w_set(float("inf"))), False),
    "item_weights_negative": (_weights(_w_set(-1.0)), False),
    "item_weights_huge": (_weights(_w_set(1e20)), False),
    "item_weights_just_above_limit": (_weights(_w_set(MAX_ABS_FLOAT * 1.001)), False),
    "item_weights_float64": (_weights(lambda w, ctx: w.double()), False),
    "item_weights_int64": (_weights(lambda w, ctx: w.long()), False),
    "item_weights_bool": (_weights(lambda w, ctx: w.bool()), False),
    "item_weights_one_less": (_weights(lambda w, ctx: w[:-1]), False),
    "item_weights_2d": (_weights(lambda w, ctx: w.unsqueeze(1)), False),
    "item_weights_meta": (_weights(lambda w, ctx: w.to("meta")), False),
    "item_weights_list": (_weights(lambda w, ctx: w.tolist()), False),
    "item_weights_random": (
        _weights(lambda w, ctx: torch.rand(w.shape, generator=ctx.gen) * 5), True
    ),
    "item_weights_zero": (_weights(lambda w, ctx: torch.zeros_like(w)), True),
    "item_weights_at_limit": (_weights(lambda w, ctx: torch.full_like(w, MAX_ABS_FLOAT)), True),
    "item_weights_none": (_weights(lambda w, ctx: None), True),
    "tower_image_nan": (
        lambda t, ctx: replace(t, item_image=_set_entry(float("nan"))(t.item_image, None)), False
    ),
    "tower_image_float64": (lambda t, ctx: replace(t, item_image=t.item_image.double()), False),
    "tower_zero_items": (
        lambda t, ctx: TowerInputs(
            KeyedJaggedTensor(keys=t.item_sparse.keys(), values=torch.zeros(0, dtype=torch.long),
                              lengths=torch.zeros(0, dtype=torch.long)),
            KeyedJaggedTensor(keys=[TITLE_WORDS], values=torch.zeros(0, dtype=torch.long),
                              lengths=torch.zeros(0, dtype=torch.long)),
            t.item_image[:0],
            torch.zeros(0),
        ),
        False,
    ),
    "tower_keys_reversed": (
        lambda t, ctx: replace(
            t, item_sparse=kjt_from_parts(*[x[::-1] for x in kjt_parts(t.item_sparse)])
        ),
        True,
    ),
    "tower_title_stride_one_less": (
        lambda t, ctx: replace(t, item_title=_stride_changed_kjt(t.item_title)), False
    ),
}


def _stride_changed_kjt(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
    keys, values, lengths = kjt_parts(kjt)
    for i in range(len(keys)):
        last = int(lengths[i][-1])
        values[i] = values[i][: values[i].numel() - last]
        lengths[i] = lengths[i][:-1]
    return kjt_from_parts(keys, values, lengths)


for _name, (_edit, _valid) in _TOWER.items():
    KINDS[_name] = _tower_case(_edit, _valid)
