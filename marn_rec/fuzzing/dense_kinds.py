"""Corruptions of the dense and index inputs of a batch: the item image, candidate and history
indices, history lengths, labels and user IDs."""

from functools import partial
from typing import Any, Callable

import torch

from marn_rec.batch import MARNBatch
from marn_rec.fuzzing.cases import KINDS, Case, Ctx, kind
from marn_rec.fuzzing.kjt import _noncontiguous, _with
from marn_rec.validation import MAX_ABS_FLOAT

def _dense_case(ctx: Ctx, field_name: str, edit: Callable[[Any, MARNBatch], Any], valid: bool,
                reference: bool = True, model_checked: bool = True, min_length: int = 0,
                exact: bool = True) -> Case:
    b = ctx.batch(min_length)
    value = _with(b, field_name, edit(getattr(b, field_name), b))
    return Case(value, valid, reference=b if valid and reference else None,
                model_checked=model_checked, exact=exact)


def _set_entry(value: Any) -> Callable[[Any, MARNBatch], Any]:
    def edit(t: torch.Tensor, b: MARNBatch) -> torch.Tensor:
        t = t.clone()
        flat = t.view(-1)
        flat[torch.randint(0, flat.numel(), (1,)).item()] = value
        return t

    return edit


# Every dense / index field: (name, corruptions). A corruption is (suffix, edit, valid, options).
def _numpy(t: Any, b: MARNBatch) -> Any:
    return t.numpy()


def _to_meta(t: Any, b: MARNBatch) -> Any:
    return t.to("meta")


def _none(t: Any, b: MARNBatch) -> Any:
    return None


def _as_list(t: Any, b: MARNBatch) -> Any:
    return t.tolist()


def _dtype(dtype: torch.dtype) -> Callable[[Any, MARNBatch], Any]:
    return lambda t, b: t.to(dtype)


def _drop_last(t: Any, b: MARNBatch) -> Any:
    return t[:-1]


def _append_first(t: Any, b: MARNBatch) -> Any:
    return torch.cat([t, t[:1]])


def _unsqueeze(t: Any, b: MARNBatch) -> Any:
    return t.unsqueeze(-1)


def _noncontig_dense(t: Any, b: MARNBatch) -> Any:
    return _noncontiguous(t)


def _image_scale(value: float) -> Callable[[Any, MARNBatch], Any]:
    """Every entry at ``value`` in magnitude, random signs."""

    def edit(t: torch.Tensor, b: MARNBatch) -> torch.Tensor:
        signs = torch.randint(0, 2, t.shape).float() * 2 - 1
        return (signs * value).float()

    return edit


def _image_transposed_copy(t: torch.Tensor, b: MARNBatch) -> torch.Tensor:
    return t.t().contiguous().t()


def _image_expanded(t: torch.Tensor, b: MARNBatch) -> torch.Tensor:
    return t[:1].expand_as(t)


_IMAGE = [
    ("nan", _set_entry(float("nan")), False),
    ("inf", _set_entry(float("inf")), False),
    ("neg_inf", _set_entry(float("-inf")), False),
    ("huge_1e20", _set_entry(1e20), False),
    ("max_float32", _image_scale(3.0e38), False),
    ("just_above_limit", _set_entry(MAX_ABS_FLOAT * 1.001), False),
    ("float64", _dtype(torch.float64), False),
    ("float16", _dtype(torch.float16), False),
    ("bfloat16", _dtype(torch.bfloat16), False),
    ("complex64", _dtype(torch.complex64), False),
    ("int64", _dtype(torch.int64), False),
    ("bool", _dtype(torch.bool), False),
    ("rows_one_less", _drop_last, False),
    ("rows_one_more", _append_first, False),
    ("cols_one_less", lambda t, b: t[:, :-1], False),
    ("3d", _unsqueeze, False),
    ("1d", lambda t, b: t.reshape(-1), False),
    ("0d", lambda t, b: t.sum(), False),
    ("none", _none, False),
    ("meta", _to_meta, False),
    ("sparse_layout", lambda t, b: t.to_sparse(), False),
    ("nested", lambda t, b: torch.nested.nested_tensor(list(t)), False),
    ("numpy", _numpy, False),
    ("list", _as_list, False),
    ("noncontiguous", _image_transposed_copy, True),
    ("requires_grad", lambda t, b: t.clone().requires_grad_(), True),
]
_CANDIDATE = [
    ("out_of_range", lambda t, b: _set_entry(b.num_unique_items)(t, b), False),
    ("negative", _set_entry(-1), False),
    ("huge", _set_entry(2**62), False),
    ("int64_min", _set_entry(-(2**63)), False),
    ("float32", _dtype(torch.float32), False),
    ("bool", _dtype(torch.bool), False),
    ("int8", _dtype(torch.int8), False),
    ("int16", _dtype(torch.int16), False),
    ("2d", _unsqueeze, False),
    ("one_less", _drop_last, False),
    ("one_more", _append_first, False),
    ("none", _none, False),
    ("meta", _to_meta, False),
    ("list", _as_list, False),
    ("int32", _dtype(torch.int32), True),
    ("noncontiguous", _noncontig_dense, True),
]
_HISTORY_INDEX = [
    ("out_of_range", lambda t, b: _set_entry(b.num_unique_items)(t, b), False),
    ("negative", _set_entry(-1), False),
    ("huge", _set_entry(2**62), False),
    ("float32", _dtype(torch.float32), False),
    ("int16", _dtype(torch.int16), False),
    ("2d", _unsqueeze, False),
    ("one_less", _drop_last, False),
    ("one_more", _append_first, False),
    ("none", _none, False),
    ("meta", _to_meta, False),
    ("int32", _dtype(torch.int32), True),
    ("noncontiguous", _noncontig_dense, True),
]


