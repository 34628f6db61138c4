"""MARN training samples/s: DMP-sharded vs an unsharded baseline, over item-table sizes.

    python benchmarks/qps.py                    # the full sweep (minutes; run on a quiet machine)
    python benchmarks/qps.py --quick            # seconds: tiny preset, end to end
    python benchmarks/qps.py --update-records   # the full sweep, written over benchmarks/results/
    python benchmarks/qps.py --quick --floor-only   # the compute floor of a step, in seconds
    python benchmarks/qps.py --fast-step --interleave-pipeline --table-dtype fp32,fp16  # speed and scale
    python benchmarks/qps.py --help

On a machine shared with other work, set OMP_WAIT_POLICY=PASSIVE: a spinning 2-thread OpenMP
barrier waits for a core the other job holds (a step took 11-15 s instead of 0.4 s).

Results go to runs/benchmarks/qps/ unless --update-records. All logic lives in
:mod:`marn_rec.benchmarks`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.benchmarks.cli import qps_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(qps_main())
