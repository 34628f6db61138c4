"""Distributed checkpoints: sharded tables, fused and dense optimizer state, loader state, step.

Model and optimizer go through ``torch.distributed.checkpoint`` (each rank writes its own shards;
resharding on load is DCP's). The loader state is per rank (each rank reads its own shard of the
stream), so every rank also writes ``loader_rank{r}.pt``. Rank 0 writes ``meta.json`` (step, world
size, configurations) and, after every rank has finished, the ``COMPLETE`` marker: a checkpoint
without it was interrupted while being written and is never loaded.
"""

import json
import os
import shutil
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader

COMPLETE = "COMPLETE"
META = "meta.json"
_PREFIX = "step_"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: damaged, incomplete or of another run."""


def checkpoint_dir(root: str, step: int) -> str:
    return os.path.join(root, f"{_PREFIX}{step:09d}")


def complete_checkpoints(root: str) -> Dict[int, str]:
    """Step -> directory of every complete checkpoint under ``root``."""
    if not os.path.isdir(root):
        return {}
    found = {}
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(_PREFIX) and os.path.exists(os.path.join(path, COMPLETE)):
            try:
                found[int(name[len(_PREFIX) :])] = path
            except ValueError:
                continue
    return found


def latest_checkpoint(root: str) -> Optional[str]:
    found = complete_checkpoints(root)
    return found[max(found)] if found else None


def _rank_world() -> tuple:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_checkpoint(
    root: str,
    step: int,
    model: nn.Module,
    optimizer: Any,
    loader: StatefulDataLoader,
    meta: Dict[str, Any],
    keep: int = 2,
) -> str:
    """Writes the checkpoint of ``step`` under ``root`` (collective: every rank calls it).

    Args:
        meta: JSON-serialisable description of the run (configurations); checked on load.
        keep: complete checkpoints to keep; older ones are removed after this one is complete.
    """
    rank, world = _rank_world()
    path = checkpoint_dir(root, step)
    if rank == 0 and os.path.exists(path):
        shutil.rmtree(path)  # a stale, incomplete write of the same step
    _barrier()
    dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=path)
    torch.save(loader.state_dict(), os.path.join(path, f"loader_rank{rank}.pt"))
    _barrier()
    if rank == 0:
        with open(os.path.join(path, META), "w") as f:
            json.dump({"step": step, "world_size": world, **meta}, f, indent=1, sort_keys=True)
        with open(os.path.join(path, COMPLETE), "w") as f:
            f.write("ok\n")
        for old in sorted(complete_checkpoints(root))[:-keep] if keep > 0 else []:
            shutil.rmtree(checkpoint_dir(root, old), ignore_errors=True)
    _barrier()
    return path


def _differences(saved: Any, expected: Any, prefix: str = "") -> list:
    if isinstance(saved, dict) and isinstance(expected, dict):
        out = []
        for k in sorted(set(saved) | set(expected)):
            out += _differences(saved.get(k), expected.get(k), f"{prefix}{k}.")
        return out
    return [] if saved == expected else [f"{prefix[:-1]}: checkpoint {saved!r}, this run {expected!r}"]


def load_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: Any,
    loader: StatefulDataLoader,
    meta: Dict[str, Any],
) -> int:
    """Restores the state saved by :func:`save_checkpoint` in ``path``; returns its step.

    Raises:
        CheckpointError: the checkpoint is incomplete, damaged, or was written by a run with
            another configuration or world size. Nothing is silently re-initialised.
    """
    rank, world = _rank_world()
    if not os.path.exists(os.path.join(path, COMPLETE)):
        raise CheckpointError(f"{path}: incomplete checkpoint (no {COMPLETE} marker)")
    try:
        with open(os.path.join(path, META)) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read {META}: {e}") from e
    diffs = _differences(
        {k: v for k, v in saved.items() if k != "step"}, {"world_size": world, **meta}
    )
    if diffs:
        raise CheckpointError(
            f"{path} was written by a different run:\n  " + "\n  ".join(diffs)
        )
    state = {"model": model.state_dict(), "optim": optimizer.state_dict()}
    try:
        dcp.load(state, checkpoint_id=path)
        loader_state = torch.load(
            os.path.join(path, f"loader_rank{rank}.pt"), weights_only=False
        )
    # DCP's CheckpointException derives from BaseException, not Exception.
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"{path}: damaged checkpoint: {type(e).__name__}: {e}") from e
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optim"])
    loader.load_state_dict(loader_state)
    return int(saved["step"])