def _lengths_sum_kept(fn: Callable[[torch.Tensor], None]) -> Callable[[Any, MARNBatch], Any]:
    def edit(t: torch.Tensor, b: MARNBatch) -> torch.Tensor:
        t = t.clone()
        fn(t)
        return t

    return edit


def _hl_wrap(t: torch.Tensor) -> None:
    if t.numel() >= 4:
        t[:4] += 2**62
    elif t.numel() >= 2:
        t[:2] += -(2**63)
    else:
        t[0] += 2**62


def _hl_negative(t: torch.Tensor) -> None:
    if t.numel() >= 2:
        t[1] += t[0] + 1
    t[0] = -1


_HISTORY_LENGTHS = [
    ("wrap", _lengths_sum_kept(_hl_wrap), False),
    ("negative_sum_kept", _lengths_sum_kept(_hl_negative), False),
    ("huge", _set_entry(2**40), False),
    ("int64_max", _set_entry(2**63 - 1), False),
    ("float32", _dtype(torch.float32), False),
    ("bool", _dtype(torch.bool), False),
    ("int8", _dtype(torch.int8), False),
    ("2d", _unsqueeze, False),
    ("one_less", _drop_last, False),
    ("none", _none, False),
    ("meta", _to_meta, False),
    ("int32", _dtype(torch.int32), True),
    ("noncontiguous", _noncontig_dense, True),
]
_LABELS = [
    ("nan", _set_entry(float("nan")), False),
    ("inf", _set_entry(float("inf")), False),
    ("above_one", _set_entry(1.5), False),
    ("negative", _set_entry(-0.5), False),
    ("huge", _set_entry(1e30), False),
    ("float64", _dtype(torch.float64), False),
    ("float16", _dtype(torch.float16), False),
    ("int64", _dtype(torch.int64), False),
    ("bool", _dtype(torch.bool), False),
    ("one_less", _drop_last, False),
    ("2d", _unsqueeze, False),
    ("none", _none, False),
    ("meta", _to_meta, False),
    ("numpy", _numpy, False),
]
_USER_IDS = [
    ("negative", _set_entry(-1), False),
    ("huge", _set_entry(2**62), False),
    ("float32", _dtype(torch.float32), False),
    ("one_less", _drop_last, False),
    ("2d", _unsqueeze, False),
    ("none", _none, False),
    ("meta", _to_meta, False),
    ("int32", _dtype(torch.int32), True),
]

_BATCH_ONLY = {"labels", "user_ids"}  # read by the loss / metrics, not by MARN.forward
_INEXACT = {"item_image_noncontiguous"}

for _field, _corruptions in (
    ("item_image", _IMAGE),
    ("candidate_index", _CANDIDATE),
    ("history_index", _HISTORY_INDEX),
    ("history_lengths", _HISTORY_LENGTHS),
    ("labels", _LABELS),
    ("user_ids", _USER_IDS),
):
    for _suffix, _edit, _valid in _corruptions:
        KINDS[f"{_field}_{_suffix}"] = partial(
            _dense_case,
            field_name=_field,
            edit=_edit,
            valid=_valid,
            model_checked=_field not in _BATCH_ONLY,
            # Corruptions of history slots need slots.
            min_length=1 if _field == "history_index" else 0,
            # A transposed image takes another BLAS path: equal to float rounding.
            exact=f"{_field}_{_suffix}" not in _INEXACT,
        )


@kind("item_image_at_limit")
def _image_at_limit(ctx: Ctx) -> Case:
    """Valid: every image entry at the largest accepted magnitude; the step must stay finite."""
    b = ctx.batch()
    return Case(_with(b, "item_image", _image_scale(MAX_ABS_FLOAT)(b.item_image, b)), valid=True)


@kind("item_image_tiny_values")
def _image_tiny(ctx: Ctx) -> Case:
    b = ctx.batch()
    return Case(_with(b, "item_image", b.item_image * 1e-38), valid=True)


@kind("item_image_expanded")
def _image_expanded_case(ctx: Ctx) -> Case:
    """Valid: one image broadcast to every item (stride 0); same logits as its dense copy."""
    b = ctx.batch()
    image = _image_expanded(b.item_image, b)
    return Case(_with(b, "item_image", image), valid=True,
                reference=_with(b, "item_image", image.contiguous()), exact=False)
