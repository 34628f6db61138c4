"""Corruptions of ``build_batch``'s own inputs (target ``"build"``), and the helpers that build
consistent batches through it."""

from typing import Any, Callable, Dict, Optional

import torch

from marn_rec.batch import MARNBatch, build_batch
from marn_rec.fuzzing.cases import KINDS, Case, Ctx, KindFn

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
