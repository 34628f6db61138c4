"""APGRU forward+backward time against torch.nn.GRU of the same sizes (B=1024, T=50, 64-d and 256-d).

    python benchmarks/apgru.py
    python benchmarks/apgru.py --quick
    python benchmarks/apgru.py --update-records   # written over benchmarks/results/

Results go to runs/benchmarks/apgru/ unless --update-records. All logic lives in
:mod:`marn_rec.benchmarks`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.benchmarks.cli import apgru_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(apgru_main())
