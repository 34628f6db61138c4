"""The training command line as a library: every value is checked before a process group, a model
or a loader exists.

A bad value ends the program the way ``argparse`` does (exit status 2) with one line,
``PROG: error: MESSAGE``, and no traceback. Under ``torchrun`` every rank parses the same command
line: rank 0 (``RANK`` in the environment) prints the line, the other ranks exit quietly with the
same status, so the message appears once.

    cfg = parse_train_args()          # sys.argv; exits 2 on a bad value
    train(cfg)
"""

import argparse
import json
import math
import os
import sys
from dataclasses import fields
from typing import Any, Callable, List, NoReturn, Optional, Sequence

import torch.distributed as dist

from torchrec.distributed.types import ShardingType

from marn_rec.config import ABLATIONS, DIAGNOSTIC_ABLATIONS, PRESETS, REFERENCE
from marn_rec.features import TABLE_DTYPES
from marn_rec.data.prepared import cold_item_dropout_problem
from marn_rec.training.checkpoint import RESUME_MODES
from marn_rec.training.loop import DENSE_DTYPES, TrainConfig
from marn_rec.training.sharding import initial_accumulator_problem

SHARDING_TYPES = tuple(t.value for t in ShardingType)


def launch_rank() -> int:
    """This process's rank as torchrun sets it (``RANK``); 0 without torchrun."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def launch_world_size() -> int:
    """The number of processes as torchrun sets it (``WORLD_SIZE``); 1 without torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (not ``None``, which the option's help explains, nor those of flags),
    the description as written."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class CheckedArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, printed by rank 0 only; exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def _print_message(self, message: str, file: Any = None) -> None:
        if launch_rank() == 0:  # --help and --version: once, not once per rank
            super()._print_message(message, file)

    def error(self, message: str) -> NoReturn:
        if launch_rank() == 0:
            line = " ".join(str(message).split())  # one line, whatever the message held
            sys.stderr.write(f"{self.prog}: error: {line}\n")
            sys.stderr.flush()
        sys.exit(2)


def writable_dir_problem(path: str) -> Optional[str]:
    """Creates ``path`` if needed and writes (then removes) a probe file in it; the reason it is
    not usable, or None."""
    if not path:
        return "the output directory is empty"
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} exists and is not a directory"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"cannot create {path}: {e.strerror or e}"
    probe = os.path.join(path, f".write-probe-{launch_rank()}-{os.getpid()}")
    try:
        with open(probe, "w") as f:
            f.write("probe\n")
    except OSError as e:
        return f"cannot write in {path}: {e.strerror or e}"
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    return None


def synthetic_overrides(items: Sequence[str]) -> dict:
    """``FIELD=VALUE`` pairs (``--synthetic``) as :class:`SyntheticTaobaoConfig` field values, each
    read as the field's type (tuples as comma-separated numbers). Raises ``ValueError`` naming the
    pair for an unknown field, a field the run sets itself, or a value of the wrong type; the
    config's own checks (ranges, probabilities) run when the stream is built."""
    from marn_rec.data.synthetic import SyntheticTaobaoConfig

    # Sizes follow the model config and the budget follows the run: not knobs.
    owned = {"seed", "batch_size", "num_train_batches", "num_eval_batches", "num_items", "num_shops",
             "num_brands", "num_categories", "title_vocab_size", "title_length", "image_dim",
             "num_statistics", "max_history", "num_time_buckets"}
    known = {f.name: f for f in fields(SyntheticTaobaoConfig) if f.name not in owned}
    defaults = SyntheticTaobaoConfig.__dataclass_fields__
    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--synthetic {item!r}: expected FIELD=VALUE")
        if name not in known:
            why = "set by the run itself" if name in owned else "not a field of SyntheticTaobaoConfig"
            raise ValueError(f"--synthetic {item!r}: {name} is {why}; knobs: {', '.join(sorted(known))}")
        if name in out:
            raise ValueError(f"--synthetic sets {name} twice")
        default = defaults[name].default
        try:
            if isinstance(default, tuple):
                value: Any = tuple(type(d)(v) for d, v in zip(default, text.split(",")))
                if len(value) != len(default) or len(text.split(",")) != len(default):
                    raise ValueError
            elif isinstance(default, bool):
                value = {"true": True, "false": False}[text.lower()]
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = text
        except (ValueError, KeyError):
            raise ValueError(f"--synthetic {item!r}: {name} takes {type(default).__name__} "
                             f"like {default!r}, got {text!r}") from None
        out[name] = value
    return out


