"""Train MARN on the synthetic Taobao-like stream, sharded with TorchRec's DistributedModelParallel.

    torchrun --nproc_per_node=2 examples/train_taobao_synthetic.py              # CPU, gloo
    torchrun --nproc_per_node=8 examples/train_taobao_synthetic.py --preset paper  # GPUs, NCCL

Metrics go to OUT_DIR/metrics.jsonl; checkpoints to OUT_DIR/checkpoints (a restarted run resumes).
"""

import argparse
import json

import torch.distributed as dist

from marn_rec.config import ABLATIONS, PRESETS
from marn_rec.training.loop import TrainConfig, train


def main() -> None:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS))
    p.add_argument("--model", default=d.model, choices=list(ABLATIONS), help="Table 3 configuration")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per rank and step")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-batches", type=int, default=d.eval_batches)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--resume", default=d.resume, choices=["auto", "required", "never"])
    p.add_argument("--sharding-types", nargs="*", default=None, help="e.g. table_wise column_wise row_wise")
    p.add_argument("--no-dedup", action="store_true", help="run the item tower once per slot")
    p.add_argument("--num-workers", type=int, default=d.num_workers)
    p.add_argument("--stop-after", type=int, default=None, help="stop after this step, with a checkpoint")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args()
    result = train(
        TrainConfig(
            preset=a.preset, model=a.model, seed=a.seed, batch_size=a.batch_size, steps=a.steps,
            eval_every=a.eval_every, eval_batches=a.eval_batches, learning_rate=a.lr,
            out_dir=a.out_dir, checkpoint_every=a.checkpoint_every, resume=a.resume,
            sharding_types=a.sharding_types, dedup=not a.no_dedup, num_workers=a.num_workers,
            stop_after=a.stop_after, progress=not a.no_progress,
        )
    )
    if dist.get_rank() == 0:
        if result:
            print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=1))
        else:
            print(f"stopped after step {a.stop_after} with a checkpoint in {a.out_dir}/checkpoints; "
                  "the same command without --stop-after resumes")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
