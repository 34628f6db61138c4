"""KJT corruptions of the structure: keys, batch size (stride), declared derived values and caches,
not a KJT at all; and ``_KJT_FAMILIES``, which registers every KJT family (these and those of
:mod:`marn_rec.fuzzing.kjt_data`) once per KJT field."""

from functools import partial
from typing import Any, Callable, Dict, Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.fuzzing.cases import KINDS, Case, Ctx
from marn_rec.fuzzing.kjt import KJT_FIELDS, _empty_kjt, _rebuilt, _rows, kjt_from_parts, kjt_parts
from marn_rec.fuzzing.kjt_data import (
    _both_int32,
    _bypass,
    _kjt_case,
    _length_minus_one,
    _length_negative,
    _length_plus_one,
    _length_set,
    _lengths_and_offsets,
    _lengths_dtype,
    _lengths_moved,
    _lengths_wrap,
    _noncontiguous_part,
    _offsets_decreasing,
    _offsets_inconsistent,
    _offsets_only,
    _reshaped,
    _storage_offset,
    _value_set,
    _values_dtype,
)

def _keys_permuted(how: str) -> Callable[[Ctx, str], Case]:
    """Valid: the same features in another order (the validator puts them back in the model's
    order). Fields with one feature get an extra feature first, so that there is an order."""

    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            keys, values, lengths = kjt_parts(kjt)
            if len(keys) < 2:
                keys, values, lengths = _add_extra(ctx, keys, values, lengths, kjt.stride(), 0)
            order = list(range(len(keys)))
            if how == "reversed":
                order.reverse()
            elif how == "swap_same_table_size" and field_name == "item_sparse":
                a, b = keys.index("stat0_b10"), keys.index("stat1_b10")
                order[a], order[b] = order[b], order[a]
            else:
                while order == sorted(order):
                    ctx.rng.shuffle(order)
            return kjt_from_parts(
                [keys[i] for i in order], [values[i] for i in order], [lengths[i] for i in order]
            )

        return _kjt_case(ctx, field_name, edit, valid=True)

    return make


def _add_extra(ctx: Ctx, keys, values, lengths, stride: int, position: Optional[int]):
    """An extra feature the model does not read (IDs of any sign and size), at ``position``."""
    extra_lengths = torch.randint(0, 3, (stride,), generator=ctx.gen)
    extra_values = torch.randint(-(2**40), 2**40, (int(extra_lengths.sum()),), generator=ctx.gen)
    pos = ctx.rng.randint(0, len(keys)) if position is None else position
    return (
        keys[:pos] + ["extra_feature"] + keys[pos:],
        values[:pos] + [extra_values] + values[pos:],
        lengths[:pos] + [extra_lengths] + lengths[pos:],
    )


def _key_extra(ctx: Ctx, field_name: str) -> Case:
    def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        return kjt_from_parts(*_add_extra(ctx, *kjt_parts(kjt), kjt.stride(), None))

    return _kjt_case(ctx, field_name, edit, valid=True)


def _keys_edit(how: str) -> Callable[[Ctx, str], Case]:
    """Invalid key sets: a duplicate, a missing, a renamed feature, or no keys at all."""

    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            keys, values, lengths = kjt_parts(kjt)
            i = ctx.rng.randrange(len(keys))
            if how == "duplicate":  # a second copy of a feature (a later copy used to win)
                j = ctx.rng.randint(0, len(keys))
                keys.insert(j, keys[i])
                values.insert(j, values[i].clone())
                lengths.insert(j, lengths[i].clone())
            elif how == "duplicate_name":  # another feature's data under an existing name
                if len(keys) < 2:
                    keys, values, lengths = _add_extra(ctx, keys, values, lengths, kjt.stride(), 1)
                    i = 0
                j = (i + 1 + ctx.rng.randrange(len(keys) - 1)) % len(keys)
                keys[j] = keys[i]
            elif how == "missing":
                del keys[i], values[i], lengths[i]
                if not keys:
                    return _empty_kjt()
            elif how == "renamed":
                keys[i] = f"x_{keys[i]}"
            elif how == "empty":
                return _empty_kjt()
            return kjt_from_parts(keys, values, lengths)

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make


