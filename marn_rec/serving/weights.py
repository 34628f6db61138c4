"""Trained weights for serving, read from a training checkpoint without the training machinery.

A checkpoint (``OUT_DIR/checkpoints/step_XXXXXXXXX/``, see :mod:`marn_rec.training.checkpoint`) is a
``torch.distributed.checkpoint`` directory whose ``"model"`` entry is ``dmp.state_dict()``, whose keys
equal those of the unsharded :class:`~marn_rec.models.marn.MARNTrain` (``model.tower...``), plus a
``meta.json`` holding ``asdict(MARNConfig)`` under ``"model"``. DCP reshards on load, so one process
can read a checkpoint that N ranks wrote table-wise or column-wise into plain tensors, and it can
read only some keys: the scorer loads the scoring head alone (APGRU, attention, MLP, property
tables), never the item tables, which at paper size do not fit one machine.

The configuration fingerprint (:func:`config_fingerprint`) identifies the architecture; the head
fingerprint (:func:`head_fingerprint`) identifies the trained weights a representation store must
be used with (the store's tower outputs and the scorer's head must come from the same checkpoint).
"""

import hashlib
import json
import os
import warnings
from dataclasses import asdict
from typing import Any, Dict, Iterable, Optional

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from marn_rec.config import MARNConfig, config_from_dict
from marn_rec.training.checkpoint import (
    COMPLETE,
    META,
    CheckpointError,
    latest_checkpoint,
    verify_checkpoint,
)

# The unsharded MARNTrain's keys of the MARN it wraps; DCP prefixes them with the state entry.
MODEL_PREFIX = "model."
TOWER_PREFIX = "model.tower."
# Everything the scorer reads, as prefixes of the MARNTrain keys.
HEAD_PREFIXES = (
    "model.behavior.",
    "model.attention.",
    "model.over.",
    "model.property_embedding.",
)


def config_json(config: MARNConfig) -> Dict[str, Any]:
    """``asdict(config)`` after a JSON round trip (tuples as lists), as manifests record it."""
    return json.loads(json.dumps(asdict(config)))


def config_fingerprint(config: MARNConfig) -> str:
    """sha256 of the configuration as JSON (after the JSON round trip a checkpoint makes, so a
    configuration and its ``config_from_dict(json)`` copy have the same fingerprint)."""
    canonical = json.dumps(config_json(config), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def head_fingerprint(tensors: Dict[str, torch.Tensor]) -> str:
    """sha256 of named fp32 tensors (names sorted): which trained scoring head a store belongs to."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(list(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def resolve_checkpoint(path: str) -> str:
    """The checkpoint directory ``path`` names: a step directory itself, or the latest complete
    checkpoint of ``OUT_DIR`` (``path/checkpoints/step_*``) or of a ``checkpoints`` directory.

    Raises:
        CheckpointError: nothing usable there (no directory, no complete checkpoint).
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such directory")
    if os.path.exists(os.path.join(path, META)):
        return path
    for root in (os.path.join(path, "checkpoints"), path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise CheckpointError(
        f"{path}: neither a checkpoint directory (no {META}) nor a directory holding complete "
        f"checkpoints (step_*/ with a {COMPLETE} marker, directly or under checkpoints/)"
    )


class CheckpointInfo:
    """A resolved, verified checkpoint: its directory, ``meta.json`` and model configuration.

    Args:
        path (str): a step directory, a ``checkpoints`` directory or a training ``OUT_DIR``.
        verify (bool): check every file against the checkpoint's manifest first (reads every byte
            once; collective when a process group is up).

    Example::

        info = CheckpointInfo("runs/taobao_synthetic")
        info.config.tower.hidden_dim, info.step
    """

    def __init__(self, path: str, verify: bool = True) -> None:
        self.path = resolve_checkpoint(path)
        if verify:
            self.meta: Dict[str, Any] = verify_checkpoint(self.path)
        else:
            with open(os.path.join(self.path, META)) as f:
                self.meta = json.load(f)
        if "model" not in self.meta:
            raise CheckpointError(f"{self.path}: {META} has no 'model' entry (the MARNConfig)")
        try:
            self.config: MARNConfig = config_from_dict(self.meta["model"])
        except (TypeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{self.path}: {META}'s 'model' is not a MARNConfig: {e}") from e
        self.step: Optional[int] = self.meta.get("step")

    def describe(self) -> Dict[str, Any]:
        """What a store's manifest records about its source checkpoint."""
        return {
            "path": os.path.abspath(self.path),
            "step": self.step,
            "world_size": self.meta.get("world_size"),
        }

    def load(self, tensors: Dict[str, torch.Tensor]) -> None:
        """Reads ``tensors`` (MARNTrain keys -> tensors to fill in place, plain or sharded) from
        the checkpoint's ``"model"`` entry.

        Raises:
            CheckpointError: a key is absent or has another shape in the checkpoint.
        """
        load_model_state(self.path, tensors)


def load_model_state(path: str, tensors: Dict[str, torch.Tensor]) -> None:
    """``dcp.load({"model": tensors})`` from checkpoint ``path``, in place (see :class:`CheckpointInfo`)."""
    with warnings.catch_warnings():
        # A single process without a process group is the intended use here.
        warnings.filterwarnings("ignore", message=r"torch.distributed is disabled")
        try:
            dcp.load({"model": tensors}, checkpoint_id=path)
        # DCP's CheckpointException derives from BaseException, not Exception.
        except (Exception, CheckpointException) as e:
            raise CheckpointError(f"{path}: cannot load the model weights: {type(e).__name__}: {e}") from e


def select_state(module_state: Dict[str, torch.Tensor], prefixes: Iterable[str]) -> Dict[str, torch.Tensor]:
    """The entries of a MARNTrain state dict under any of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in module_state.items() if k.startswith(prefixes)}


def load_marn(info: CheckpointInfo, device: Optional[torch.device] = None) -> nn.Module:
    """The whole trained MARN (unsharded, eval mode) of a checkpoint, e.g. for parity checks and
    single-process extraction of catalogues whose tables fit in memory."""
    from marn_rec.models.marn import MARN, MARNTrain

    train = MARNTrain(MARN(info.config, device=device, validate=True))
    state = train.state_dict()
    load_model_state(info.path, state)
    train.load_state_dict(state)
    return train.model.eval()
