"""KJT corruptions of the data: lengths, offsets, values, their dtypes and their layout
(registered, with the families of :mod:`marn_rec.fuzzing.kjt_kinds`, by its ``_KJT_FAMILIES``)."""

from typing import Any, Callable, Optional, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch
from marn_rec.fuzzing.cases import Case, Ctx
from marn_rec.fuzzing.kjt import (
    _has_values,
    _min_numel,
    _noncontiguous,
    _rebuilt,
    _rows,
    _with,
    kjt_from_parts,
    kjt_parts,
)

# Each family below is registered once per KJT field as "<family>[<field>]".


def _kjt_case(ctx: Ctx, field_name: str, edit: Callable[[KeyedJaggedTensor], Any], valid: bool,
              ok: Optional[Callable[[MARNBatch], bool]] = None, reference: bool = True,
              min_length: int = 0) -> Case:
    b = ctx.batch_where(ok, min_length) if ok is not None else ctx.batch(min_length)
    value = _with(b, field_name, edit(getattr(b, field_name)))
    return Case(value, valid, reference=b if (valid and reference) else None)


def _edit_lengths(kjt: KeyedJaggedTensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    return _rebuilt(kjt, lengths=fn(kjt.lengths().clone()))


def _lengths_wrap(ctx: Ctx, field_name: str) -> Case:
    """Lengths whose int64 sum wraps back to the number of values (the issue's 2**62 case)."""

    def fn(lengths: torch.Tensor) -> torch.Tensor:
        n = lengths.numel()
        if n >= 4:
            idx = torch.tensor(ctx.rng.sample(range(n), 4))
            lengths[idx] += 2**62
        elif n >= 2:
            lengths[:2] += -(2**63)  # each wraps negative, the sum wraps back
        else:
            lengths[0] += 2**62
        return lengths

    return _kjt_case(ctx, field_name, lambda k: _edit_lengths(k, fn), valid=False)


def _length_negative(ctx: Ctx, field_name: str) -> Case:
    """One length -1, another one longer: the sum is unchanged."""

    def fn(lengths: torch.Tensor) -> torch.Tensor:
        i = ctx.rng.randrange(lengths.numel())
        j = (i + 1) % lengths.numel()
        if j != i:
            lengths[j] += lengths[i] + 1
        lengths[i] = -1
        return lengths

    return _kjt_case(ctx, field_name, lambda k: _edit_lengths(k, fn), valid=False)


def _length_set(value: int) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def fn(lengths: torch.Tensor) -> torch.Tensor:
            lengths[ctx.rng.randrange(lengths.numel())] = value
            return lengths

        return _kjt_case(ctx, field_name, lambda k: _edit_lengths(k, fn), valid=False)

    return make


def _length_plus_one(ctx: Ctx, field_name: str) -> Case:
    def fn(lengths: torch.Tensor) -> torch.Tensor:
        lengths[ctx.rng.randrange(lengths.numel())] += 1
        return lengths

    return _kjt_case(ctx, field_name, lambda k: _edit_lengths(k, fn), valid=False)


def _length_minus_one(ctx: Ctx, field_name: str) -> Case:
    def fn(lengths: torch.Tensor) -> torch.Tensor:
        nonzero = torch.nonzero(lengths).flatten().tolist()
        lengths[ctx.pick(nonzero)] -= 1
        return lengths

    ok = lambda b: bool((getattr(b, field_name).lengths() > 0).any())  # noqa: E731
    return _kjt_case(ctx, field_name, lambda k: _edit_lengths(k, fn), valid=False, ok=ok)


def _lengths_moved(ctx: Ctx, field_name: str) -> Case:
    """All values of a key in its first row, the other rows empty (sum unchanged): valid for
    titles (a long title is truncated), not for one-value-per-row features."""
    valid = field_name == "item_title"

    def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        keys, values, lengths = kjt_parts(kjt)
        moved = []
        for length in lengths:
            new = torch.zeros_like(length)
            new[0] = length.sum()
            moved.append(new)
        return kjt_from_parts(keys, values, moved)

    ok = lambda b: getattr(b, field_name).stride() >= 2  # noqa: E731
    return _kjt_case(ctx, field_name, edit, valid=valid, ok=ok, reference=False)


def _offsets_inconsistent(ctx: Ctx, field_name: str) -> Case:
    """Lengths and offsets that disagree (one offset off by one)."""

    def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(kjt.lengths()).clone()
        i = ctx.rng.randrange(offsets.numel())
        offsets[i] += 1
        return _rebuilt(kjt, offsets=offsets)

    return _kjt_case(ctx, field_name, edit, valid=False)


def _offsets_only(fn: Callable[[Ctx, torch.Tensor], torch.Tensor], valid: bool):
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(kjt.lengths())
            return KeyedJaggedTensor(
                keys=list(kjt.keys()), values=kjt.values(), offsets=fn(ctx, offsets.clone())
            )

        return _kjt_case(ctx, field_name, edit, valid=valid)

    return make


def _offsets_decreasing(ctx: Ctx, offsets: torch.Tensor) -> torch.Tensor:
    if offsets.numel() >= 3:
        offsets[ctx.rng.randrange(1, offsets.numel() - 1)] = offsets[-1] + 1
    else:
        offsets[-1] += 1
    return offsets


def _lengths_and_offsets(ctx: Ctx, field_name: str) -> Case:
    def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(kjt.lengths())
        return _rebuilt(kjt, offsets=offsets)

    return _kjt_case(ctx, field_name, edit, valid=True)


def _bypass(part: str, dtype: torch.dtype) -> Callable[[Ctx, str], Case]:
    """lengths or offsets of a float dtype, set after the KJT's constructor (which rejects them):
    what a deserialised or hand-made KJT can hold."""

    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            out = _rebuilt(kjt)
            lengths = kjt.lengths()
            if part == "lengths":
                out._lengths = lengths.to(dtype)
            else:
                out._lengths = None
                out._offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths).to(dtype)
            return out

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make


