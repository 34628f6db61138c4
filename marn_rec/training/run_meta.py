"""What a checkpoint records of its run, and what a resumed run must agree with.

A checkpoint's ``meta.json`` holds the run's training settings, the model's configuration and the
data's description. A run resumes from it only where these agree, with two exceptions:

- the settings of :data:`NOT_CHECKED` may change between a run and its resumption;
- a field the checkpoint lacks was added to the code after the checkpoint was written. The run
  that wrote it behaved as the field's default (fields are only ever added with a default that
  keeps the old behaviour), so it is accepted when this run's value is that default and refused
  otherwise. :func:`meta_defaults` gives those defaults from the dataclasses themselves (nested
  ones, and sequences of them, too), so that adding a field needs no entry anywhere.
"""

import json
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any, Dict, Optional, Type

from marn_rec.config import MARNConfig

# Settings that may change between a run and its resumption. ``table_dtype`` is checked through
# the model's configuration (``model.tower.table_dtype``); the pipeline changes no value; the
# dense precision and the fused optimizer change the rounding, not the model or its state; the
# allocator setting changes neither.
NOT_CHECKED = ("out_dir", "resume", "progress", "num_workers", "eval_every", "checkpoint_every",
               "stop_after", "pipeline", "table_dtype", "dense_dtype", "fused_optimizer",
               "keep_freed_memory")


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def run_meta(train: Any, model: MARNConfig, data: Dict[str, Any]) -> Dict[str, Any]:
    """The meta of a run (JSON round-tripped, as it is compared after reading): ``train`` (a
    ``TrainConfig``) without :data:`NOT_CHECKED`, ``model`` and the data's description."""
    return _json({"train": {k: v for k, v in asdict(train).items() if k not in NOT_CHECKED},
                  "model": asdict(model), "data": data})


def _field_defaults(cls: Type[Any], instance: Any = None) -> Dict[str, Any]:
    """Per field of the dataclass ``cls``: its default. A field that holds a dataclass in
    ``instance`` (and whose own default, if any, is one) gets the defaults of that one's fields; a
    sequence of dataclasses gets them element by element (``differences`` then compares element by
    element). Fields without a default are left out: a checkpoint cannot lack them."""
    out: Dict[str, Any] = {}
    for f in fields(cls):
        value = getattr(instance, f.name, None) if instance is not None else None
        default: Any = MISSING
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if is_dataclass(value) and (default is MISSING or is_dataclass(default)):
            out[f.name] = _field_defaults(type(value), value)
        elif isinstance(value, (list, tuple)) and value and all(is_dataclass(v) for v in value):
            out[f.name] = [_field_defaults(type(v), v) for v in value]
        elif default is not MISSING:
            out[f.name] = default
    return out


def meta_defaults(train: Any, model: MARNConfig, data_class: Optional[Type[Any]] = None) -> Dict[str, Any]:
    """The shape of :func:`run_meta` with each field's dataclass default (the data's only when
    ``data_class``, the dataclass the data's description is made from, is given)."""
    out = {"train": {k: v for k, v in _field_defaults(type(train)).items() if k not in NOT_CHECKED},
           "model": _field_defaults(type(model), model)}
    if data_class is not None:
        out["data"] = _field_defaults(data_class)
    return _json(out)


_ABSENT = object()


def differences(saved: Any, expected: Any, defaults: Any = None, prefix: str = "") -> list:
    """Where ``saved`` and ``expected`` differ; a key ``saved`` lacks is no difference when the
    expected value is its entry in ``defaults`` (a field added after the checkpoint was written);
    one line per difference, by dotted path."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for k in sorted(set(saved) | set(expected)):
            if k not in saved and k in defaults and expected[k] == defaults[k]:
                continue
            out += differences(saved.get(k, _ABSENT), expected.get(k, _ABSENT), defaults.get(k),
                                f"{prefix}{k}.")
        return out
    if (isinstance(saved, list) and isinstance(expected, list) and isinstance(defaults, list)
            and len(saved) == len(expected) == len(defaults)):
        return [d for i, (a, b, c) in enumerate(zip(saved, expected, defaults))
                for d in differences(a, b, c, f"{prefix}{i}.")]
    if saved == expected:
        return []
    show = lambda v: "absent" if v is _ABSENT else repr(v)  # noqa: E731
    return [f"{prefix[:-1]}: checkpoint {show(saved)}, this run {show(expected)}"]
