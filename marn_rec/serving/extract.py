"""Extraction: the trained item tower over a whole catalogue, into a representation store.

An item's representation depends on the item alone (MAF and DDMA weigh its own modalities), so it
is computed once per catalogue item, in batches, in eval mode. One process (:func:`load_tower`) or
N ranks under DistributedModelParallel (:func:`sharded_tower`, launched with torchrun): each rank
takes a contiguous share of the catalogue and all ranks run the same number of forward passes,
since the sharded tables' all-to-alls need every rank (a rank with nothing left runs a one-item
placeholder batch and drops it). Every rank writes its rows into the same memory-mapped matrix;
rank 0 writes the index and the manifest.

Bad items are reported, never stored: a batch whose features fail
:func:`marn_rec.validation.validate_tower_inputs` (or whose feature lookup raises) is checked item
by item, the bad items are recorded with the reason in ``bad_items.jsonl`` and the rest of the batch
is extracted; an item whose representation is not finite (or, for an fp16 store, beyond fp16's
range) is reported the same way.
"""

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from tqdm import tqdm

from marn_rec.batch import ItemFeatures
from marn_rec.config import IMAGE, TITLE, ItemTowerConfig, MARNConfig
from marn_rec.features import TITLE_WORDS
from marn_rec.serving.head import ScoringHead
from marn_rec.serving.sources import ItemSource
from marn_rec.serving.store import StoreWriter, finish_store
from marn_rec.serving.weights import (
    TOWER_PREFIX,
    CheckpointInfo,
    config_fingerprint,
    config_json,
    head_fingerprint,
    load_model_state,
)
from marn_rec.validation import select_features, sparse_feature_rows, validate_tower_inputs

FP16_MAX = 65504.0
TowerInputs = Tuple[KeyedJaggedTensor, Optional[KeyedJaggedTensor], Optional[torch.Tensor]]


@dataclass
class ExtractionReport:
    """What an extraction did (returned on every rank)."""

    path: str
    num_rows: int
    stored: int
    bad_items: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    world_size: int = 1

    @property
    def items_per_s(self) -> float:
        return self.num_rows / self.seconds if self.seconds > 0 else float("nan")


def tower_inputs(features: ItemFeatures, config: ItemTowerConfig) -> TowerInputs:
    """``(item_sparse, item_title, item_image)`` of :class:`ItemFeatures`, holding exactly the
    tower's features in the tower's order (a sharded collection reads by position)."""
    sparse = features.sparse_kjt()
    keys = list(sparse_feature_rows(config))
    if keys and all(k in sparse.keys() for k in keys):
        sparse = select_features(sparse, keys)
    title = None
    if TITLE in config.modalities and features.title_values is not None and features.title_lengths is not None:
        title = KeyedJaggedTensor(keys=[TITLE_WORDS], values=features.title_values.long(),
                                  lengths=features.title_lengths.long())
    image = features.image if IMAGE in config.modalities else None
    return sparse, title, image


def checked_inputs(source: ItemSource, ids: torch.Tensor, config: ItemTowerConfig) -> TowerInputs:
    """Features of ``ids`` as tower inputs; raises ``ValueError`` (or the source's error) if any
    item's input is bad."""
    sparse, title, image = tower_inputs(source.features(ids), config)
    n = validate_tower_inputs(config, sparse, title, image)
    if n != ids.numel():
        raise ValueError(f"the source returned {n} items for {ids.numel()} ids")
    return sparse, title, image


def split_bad_items(
    source: ItemSource, ids: torch.Tensor, config: ItemTowerConfig
) -> Tuple[torch.Tensor, Optional[TowerInputs], List[Dict[str, Any]]]:
    """(positions of the good items in ``ids``, their tower inputs, the bad items with reasons).

    The whole batch is checked first; only when it fails is every item checked on its own."""
    try:
        return torch.arange(ids.numel()), checked_inputs(source, ids, config), []
    except Exception:  # noqa: BLE001 - found item by item below
        pass
    good, bad = [], []
    for i, item in enumerate(ids.tolist()):
        try:
            checked_inputs(source, torch.tensor([item], dtype=torch.int64), config)
            good.append(i)
        except Exception as e:  # noqa: BLE001 - the reason is reported, the item skipped
            bad.append({"id": int(item), "error": f"{type(e).__name__}: {e}"})
    positions = torch.tensor(good, dtype=torch.int64)
    if not good:
        return positions, None, bad
    return positions, checked_inputs(source, ids[positions], config), bad