def _value_set(value: int, offset_by_rows: bool = False) -> Callable[[Ctx, str], Case]:
    """One ID of a feature the model reads set to ``value`` (+ the table's rows)."""

    def make(ctx: Ctx, field_name: str) -> Case:
        rows = _rows(ctx.config, field_name)

        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            keys, values, lengths = kjt_parts(kjt)
            candidates = [i for i, k in enumerate(keys) if k in rows and values[i].numel()]
            i = ctx.pick(candidates)
            v = values[i].clone()
            v[ctx.rng.randrange(v.numel())] = value + (rows[keys[i]] if offset_by_rows else 0)
            values[i] = v
            return kjt_from_parts(keys, values, lengths)

        return _kjt_case(ctx, field_name, edit, valid=False, ok=_has_values(field_name, ctx.config))

    return make


def _values_dtype(dtype: torch.dtype, valid: bool = False) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            return _rebuilt(kjt, values=kjt.values().to(dtype))

        ok = _has_values(field_name, ctx.config)
        return _kjt_case(ctx, field_name, edit, valid=valid, ok=ok)

    return make


def _lengths_dtype(dtype: torch.dtype, valid: bool = False) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            return _rebuilt(kjt, lengths=kjt.lengths().to(dtype))

        return _kjt_case(ctx, field_name, edit, valid=valid)

    return make


def _both_int32(ctx: Ctx, field_name: str) -> Case:
    def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return _rebuilt(kjt, values=kjt.values().int(), lengths=kjt.lengths().int())

    return _kjt_case(ctx, field_name, edit, valid=True)


def _noncontiguous_part(part: str) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            values, lengths = kjt.values(), kjt.lengths()
            if part == "values":
                values = _noncontiguous(values)
            else:
                lengths = _noncontiguous(lengths)
            return KeyedJaggedTensor(keys=list(kjt.keys()), values=values, lengths=lengths)

        return _kjt_case(ctx, field_name, edit, valid=True, ok=_min_numel(field_name, part, 2))

    return make


def _storage_offset(ctx: Ctx, field_name: str) -> Case:
    """Valid: values and lengths that are views into larger tensors (non-zero storage offset)."""

    def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        values, lengths = kjt.values(), kjt.lengths()
        pad = torch.full((3,), -7, dtype=values.dtype)
        v = torch.cat([pad, values, values[:2]])[3 : 3 + values.numel()]
        l = torch.cat([torch.full((2,), 99, dtype=lengths.dtype), lengths])[2:]
        return KeyedJaggedTensor(keys=list(kjt.keys()), values=v, lengths=l)

    return _kjt_case(ctx, field_name, edit, valid=True)


def _reshaped(part: str, shape: Tuple[int, ...]) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            values, lengths = kjt.values(), kjt.lengths()
            if part == "values":
                values = values.reshape(shape)
            else:
                lengths = lengths.reshape(shape)
            return KeyedJaggedTensor(keys=list(kjt.keys()), values=values, lengths=lengths)

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make
