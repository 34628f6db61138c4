"""Paper Table 3: the ablation configurations with the same budget and seeds, on the synthetic Taobao
stream (default) or on a prepared directory of real data (--data).

    python examples/ablation_study.py --seeds 1 2 3 --steps 1500
    python examples/ablation_study.py --seeds 1 2 3 --models BaseModel+CONC BaseModel+MAF \\
        --synthetic missing_image_prob=0.3 generic_title_prob=0.3 --out-dir runs/ablation_quality
    python examples/ablation_study.py --data data/ml-100k/prepared --seeds 1 2 3 --steps 2000 \\
        --eval-every 200 --out-dir runs/ablation_movielens

On --data, the configurations the data cannot feed are skipped with the reason (MovieLens has no
image: BaseModel+IMAGE), and the others keep the data's modalities (MovieLens: IDs, title,
statistics); --drop-modalities statistic trains them without the statistics, on the same samples. Prints and writes OUT_DIR/table.md: per configuration AUC, per-user AUC and
cold-candidate AUC (mean ± sample std over seeds; Bayes-optimal beside them on the synthetic
stream), the paired differences by seed against BaseModel+IDs and BaseModel+CONC with 95%
t-intervals over seeds, and Tables 4 / 5 where the data has them; OUT_DIR/table.png (means),
differences.png (paired differences with interval bars), curves.png (every run's evaluations
against the step, with --eval-every), results.jsonl and every run's own directory. Every option is
checked before anything starts: a bad value exits with status 2 and one line.
"""

import os
import shlex
import sys
from dataclasses import replace
from typing import Optional, Sequence

import torch

from marn_rec.config import ABLATIONS, DIAGNOSTIC_ABLATIONS, PRESETS, REFERENCE
from marn_rec.data.prepared import cold_item_dropout_problem
from marn_rec.features import TABLE_DTYPES
from marn_rec.training.ablation import (
    applicable_models,
    merge_results,
    read_results,
    read_skipped,
    run_study,
    write_report,
)
from marn_rec.training.ablation.views import (
    DROPPABLE,
    VIEW_DIR,
    dropped_modalities,
    modality_view,
    without_suffix,
)
from marn_rec.training.cli import CheckedArgumentParser, synthetic_overrides, writable_dir_problem
from marn_rec.training.evaluation import TABLE5_RECALL_AT
from marn_rec.training.loop import DENSE_DTYPES, TrainConfig, native_bf16
from marn_rec.training.sharding import initial_accumulator_problem


