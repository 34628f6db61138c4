"""Train MARN on a prepared directory of real data (examples/prepare_*.py, docs/data_format.md).

    torchrun --nproc_per_node=2 examples/train.py --data DIR                 # CPU, gloo
    torchrun --nproc_per_node=2 examples/train.py --data DIR --model BaseModel+IDs

The data's manifest sets the model's features (ID features, statistics, title, image: absent
modalities are left out); the preset sets the sizes. Same options and outputs as
examples/train_taobao_synthetic.py: OUT_DIR/metrics.jsonl (with cold_auc where the data has cold
candidates), metrics.png and checkpoints.
"""

import sys

from marn_rec.training.cli import main
from marn_rec.training.loop import TrainConfig

if __name__ == "__main__":
    defaults = TrainConfig(out_dir="runs/train", steps=600, eval_every=200)
    sys.exit(main(defaults=defaults, description=__doc__, require_data=True))
