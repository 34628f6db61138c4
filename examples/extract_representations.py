"""Extract item representations: a trained MARN item tower over a whole catalogue, into a store.

    python examples/extract_representations.py --checkpoint-dir runs/taobao_synthetic --out runs/store
    python examples/extract_representations.py --checkpoint-dir runs/taobao_synthetic --out runs/store_int8 --dtype int8
    torchrun --nproc_per_node=2 examples/extract_representations.py --checkpoint-dir ... --out ...   # DMP, 2 ranks
    python examples/extract_representations.py --checkpoint-dir OUT --prepared prepared/ --out runs/store  # real data

The store (ids.npy, representations.npy, manifest.json, ...) loads with numpy memory mapping; see
marn_rec/serving/store.py. All logic lives in marn_rec.serving.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.serving.cli import extract_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(extract_main())
