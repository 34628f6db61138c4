"""What a training run reads: the synthetic stream, or a prepared directory of real data.

Both give a :class:`TrainingData`: the model configuration that fits the data, a resumable loader
of the training batches of this rank (one batch per step), the evaluation batches, and a
description of the data that a checkpoint must agree on to be resumed.

A prepared directory (:mod:`marn_rec.data.prepare`) sets the model's features: its manifest's ID
features (with their vocabularies; multi-valued ones are mean-pooled), statistics, title and image
(absent modalities are left out), behaviour types and time buckets; the preset sets the sizes of
the dense towers and of the embeddings.
"""

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from marn_rec.batch import MARNBatch
from marn_rec.config import (
    IDS,
    IMAGE,
    STATISTIC,
    TITLE,
    IdFeature,
    MARNConfig,
)
from marn_rec.data import SyntheticTaobao, SyntheticTaobaoConfig, make_loader, shard_batch_indices

# Embedding width of an ID feature of a prepared data set, by name; others get the category's.
_DIMS = {"item_id": "item_dim", "shop_id": "shop_dim", "brand_id": "brand_dim"}


@dataclass
class TrainingData:
    model_config: MARNConfig
    train_loader: StatefulDataLoader
    eval_batches: Callable[[], Iterable[MARNBatch]]
    description: Dict[str, Any]
    # The evaluations before the last (learning curves); None: eval_batches. The synthetic stream
    # leaves out Table 5's cold candidate sets here: at the default 16 batches of 64 users x 200
    # items they are 200k samples, 25 times the ordinary evaluation, and no curve shows them.
    curve_eval_batches: Optional[Callable[[], Iterable[MARNBatch]]] = None


def model_config_for_manifest(manifest: Dict[str, Any], base: MARNConfig) -> MARNConfig:
    """``base`` (a preset, an ablation) with the features of a prepared data set.

    The base's modalities are kept where the data has them: a title-free data set drops the title
    modality, and so on. Raises ``ValueError`` when none of the base's modalities is left.
    """
    tower = base.tower
    id_features = tuple(
        IdFeature(
            f["name"],
            int(f["num_embeddings"]),
            getattr(tower, _DIMS.get(f["name"], "category_dim")),
            bool(f["multi_valued"]),
        )
        for f in manifest["id_features"]
    )
    available = {IDS: bool(id_features), STATISTIC: bool(manifest["statistics"]),
                 TITLE: manifest["title"] is not None, IMAGE: bool(manifest["image_dim"])}
    modalities = tuple(m for m in tower.modalities if available[m])
    if not modalities:
        raise ValueError(
            f"the data set has none of the modalities {tower.modalities} (it has "
            f"{[m for m, ok in available.items() if ok]})"
        )
    adversarial = tower.adversarial if len(modalities) > 1 else "none"
    changes: Dict[str, Any] = dict(
        id_features=id_features, modalities=modalities, adversarial=adversarial
    )
    if manifest["statistics"]:
        changes.update(
            num_statistics=len(manifest["statistics"]),
            statistic_buckets=tuple(manifest["statistic_buckets"]),
        )
    if manifest["title"] is not None:
        length = int(manifest["title"]["max_length"])
        changes.update(
            title_vocab_size=int(manifest["title"]["vocab_size"]),
            title_length=max(length, max(tower.title_windows)),
        )
    if manifest["image_dim"]:
        changes["image_dim"] = int(manifest["image_dim"])
    behavior = replace(
        base.behavior,
        num_behavior_types=int(manifest["num_behavior_types"]),
        num_time_buckets=int(manifest["num_time_buckets"]),
        max_length=int(manifest.get("max_length", base.behavior.max_length)),
    )
    return replace(base, tower=replace(tower, **changes), behavior=behavior)


class _Epochs(Dataset):
    """``num_batches`` batches of a split, epoch after epoch: item ``i`` is batch ``i % L`` of
    epoch ``i // L``, each epoch in its own seeded batch order. A batch depends on its index alone,
    so a StatefulDataLoader over it resumes exactly."""

    def __init__(self, make_epoch: Callable[[int], Dataset], num_batches: int) -> None:
        self.make_epoch = make_epoch
        self.num_batches = num_batches
        self._epoch: Optional[Tuple[int, Dataset]] = None
        self.batches_per_epoch = len(make_epoch(0))
        if self.batches_per_epoch == 0:
            raise ValueError("the training split gives this rank no batch")

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, i: int) -> MARNBatch:
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch {i} out of range for {self.num_batches} batches")
        epoch, j = divmod(i, self.batches_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.make_epoch(epoch))
        return self._epoch[1][j]


def synthetic_data(cfg: Any, model_cfg: MARNConfig, rank: int, world: int) -> TrainingData:
    """The synthetic Taobao-like stream at ``cfg``'s sizes and seed."""
    data_cfg: SyntheticTaobaoConfig = cfg.data_config(world)
    source = SyntheticTaobao(data_cfg)
    train_loader = make_loader(
        data_cfg, model_cfg, "train", rank, world, cfg.num_workers, cfg.dedup, source=source
    )
    eval_loader = make_loader(data_cfg, model_cfg, "eval", rank, world, 0, cfg.dedup, source=source)
    curve = None
    if data_cfg.num_cold_set_batches:
        # The ordinary batches dealt out on their own, so that every rank evaluates as many batches
        # as the others (each forward of the sharded model is a collective).
        ordinary = shard_batch_indices(data_cfg.num_eval_batches, rank, world)

        def curve() -> Iterable[MARNBatch]:
            return (source.batch("eval", index, dedup=cfg.dedup) for index in ordinary)
    return TrainingData(model_cfg, train_loader, lambda: iter(eval_loader), asdict(data_cfg), curve)


def prepared_data(cfg: Any, base: MARNConfig, rank: int, world: int) -> TrainingData:
    """A prepared directory ``cfg.data_dir``: ``cfg.steps`` training batches of this rank (over
    as many epochs as that takes) and the whole test split for evaluation."""
    from marn_rec.data.prepared import PreparedBatchDataset, PreparedDataset, single_thread_worker

    data = PreparedDataset(cfg.data_dir)
    model_cfg = model_config_for_manifest(data.manifest, base)

    def epoch(e: int) -> Dataset:
        return PreparedBatchDataset(data, "train", rank, world, cfg.batch_size, cfg.seed + e, cfg.dedup,
                                    cfg.cold_item_dropout)

    train_loader = StatefulDataLoader(
        _Epochs(epoch, cfg.steps),
        batch_size=None,
        shuffle=False,
        num_workers=cfg.num_workers,
        worker_init_fn=single_thread_worker if cfg.num_workers > 0 else None,
    )
    test = PreparedBatchDataset(data, "test", rank, world, cfg.batch_size, None, cfg.dedup)
    description = {
        "data_dir_manifest": {k: v for k, v in data.manifest.items() if k != "summary"},
        "batches_per_epoch": train_loader.dataset.batches_per_epoch,
    }

    def eval_batches() -> List[MARNBatch]:
        return (test[i] for i in range(len(test)))  # type: ignore[return-value]

    return TrainingData(model_cfg, train_loader, eval_batches, description)