def placeholder_inputs(config: ItemTowerConfig) -> TowerInputs:
    """One valid item (every ID 0, no title words, a zero image): the batch a rank with nothing
    left to extract still runs, so that the sharded lookups' collectives see every rank."""
    sparse = {name: torch.zeros(1, dtype=torch.int64) for name in sparse_feature_rows(config)}
    features = ItemFeatures(
        sparse=sparse,
        title_values=torch.zeros(0, dtype=torch.int64),
        title_lengths=torch.zeros(1, dtype=torch.int64),
        image=torch.zeros(1, config.image_dim),
    )
    return tower_inputs(features, config)


def load_tower(info: CheckpointInfo, device: Optional[torch.device] = None) -> nn.Module:
    """The trained item tower of a checkpoint, unsharded, in eval mode (only its own tensors are
    read from the checkpoint)."""
    from marn_rec.models.tower import MARNTower

    tower = MARNTower(info.config.tower, device=device, validate=False)
    state = tower.state_dict()
    load_model_state(info.path, {TOWER_PREFIX + k: v for k, v in state.items()})
    tower.load_state_dict(state)
    return tower.eval()


def sharded_tower(
    info: CheckpointInfo,
    device: torch.device,
    sharding_types: Optional[List[str]] = None,
    plan: Optional[Any] = None,
) -> nn.Module:
    """The trained item tower under DistributedModelParallel on the current process group
    (collective), in eval mode: the whole MARN is sharded as in training (TorchRec's planner over
    ``sharding_types``, or ``plan``) and its checkpoint loaded with DCP, which reshards whatever
    world size and plan wrote it."""
    from marn_rec.models.marn import MARN, MARNTrain
    from marn_rec.training.sharding import apply_embedding_optimizer, shard_model

    model = MARNTrain(MARN(info.config, device=torch.device("meta"), validate=False))
    apply_embedding_optimizer(model)  # shard_model wants the fused kernels; no step is ever taken
    dmp = shard_model(model, device, sharding_types=sharding_types, plan=plan)
    state = dmp.state_dict()
    load_model_state(info.path, state)
    dmp.load_state_dict(state)
    return dmp.module.model.tower.eval()


def trained_head_fingerprint(info: CheckpointInfo) -> str:
    """Fingerprint of the checkpoint's scoring head (see :mod:`marn_rec.serving.weights`)."""
    head = ScoringHead(info.config)
    load_model_state(info.path, head.marn_state_targets())
    return head_fingerprint(head.state_dict())


