"""Serving from training checkpoints: one process reads what 2 DMP ranks wrote (table-wise and
column-wise), extraction under DMP on 2 ranks equals single-process extraction, bad items are
reported and not stored, and damaged or missing checkpoints are refused."""

import os
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan
from torchrec.distributed.test_utils.multi_process import run_multi_process_func
from torchrec.distributed.types import ShardingPlan

from marn_rec import MARN, MARNTrain, tiny
from marn_rec.batch import ItemFeatures
from marn_rec.data import SyntheticTaobaoConfig
from marn_rec.serving import CheckpointInfo, ItemSource, RepresentationStore, load_head, scorer_from_marn
from marn_rec.serving.extract import extract, load_tower, sharded_tower, trained_head_fingerprint
from marn_rec.serving.testing import write_checkpoint
from marn_rec.serving.weights import load_marn
from marn_rec.testing import RandomCatalog, random_batch
from marn_rec.training.checkpoint import CheckpointError
from marn_rec.training.sharding import apply_embedding_optimizer, embedding_tables, shard_model

CPU, META = torch.device("cpu"), torch.device("meta")
BAD = {13: "id 99 out of range", 21: "non-finite values", 30: "no features for item 30"}


class BadItemsSource:
    """RandomCatalog features with three bad items: a shop ID out of its table, a NaN image, and
    an item whose lookup raises."""

    def __init__(self) -> None:
        self.catalog = RandomCatalog(tiny(), seed=1)

    def __call__(self, ids: torch.Tensor) -> ItemFeatures:
        if 30 in ids.tolist():
            raise KeyError("no features for item 30")
        f = self.catalog.features(ids)
        f.sparse["shop_id"] = torch.where(ids == 13, torch.full_like(ids, 99), f.sparse["shop_id"])
        f.image[ids == 21] = float("nan")
        return f


def _source() -> ItemSource:
    return ItemSource(features=BadItemsSource(), count=tiny().tower.num_items)


def _column_wise_plan(model: torch.nn.Module, world_size: int) -> ShardingPlan:
    plans = {}
    for path, module in embedding_tables(model):
        tables = [name.split(".")[-2] for name, _ in module.named_parameters()]
        plans[path] = construct_module_sharding_plan(
            module, {t: column_wise(ranks=list(range(world_size))) for t in tables},
            local_size=world_size, world_size=world_size, device_type="cpu")
    return ShardingPlan(plans)


def _dmp_worker(rank: int, world_size: int, sharding_type: str, out_dir: str, store_dir: str) -> Dict[str, Any]:
    """Writes a checkpoint of a freshly initialised DMP MARN, then extracts the catalogue with a
    DMP tower (the checkpoint resharded by DCP); returns the DMP model's eval logits."""
    os.environ.update(LOCAL_WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    try:
        config = tiny()
        torch.manual_seed(0)

        def build():
            model = MARNTrain(MARN(config, device=META, validate=False))
            apply_embedding_optimizer(model)
            plan = _column_wise_plan(model, world_size) if sharding_type == "column_wise" else None
            return shard_model(model, CPU, sharding_types=[sharding_type], plan=plan), plan

        dmp, plan = build()
        dmp.eval()
        with torch.no_grad():
            _, (_, logits, _) = dmp(random_batch(config, 12, seed=3))
        data = SyntheticTaobaoConfig.from_model_config(config, batch_size=8)
        write_checkpoint(dmp, out_dir, step=5, data=data)
        info = CheckpointInfo(out_dir)
        tower = sharded_tower(info, CPU, [sharding_type], plan=plan)  # same tables: the same plan
        extract(tower, _source(), store_dir, config, info, trained_head_fingerprint(info), batch_size=7,
                progress=False)
        return {"logits": logits.tolist(), "plan": str(dmp.plan)}
    finally:
        dist.destroy_process_group()


def _spawn(monkeypatch: pytest.MonkeyPatch, func, **kwargs) -> List[Any]:
    for key in ("MASTER_ADDR", "MASTER_PORT", "GLOO_DEVICE_TRANSPORT", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(key, "")
    return run_multi_process_func(func, multiprocessing_method="spawn",
                                  use_deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
                                  world_size=2, **kwargs)


@pytest.mark.distributed
@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_two_rank_checkpoint_serves_from_one_process(monkeypatch, tmp_path: Path, sharding_type: str) -> None:
    out, dmp_store = tmp_path / "run", tmp_path / "store_dmp"
    results = _spawn(monkeypatch, _dmp_worker, sharding_type=sharding_type, out_dir=str(out), store_dir=str(dmp_store))
    assert sharding_type in results[0]["plan"]
    info = CheckpointInfo(str(out))  # OUT_DIR resolves to its latest complete checkpoint
    assert info.step == 5 and info.meta["world_size"] == 2
    # The unsharded model holds exactly the DMP model's weights: same logits.
    model = load_marn(info)
    with torch.no_grad():
        logits = model(**random_batch(tiny(), 12, seed=3).model_inputs()).logits
    assert (logits - torch.tensor(results[0]["logits"])).abs().max() <= 1e-5
    # Extraction on 2 DMP ranks equals extraction in one process.
    extract(load_tower(info), _source(), str(tmp_path / "store_1p"), info.config, info,
            trained_head_fingerprint(info), batch_size=11, progress=False)
    a, b = RepresentationStore(str(dmp_store)), RepresentationStore(str(tmp_path / "store_1p"))
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.rows, b.rows)
    assert np.abs(np.asarray(a.matrix) - np.asarray(b.matrix)).max() <= 1e-6
    # Bad items are reported with their reason, and not stored.
    assert a.manifest["extraction"]["world_size"] == 2
    reported = {item["id"]: item["error"] for item in a.bad_items()}
    assert set(reported) == set(BAD)
    for item, reason in BAD.items():
        assert reason in reported[item]
    assert a.num_items == 47 and not set(BAD) & set(a.ids.tolist())
    # And the scorer built from the checkpoint reads this store.
    scorer = scorer_from_marn(model, a)
    assert scorer([1, 2], [0, 1], [0, 0], [3, 4, 5]).shape == (3,)
    assert load_head(info).marn_keys()


def test_checkpoint_resolution_and_damage(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MARNTrain(MARN(tiny()))
    path = write_checkpoint(model, str(tmp_path / "run"), step=3)
    for given in (tmp_path / "run", tmp_path / "run" / "checkpoints", Path(path)):
        assert CheckpointInfo(str(given)).path == path
    loaded = load_marn(CheckpointInfo(path))
    assert all(torch.equal(v, model.model.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="no such directory"):
        CheckpointInfo(str(tmp_path / "nothing"))
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        CheckpointInfo(str(tmp_path))
    distcp = next(p for p in Path(path).iterdir() if p.suffix == ".distcp")
    raw = bytearray(distcp.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    distcp.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        CheckpointInfo(path)


def test_synthetic_source_from_checkpoint_meta(tmp_path: Path) -> None:
    from marn_rec.serving.sources import source_from_checkpoint_meta

    data = SyntheticTaobaoConfig.from_model_config(tiny(), batch_size=8, seed=4)
    source = source_from_checkpoint_meta({"data": asdict(data)})
    assert len(source) == data.num_catalog_items and source.description["seed"] == 4
    with pytest.raises(ValueError, match="no 'data' entry"):
        source_from_checkpoint_meta({"data": None})
