"""Reproduce paper Table 3 on the synthetic Taobao stream: seven configurations, same budget, seeds.

    python examples/ablation_study.py --seeds 1 2 3 --steps 1500

Prints the table (mean ± std per configuration, Bayes-optimal AUC of the eval set beside it) and
writes OUT_DIR/table.md, OUT_DIR/table.png and every run's metrics. Every option is checked before
anything starts: a bad value exits with status 2 and one line.
"""

import os
import shlex
import sys
from dataclasses import replace
from typing import Optional, Sequence

from marn_rec.config import ABLATIONS, PRESETS
from marn_rec.training.ablation import read_results, run_study, write_report
from marn_rec.training.cli import CheckedArgumentParser, writable_dir_problem
from marn_rec.training.loop import TrainConfig


def parser() -> CheckedArgumentParser:
    p = CheckedArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per seed and model")
    p.add_argument("--models", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS),
                   metavar="MODEL", help=f"Table 3 configurations, of {', '.join(ABLATIONS)}")
    p.add_argument("--preset", default="small", choices=list(PRESETS), help="model sizes")
    p.add_argument("--steps", type=int, default=1500, help="training steps of every run")
    p.add_argument("--batch-size", type=int, default=256, help="samples per step")
    p.add_argument("--eval-batches", type=int, default=32, help="evaluation batches of every run")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one process each)")
    p.add_argument("--out-dir", default="runs/ablation", help="every run's directory and the report")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite table.md / table.png from OUT_DIR/results.jsonl without training")
    return p


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
    for flag, value in (("--steps", a.steps), ("--batch-size", a.batch_size),
                        ("--eval-batches", a.eval_batches), ("--jobs", a.jobs)):
        if value < 1:
            p.error(f"{flag} must be a positive integer, got {value}")
    if a.report_only:
        if not os.path.isfile(os.path.join(a.out_dir, "results.jsonl")):
            p.error(f"--report-only: {a.out_dir}/results.jsonl does not exist (no earlier study there)")
    else:
        problem = writable_dir_problem(a.out_dir)
        if problem:
            p.error(f"--out-dir: {problem}")
        try:
            base = TrainConfig(preset=a.preset, steps=a.steps, batch_size=a.batch_size,
                               eval_every=a.steps, eval_batches=a.eval_batches, out_dir=a.out_dir)
            for model in a.models:  # every configuration can be built at this preset's sizes
                replace(base, model=model).model_config()
            base.data_config(1).check_fits(base.model_config())
        except ValueError as e:
            p.error(str(e))
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    if a.report_only:
        results, command = read_results(a.out_dir)
    else:
        results = run_study(base, a.seeds, a.models, a.jobs)
    table, png = write_report(results, a.out_dir, command)
    print(table)
    print(f"\nwritten: {a.out_dir}/table.md, {png}")


if __name__ == "__main__":
    main()
