"""The command lines of ``benchmarks/qps.py`` and ``benchmarks/apgru.py``: flags, ``--quick``
presets, and where the results go (a scratch folder unless ``--update-records``)."""

import argparse
import os
import sys
from typing import List, Optional, Sequence

from marn_rec.benchmarks.apgru import APGRU_QUICK, APGRUConfig, run_apgru
from marn_rec.benchmarks.fast_step import (
    FAST_STEP_QUICK,
    FastStepConfig,
    render_fast_step_markdown,
    run_fast_step,
)
from marn_rec.benchmarks.config import FAST_DTYPES, FAST_STEP_MODES, QUICK, RECORDS_DIR, QPSConfig
from marn_rec.benchmarks.goals import goal_lines
from marn_rec.benchmarks.qps import run_qps
from marn_rec.benchmarks.report import plot_qps, render_apgru_markdown, render_qps_markdown, write_outputs
from marn_rec.features import TABLE_DTYPES

UPDATE_RECORDS = "--update-records"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default, except ``None`` ones (their help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _stem(text: str) -> str:
    if not text or not all(c.isalnum() or c in "_-" for c in text):
        raise argparse.ArgumentTypeError(f"a file stem of letters, digits, _ and -: {text!r}")
    return text


def _sizes(text: str) -> List[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def _join(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _output_flags(p: argparse.ArgumentParser, scratch_dir: str, files: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--out-dir", default=scratch_dir,
                       help=f"{files} go here; a scratch folder by default, so the recorded figures stay as they are")
    group.add_argument(UPDATE_RECORDS, action="store_true",
                       help=f"write into {RECORDS_DIR}/ instead, over the recorded figures that "
                       "benchmarks/RESULTS.md quotes (not with --quick)")


def _parse(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.update_records and args.quick:
        p.error(f"{UPDATE_RECORDS}: --quick figures are a smoke test, not records")
    return args


def _out_dir(args: argparse.Namespace) -> str:
    return RECORDS_DIR if args.update_records else args.out_dir


def _command(script: str, argv: Sequence[str]) -> str:
    """The command line a record states; where it was written is not part of it."""
    return " ".join([f"python benchmarks/{script}", *(a for a in argv if a != UPDATE_RECORDS)])


def qps_parser() -> argparse.ArgumentParser:
    d = QPSConfig()
    p = argparse.ArgumentParser(
        description="MARN training samples/s: DMP-sharded vs an unsharded baseline, over item-table sizes. "
        f"Writes qps.json, qps.md and qps.png into --out-dir, or into {RECORDS_DIR}/ with {UPDATE_RECORDS}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--sizes", type=_sizes, default=_join(d.sizes), help="num_items values, comma-separated (1e6 ok)")
    p.add_argument("--preset", default=d.preset, choices=["small", "tiny", "paper"], help="model size")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per process and step")
    p.add_argument("--num-batches", type=int, default=d.num_batches, help="pre-generated batches, cycled")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="untimed steps first")
    p.add_argument("--windows", type=int, default=d.windows, help="timed windows (median reported)")
    p.add_argument("--steps-per-window", type=int, default=d.steps_per_window, help="steps per timed window")
    p.add_argument("--profile-steps", type=int, default=d.profile_steps, help="0: no profiler pass")
    p.add_argument("--tower-reps", type=int, default=d.tower_reps, help="item-tower-only timing passes (baseline)")
    p.add_argument("--sharding-types", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated; default table_wise,column_wise on CPU (+row_wise on GPUs)")
    p.add_argument("--world-size", type=int, default=d.world_size, help="processes of a sharded run")
    p.add_argument("--dedup", choices=["both", "on", "off"], default="both",
                   help="item tower over unique items (on), per slot (off), or both")
    p.add_argument("--per-slot-sizes", default=None,
                   help="sizes that also run without dedup: comma-separated, 'all', default the smallest")
    p.add_argument("--no-baseline", action="store_true", help="sharded runs only (no compute floor either)")
    p.add_argument("--pipeline", choices=["both", "on", "off"], default="both",
                   help="sharded runs with TorchRec's TrainPipelineSparseDist (on), the plain loop (off), or both")
    p.add_argument("--table-dtype", dest="table_dtypes", type=lambda s: [x for x in s.split(",") if x],
                   default=",".join(d.table_dtypes),
                   help="item tower table storage, comma-separated of fp32,fp16 (the baseline runs with fp32 only)")
    p.add_argument("--memory-budget-gib", type=float, default=d.memory_budget_gib,
                   help="skip runs predicted to need more than this many GiB (all processes of a run "
                        "together; per GPU on GPUs), as on a machine with only that much; default: no cap")
    p.add_argument("--no-floor", action="store_true",
                   help="skip the compute floor (FLOPs per component, GEMM rate, time/floor)")
    p.add_argument("--floor-reps", type=int, default=d.floor_reps, help="timed passes of each component for the floor")
    p.add_argument("--fast-step", nargs="?", const="all", default=d.fast_step, choices=FAST_STEP_MODES,
                   help="runs that also time the fast step (training forward under bf16 autocast or in fp32, "
                        "fused dense AdaGrad, the current kernels: packed APGRU, max pooling, the title "
                        "CNN on channels-last words, DDMA's shared projections and losses, the "
                        "candidate attention's split first layer) "
                        "against the old one (fp32, AdaGrad's loop, the kernels of 2026-12-01) in "
                        "interleaved windows: those of "
                        "the smallest size, all (the flag alone) or none")
    p.add_argument("--fast-dtype", default=d.fast_dtype, choices=FAST_DTYPES,
                   help="the fast step's dense dtype: bf16 autocast, or fp32 (the current kernels and "
                        "the fused AdaGrad alone; predictions equal the old step's to rounding)")
    p.add_argument("--interleave-pipeline", action="store_true",
                   help="pipelined runs also time a plain-loop twin of the model in interleaved windows "
                        "(the pipeline's effect, immune to load drift; twice the tables' memory)")
    p.add_argument("--interleave-baseline", action="store_true",
                   help="pipelined sharded runs are also timed against the baseline in windows taken in "
                        "turn by both process sets, alive at once (the ratio immune to load drift; both "
                        "models' memory at once)")
    p.add_argument("--replicate-max-rows", type=int, default=d.replicate_max_rows, metavar="ROWS",
                   help="sharded runs replicate the pooled tables of at most ROWS rows on every rank "
                        "(TorchRec's data_parallel: no all-to-all for their lookups); 0: none")
    p.add_argument("--floor-only", action="store_true",
                   help="only the baseline at the smallest size with dedup on, with its compute floor")
    p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                   help="leave glibc's malloc as it comes in the benchmark's processes (by default they "
                        "keep freed memory mapped; training does with --keep-freed-memory)")
    p.add_argument("--baseline-threads", type=int, default=d.baseline_threads, help="threads of the baseline process")
    p.add_argument("--sharded-threads", type=int, default=d.sharded_threads, help="threads of each sharded process")
    p.add_argument("--memory-fraction", type=float, default=d.memory_fraction,
                   help="skip runs predicted to need more than this share of available memory")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"], help="auto: cuda if there is one")
    _output_flags(p, d.out_dir, "qps.json, qps.md, qps.png")
    p.add_argument("--stem", default="qps", type=_stem,
                   help="file names of the outputs: STEM.json, STEM.md, STEM.png (a record of its own "
                        "beside the others with --update-records)")
    p.add_argument("--no-isolate", action="store_true", help="one set of processes per mode, not per run")
    p.add_argument("--seed", type=int, default=d.seed, help="model and data seed")
    p.add_argument("--quick", action="store_true", help="seconds: tiny preset, one small size, few steps")
    return p


def qps_config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> QPSConfig:
    cfg = QPSConfig(
        sizes=args.sizes, preset=args.preset, batch_size=args.batch_size, num_batches=args.num_batches,
        warmup_steps=args.warmup_steps, windows=args.windows, steps_per_window=args.steps_per_window,
        profile_steps=args.profile_steps, tower_reps=args.tower_reps, sharding_types=args.sharding_types,
        world_size=args.world_size, dedup={"both": [True, False], "on": [True], "off": [False]}[args.dedup],
        baseline=not args.no_baseline, baseline_threads=args.baseline_threads,
        sharded_threads=args.sharded_threads, memory_fraction=args.memory_fraction, device=args.device,
        out_dir=_out_dir(args), isolate=not args.no_isolate, seed=args.seed,
        command=_command("qps.py", argv),
        pipeline={"both": [False, True], "on": [True], "off": [False]}[args.pipeline],
        table_dtypes=list(args.table_dtypes), memory_budget_gib=args.memory_budget_gib,
        floor=not args.no_floor, floor_reps=args.floor_reps, floor_only=args.floor_only,
        fast_step=args.fast_step, fast_dtype=args.fast_dtype, interleave_pipeline=args.interleave_pipeline,
        replicate_max_rows=args.replicate_max_rows, interleave_baseline=args.interleave_baseline,
        keep_freed_memory=args.keep_freed_memory,
    )
    unknown = [t for t in cfg.table_dtypes if t not in TABLE_DTYPES]
    if unknown:
        qps_parser().error(f"--table-dtype: unknown {unknown}; known: {','.join(TABLE_DTYPES)}")
    if args.quick:
        # QUICK's values, except for options given explicitly on the command line.
        defaults = vars(qps_parser().parse_args([]))
        for key, value in QUICK.items():
            if key not in defaults or getattr(args, key) == defaults[key]:
                setattr(cfg, key, value)
    if args.per_slot_sizes == "all":
        cfg.per_slot_sizes = list(cfg.sizes)
    elif args.per_slot_sizes:
        cfg.per_slot_sizes = _sizes(args.per_slot_sizes)
    return cfg


def qps_main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(qps_parser(), argv)
    cfg = qps_config_from_args(args, argv)
    results = run_qps(cfg)
    print()
    for line in goal_lines(results["goals"]):
        print(line)
    paths = write_outputs(results, render_qps_markdown(results), cfg.out_dir, args.stem)
    png = os.path.join(cfg.out_dir, f"{args.stem}.png")
    plot_qps(results, png)
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {png}")
    return 0


def apgru_parser() -> argparse.ArgumentParser:
    d = APGRUConfig()
    p = argparse.ArgumentParser(
        description="APGRU forward+backward time against torch.nn.GRU of the same sizes. "
        f"Writes apgru.json and apgru.md into --out-dir, or into {RECORDS_DIR}/ with {UPDATE_RECORDS}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences B")
    p.add_argument("--steps", type=int, default=d.steps, help="sequence length T")
    p.add_argument("--dims", type=_sizes, default=_join(d.dims), help="input = hidden sizes, comma-separated")
    p.add_argument("--property-dim", type=int, default=d.property_dim, help="size of the behaviour properties")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed passes of each module")
    p.add_argument("--reps", type=int, default=d.reps, help="timed passes of each module (median reported)")
    p.add_argument("--threads", type=int, default=d.threads, help="0: torch's default")
    _output_flags(p, d.out_dir, "apgru.json, apgru.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    return p


def apgru_main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(apgru_parser(), argv)
    cfg = APGRUConfig(
        batch_size=args.batch_size, steps=args.steps, dims=args.dims, property_dim=args.property_dim,
        warmup=args.warmup, reps=args.reps, threads=args.threads, out_dir=_out_dir(args),
        command=_command("apgru.py", argv),
    )
    if args.quick:
        for key, value in APGRU_QUICK.items():
            setattr(cfg, key, value)
    results = run_apgru(cfg)
    paths = write_outputs(results, render_apgru_markdown(results), cfg.out_dir, "apgru")
    print(f"\nwrote {paths['json']}, {paths['markdown']}")
    return 0


def fast_step_parser() -> argparse.ArgumentParser:
    d = FastStepConfig()
    p = argparse.ArgumentParser(
        description="The whole unsharded training step, old against fast (and fast with freed memory "
        "kept mapped), each variant in fresh processes, alternating. Writes fast_step.json and "
        f"fast_step.md into --out-dir, or into {RECORDS_DIR}/ with {UPDATE_RECORDS}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--preset", default=d.preset, choices=["small", "tiny", "paper"], help="model size")
    p.add_argument("--num-items", type=int, default=d.num_items, help="rows of the item table")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per step")
    p.add_argument("--num-batches", type=int, default=d.num_batches, help="pre-generated batches, cycled")
    p.add_argument("--threads", type=int, default=d.threads, help="threads of each process")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="untimed steps per process")
    p.add_argument("--windows", type=int, default=d.windows, help="timed windows per process (median kept)")
    p.add_argument("--steps-per-window", type=int, default=d.steps_per_window, help="steps per timed window")
    p.add_argument("--rounds", type=int, default=d.rounds, help="fresh processes per variant, alternating")
    p.add_argument("--seed", type=int, default=d.seed, help="model and data seed")
    _output_flags(p, d.out_dir, "fast_step.json, fast_step.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    return p


def fast_step_main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = fast_step_parser()
    args = _parse(p, argv)
    for flag in ("num_items", "batch_size", "num_batches", "threads", "windows", "steps_per_window", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    if args.warmup_steps < 0:
        p.error(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    cfg = FastStepConfig(
        preset=args.preset, num_items=args.num_items, batch_size=args.batch_size, num_batches=args.num_batches,
        threads=args.threads, warmup_steps=args.warmup_steps, windows=args.windows,
        steps_per_window=args.steps_per_window, rounds=args.rounds, seed=args.seed, out_dir=_out_dir(args),
        command=_command("fast_step.py", argv),
    )
    if args.quick:
        for key, value in FAST_STEP_QUICK.items():
            setattr(cfg, key, value)
    results = run_fast_step(cfg)
    paths = write_outputs(results, render_fast_step_markdown(results), cfg.out_dir, "fast_step")
    print(f"\nwrote {paths['json']}, {paths['markdown']}")
    return 0
