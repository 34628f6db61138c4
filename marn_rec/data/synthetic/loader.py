"""Resumable loading of the synthetic stream: one dataset item is one (rank-sharded) batch.

The dataset is map-style, item ``i`` of rank ``r`` of ``w`` being global batch ``r + i * w``, and
the loader is a ``torchdata`` ``StatefulDataLoader`` with ``batch_size=None`` and no shuffling. Its
``state_dict()`` records how many batches were yielded; after ``load_state_dict`` the next batch is
exactly the one that followed, and skipping ahead costs nothing because a batch is generated from
its index alone (no batch depends on the ones before it).
"""

from typing import Optional

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from marn_rec.batch import MARNBatch
from marn_rec.config import MARNConfig
from marn_rec.data.synthetic.config import SyntheticTaobaoConfig, _check_split
from marn_rec.data.synthetic.stream import SyntheticTaobao


class SyntheticBatchDataset(Dataset):
    """Batches of ``split`` read by ``rank`` of ``world_size``: item ``i`` is global batch
    ``rank + i * world_size`` (see :func:`marn_rec.data.synthetic.shard_batch_indices`)."""

    def __init__(
        self,
        source: SyntheticTaobao,
        split: str,
        rank: int = 0,
        world_size: int = 1,
        dedup: bool = True,
    ):
        _check_split(split)
        self.source = source
        self.split = split
        self.dedup = dedup
        self.indices = source.shard(split, rank, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> MARNBatch:
        if not 0 <= i < len(self.indices):
            raise IndexError(f"batch {i} out of range for {len(self.indices)} batches")
        return self.source.batch(self.split, self.indices[i], dedup=self.dedup)


def _single_thread_worker(worker_id: int) -> None:
    # Workers share a few cores with the training process: one intra-op thread each avoids
    # oversubscription.
    torch.set_num_threads(1)


def make_loader(
    data_cfg: Optional[SyntheticTaobaoConfig],
    model_cfg: MARNConfig,
    split: str,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    dedup: bool = True,
    pin_memory: bool = False,
    prefetch_factor: Optional[int] = None,
    source: Optional[SyntheticTaobao] = None,
) -> StatefulDataLoader:
    """A resumable loader of the ``split`` batches of ``rank``.

    Args:
        data_cfg: the stream; ``None`` takes :meth:`SyntheticTaobaoConfig.from_model_config`.
        model_cfg: the model whose tables the IDs must fit (checked).
        split: ``"train"`` (``num_train_batches``) or ``"eval"`` (``num_eval_batches``, fixed).
        rank, world_size: this process's shard of the global batches.
        num_workers: generator processes (0: generate in the calling process).
        dedup: one row per unique item (True) or per slot (False), see :func:`build_batch`.
        source: an existing generator to reuse (shares the item catalog between train and eval
            loaders); must have been built from ``data_cfg``.

    Example::

        loader = make_loader(data_cfg, model_cfg, "train", rank, world_size)
        for step, batch in enumerate(loader):
            ...
            if step % 100 == 0:
                ckpt["loader"] = loader.state_dict()
        # later: loader.load_state_dict(ckpt["loader"]) resumes at the next batch
    """
    if data_cfg is None:
        if source is not None:
            data_cfg = source.config
        else:
            data_cfg = SyntheticTaobaoConfig.from_model_config(model_cfg)
    data_cfg.check_fits(model_cfg)
    if source is None:
        source = SyntheticTaobao(data_cfg)
    elif source.config != data_cfg:
        raise ValueError("source was built from a different SyntheticTaobaoConfig than data_cfg")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    dataset = SyntheticBatchDataset(source, split, rank, world_size, dedup)
    return StatefulDataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_single_thread_worker if num_workers > 0 else None,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