def _declared(arg: str) -> Callable[[Ctx, str], Case]:
    """A KJT that declares derived values (constructor arguments) that disagree with its data."""

    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            keys = list(kjt.keys())
            s = kjt.stride()
            n = len(keys)
            lpk = kjt.length_per_key()
            if arg == "stride":
                return _rebuilt(kjt, stride=s + 1 if s == 1 or ctx.rng.random() < 0.5 else s - 1)
            if arg == "stride_per_key":
                return _rebuilt(kjt, stride_per_key=[s + 1] * n)
            if arg == "stride_per_key_per_rank":  # variable batch size per feature
                return _rebuilt(kjt, stride_per_key_per_rank=[[s]] * n)
            if arg == "length_per_key":
                bad = list(lpk)
                bad[0] += 1
                if n > 1:
                    bad[-1] -= 1
                return _rebuilt(kjt, length_per_key=bad)
            if arg == "offset_per_key":
                bad = [0] * (n + 1)
                bad[-1] = int(sum(lpk))
                if n == 1:
                    bad[0] = 1
                return _rebuilt(kjt, offset_per_key=bad)
            if arg == "lengths_offset_per_key":
                return _rebuilt(kjt, lengths_offset_per_key=[0] * (n + 1))
            if arg == "index_per_key":
                return _rebuilt(kjt, index_per_key={k: n - i for i, k in enumerate(keys)})
            if arg == "weights":
                return _rebuilt(kjt, weights=torch.rand(kjt.values().numel(), generator=ctx.gen))
            if arg == "inverse_indices":
                inverse = torch.zeros(n, s + 2, dtype=torch.long)
                return _rebuilt(kjt, inverse_indices=(keys, inverse))
            if arg == "jt_dict":  # to_dict()'s cache with features swapped (or missing)
                d = _rebuilt(kjt).to_dict()
                if n >= 2:
                    i, j = ctx.rng.sample(range(n), 2)
                    d[keys[i]], d[keys[j]] = d[keys[j]], d[keys[i]]
                    if torch.equal(d[keys[i]].values(), d[keys[j]].values()) and torch.equal(
                        d[keys[i]].lengths(), d[keys[j]].lengths()
                    ):
                        d.pop(keys[i])
                else:
                    d = {}
                return _rebuilt(kjt, jt_dict=d)
            if arg == "no_lengths_or_offsets":
                return KeyedJaggedTensor(keys=keys, values=kjt.values())
            raise AssertionError(arg)

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make


def _consistent_caches(how: str) -> Callable[[Ctx, str], Case]:
    """Valid: a KJT that carries correct derived values (declared, or cached by to_dict())."""

    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            if how == "to_dict":
                out = _rebuilt(kjt)
                out.to_dict()
                return out
            keys = list(kjt.keys())
            lpk = list(kjt.length_per_key())
            opk = [0]
            for x in lpk:
                opk.append(opk[-1] + x)
            return _rebuilt(
                kjt,
                stride=kjt.stride(),
                length_per_key=lpk,
                offset_per_key=opk,
                index_per_key={k: i for i, k in enumerate(keys)},
            )

        return _kjt_case(ctx, field_name, edit, valid=True)

    return make


def _not_a_kjt(what: str) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> Any:
            if what == "none":
                return None
            if what == "tensor":
                return kjt.values()
            if what == "dict":
                return kjt.to_dict()
            raise AssertionError(what)

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make


def _kjt_meta(part: str) -> Callable[[Ctx, str], Case]:
    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            values, lengths = kjt.values(), kjt.lengths()
            if part == "values":
                values = values.to("meta")
            else:
                lengths = lengths.to("meta")
            return KeyedJaggedTensor(keys=list(kjt.keys()), values=values, lengths=lengths)

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make


