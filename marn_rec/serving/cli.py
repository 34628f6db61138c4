"""The serving command lines (``examples/extract_representations.py``, ``examples/score.py``,
``examples/export_scorer.py``) as a library. A refused input (damaged checkpoint, store of another
model, unknown items, bad IDs) ends with one ``error: ...`` line and exit status 1; a bad flag with
argparse's status 2."""

import argparse
import contextlib
import json
import logging
import sys
import warnings
from typing import Iterator, List, Optional, Sequence

import torch

from marn_rec.training.cli import HelpFormatter, launch_rank, launch_world_size

DTYPE_CHOICES = ("fp32", "fp16", "int8")


def _ints(text: str) -> List[int]:
    """Comma- or space-separated integers ('' is an empty list)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Library chatter off (:func:`marn_rec.quiet.quiet_libraries`, plus warnings that
    torch, TorchRec and torchdata raise about their own calls), restored afterwards."""
    from marn_rec.quiet import quiet_libraries

    with quiet_libraries(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_fx_tracing.*")
        warnings.filterwarnings("ignore", message=r".*set_vital.*")
        warnings.filterwarnings("ignore", message=r"Please use DTensor instead")
        warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
        # torch.export's own pickling of its tree specs (torch 2.13).
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        fx = logging.getLogger("torch.fx._symbolic_trace")
        level = fx.level
        fx.setLevel(logging.ERROR)
        try:
            yield
        finally:
            fx.setLevel(level)


def _fail(e: BaseException) -> int:
    if launch_rank() == 0:
        print(f"error: {e}", file=sys.stderr, flush=True)
    return 1


def extract_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run a trained MARN item tower over a whole catalogue into a representation store "
        "(one process, or N ranks under torchrun: each extracts its share, tables sharded by DMP).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint-dir", required=True,
                   help="a training OUT_DIR (its latest complete checkpoint), a checkpoints/ directory or a step_* directory")
    p.add_argument("--out", required=True, help="the store directory to write")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp32",
                   help="stored precision; int8 is row-wise with a per-row scale and offset")
    p.add_argument("--prepared", default=None,
                   help="a prepared data set directory whose item table to extract; default: the synthetic "
                   "catalogue the checkpoint's run trained on")
    p.add_argument("--batch-size", type=int, default=4096, help="items per forward pass and rank")
    p.add_argument("--max-items", type=int, default=None, help="only the first N items of the catalogue (a quick try)")
    p.add_argument("--sharding-types", nargs="+", default=None,
                   help="under torchrun: allowed sharding types (default: the planner's; on CPU table_wise column_wise)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads per process, 0: torch's default (on a busy machine 1 can be much faster)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-verify", action="store_true", help="skip checking the checkpoint's files against its manifest")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def extract_main(argv: Optional[Sequence[str]] = None) -> int:
    """``examples/extract_representations.py``."""
    args = extract_parser().parse_args(argv)
    if args.batch_size <= 0 or (args.max_items is not None and args.max_items <= 0):
        extract_parser().error("--batch-size and --max-items must be positive")
    with _quiet():
        return _extract(args)


def _extract(args: argparse.Namespace) -> int:
    from marn_rec.serving.extract import extract, load_tower, sharded_tower, trained_head_fingerprint
    from marn_rec.serving.sources import ItemSource, prepared_source, source_from_checkpoint_meta
    from marn_rec.serving.weights import CheckpointInfo
    from marn_rec.training.checkpoint import CheckpointError

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    world = launch_world_size()
    device = torch.device("cpu")
    try:
        if world > 1:
            from marn_rec.training.loop import init_distributed

            _, _, device = init_distributed()
        info = CheckpointInfo(args.checkpoint_dir, verify=not args.no_verify)
        source = prepared_source(args.prepared) if args.prepared else source_from_checkpoint_meta(info.meta)
        if args.max_items is not None and args.max_items < len(source):
            source = ItemSource(features=source.features, ids=source.ids[: args.max_items],
                                description={**source.description, "first_items": args.max_items})
        tower = sharded_tower(info, device, args.sharding_types) if world > 1 else load_tower(info)
        head_fp = trained_head_fingerprint(info)
        report = extract(tower, source, args.out, info.config, info, head_fp, dtype=args.dtype,
                         batch_size=args.batch_size, device=device, overwrite=args.overwrite,
                         progress=not args.no_progress)
    except (CheckpointError, ValueError, FileExistsError, OSError) as e:
        return _fail(e)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if launch_rank() == 0:
        print(f"stored {report.stored:,} of {report.num_rows:,} items ({args.dtype}, d={info.config.tower.hidden_dim}) "
              f"from {info.path} (step {info.step}) into {args.out} in {report.seconds:.1f} s "
              f"({report.items_per_s:,.0f} items/s, {world} process{'es' if world > 1 else ''})")
        if report.bad_items:
            print(f"{len(report.bad_items)} items not stored (bad tower input; all in {args.out}/bad_items.jsonl):")
            for item in report.bad_items[:5]:
                print(f"  item {item['id']}: {item['error']}")
    return 0


