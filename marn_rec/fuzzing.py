"""Seeded corruptions of valid MARN inputs, and a crash-proof runner that judges what the input
checks (:mod:`marn_rec.validation`) and the model make of each.

A *kind* is a small named function ``kind(ctx) -> Case`` over a fresh valid
:class:`~marn_rec.batch.MARNBatch` (``ctx.batch()``, drawn from the case's seed). It returns the
input to feed and says whether that input is genuinely valid; valid variants of a batch (keys in
another order, an extra feature, int32 indices, non-contiguous views, offsets instead of lengths...)
name the canonical batch of the same meaning, whose logits they must reproduce. ``KINDS`` lists
them all; families of KJT corruptions exist once per KJT (``lengths_wrap[item_title]``...).

Each case runs as a training step would (:class:`Harness`):

1. ``validate_batch`` (``validate_tower_inputs`` for the standalone tower's kinds
   ``item_weights_*`` / ``tower_*``; ``build_batch``, then ``validate_batch``, for the ``build_*``
   kinds, which corrupt item IDs and the ``ItemFeatures`` a catalogue returns);
2. rejected (``ValueError``): model and optimizer state must be unchanged; an invalid model input
   must also be rejected by ``MARN(validate=True)`` itself, again without a state change;
3. accepted: the input must be valid (an invalid one is reported as ``silently_accepted``, with
   what the model then does with it); forward, backward and an optimizer step of a tiny
   ``MARNTrain(MARN(tiny(), validate=False))`` (fused row-wise AdaGrad on the tables, AdaGrad on
   the rest) must give a finite loss, finite parameters and optimizer state, and the reference's
   logits where there is one.

:func:`run_fuzz` runs the cases in a worker process (``python -m marn_rec.fuzzing --worker``) that
reports each case before and after it runs, so a crash (a signal, an abort in a kernel, memory
exhaustion: the worker's address space is limited) or a hang is recorded against its case and the
run goes on in a new worker. Outcomes: ``rejected`` and ``accepted`` are passes; everything in
:data:`FAILURES` is a failure.

Example::

    report = run_fuzz(num_cases=1600, seed=0)
    print(report.summary())
    assert not report.failures()

Command line: ``python -m marn_rec.fuzzing --cases 1600 --seed 0``.
"""

import argparse
import json
import math
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch, build_batch
from marn_rec.config import MARNConfig, tiny
from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE, TITLE_WORDS
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.models.tower import MARNTower
from marn_rec.testing import RandomCatalog, random_batch
from marn_rec.validation import MAX_ABS_FLOAT, sparse_feature_rows, validate_batch
from marn_rec.validation import validate_tower_inputs

PASSES = ("rejected", "accepted")
FAILURES = (
    "crash",  # the worker died (signal, abort, out of memory) during the case
    "hang",  # no result within the case timeout
    "silently_accepted",  # validate_batch accepted an invalid input
    "silently_accepted_in_model",  # MARN(validate=True) ran on an invalid model input
    "wrong_exception",  # a check raised something other than ValueError
    "state_changed",  # a rejected input changed model or optimizer state
    "false_rejection",  # a valid input was rejected
    "model_error",  # an accepted (valid) input made the model raise
    "mismatch",  # an accepted valid variant gave other logits than its canonical batch
    "non_finite",  # an accepted input gave a non-finite loss, logits, parameters or state
    "harness_error",  # the kind itself failed to build its case (a bug of the fuzzer)
)

_MARK = "@@marn-fuzz "


# ------------------------------------------------------------------------------------- cases


@dataclass
class TowerInputs:
    """Inputs of a standalone :class:`~marn_rec.models.tower.MARNTower`."""

    item_sparse: Any
    item_title: Any
    item_image: Any
    item_weights: Any = None


@dataclass
class Case:
    """One fuzz input and what it must give.

    Args:
        value: what is fed: a MARNBatch (or anything, for the kinds that are not a batch), or
            :class:`TowerInputs` for ``target="tower"``.
        valid: a genuinely valid input, which must be accepted and train to finite values.
        reference: for valid variants, the canonical input of the same meaning: the logits must
            equal its logits (bit for bit if ``exact``, else within 1e-5).
        model_checked: an invalid input that concerns the model's own inputs (not labels, users,
            meta or the batch object): ``MARN(validate=True)`` must reject it as well.
        target: ``"batch"`` (validate_batch + MARNTrain) or ``"tower"`` (MARNTower).
    """

    value: Any
    valid: bool
    reference: Any = None
    exact: bool = True
    model_checked: bool = True
    target: str = "batch"