def _preset_value(preset: str, name: str) -> Any:
    return getattr(PRESETS[preset](), name)


def train_parser(defaults: Optional[TrainConfig] = None, description: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of :class:`~marn_rec.training.loop.TrainConfig`, with ``defaults``' values."""
    d = defaults if defaults is not None else TrainConfig()
    p = CheckedArgumentParser(description=description)
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS), help="model sizes")
    p.add_argument("--model", default=d.model,
                   choices=list(ABLATIONS) + list(DIAGNOSTIC_ABLATIONS) + [REFERENCE],
                   help=f"Table 3 configuration; {' or '.join(DIAGNOSTIC_ABLATIONS)} (MARN without APGRU's "
                        f"candidate attention or its property term); or {REFERENCE} (synthetic stream "
                        f"only: the ceiling, BaseModel on the generator's true item factors)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the data stream and the initial weights")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per rank and step")
    p.add_argument("--steps", type=int, default=d.steps, help="training steps (every rank takes each)")
    p.add_argument("--eval-every", type=int, default=d.eval_every,
                   help="steps between evaluations (and one at the end)")
    p.add_argument("--eval-batches", type=int, default=d.eval_batches,
                   help="evaluation batches of all ranks together; at least one per rank")
    p.add_argument("--lr", type=float, default=d.learning_rate, dest="learning_rate", metavar="LR",
                   help="AdaGrad learning rate, tables and dense parameters (paper section 4.1: 0.1)")
    p.add_argument("--lambda0", type=float, default=d.lambda0,
                   help="lambda0 of eq. 10, the weight of the adversarial losses (paper section 4.1: "
                        f"0.05); default: the preset's ({_preset_value(d.preset, 'lambda0')} for "
                        f"{d.preset})")
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help="gamma of the schedule lambda = lambda0 * (2 / (1 + exp(-gamma * p)) - 1), "
                        "p the training progress (paper section 4.1: 10); default: the preset's "
                        f"({_preset_value(d.preset, 'gamma')} for {d.preset})")
    p.add_argument("--out-dir", default=d.out_dir, help="metrics.jsonl and checkpoints/ go here")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="steps between checkpoints, 0: only at the end (a killed run loses at most "
                        "this many steps)")
    p.add_argument("--resume", default=d.resume, choices=list(RESUME_MODES),
                   help="auto: from the latest complete checkpoint if any; required: fail without "
                        "one; never: start afresh (refused if OUT_DIR holds checkpoints)")
    p.add_argument("--sharding-types", nargs="+", default=d.sharding_types, metavar="TYPE",
                   help=f"allowed sharding types, of {', '.join(SHARDING_TYPES)}; default: the "
                        "planner's choice (on CPU: table_wise column_wise; gloo has no "
                        "reduce-scatter for the row-wise ones)")
    p.add_argument("--replicate-max-rows", type=int, default=d.replicate_max_rows, metavar="ROWS",
                   help="replicate the pooled tables of at most ROWS rows on every rank (TorchRec's "
                        "data_parallel: no all-to-all for their lookups; 0: none)")
    p.add_argument("--table-dtype", default=d.table_dtype, choices=list(TABLE_DTYPES),
                   help="storage of the item tower's tables (IDs, statistics, title words): fp16 "
                        "holds twice the rows per byte of fp32; lookups still return fp32")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                   help="the plain loop instead of TorchRec's TrainPipelineSparseDist (which starts the "
                        "next batch's input all-to-all behind this batch's compute; same losses)")
    p.add_argument("--dense-dtype", default=d.dense_dtype, choices=list(DENSE_DTYPES),
                   help="bf16: the training forward under bf16 autocast (weights, tables, optimizer "
                        "state and evaluation stay fp32); refused without native bf16 hardware")
    p.add_argument("--keep-freed-memory", action="store_true", default=d.keep_freed_memory,
                   help="keep the memory a step frees mapped for the next step (glibc's malloc): fewer "
                        "page faults, same arithmetic; off by default, see TrainConfig")
    p.add_argument("--fused-optimizer", action="store_true", default=d.fused_optimizer,
                   help="the dense AdaGrad's fused kernel instead of its Python loop")
    p.add_argument("--dense-initial-accumulator", type=float, default=d.dense_initial_accumulator,
                   help="the dense AdaGrad's initial accumulator (TensorFlow's default; until a "
                        "parameter's summed squared gradients reach it, AdaGrad is SGD at "
                        "lr / sqrt(value))")
    p.add_argument("--attention-initial-accumulator", type=float, default=d.attention_initial_accumulator,
                   help="the same for APGRU's candidate attention alone (default 0: plain "
                        "AdaGrad, whose step does not depend on the gradient's scale)")
    p.add_argument("--fusion-initial-accumulator", type=float, default=d.fusion_initial_accumulator,
                   help="the same for MAF's attention (eq. 3) alone (default: as the other dense "
                        "parameters)")
    p.add_argument("--cold-item-dropout", type=float, default=d.cold_item_dropout, metavar="P",
                   help="with --data: show each item of a training batch with probability P as one "
                        "the training period never observed (item_id out of vocabulary, its "
                        "training-period counts missing), to learn to score cold items (DropoutNet)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false",
                   help="run the item tower once per slot instead of once per unique item")
    p.add_argument("--num-workers", type=int, default=d.num_workers,
                   help="data generator processes per rank (may change on resume)")
    p.add_argument("--stop-after", type=int, default=d.stop_after, metavar="STEP",
                   help="stop after this step with a checkpoint, as a preemption would; the same "
                        "command without it resumes")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--data", dest="data_dir", default=d.data_dir, metavar="DIR",
                   help="a prepared directory of real data (examples/prepare_*.py); without it, "
                        "the synthetic Taobao-like stream")
    p.set_defaults(dedup=d.dedup, progress=d.progress, pipeline=d.pipeline)
    return p


