"""Train MARN on the synthetic Taobao-like stream, sharded with TorchRec's DistributedModelParallel.

    torchrun --nproc_per_node=2 examples/train_taobao_synthetic.py              # CPU, gloo
    torchrun --nproc_per_node=8 examples/train_taobao_synthetic.py --preset paper  # GPUs, NCCL

Metrics go to OUT_DIR/metrics.jsonl; checkpoints to OUT_DIR/checkpoints (a restarted run resumes).
Every option is checked before anything starts: a bad value exits with status 2 and one line.
"""

import json
import sys
from typing import Optional, Sequence

import torch.distributed as dist

from marn_rec.training.checkpoint import CheckpointError
from marn_rec.training.cli import launch_rank, parse_train_args
from marn_rec.training.loop import TrainingDiverged, train


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = parse_train_args(argv, description=__doc__)  # exits 2 on a bad value, before any process group
    try:
        result = train(cfg)
    except (CheckpointError, TrainingDiverged) as e:
        # Raised on every rank together; one message, no traceback per rank.
        if launch_rank() == 0:
            print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 1
    if dist.get_rank() == 0:
        if result:
            print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
        else:
            print(f"stopped after step {cfg.stop_after} with a checkpoint in {cfg.out_dir}/checkpoints; "
                  "the same command without --stop-after resumes")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