class Ctx:
    """What a kind draws from: the config, a seeded RNG and fresh valid batches."""

    def __init__(self, config: MARNConfig, catalog: RandomCatalog, seed: int) -> None:
        self.config = config
        self.catalog = catalog
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed % (2**63))

    def batch(self, min_length: int = 0, batch_size: Optional[int] = None) -> MARNBatch:
        """A fresh valid (canonical) batch of 1 to 8 samples."""
        b = batch_size if batch_size is not None else self.rng.randint(1, 8)
        return random_batch(
            self.config,
            b,
            seed=self.rng.randrange(2**31),
            catalog=self.catalog,
            min_length=min_length,
        )

    def batch_where(self, ok: Callable[[MARNBatch], bool], min_length: int = 0) -> MARNBatch:
        """A fresh batch for which ``ok`` holds (e.g. a KJT with values to corrupt)."""
        for attempt in range(50):
            b = self.batch(min_length=min_length, batch_size=None if attempt < 25 else 8)
            if ok(b):
                return b
        raise RuntimeError("no batch satisfies the kind's condition")

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]


KindFn = Callable[[Ctx], Case]
KINDS: Dict[str, KindFn] = {}
_SELFTEST_KINDS: Dict[str, KindFn] = {}


def kind(name: str) -> Callable[[KindFn], KindFn]:
    def register(fn: KindFn) -> KindFn:
        if name in KINDS:
            raise ValueError(f"kind {name!r} registered twice")
        KINDS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------------------- KJT helpers

KJT_FIELDS = ("item_sparse", "item_title", "history_property")


def _rows(config: MARNConfig, field_name: str) -> Dict[str, int]:
    """feature -> table rows of the features the model reads from KJT field ``field_name``."""
    if field_name == "item_sparse":
        return sparse_feature_rows(config.tower)
    if field_name == "item_title":
        return {TITLE_WORDS: config.tower.title_vocab_size}
    c = config.behavior
    return {BEHAVIOR_TYPE: c.num_behavior_types, BEHAVIOR_TIME: c.num_time_buckets}


def kjt_parts(kjt: KeyedJaggedTensor) -> Tuple[List[str], List[torch.Tensor], List[torch.Tensor]]:
    """(keys, values per key, lengths per key [stride]) of a valid KJT, computed here."""
    keys = list(kjt.keys())
    lengths = kjt.lengths().view(len(keys), -1)
    values = list(torch.split(kjt.values(), lengths.sum(dim=1).tolist()))
    return keys, values, [lengths[i] for i in range(len(keys))]


def kjt_from_parts(
    keys: List[str], values: List[torch.Tensor], lengths: List[torch.Tensor], **kwargs: Any
) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(
        keys=list(keys), values=torch.cat(values), lengths=torch.cat(lengths), **kwargs
    )


def _rebuilt(kjt: KeyedJaggedTensor, **kwargs: Any) -> KeyedJaggedTensor:
    """A new KJT of the same keys, values and lengths (no caches), with ``kwargs`` replacing or
    adding constructor arguments."""
    args: Dict[str, Any] = dict(keys=list(kjt.keys()), values=kjt.values(), lengths=kjt.lengths())
    args.update(kwargs)
    return KeyedJaggedTensor(**args)


def _empty_kjt() -> KeyedJaggedTensor:
    return KeyedJaggedTensor.empty(values_dtype=torch.int64, lengths_dtype=torch.int64)


def _with(batch: MARNBatch, field_name: str, value: Any) -> MARNBatch:
    return replace(batch, **{field_name: value})


def _has_values(field_name: str, config: MARNConfig) -> Callable[[MARNBatch], bool]:
    rows = _rows(config, field_name)

    def ok(b: MARNBatch) -> bool:
        keys, values, _ = kjt_parts(getattr(b, field_name))
        return any(values[i].numel() for i, k in enumerate(keys) if k in rows)

    return ok


def _min_numel(field_name: str, part: str, n: int) -> Callable[[MARNBatch], bool]:
    def ok(b: MARNBatch) -> bool:
        kjt = getattr(b, field_name)
        t = kjt.values() if part == "values" else kjt.lengths()
        return t.numel() >= n

    return ok