def _is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def train_args_problem(a: argparse.Namespace, world_size: int) -> Optional[str]:
    """The first bad value of parsed training arguments, as a message; None if all are good."""
    if not 0 <= a.seed < 2**63:
        return f"--seed must be in [0, 2**63), got {a.seed}"
    for flag, value in (("--batch-size", a.batch_size), ("--steps", a.steps),
                        ("--eval-every", a.eval_every), ("--eval-batches", a.eval_batches)):
        if value < 1:
            return f"{flag} must be a positive integer, got {value}"
    if a.eval_batches < world_size:
        return (f"--eval-batches {a.eval_batches} is fewer than the {world_size} ranks "
                f"(WORLD_SIZE): every rank needs at least one evaluation batch; pass "
                f"--eval-batches {world_size} or more")
    if not (_is_finite(a.learning_rate) and a.learning_rate > 0):
        return f"--lr must be a finite number > 0, got {a.learning_rate}"
    if problem := initial_accumulator_problem(a.dense_initial_accumulator):
        return f"--dense-initial-accumulator {problem}"
    for flag in ("attention", "fusion"):
        value = getattr(a, f"{flag}_initial_accumulator")
        if value is not None and (problem := initial_accumulator_problem(value)):
            return f"--{flag}-initial-accumulator {problem}"
    if problem := cold_item_dropout_problem(a.cold_item_dropout):
        return f"--cold-item-dropout {problem}"
    if a.cold_item_dropout and not a.data_dir:
        return "--cold-item-dropout needs --data (the synthetic stream has no out-of-vocabulary row)"
    if a.lambda0 is not None and not (_is_finite(a.lambda0) and a.lambda0 >= 0):
        return f"--lambda0 must be a finite number >= 0 (paper: 0.05), got {a.lambda0}"
    if a.gamma is not None and not (_is_finite(a.gamma) and a.gamma >= 0):
        return (f"--gamma must be a finite number >= 0 (paper: 10; a negative one makes lambda "
                f"negative), got {a.gamma}")
    if a.checkpoint_every < 0:
        return f"--checkpoint-every must be >= 0 (0: only at the end), got {a.checkpoint_every}"
    if a.num_workers < 0:
        return f"--num-workers must be >= 0, got {a.num_workers}"
    if a.replicate_max_rows < 0:
        return f"--replicate-max-rows must be >= 0 (0: none), got {a.replicate_max_rows}"
    if a.stop_after is not None and not 1 <= a.stop_after <= a.steps:
        return f"--stop-after must be in [1, --steps = {a.steps}], got {a.stop_after}"
    if a.sharding_types is not None:
        unknown = [t for t in a.sharding_types if t not in SHARDING_TYPES]
        if unknown:
            return f"--sharding-types: unknown {unknown}; known: {', '.join(SHARDING_TYPES)}"
        if len(set(a.sharding_types)) != len(a.sharding_types):
            return f"--sharding-types lists a type twice: {a.sharding_types}"
    return None