def score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Score candidates for one user from a representation store: APGRU, attention and MLP only.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--store", required=True, help="a store written by extract_representations.py")
    head = p.add_mutually_exclusive_group(required=True)
    head.add_argument("--checkpoint-dir", help="the checkpoint the store was extracted from (eager head)")
    head.add_argument("--exported", help="an exported head (scorer.pt2 or scorer.aoti.pt2 from export_scorer.py)")
    p.add_argument("--history", type=_ints, default=None,
                   help="the user's behaviour item IDs, oldest first, comma-separated (at most max_length); default: "
                   "none (a user without history)")
    p.add_argument("--behavior-types", type=_ints, default=None, help="one per behaviour (0 click, 1 cart, 2 purchase); default all clicks")
    p.add_argument("--time-buckets", type=_ints, default=None, help="bucketised time since each behaviour; default all 0")
    p.add_argument("--candidates", type=_ints, required=True, help="candidate item IDs, comma-separated")
    p.add_argument("--missing", choices=("error", "mean", "zero"), default="error",
                   help="items not in the store: refuse the request, or score them with the mean / a zero representation")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def score_main(argv: Optional[Sequence[str]] = None) -> int:
    """``examples/score.py``."""
    args = score_parser().parse_args(argv)
    with _quiet():
        return _score(args)


def _score(args: argparse.Namespace) -> int:
    from marn_rec.serving.scorer import load_scorer
    from marn_rec.training.checkpoint import CheckpointError

    history = args.history or []
    n = len(history)
    types = args.behavior_types if args.behavior_types is not None else [0] * n
    times = args.time_buckets if args.time_buckets is not None else [0] * n
    try:
        scorer = load_scorer(args.store, checkpoint=args.checkpoint_dir, exported=args.exported, missing=args.missing)
        logits = scorer(history, types, times, args.candidates)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        return _fail(e)
    probs = torch.sigmoid(logits)
    rows = [{"item": i, "logit": float(l), "probability": float(p)} for i, l, p in zip(args.candidates, logits, probs)]
    if args.json:
        print(json.dumps({"scores": rows, "stats": scorer.stats}))
        return 0
    print(f"{'rank':>4} {'item':>10} {'logit':>9} {'p(click)':>9}")
    for r, row in enumerate(sorted(rows, key=lambda x: -x["logit"]), 1):
        print(f"{r:>4} {row['item']:>10} {row['logit']:>9.4f} {row['probability']:>9.4f}")
    missing = scorer.stats["missing_candidates"] + scorer.stats["missing_history"]
    if missing:
        print(f"{missing} items were not in the store and got the {args.missing} representation")
    return 0


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Export the scoring head (APGRU, attention, MLP; no TorchRec) with torch.export, "
        "and optionally as an AOTInductor package.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--store", required=True, help="the representation store it will serve with (checked, recorded)")
    p.add_argument("--checkpoint-dir", required=True, help="the checkpoint the store was extracted from")
    p.add_argument("--out", required=True, help="the exported program, e.g. scorer.pt2 (scorer.json and "
                   "scorer.example.pt are written beside it)")
    p.add_argument("--aoti", action="store_true", help="also build scorer.aoti.pt2 with AOTInductor (a C++ compile: minutes)")
    return p


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    """``examples/export_scorer.py``."""
    args = export_parser().parse_args(argv)
    with _quiet():
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    from marn_rec.serving.export import compare_with_example, export_scorer, load_exported_head
    from marn_rec.serving.scorer import load_head
    from marn_rec.serving.store import RepresentationStore
    from marn_rec.serving.weights import CheckpointInfo
    from marn_rec.training.checkpoint import CheckpointError

    try:
        info = CheckpointInfo(args.checkpoint_dir)
        out = export_scorer(load_head(info), args.out, RepresentationStore(args.store), aoti=args.aoti)
        for key in ("program", "aoti"):
            if key in out:
                fn, _ = load_exported_head(out[key])
                diff = compare_with_example(fn, out[key])
                print(f"{out[key]}: reloaded; max |logit - eager logit| on the saved example {diff:.2e}")
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        return _fail(e)
    print(f"wrote {out['program']}, {out['meta']}, {out['example']}" + (f", {out['aoti']}" if "aoti" in out else ""))
    if "aoti_error" in out:
        print(f"AOTInductor package not built: {out['aoti_error'][:300]}")
    return 0