def _noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` in a view with stride 2 (not contiguous)."""
    out = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    assert torch.equal(out, t) and (t.numel() < 2 or not out.is_contiguous())
    return out


# ------------------------------------------------------------------------ KJT corruptions

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


# ----------------------------------------------------------------- dense and index inputs


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


def _build_args(ctx: Ctx, lengths: torch.Tensor) -> Dict[str, Any]:
    """Valid keyword arguments of build_batch with the given history lengths."""
    cfg = ctx.config
    b = lengths.numel()
    n = int(lengths.sum())
    g = ctx.gen
    return dict(
        candidate_items=torch.randint(0, cfg.tower.num_items, (b,), generator=g),
        history_items=torch.randint(0, cfg.tower.num_items, (n,), generator=g),
        history_lengths=lengths,
        behavior_types=torch.randint(0, cfg.behavior.num_behavior_types, (n,), generator=g),
        behavior_time_buckets=torch.randint(0, cfg.behavior.num_time_buckets, (n,), generator=g),
        labels=torch.randint(0, 2, (b,), generator=g).float(),
        item_features=ctx.catalog.features,
        user_ids=torch.randint(0, 100, (b,), generator=g),
    )


def _built(ctx: Ctx, lengths: torch.Tensor) -> MARNBatch:
    """A batch through build_batch with the given history lengths (consistent otherwise)."""
    return build_batch(**_build_args(ctx, lengths))


def _random_lengths(ctx: Ctx, min_length: int = 0) -> torch.Tensor:
    t = ctx.config.behavior.max_length
    return torch.randint(min_length, t + 1, (ctx.rng.randint(1, 6),), generator=ctx.gen)


# build_batch's own inputs (target "build"): item IDs and their features, before any batch exists.
# A float ID would be truncated to another item and a negative one would read the catalogue from
# its end, so these are caught there (validate_batch only sees row indices).


def _build_case(edit: Callable[[Dict[str, Any], Ctx], Optional[Dict[str, Any]]], valid: bool,
                min_length: int = 1, same_logits: bool = False,
                model_checked: bool = True) -> KindFn:
    def make(ctx: Ctx) -> Case:
        args = _build_args(ctx, _random_lengths(ctx, min_length))
        changed = edit(dict(args), ctx)
        # A valid variant is compared with the batch of the unchanged arguments.
        return Case(changed, valid, reference=args if valid and same_logits else None,
                    target="build", model_checked=model_checked)

    return make


def _set_arg(
    name: str, fn: Callable[[Any, Ctx], Any]
) -> Callable[[Dict[str, Any], Ctx], Dict[str, Any]]:
    def edit(args: Dict[str, Any], ctx: Ctx) -> Dict[str, Any]:
        args[name] = fn(args[name], ctx)
        return args

    return edit


def _fractional(t: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    return t.double() + 0.7  # 3 -> 3.7: .long() would make it 3 again, silently


def _negative_first(t: torch.Tensor, ctx: Ctx) -> torch.Tensor:
    t = t.clone()
    t[0] = -1 - ctx.rng.randrange(5)
    return t


def _features_edit(fn: Callable[[Any], Any]) -> Callable[[Dict[str, Any], Ctx], Dict[str, Any]]:
    """The item_features callback returns something else (built from the catalogue's answer)."""

    def edit(args: Dict[str, Any], ctx: Ctx) -> Dict[str, Any]:
        lookup = args["item_features"]
        args["item_features"] = lambda ids: fn(lookup(ids))
        return args

    return edit


def _feats(**changes: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """ItemFeatures rebuilt with some fields changed (its checks run in its constructor)."""

    def fn(f: Any) -> Any:
        from marn_rec.batch import ItemFeatures

        values = dict(sparse=f.sparse, title_values=f.title_values, title_lengths=f.title_lengths,
                      image=f.image, sparse_lengths=f.sparse_lengths)
        for k, g in changes.items():
            values[k] = g(values[k])
        return ItemFeatures(**values)

    return fn


def _behaviour_drop(args: Dict[str, Any], ctx: Ctx) -> Dict[str, Any]:
    """One behaviour, but no behaviour types or times: used to become the placeholder's."""
    args["candidate_items"] = args["candidate_items"][:1]
    args["labels"] = args["labels"][:1]
    args["user_ids"] = args["user_ids"][:1]
    args["history_lengths"] = torch.ones(1, dtype=torch.long)
    args["history_items"] = args["history_items"][:1]
    args["behavior_types"] = torch.zeros(0, dtype=torch.long)
    args["behavior_time_buckets"] = torch.zeros(0, dtype=torch.long)
    return args


def _lengths_wrap_build(args: Dict[str, Any], ctx: Ctx) -> Dict[str, Any]:
    lengths = args["history_lengths"].clone()
    if lengths.numel() >= 4:
        lengths[:4] += 2**62
    else:
        lengths[0] += 2**62
    args["history_lengths"] = lengths
    return args


_BUILD = {
    "build_candidate_items_float": (_set_arg("candidate_items", _fractional), False),
    "build_history_items_float": (_set_arg("history_items", _fractional), False),
    "build_user_ids_float": (_set_arg("user_ids", _fractional), False),
    "build_user_ids_one_less": (_set_arg("user_ids", lambda t, ctx: t[:-1]), False),
    "build_candidate_item_negative": (_set_arg("candidate_items", _negative_first), False),
    "build_history_item_negative": (_set_arg("history_items", _negative_first), False),
    "build_candidate_items_2d": (_set_arg("candidate_items", lambda t, ctx: t.unsqueeze(1)), False),
    "build_candidate_items_meta": (_set_arg("candidate_items", lambda t, ctx: t.to("meta")), False),
    "build_history_lengths_negative": (_set_arg("history_lengths", _negative_first), False),
    "build_history_lengths_wrap": (_lengths_wrap_build, False),
    "build_history_lengths_sum_mismatch": (
        _set_arg("history_lengths", lambda t, ctx: t + 1), False),
    "build_behavior_types_one_less": (_set_arg("behavior_types", lambda t, ctx: t[:-1]), False),
    "build_behaviour_without_type_or_time": (_behaviour_drop, False),
    "build_labels_one_less": (_set_arg("labels", lambda t, ctx: t[:-1]), False),
    "build_labels_complex": (_set_arg("labels", lambda t, ctx: t.to(torch.complex64) + 1j), False),
    "build_labels_list": (_set_arg("labels", lambda t, ctx: t.tolist()), False),
    "build_meta_not_dict": (lambda args, ctx: dict(args, meta=5), False),
    "build_features_not_item_features": (_features_edit(lambda f: f.__dict__), False),
    "build_features_sparse_float": (
        _features_edit(_feats(sparse=lambda d: {k: v.double() + 0.7 for k, v in d.items()})),
        False,
    ),
    "build_features_title_values_float": (
        _features_edit(_feats(title_values=lambda v: v.double() + 0.7)), False),
    "build_features_title_lengths_float": (
        _features_edit(_feats(title_lengths=lambda v: v.float())), False),
    "build_features_title_values_without_lengths": (
        _features_edit(_feats(title_lengths=lambda v: None)), False),
    "build_features_sparse_bool": (
        _features_edit(_feats(sparse=lambda d: {k: v.bool() for k, v in d.items()})), False),
    "build_features_sparse_2d": (
        _features_edit(_feats(sparse=lambda d: {k: v.unsqueeze(1) for k, v in d.items()})), False),
    "build_features_sparse_lengths_unknown": (
        _features_edit(_feats(sparse_lengths=lambda d: {"nope": torch.ones(1, dtype=torch.long)})),
        False),
    # valid: converted without loss, the same logits as the canonical arguments
    "build_labels_int64": (_set_arg("labels", lambda t, ctx: t.long()), True),
    "build_labels_bool": (_set_arg("labels", lambda t, ctx: t.bool()), True),
    "build_labels_float64": (_set_arg("labels", lambda t, ctx: t.double()), True),
    "build_ids_int32": (
        lambda args, ctx: dict(args, **{k: args[k].int() for k in (
            "candidate_items", "history_items", "history_lengths", "behavior_types",
            "behavior_time_buckets", "user_ids")}), True),
    "build_features_int16_buckets": (
        _features_edit(_feats(sparse=lambda d: {k: (v.short() if k.startswith("stat") else v)
                                                for k, v in d.items()})), True),
    "build_no_history": (
        lambda args, ctx: _build_args(ctx, torch.zeros(args["labels"].numel(), dtype=torch.long)),
        True),
}

for _name, (_edit, _valid) in _BUILD.items():
    KINDS[_name] = _build_case(
        _edit,
        _valid,
        same_logits=_valid and _name != "build_no_history",
        model_checked=not any(x in _name for x in ("labels", "user_ids", "meta")),
    )


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


# -------------------------------------------------------------------------- tower inputs


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


# Self tests of the runner (not in the default kinds): it must see a crash, a hang and a silently
# accepted input.
def _selftest_abort(ctx: Ctx) -> Case:
    os.abort()


def _selftest_hang(ctx: Ctx) -> Case:
    time.sleep(3600)
    raise AssertionError("unreachable")


def _selftest_silent(ctx: Ctx) -> Case:
    return Case(ctx.batch(), valid=False)  # a valid batch claimed invalid: must be flagged


_SELFTEST_KINDS.update(
    _selftest_abort=_selftest_abort,
    _selftest_hang=_selftest_hang,
    _selftest_silent=_selftest_silent,
)


def kind_function(name: str) -> KindFn:
    return KINDS[name] if name in KINDS else _SELFTEST_KINDS[name]


def build_case(name: str, seed: int, config: Optional[MARNConfig] = None,
               catalog: Optional[RandomCatalog] = None) -> Case:
    """The case of kind ``name`` for ``seed`` (deterministic)."""
    config = config or tiny()
    torch.manual_seed(seed % (2**63))
    return kind_function(name)(Ctx(config, catalog or RandomCatalog(config), seed))


# ----------------------------------------------------------------------------- the harness


def _flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Every leaf of nested dicts / lists, tensors cloned."""
    out: Dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().clone()
    else:
        out[prefix] = obj
    return out


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[str]:
    """None if equal, else the first differing entry."""
    if a.keys() != b.keys():
        return f"entries differ: {sorted(set(a) ^ set(b))[:3]}"
    for k, x in a.items():
        y = b[k]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
                    and torch.equal(x.nan_to_num(), y.nan_to_num())
                    and torch.equal(x.isnan(), y.isnan())):
                return k
        elif x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return k
    return None


def _finite(tensors: Dict[str, Any]) -> Optional[str]:
    for k, v in tensors.items():
        if not (isinstance(v, torch.Tensor) and v.is_floating_point()):
            continue
        if not bool(torch.isfinite(v).all()):
            return k
    return None


def _in_backward_state(model: torch.nn.Module) -> Dict[str, Any]:
    """State of the optimizers fused into the backward (the tables' row-wise AdaGrad)."""
    state = {}
    for name, p in model.named_parameters():
        for i, opt in enumerate(getattr(p, "_in_backward_optimizers", [])):
            state[f"{name}#{i}"] = opt.state_dict()
    return state


class Harness:
    """A tiny model, its optimizers and a standalone tower, trained one case at a time."""

    def __init__(self, config: Optional[MARNConfig] = None, seed: int = 0) -> None:
        from marn_rec.training.sharding import apply_embedding_optimizer, training_optimizer

        self._apply = apply_embedding_optimizer
        self._optimizer = training_optimizer
        self.config = config or tiny()
        self.catalog = RandomCatalog(self.config)
        self.seed = seed
        self._build_model()
        self._build_tower()

    def _build_model(self) -> None:
        torch.manual_seed(self.seed)
        self.train = MARNTrain(MARN(self.config, validate=False), total_steps=1000)
        self._apply(self.train)
        self.opt = self._optimizer(self.train)
        # One good step first, so that optimizer state exists and is compared.
        batch = random_batch(self.config, 4, seed=1, catalog=self.catalog)
        loss, _ = self.train(validate_batch(batch, self.config))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()

    def _build_tower(self) -> None:
        torch.manual_seed(self.seed)
        self.tower = MARNTower(self.config.tower, validate=True)
        self._apply(self.tower)
        self.tower_opt = self._optimizer(self.tower)

    def _snapshot(self, module: torch.nn.Module, opt: Any) -> Dict[str, Any]:
        return _flatten({"model": module.state_dict(), "opt": opt.state_dict(),
                         "fused": _in_backward_state(module)})

    def run(self, case: Case) -> Tuple[str, str]:
        """(outcome, detail) of one case."""
        if case.target == "tower":
            return self._run_tower(case)
        if case.target == "build":
            return self._run_build(case)
        return self._run_batch(case)

    def _run_build(self, case: Case) -> Tuple[str, str]:
        """build_batch(**value) first: its ValueError is a rejection; its batch goes on as a batch
        case (the reference: the canonical arguments' batch)."""
        try:
            batch = build_batch(**case.value)
        except ValueError as e:
            return ("false_rejection" if case.valid else "rejected"), f"build_batch: {e}"
        except Exception as e:  # noqa: BLE001
            return "wrong_exception", f"build_batch: {type(e).__name__}: {e}"
        reference = build_batch(**case.reference) if case.reference is not None else None
        return self._run_batch(replace(case, value=batch, reference=reference, target="batch"))

    def _run_batch(self, case: Case) -> Tuple[str, str]:
        cfg = self.config
        before = self._snapshot(self.train, self.opt)
        try:
            checked = validate_batch(case.value, cfg)
        except ValueError as e:
            message = str(e)
            changed = _same(before, self._snapshot(self.train, self.opt))
            if changed:
                return "state_changed", f"{changed} after: {message}"
            if case.valid:
                return "false_rejection", message
            if case.model_checked and isinstance(case.value, MARNBatch):
                outcome = self._model_rejects(case.value, before)
                if outcome is not None:
                    return outcome
            return "rejected", message
        except Exception as e:  # noqa: BLE001 - every other exception is a finding
            return "wrong_exception", f"validate_batch: {type(e).__name__}: {e}"
        if not case.valid:
            return "silently_accepted", "validate_batch accepted it; " + self._probe(checked)
        return self._train_step(case, checked)

    def _probe(self, batch: MARNBatch) -> str:
        """What the model makes of an input that slipped through (no_grad: no state changes;
        this may crash the worker, which is then recorded against the case)."""
        try:
            with torch.no_grad():
                logits = self.train.model(**batch.model_inputs()).logits
        except Exception as e:  # noqa: BLE001
            return f"the model then raised {type(e).__name__}: {str(e)[:200]}"
        finite = bool(torch.isfinite(logits).all())
        return f"the model then gave {'finite' if finite else 'NON-FINITE'} logits"

    def _model_rejects(self, batch: MARNBatch, before: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """MARN(validate=True), fed the raw batch, must raise ValueError and change nothing."""
        self.train.model.validate = True
        try:
            self.train(batch)
        except ValueError:
            pass
        except Exception as e:  # noqa: BLE001
            self._build_model()
            return "wrong_exception", f"MARN(validate=True): {type(e).__name__}: {e}"
        else:
            self._build_model()
            return "silently_accepted_in_model", "MARN(validate=True) ran on it"
        finally:
            self.train.model.validate = False
        changed = _same(before, self._snapshot(self.train, self.opt))
        if changed:
            self._build_model()
            return "state_changed", f"{changed} after MARN(validate=True) rejected it"
        return None

    def _train_step(self, case: Case, checked: MARNBatch) -> Tuple[str, str]:
        cfg = self.config
        reference = None
        try:
            if case.reference is not None:
                with torch.no_grad():
                    reference = self.train(validate_batch(case.reference, cfg))[1][1]
            loss, (_, logits, _) = self.train(checked)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
        except Exception as e:  # noqa: BLE001
            self._build_model()
            return "model_error", f"{type(e).__name__}: {e}"
        if not (bool(torch.isfinite(loss)) and bool(torch.isfinite(logits).all())):
            self._build_model()
            return "non_finite", f"loss {loss.item()}"
        bad = _finite(self._snapshot(self.train, self.opt))
        if bad:
            self._build_model()
            return "non_finite", f"{bad} after the step"
        if reference is not None:
            if case.exact:
                same = torch.equal(logits, reference)
            else:
                same = logits.shape == reference.shape and torch.allclose(
                    logits, reference, atol=1e-5, rtol=1e-5
                )
            if not same:
                diff = (
                    (logits - reference).abs().max().item()
                    if logits.shape == reference.shape
                    else "shape"
                )
                return "mismatch", f"logits differ from the canonical batch's by {diff}"
        return "accepted", f"loss {loss.item():.4g}"

    def _run_tower(self, case: Case) -> Tuple[str, str]:
        t: TowerInputs = case.value
        before = self._snapshot(self.tower, self.tower_opt)
        try:
            validate_tower_inputs(
                self.config.tower, t.item_sparse, t.item_title, t.item_image, t.item_weights
            )
        except ValueError as e:
            message = str(e)
            try:
                self.tower(t.item_sparse, t.item_title, t.item_image, t.item_weights)
            except ValueError:
                pass
            except Exception as e2:  # noqa: BLE001
                self._build_tower()
                return "wrong_exception", f"MARNTower(validate=True): {type(e2).__name__}: {e2}"
            else:
                self._build_tower()
                return "silently_accepted_in_model", "MARNTower(validate=True) ran on it"
            changed = _same(before, self._snapshot(self.tower, self.tower_opt))
            if changed:
                self._build_tower()
                return "state_changed", f"{changed} after: {message}"
            return ("false_rejection" if case.valid else "rejected"), message
        except Exception as e:  # noqa: BLE001
            return "wrong_exception", f"validate_tower_inputs: {type(e).__name__}: {e}"
        if not case.valid:
            try:
                with torch.no_grad():
                    rep = self.tower(t.item_sparse, t.item_title, t.item_image, t.item_weights)
                probe = f"finite: {bool(torch.isfinite(rep.representation).all())}"
            except Exception as e:  # noqa: BLE001
                probe = f"the tower then raised {type(e).__name__}: {str(e)[:200]}"
            return "silently_accepted", f"validate_tower_inputs accepted it; {probe}"
        try:
            out = self.tower(t.item_sparse, t.item_title, t.item_image, t.item_weights)
            loss = out.representation.pow(2).mean() + sum(out.losses.values())
            loss.backward()
            self.tower_opt.step()
            self.tower_opt.zero_grad()
        except Exception as e:  # noqa: BLE001
            self._build_tower()
            return "model_error", f"{type(e).__name__}: {e}"
        bad = None if bool(torch.isfinite(loss)) else "loss"
        bad = bad or _finite(self._snapshot(self.tower, self.tower_opt))
        if bad:
            self._build_tower()
            return "non_finite", f"{bad} after the step"
        return "accepted", f"loss {loss.item():.4g}"


# ------------------------------------------------------------------------------ the runner


def case_plan(
    num_cases: int, seed: int, kinds: Optional[Sequence[str]] = None
) -> List[Tuple[str, int]]:
    """(kind, case seed) of every case: all kinds once (in a seeded order), then again..."""
    names = list(kinds) if kinds is not None else sorted(KINDS)
    order = list(names)
    random.Random(seed).shuffle(order)
    plan = []
    for i in range(num_cases):
        plan.append((order[i % len(order)], seed * 1_000_003 + i))
    return plan


@dataclass
class CaseResult:
    index: int
    kind: str
    outcome: str
    detail: str
    seconds: float

    @property
    def failed(self) -> bool:
        return self.outcome not in PASSES


@dataclass
class FuzzReport:
    results: List[CaseResult] = field(default_factory=list)
    workers: int = 0  # worker processes started (one more after each crash or hang)
    seconds: float = 0.0

    def counts(self) -> Dict[str, int]:
        return dict(Counter(r.outcome for r in self.results))

    def by_kind(self) -> Dict[str, Dict[str, int]]:
        out: Dict[str, Counter] = defaultdict(Counter)
        for r in self.results:
            out[r.kind][r.outcome] += 1
        return {k: dict(v) for k, v in sorted(out.items())}

    def failures(self) -> List[CaseResult]:
        return [r for r in self.results if r.failed]

    def summary(self, per_kind: bool = False) -> str:
        lines = [
            f"{len(self.results)} cases of {len({r.kind for r in self.results})} kinds in "
            f"{self.seconds:.1f} s ({self.workers} worker processes)",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items())),
        ]
        for r in self.failures()[:30]:
            lines.append(f"FAIL #{r.index} {r.kind}: {r.outcome}: {r.detail[:300]}")
        if per_kind:
            for k, counts in self.by_kind().items():
                lines.append(f"  {k}: " + ", ".join(f"{o} {n}" for o, n in sorted(counts.items())))
        return "\n".join(lines)


def _worker(seed: int, start: int, stop: int, kinds: Optional[List[str]], memory_gb: float) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    if memory_gb > 0:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(1)
    out = sys.stdout

    def emit(**event: Any) -> None:
        out.write(_MARK + json.dumps(event) + "\n")
        out.flush()

    harness = Harness()
    emit(event="ready")
    plan = case_plan(stop, seed, kinds)
    for index in range(start, stop):
        name, case_seed = plan[index]
        emit(event="start", index=index, kind=name)
        t0 = time.perf_counter()
        try:
            case = build_case(name, case_seed, harness.config, harness.catalog)
        except Exception as e:  # noqa: BLE001
            outcome, detail = "harness_error", f"{type(e).__name__}: {e}"
        else:
            outcome, detail = harness.run(case)
        emit(event="result", index=index, kind=name, outcome=outcome, detail=detail,
             seconds=time.perf_counter() - t0)


def run_fuzz(
    num_cases: int,
    seed: int = 0,
    kinds: Optional[Sequence[str]] = None,
    case_timeout: float = 120.0,
    start_timeout: float = 600.0,
    memory_gb: float = 4.0,
) -> FuzzReport:
    """Runs ``num_cases`` cases in worker processes; a crash or hang fails its case and a new
    worker takes over from the next one.

    Args:
        num_cases: cases to run (kind ``i % len(kinds)`` of a seeded order, so every kind runs once
            before any runs twice).
        seed: seed of the order and of every case.
        kinds: kind names (default: all of :data:`KINDS`).
        case_timeout: seconds a case may take before it counts as a hang.
        start_timeout: seconds a worker may take to import and build its model.
        memory_gb: address-space limit of a worker (0: none), so that a runaway allocation fails
            in the worker instead of exhausting the machine.
    """
    kinds = list(kinds) if kinds is not None else None
    plan = case_plan(num_cases, seed, kinds)
    report = FuzzReport()
    t_start = time.perf_counter()
    next_index = 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    while next_index < num_cases:
        cmd = [sys.executable, "-m", "marn_rec.fuzzing", "--worker", "--seed", str(seed),
               "--start", str(next_index), "--stop", str(num_cases), "--memory-gb", str(memory_gb)]
        if kinds is not None:
            cmd += ["--kinds", ",".join(kinds)]
        with tempfile.TemporaryFile(mode="w+") as err:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=root, env=env
            )
            report.workers += 1
            lines: "queue.Queue[Optional[str]]" = queue.Queue()

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, daemon=True).start()
            current: Optional[Tuple[int, str, float]] = None
            ready = False
            ended = False
            while not ended:
                timeout = case_timeout if ready else start_timeout
                try:
                    line = lines.get(timeout=timeout)
                except queue.Empty:
                    proc.kill()
                    proc.wait()
                    if current is None:
                        raise RuntimeError(f"fuzz worker did not start within {start_timeout} s")
                    index, name, t0 = current
                    report.results.append(CaseResult(
                        index, name, "hang", f"no result after {timeout} s",
                        time.perf_counter() - t0))
                    next_index = index + 1
                    break
                if line is None:  # the worker exited
                    code = proc.wait()
                    if current is not None:
                        index, name, t0 = current
                        err.seek(0)
                        tail = err.read()[-600:].strip().replace("\n", " | ")
                        report.results.append(CaseResult(
                            index, name, "crash", f"worker exited with {code}: {tail}",
                            time.perf_counter() - t0))
                        next_index = index + 1
                    elif not ready or next_index < num_cases:
                        err.seek(0)
                        raise RuntimeError(f"fuzz worker exited with {code} between cases: "
                                           f"{err.read()[-2000:]}")
                    ended = True
                    break
                if not line.startswith(_MARK):
                    continue
                event = json.loads(line[len(_MARK):])
                if event["event"] == "ready":
                    ready = True
                elif event["event"] == "start":
                    current = (event["index"], event["kind"], time.perf_counter())
                elif event["event"] == "result":
                    report.results.append(CaseResult(
                        event["index"], event["kind"], event["outcome"], event["detail"],
                        event["seconds"]))
                    current = None
                    next_index = event["index"] + 1
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    report.seconds = time.perf_counter() - t_start
    assert [r.index for r in report.results] == list(range(num_cases)), "lost cases"
    assert [r.kind for r in report.results] == [k for k, _ in plan]
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=len(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=None, help="comma-separated kind names")
    parser.add_argument("--per-kind", action="store_true", help="print counts per kind")
    parser.add_argument("--json", default=None, help="write every case's result to this file")
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",") if args.kinds else None
    if args.worker:
        _worker(args.seed, args.start, args.stop, kinds, args.memory_gb)
        return 0
    report = run_fuzz(args.cases, args.seed, kinds, memory_gb=args.memory_gb)
    print(report.summary(per_kind=args.per_kind))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in report.results], f, indent=1)
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
