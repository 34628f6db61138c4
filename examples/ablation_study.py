"""Reproduce paper Table 3 on the synthetic Taobao stream: seven configurations, same budget, seeds.

    python examples/ablation_study.py --seeds 1 2 3 --steps 1500

Prints the table (mean ± std per configuration, Bayes-optimal AUC of the eval set beside it) and
writes OUT_DIR/table.md, OUT_DIR/table.png and every run's metrics.
"""

import argparse
import shlex
import sys

from marn_rec.training.ablation import read_results, run_study, write_report
from marn_rec.config import ABLATIONS, PRESETS
from marn_rec.training.loop import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--models", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS))
    p.add_argument("--preset", default="small", choices=list(PRESETS))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eval-batches", type=int, default=32)
    p.add_argument("--jobs", type=int, default=2, help="runs side by side")
    p.add_argument("--out-dir", default="runs/ablation")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite table.md / table.png from OUT_DIR/results.jsonl without training")
    a = p.parse_args()
    command = "python " + " ".join(map(shlex.quote, sys.argv))
    if a.report_only:
        results, command = read_results(a.out_dir)
    else:
        base = TrainConfig(preset=a.preset, steps=a.steps, batch_size=a.batch_size,
                           eval_every=a.steps, eval_batches=a.eval_batches, out_dir=a.out_dir)
        results = run_study(base, a.seeds, a.models, a.jobs)
    table, png = write_report(results, a.out_dir, command)
    print(table)
    print(f"\nwritten: {a.out_dir}/table.md, {png}")


if __name__ == "__main__":
    main()
