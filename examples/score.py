"""Score candidates for one user from a representation store (APGRU, attention and MLP only).

    python examples/score.py --store runs/store --checkpoint-dir runs/taobao_synthetic \
        --history 5,17,3 --behavior-types 0,0,2 --time-buckets 9,4,1 --candidates 8,9,10
    python examples/score.py --store runs/store --exported runs/scorer.pt2 --history 5,17 --candidates 8,9

Prints the candidates ranked by logit. All logic lives in marn_rec.serving.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.serving.cli import score_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(score_main())