def parser() -> CheckedArgumentParser:
    p = CheckedArgumentParser(description=__doc__)
    p.add_argument("--data", dest="data_dir", default=None, metavar="DIR",
                   help="a prepared directory of real data (examples/prepare_*.py); without it, "
                        "the synthetic Taobao-like stream")
    p.add_argument("--drop-modalities", nargs="+", default=[], choices=list(DROPPABLE), metavar="MODALITY",
                   help=f"with --data: train without these modalities of the data (of "
                        f"{', '.join(DROPPABLE)}), on OUT_DIR/data_view (the same samples)")
    p.add_argument("--synthetic", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="knobs of the synthetic stream (SyntheticTaobaoConfig fields), e.g. "
                        "missing_image_prob=0.3 shared_view_weight=0 behavior_type_weights=1,1,1")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per seed and model")
    p.add_argument("--models", nargs="+", default=list(ABLATIONS),
                   choices=list(ABLATIONS) + list(DIAGNOSTIC_ABLATIONS) + [REFERENCE],
                   metavar="MODEL", help=f"Table 3 configurations, of {', '.join(ABLATIONS)}; "
                                         f"{' or '.join(DIAGNOSTIC_ABLATIONS)} (MARN without APGRU's "
                                         f"candidate attention or its property term); or "
                                         f"{REFERENCE} (synthetic stream: BaseModel on the generator's "
                                         f"true item factors, the reachable ceiling, with each model's "
                                         f"share of the IDs-to-reference gap)")
    p.add_argument("--preset", default="small", choices=list(PRESETS), help="model sizes")
    p.add_argument("--steps", type=int, default=1500, help="training steps of every run")
    p.add_argument("--batch-size", type=int, default=256, help="samples per step")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between evaluations, for the learning curves (default: only at the "
                        "end)")
    p.add_argument("--eval-batches", type=int, default=32,
                   help="evaluation batches of every run (synthetic stream; --data evaluates the "
                        "whole test split)")
    p.add_argument("--cold-set-batches", type=int, default=16,
                   help="synthetic stream: evaluation batches of per-user candidate sets of cold items "
                        "(Table 5's recall@N; 0: none)")
    p.add_argument("--cold-set-size", type=int, default=200,
                   help="synthetic stream: cold candidates per set (the paper: at least 100)")
    p.add_argument("--table-dtype", default="fp32", choices=list(TABLE_DTYPES),
                   help="storage of the item tower's tables of every run (fp16: half the bytes)")
    p.add_argument("--dense-dtype", default="fp32", choices=list(DENSE_DTYPES),
                   help="bf16: every run's training forward under bf16 autocast (refused without native "
                        "bf16 hardware; weights, optimizer state and evaluation stay fp32)")
    p.add_argument("--fused-optimizer", action="store_true",
                   help="every run's dense AdaGrad with its fused kernel (same update, last-bit rounding)")
    p.add_argument("--lr", type=float, default=0.1, dest="learning_rate", metavar="LR",
                   help="AdaGrad learning rate of every run (paper section 4.1: 0.1)")
    p.add_argument("--dense-initial-accumulator", type=float, default=TrainConfig.dense_initial_accumulator,
                   help="the dense AdaGrad's initial accumulator of every run (TensorFlow's default)")
    p.add_argument("--attention-initial-accumulator", type=float,
                   default=TrainConfig.attention_initial_accumulator,
                   help="the same for APGRU's candidate attention of every run (default 0: plain "
                        "AdaGrad)")
    p.add_argument("--fusion-initial-accumulator", type=float,
                   default=TrainConfig.fusion_initial_accumulator,
                   help="the same for MAF's attention (eq. 3) of every run (default: as the other "
                        "dense parameters)")
    p.add_argument("--cold-item-dropout", type=float, default=TrainConfig.cold_item_dropout, metavar="P",
                   help="with --data: every run shows each item of a training batch with probability P "
                        "as one the training period never observed (DropoutNet; default: never)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one process each)")
    p.add_argument("--out-dir", default="runs/ablation", help="every run's directory and the report")
    p.add_argument("--merge", nargs="+", default=[], metavar="STUDY_DIR",
                   help="with --report-only: also the runs of these studies (e.g. one with "
                        "--drop-modalities, whose runs are named 'MODEL without MODALITY' and "
                        "paired with MODEL by seed)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from OUT_DIR/results.jsonl without training (of an "
                        "interrupted study: from its finished runs, results.partial.jsonl)")
    return p