def _check_prepared(cfg: TrainConfig) -> None:
    """The prepared directory opens and fits the configured model (ValueError otherwise)."""
    from marn_rec.data.prepared import PreparedDataset
    from marn_rec.training.sources import model_config_for_manifest

    try:
        data = PreparedDataset(cfg.data_dir)
    except (OSError, KeyError) as e:
        raise ValueError(f"--data {cfg.data_dir}: not a prepared directory ({e})") from e
    model_config_for_manifest(data.manifest, cfg.model_config())


def parse_train_args(
    argv: Optional[Sequence[str]] = None,
    defaults: Optional[TrainConfig] = None,
    description: Optional[str] = None,
    before_checks: Optional[Callable[[argparse.Namespace], None]] = None,
    require_data: bool = False,
) -> TrainConfig:
    """The :class:`TrainConfig` of ``argv`` (``sys.argv[1:]`` if None), every value checked
    (including that ``--out-dir`` can be created and written and that the data fits the model).

    On a bad value: exit status 2 with one line on rank 0 (see the module docstring).
    """
    parser = train_parser(defaults, description)
    if require_data:
        parser._option_string_actions["--data"].required = True
    a = parser.parse_args(argv)
    if before_checks is not None:
        before_checks(a)
    world = launch_world_size()
    problem = train_args_problem(a, world)
    if problem:
        parser.error(problem)
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(a).items() if k in names}
    base = defaults if defaults is not None else TrainConfig()
    try:
        cfg = TrainConfig(**{**{f.name: getattr(base, f.name) for f in fields(TrainConfig)}, **values})
        if cfg.data_dir:
            _check_prepared(cfg)
        else:
            cfg.data_config(world).check_fits(cfg.model_config())
    except ValueError as e:
        parser.error(str(e))
    problem = writable_dir_problem(cfg.out_dir)
    if problem:
        parser.error(f"--out-dir: {problem}")
    return cfg


def main(
    argv: Optional[Sequence[str]] = None,
    defaults: Optional[TrainConfig] = None,
    description: Optional[str] = None,
    before_checks: Optional[Callable[[argparse.Namespace], None]] = None,
    require_data: bool = False,
) -> int:
    """The training command: parse and check ``argv``, train, print the last evaluation (rank 0).

    ``before_checks`` runs on the parsed arguments before the values are checked (e.g. to prepare
    the data directory that ``--data`` names). A :class:`CheckpointError` or
    :class:`~marn_rec.training.loop.TrainingDiverged` (raised on every rank together) prints one
    line and returns 1. ``require_data``: ``--data`` must be given.
    """
    from marn_rec.quiet import quiet_libraries
    from marn_rec.training.checkpoint import CheckpointError
    from marn_rec.training.loop import TrainingDiverged, train

    cfg = parse_train_args(argv, defaults, description, before_checks, require_data)
    with quiet_libraries():
        try:
            result = train(cfg)
        except (CheckpointError, TrainingDiverged) as e:
            if launch_rank() == 0:
                print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
            if dist.is_initialized():
                dist.destroy_process_group()
            return 1
    if dist.get_rank() == 0:
        if result:
            print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
        else:
            print(f"stopped after step {cfg.stop_after} with a checkpoint in {cfg.out_dir}/checkpoints; "
                  "the same command without --stop-after resumes")
    dist.destroy_process_group()
    return 0


__all__: List[str] = [
    "synthetic_overrides",
    "CheckedArgumentParser",
    "HelpFormatter",
    "SHARDING_TYPES",
    "launch_rank",
    "launch_world_size",
    "main",
    "parse_train_args",
    "train_args_problem",
    "train_parser",
    "writable_dir_problem",
]