def _rank_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj: Any) -> List[Any]:
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out: List[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def extract(
    tower: nn.Module,
    source: ItemSource,
    out_dir: str,
    config: MARNConfig,
    checkpoint: Optional[CheckpointInfo] = None,
    head_fp: Optional[str] = None,
    dtype: str = "fp32",
    batch_size: int = 4096,
    device: torch.device = torch.device("cpu"),
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractionReport:
    """Runs ``tower`` (unsharded, or sharded on every rank of the process group: collective) over
    every item of ``source`` and writes the store ``out_dir``.

    Args:
        tower: a trained :class:`~marn_rec.models.tower.MARNTower` in eval mode.
        source: the catalogue.
        config: the model's configuration (recorded and fingerprinted in the manifest).
        checkpoint: where the weights came from (recorded in the manifest).
        head_fp: the trained scoring head's fingerprint (:func:`trained_head_fingerprint`).
        dtype: "fp32", "fp16" or "int8" (row-wise, per-row scale and offset).
        batch_size: items per forward pass and rank.
        overwrite: replace an existing store at ``out_dir``.

    Example::

        info = CheckpointInfo("runs/taobao_synthetic")
        report = extract(load_tower(info), source_from_checkpoint_meta(info.meta), "runs/store",
                         info.config, info, trained_head_fingerprint(info))
    """
    rank, world = _rank_world()
    n = len(source)
    if n == 0:
        raise ValueError("the item source is empty: nothing to extract")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    tmp_dir = f"{out_dir.rstrip('/')}.partial"
    d = config.tower.hidden_dim
    if rank == 0:
        StoreWriter(tmp_dir, n, d, dtype, create=True).close()
    if world > 1:
        dist.barrier()
    writer = StoreWriter(tmp_dir, n, d, dtype, create=False)
    share = -(-n // world)
    lo, hi = min(rank * share, n), min((rank + 1) * share, n)
    steps = max(1, -(-share // batch_size))
    ids_all = source.ids
    stored_pos: List[torch.Tensor] = []
    bad: List[Dict[str, Any]] = []
    total = torch.zeros(d, dtype=torch.float64)
    bar = tqdm(total=n, disable=not progress or rank != 0, desc="extract", unit="item", dynamic_ncols=True)
    for s in range(steps):
        b_lo, b_hi = min(lo + s * batch_size, hi), min(lo + (s + 1) * batch_size, hi)
        ids = ids_all[b_lo:b_hi]
        positions, inputs, bad_here = split_bad_items(source, ids, config.tower) if ids.numel() else (
            torch.zeros(0, dtype=torch.int64), None, [])
        bad += bad_here
        real = inputs is not None
        sparse, title, image = inputs if real else placeholder_inputs(config.tower)
        rep = tower(sparse.to(device), title.to(device) if title is not None else None,
                    image.to(device) if image is not None else None).representation.float().cpu()
        if real:
            finite = torch.isfinite(rep).all(dim=1)
            for i in torch.nonzero(~finite).flatten().tolist():
                bad.append({"id": int(ids[positions[i]]), "error": "non-finite representation"})
            if dtype == "fp16":  # a value beyond fp16's range would be stored as inf
                fits = rep.abs().amax(dim=1) <= FP16_MAX
                for i in torch.nonzero(finite & ~fits).flatten().tolist():
                    bad.append({"id": int(ids[positions[i]]), "error": "representation beyond the fp16 range (store fp32)"})
                finite = finite & fits
            positions, rep = positions[finite], rep[finite]
            rows = (b_lo + positions).numpy()
            writer.write(rows, rep)
            total += rep.double().sum(0)
            stored_pos.append(b_lo + positions)
        bar.update(int(ids.numel()) * world)  # the ranks advance together
    bar.close()
    writer.close()
    mine = torch.cat(stored_pos) if stored_pos else torch.zeros(0, dtype=torch.int64)
    parts = _gather((mine, bad, total))
    report = ExtractionReport(out_dir, n, 0, world_size=world)
    if rank == 0:
        rows = torch.cat([p[0] for p in parts]).numpy()
        report.bad_items = sorted((b for p in parts for b in p[1]), key=lambda b: b["id"])
        report.stored = int(rows.size)
        mean = (sum(p[2] for p in parts) / max(report.stored, 1)).float().numpy()
        report.seconds = time.perf_counter() - start
        manifest = {
            "dtype": dtype, "dim": d, "num_rows": n,
            "model": config_json(config), "config_fingerprint": config_fingerprint(config),
            "head_fingerprint": head_fp,
            "checkpoint": checkpoint.describe() if checkpoint is not None else None,
            "source": source.description,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "extraction": {"world_size": world, "batch_size": batch_size, "seconds": round(report.seconds, 3),
                           "device": str(device)},
        }
        finish_store(tmp_dir, out_dir, ids_all.numpy()[rows], rows, mean, report.bad_items, manifest, overwrite)
    if world > 1:
        dist.barrier()
    summary = _gather((report.stored, report.bad_items, report.seconds))[0]
    report.stored, report.bad_items, report.seconds = summary
    return report

