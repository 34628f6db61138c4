"""deepctr-torch's DIN on the same prepared samples as a Table 3 study, scored with marn_rec's metrics.

    bash benchmarks/peer/setup.sh          # once: benchmarks/peer/.venv with deepctr-torch (pinned)
    .venv/bin/python benchmarks/peer_din.py --data data/ml-100k/prepared --seeds 1 2 3 --epochs 3 \\
        --compare runs/ablation_movielens --out-dir runs/peer_din

Each seed trains DIN in benchmarks/peer/.venv (benchmarks/peer/din_worker.py); the test scores come
back here and are scored with marn_rec.training.evaluation on the same test samples (checked to be
the prepared test split's). With --compare, the table puts the study's configurations beside DIN
with Welch intervals of the differences. Writes OUT_DIR/table.md, table.png, curves.png and
results.jsonl. All logic lives in marn_rec/benchmarks/peer.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.benchmarks.peer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
