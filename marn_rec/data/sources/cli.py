"""Command-line glue shared by ``examples/prepare_amazon.py`` and ``examples/prepare_movielens.py``:
the preparation options and the call of ``marn_rec.data.prepare.prepare``.

The options mirror the fields of ``PrepareConfig`` (``--min-count`` for ``min_count``...), read from
the dataclass itself so that they follow it. The preparation module is imported lazily: without it
the commands still convert (``--raw-only``), and say so instead of failing with an ImportError.
"""

import argparse
import ast
import dataclasses
import importlib
import json
import os
from types import ModuleType
from typing import Any, Dict, Optional

# PrepareConfig's fields as agreed; used for the options only while the module is not importable.
KNOWN_PREPARE_FIELDS = ("min_count", "max_length", "seed", "negatives", "cold_item_fraction", "split")
_PREFIX = "prepare_"
# PrepareConfig fields the commands set themselves: the source from the conversion, progress bars
# from --no-progress.
SET_BY_COMMAND = ("source", "progress")


def prepare_module() -> Optional[ModuleType]:
    """``marn_rec.data.prepare`` with ``prepare`` and ``PrepareConfig``, or None where this checkout
    does not have them yet."""
    try:
        module = importlib.import_module("marn_rec.data.prepare")
    except ModuleNotFoundError as e:
        if e.name != "marn_rec.data.prepare":
            raise  # the module is there but something it imports is not: show that
        return None
    if not (hasattr(module, "prepare") and hasattr(module, "PrepareConfig")):
        return None  # a package still being written (no __init__ exporting them yet)
    return module


def _literal(text: str) -> Any:
    """An option value: a Python literal (3, 0.1, None, (0.8, 0.2)) or else the plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"true or false expected, not {text!r}")


def _field_default(f: "dataclasses.Field[Any]") -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("preparation (marn_rec.data.prepare.PrepareConfig)")
    group.add_argument("--raw-only", action="store_true", help="stop after writing OUT/raw")
    module = prepare_module()
    if module is None:
        for name in KNOWN_PREPARE_FIELDS:
            group.add_argument(
                "--" + name.replace("_", "-"), dest=_PREFIX + name, metavar=name.upper(), type=_literal,
                default=None,
                help="PrepareConfig's default when not given",
            )
        return
    taken = set(parser._option_string_actions)  # converter options keep their names
    for f in dataclasses.fields(module.PrepareConfig):
        flag = "--" + f.name.replace("_", "-")
        if flag in taken or not f.init or f.name in SET_BY_COMMAND:
            continue
        default = _field_default(f)
        if isinstance(default, bool):
            kind = _bool
        elif isinstance(default, (int, float, str)):
            kind = type(default)
        else:  # None, tuples...: read as a Python literal
            kind = _literal
        group.add_argument(
            flag, dest=_PREFIX + f.name, metavar=f.name.upper(), type=kind, default=default,
            help=f"PrepareConfig.{f.name}",
        )


def prepare_overrides(args: argparse.Namespace) -> Dict[str, Any]:
    """The PrepareConfig fields given on the command line (all of them when read from the class)."""
    return {k[len(_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_PREFIX) and v is not None}


def run_prepare(
    raw_dir: str, out_dir: str, args: argparse.Namespace, source: str, progress: bool = True
) -> Optional[Dict[str, Any]]:
    """Calls ``prepare(raw_dir, out_dir, PrepareConfig(...))`` and prints its summary.

    Args:
        source: what was converted (PrepareConfig.source, stored in the manifest).
        progress: PrepareConfig.progress.
    """
    if args.raw_only:
        print(f"raw directory ready: {raw_dir}")
        return None
    module = prepare_module()
    if module is None:
        raise SystemExit(
            f"marn_rec.data.prepare is not in this checkout; the raw directory is ready: {raw_dir} "
            "(--raw-only stops there)"
        )
    fields = {f.name for f in dataclasses.fields(module.PrepareConfig)}
    derived = {k: v for k, v in dict(source=source, progress=progress).items() if k in fields}
    config = module.PrepareConfig(**prepare_overrides(args), **derived)
    summary = module.prepare(raw_dir, out_dir, config)
    print(json.dumps(summary, indent=1, default=str))
    return summary


def output_dirs(out: str) -> Dict[str, str]:
    """OUT/raw (the user format) and OUT/prepared (preparation's output)."""
    return {"raw": os.path.join(out, "raw"), "prepared": os.path.join(out, "prepared")}
