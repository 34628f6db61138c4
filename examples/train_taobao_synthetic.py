"""Train MARN on the synthetic Taobao-like stream, sharded with TorchRec's DistributedModelParallel.

    torchrun --nproc_per_node=2 examples/train_taobao_synthetic.py              # CPU, gloo
    torchrun --nproc_per_node=8 examples/train_taobao_synthetic.py --preset paper  # GPUs, NCCL

Metrics go to OUT_DIR/metrics.jsonl; checkpoints to OUT_DIR/checkpoints (a restarted run resumes).
Every option is checked before anything starts: a bad value exits with status 2 and one line.
"""

import sys

from marn_rec.training.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
