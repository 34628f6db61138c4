"""The whole unsharded training step, old against fast, each variant in fresh processes, alternating
(the allocator setting is process-wide, so it cannot be timed in interleaved windows as qps.py does).

    python benchmarks/fast_step.py
    python benchmarks/fast_step.py --quick
    python benchmarks/fast_step.py --update-records   # written over benchmarks/results/

Results go to runs/benchmarks/fast_step/ unless --update-records. All logic lives in
:mod:`marn_rec.benchmarks`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.benchmarks.cli import fast_step_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(fast_step_main())
