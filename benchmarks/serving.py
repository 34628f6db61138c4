"""Serving: the whole MARN vs the scorer (eager, torch.export, AOTInductor) on the same requests, and
store size / load time per million items.

    python benchmarks/serving.py                    # about 3 minutes on 2 CPU cores
    python benchmarks/serving.py --quick            # seconds: a smoke test
    python benchmarks/serving.py --checkpoint-dir runs/taobao_synthetic   # a trained model
    python benchmarks/serving.py --update-records   # written over benchmarks/results/
    python benchmarks/serving.py --help

Results go to runs/benchmarks/serving/ unless --update-records. All logic lives in
:mod:`marn_rec.serving.benchmark`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.serving.bench_cli import serving_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(serving_main())
