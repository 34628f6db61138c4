"""MovieLens-100K end to end: fetch (the recbole 1.2.1 wheel on PyPI, never installed), convert,
prepare once (DIN's protocol, 10% of the items held out cold), and train MARN on it.

    torchrun --nproc_per_node=2 examples/train_movielens.py
    torchrun --nproc_per_node=2 examples/train_movielens.py --model BaseModel+IDs --seed 1

Same options and outputs as examples/train.py; --data defaults to the prepared MovieLens-100K in
data/ml-100k/prepared (prepared on the first run). With the defaults it takes a few minutes on 2
CPU cores. MovieLens has no images: the image modality is left out.
"""

import sys

from marn_rec.data.sources.movielens import DEFAULT_CACHE_DIR, prepared_movielens
from marn_rec.training.cli import main
from marn_rec.training.loop import TrainConfig

DATA = "data/ml-100k"


def prepare(args) -> None:
    if args.data_dir == f"{DATA}/prepared":
        prepared_movielens(DATA, DEFAULT_CACHE_DIR, cold_item_fraction=0.1, progress=False)


if __name__ == "__main__":
    defaults = TrainConfig(out_dir="runs/movielens", data_dir=f"{DATA}/prepared", steps=600, eval_every=200)
    sys.exit(main(defaults=defaults, description=__doc__, before_checks=prepare))