def _stride_changed(delta: int) -> Callable[[Ctx, str], Case]:
    """One row less (or more) per feature than the other inputs have."""

    def make(ctx: Ctx, field_name: str) -> Case:
        def edit(kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
            keys, values, lengths = kjt_parts(kjt)
            rows = _rows(ctx.config, field_name)
            for i, k in enumerate(keys):
                if delta < 0:
                    last = int(lengths[i][-1])
                    values[i] = values[i][: values[i].numel() - last]
                    lengths[i] = lengths[i][:-1]
                else:
                    values[i] = torch.cat([values[i], torch.zeros(1, dtype=values[i].dtype)])
                    lengths[i] = torch.cat([lengths[i], torch.ones(1, dtype=lengths[i].dtype)])
                    assert rows.get(k, 1) >= 1
            return kjt_from_parts(keys, values, lengths)

        return _kjt_case(ctx, field_name, edit, valid=False)

    return make


_KJT_FAMILIES: Dict[str, Callable[[Ctx, str], Case]] = {
    # lengths
    "lengths_wrap": _lengths_wrap,
    "length_negative": _length_negative,
    "length_plus_one": _length_plus_one,
    "length_minus_one": _length_minus_one,
    "length_huge": _length_set(2**40),
    "length_int64_max": _length_set(2**63 - 1),
    "length_int64_min": _length_set(-(2**63)),
    "lengths_moved": _lengths_moved,
    # offsets
    "offsets_inconsistent": _offsets_inconsistent,
    "offsets_only": _offsets_only(lambda ctx, o: o, valid=True),
    "offsets_only_decreasing": _offsets_only(_offsets_decreasing, valid=False),
    "offsets_only_shifted": _offsets_only(lambda ctx, o: o + 1, valid=False),
    "offsets_only_int16": _offsets_only(lambda ctx, o: o.to(torch.int16), valid=False),
    "lengths_and_offsets": _lengths_and_offsets,
    "lengths_float_bypass": _bypass("lengths", torch.float32),
    "offsets_float_bypass": _bypass("offsets", torch.float64),
    # values
    "value_out_of_range": _value_set(0, offset_by_rows=True),
    "value_far_out_of_range": _value_set(10**6, offset_by_rows=True),
    "value_negative": _value_set(-1),
    "value_huge": _value_set(2**62),
    "value_int64_min": _value_set(-(2**63)),
    # dtypes
    "values_float32": _values_dtype(torch.float32),
    "values_float64": _values_dtype(torch.float64),
    "values_float16": _values_dtype(torch.float16),
    "values_bool": _values_dtype(torch.bool),
    "values_int8": _values_dtype(torch.int8),
    "values_int16": _values_dtype(torch.int16),
    "values_uint8": _values_dtype(torch.uint8),
    "values_complex": _values_dtype(torch.complex64),
    "values_int32": _values_dtype(torch.int32, valid=True),
    "lengths_int32": _lengths_dtype(torch.int32, valid=True),
    "lengths_int16": _lengths_dtype(torch.int16),
    "lengths_int8": _lengths_dtype(torch.int8),
    "lengths_uint8": _lengths_dtype(torch.uint8),
    "values_and_lengths_int32": _both_int32,
    # layout
    "values_noncontiguous": _noncontiguous_part("values"),
    "lengths_noncontiguous": _noncontiguous_part("lengths"),
    "values_storage_offset": _storage_offset,
    "values_2d": _reshaped("values", (-1, 1)),
    "lengths_2d": _reshaped("lengths", (-1, 1)),
    "values_meta": _kjt_meta("values"),
    "lengths_meta": _kjt_meta("lengths"),
    # keys
    "keys_permuted": _keys_permuted("random"),
    "keys_reversed": _keys_permuted("reversed"),
    "keys_swap_same_table_size": _keys_permuted("swap_same_table_size"),
    "key_extra": _key_extra,
    "key_duplicate": _keys_edit("duplicate"),
    "key_duplicate_name": _keys_edit("duplicate_name"),
    "key_missing": _keys_edit("missing"),
    "key_renamed": _keys_edit("renamed"),
    "keys_empty": _keys_edit("empty"),
    # batch size and derived values
    "stride_one_less": _stride_changed(-1),
    "stride_one_more": _stride_changed(+1),
    "declared_stride": _declared("stride"),
    "declared_stride_per_key": _declared("stride_per_key"),
    "variable_stride_per_key": _declared("stride_per_key_per_rank"),
    "declared_length_per_key": _declared("length_per_key"),
    "declared_offset_per_key": _declared("offset_per_key"),
    "declared_lengths_offset_per_key": _declared("lengths_offset_per_key"),
    "declared_index_per_key": _declared("index_per_key"),
    "cached_to_dict_swapped": _declared("jt_dict"),
    "weights": _declared("weights"),
    "inverse_indices": _declared("inverse_indices"),
    "no_lengths_or_offsets": _declared("no_lengths_or_offsets"),
    "declared_caches_consistent": _consistent_caches("declared"),
    "cached_to_dict_consistent": _consistent_caches("to_dict"),
    # not a KJT
    "kjt_none": _not_a_kjt("none"),
    "kjt_tensor": _not_a_kjt("tensor"),
    "kjt_dict": _not_a_kjt("dict"),
}

for _family, _fn in _KJT_FAMILIES.items():
    for _field in KJT_FIELDS:
        KINDS[f"{_family}[{_field}]"] = partial(_fn, field_name=_field)