def _named(results: list, study_dir: str) -> list:
    """The runs of a study on a modality view, named "MODEL without MODALITY" (studies run before
    the names carried it are recognised by their view)."""
    suffix = without_suffix(dropped_modalities(study_dir))
    for r in results:
        if suffix and " without " not in r["model"]:
            r["model"] += suffix
    return results


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = parser()
    a = p.parse_args(argv)
    bad_seeds = [s for s in a.seeds if not 0 <= s < 2**63]
    if bad_seeds:
        p.error(f"--seeds must be in [0, 2**63), got {bad_seeds}")
    if len(set(a.seeds)) != len(a.seeds):
        p.error(f"--seeds lists a seed twice: {a.seeds}")
    if len(set(a.models)) != len(a.models):
        p.error(f"--models lists a model twice: {a.models}")
    eval_every = a.steps if a.eval_every is None else a.eval_every
    for flag, value in (("--steps", a.steps), ("--batch-size", a.batch_size), ("--eval-every", eval_every),
                        ("--eval-batches", a.eval_batches), ("--jobs", a.jobs)):
        if value < 1:
            p.error(f"{flag} must be a positive integer, got {value}")
    if not a.learning_rate > 0:
        p.error(f"--lr must be a number > 0, got {a.learning_rate}")
    if problem := initial_accumulator_problem(a.dense_initial_accumulator):
        p.error(f"--dense-initial-accumulator {problem}")
    for flag in ("attention", "fusion"):
        value = getattr(a, f"{flag}_initial_accumulator")
        if value is not None and (problem := initial_accumulator_problem(value)):
            p.error(f"--{flag}-initial-accumulator {problem}")
    if a.dense_dtype == "bf16" and not native_bf16(torch.device("cpu")):
        p.error("--dense-dtype bf16: this CPU has no native bf16 (AVX512-BF16 or AMX)")
    if a.drop_modalities and not a.data_dir:
        p.error("--drop-modalities needs --data")
    if problem := cold_item_dropout_problem(a.cold_item_dropout):
        p.error(f"--cold-item-dropout {problem}")
    if a.cold_item_dropout and not a.data_dir:
        p.error("--cold-item-dropout needs --data")
    if a.synthetic and a.data_dir:
        p.error("--synthetic changes the synthetic stream; it does not apply to --data")
    try:
        overrides = synthetic_overrides(a.synthetic)
    except ValueError as e:
        p.error(str(e))
    if not a.data_dir:
        for flag, value in (("--cold-set-batches", a.cold_set_batches), ("--cold-set-size", a.cold_set_size)):
            if value < 0 or (flag == "--cold-set-size" and value < 1):
                p.error(f"{flag} must be {'>= 0' if flag == '--cold-set-batches' else '>= 1'}, got {value}")
        overrides = {"num_cold_set_batches": a.cold_set_batches, "cold_set_size": a.cold_set_size,
                     **overrides}
    if a.merge and not a.report_only:
        p.error("--merge needs --report-only")
    for d in a.merge:
        if not any(os.path.isfile(os.path.join(d, f)) for f in ("results.jsonl", "results.partial.jsonl")):
            p.error(f"--merge {d}: no results.jsonl there")
    data_dir = a.data_dir
    skipped = None
    if a.report_only:
        if not any(os.path.isfile(os.path.join(a.out_dir, f)) for f in ("results.jsonl", "results.partial.jsonl")):
            p.error(f"--report-only: {a.out_dir}/results.jsonl does not exist (no earlier study there)")
    else:
        problem = writable_dir_problem(a.out_dir)
        if problem:
            p.error(f"--out-dir: {problem}")
        if a.drop_modalities:
            try:
                data_dir = modality_view(a.data_dir, os.path.join(a.out_dir, VIEW_DIR), a.drop_modalities)
            except OSError as e:
                p.error(f"--data {a.data_dir}: not a prepared directory ({e})")
        base = TrainConfig(preset=a.preset, steps=a.steps, batch_size=a.batch_size,
                           eval_every=eval_every, eval_batches=a.eval_batches,
                           learning_rate=a.learning_rate, out_dir=a.out_dir, data_dir=data_dir,
                           data_overrides=overrides, recall_at=TABLE5_RECALL_AT,
                           table_dtype=a.table_dtype, dense_dtype=a.dense_dtype,
                           fused_optimizer=a.fused_optimizer, dense_initial_accumulator=a.dense_initial_accumulator,
                           attention_initial_accumulator=a.attention_initial_accumulator,
                           fusion_initial_accumulator=a.fusion_initial_accumulator,
                           cold_item_dropout=a.cold_item_dropout)
        try:
            models, skipped = applicable_models(base, a.models)
            if not a.data_dir:
                base.data_config(1).check_fits(base.model_config())
        except (OSError, KeyError) as e:
            p.error(f"--data {a.data_dir}: not a prepared directory ({e})")
        except (ValueError, TypeError) as e:
            p.error(str(e))
        for model, reason in skipped.items():
            print(f"skipped {model}: {reason}", flush=True)
        if not models:
            p.error(f"none of --models {a.models} applies to --data {a.data_dir}")
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    if a.report_only:
        results, earlier = read_results(a.out_dir)
        command = earlier or command
        skipped = read_skipped(a.out_dir)
        studies = [(a.out_dir, _named(results, a.out_dir))]
        for d in a.merge:
            studies.append((d, _named(read_results(d)[0], d)))
            command += f" + {read_results(d)[1] or d}"
        try:
            results = merge_results(studies)
        except ValueError as e:
            p.error(f"--merge: {e}")
    else:
        results = run_study(base, a.seeds, models, a.jobs, without_suffix(a.drop_modalities))
    title = None  # the synthetic stream's
    if not any("bayes_auc" in r for r in results):
        title = f"Table 3 configurations on {a.data_dir or a.out_dir}"
        title += without_suffix(a.drop_modalities)
    table, png = write_report(results, a.out_dir, command, skipped=skipped, title=title)
    print(table)
    print(f"\nwritten: {a.out_dir}/table.md, {png}, differences.png, curves.png (with --eval-every)")


if __name__ == "__main__":
    main()
