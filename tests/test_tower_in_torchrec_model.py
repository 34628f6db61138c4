"""MARNTower inside an existing TorchRec model trains and shards with the default sharders.

The model is a DLRM-style user/item model written the way a TorchRec user would: a user side with
its own ``EmbeddingBagCollection`` and ``torchrec.modules.mlp.MLP``, the item side a
:class:`marn_rec.MARNTower`, and DLRM's ``OverArch`` on ``[user, item, user * item]``. Its loss is
BCE plus the tower's auxiliary losses (:func:`marn_rec.models.loss.marn_loss`).
"""

import math
import os
from datetime import timedelta
from typing import Any, Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import ShardedEmbeddingCollection
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.test_utils.multi_process import run_multi_process_func
from torchrec.models.dlrm import OverArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec import ItemTowerConfig, MARNTower, marn_loss, tiny
from marn_rec.batch import single_value_kjt
from marn_rec.training.sharding import (
    apply_embedding_optimizer,
    load_unsharded_state_dict,
    table_names,
    training_optimizer,
)
from marn_rec.features import TITLE_WORDS
from marn_rec.testing import RandomCatalog

NUM_USERS = 20
NUM_CITIES = 6
ADV_LAMBDA = 0.05
WORLD_SIZE = 2


class UserItemModel(nn.Module):
    """User EBC + MLP on one side, MARNTower on the other, DLRM's OverArch on top."""

    def __init__(self, tower: ItemTowerConfig, device: torch.device | None = None) -> None:
        super().__init__()
        d = tower.hidden_dim
        self.user_ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name="t_user_id",
                    embedding_dim=8,
                    num_embeddings=NUM_USERS,
                    feature_names=["user_id"],
                ),
                EmbeddingBagConfig(
                    name="t_user_city",
                    embedding_dim=4,
                    num_embeddings=NUM_CITIES,
                    feature_names=["user_city"],
                ),
            ],
            device=device,
        )
        self.user_mlp = MLP(12, [16, d], device=device)
        self.item_tower = MARNTower(tower, device=device)
        self.over = OverArch(in_features=3 * d, layer_sizes=[16, 1], device=device)

    def forward(
        self,
        user_sparse: KeyedJaggedTensor,
        item_sparse: KeyedJaggedTensor,
        item_title: KeyedJaggedTensor,
        item_image: torch.Tensor,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # By name, as DLRM's SparseArch does: a sharded EBC may order its output keys differently.
        pooled = self.user_ebc(user_sparse).to_dict()
        user = self.user_mlp(torch.cat([pooled["user_id"], pooled["user_city"]], dim=1))
        item = self.item_tower(item_sparse, item_title, item_image)
        rep = item.representation
        logits = self.over(torch.cat([user, rep, user * rep], dim=1)).squeeze(1)
        return logits, item.losses


def _inputs(
    catalog: RandomCatalog, users: torch.Tensor, items: torch.Tensor
) -> Dict[str, Any]:
    """Model inputs of the (user, item) pairs: one tower row per pair (no deduplication)."""
    features = catalog.features(items)
    return dict(
        user_sparse=single_value_kjt({"user_id": users, "user_city": users % NUM_CITIES}),
        item_sparse=single_value_kjt(features.sparse),
        item_title=KeyedJaggedTensor(
            keys=[TITLE_WORDS], values=features.title_values, lengths=features.title_lengths
        ),
        item_image=features.image,
    )


def _labels(items: torch.Tensor) -> torch.Tensor:
    """The toy task: a click is a fixed function of the item id (40% positives)."""
    return ((items * 7) % 5 < 2).float()


def _losses(
    model: nn.Module, inputs: Dict[str, Any], labels: torch.Tensor
) -> Dict[str, torch.Tensor]:
    logits, aux = model(**inputs)
    return marn_loss(logits, labels, aux, ADV_LAMBDA)


def test_tower_in_user_item_model_learns_toy_task() -> None:
    """Unsharded: BCE + the tower's auxiliary losses, a few full-batch steps, the CTR loss falls."""
    torch.manual_seed(0)
    config = tiny()
    catalog = RandomCatalog(config)
    g = torch.Generator().manual_seed(0)
    items = torch.arange(config.tower.num_items)
    users = torch.randint(0, NUM_USERS, items.shape, generator=g)
    inputs, labels = _inputs(catalog, users, items), _labels(items)

    model = UserItemModel(config.tower)
    apply_embedding_optimizer(model, lr=0.1)  # in-backward row-wise AdaGrad, all 3 collections
    optimizer = training_optimizer(model, lr=0.1)  # AdaGrad on the dense parameters
    history = []
    for _ in range(20):
        losses = _losses(model, inputs, labels)
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append({k: v.item() for k, v in losses.items()})

    assert set(history[0]) == {"ctr", "d0", "d1", "ds", "adv", "total"}  # DDMA's losses are trained
    assert all(math.isfinite(v) for h in history for v in h.values())
    first, last = history[0]["ctr"], history[-1]["ctr"]
    assert first > 0.6  # about ln 2 at the start
    assert last < 0.5 * first, [h["ctr"] for h in history]  # 0.68 -> 0.23 as written
    assert history[-1]["total"] < history[0]["total"]


# ----------------------------------------------------------------------------------- sharded


def _sharded_worker(rank: int, world_size: int) -> Dict[str, Any]:
    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    try:
        pg = dist.group.WORLD
        config = tiny()
        catalog = RandomCatalog(config)
        batches = []
        for r in range(world_size):  # every rank builds every rank's batch, for the reference
            g = torch.Generator().manual_seed(r)
            items = torch.randint(0, config.tower.num_items, (8 - 2 * r,), generator=g)
            users = torch.randint(0, NUM_USERS, items.shape, generator=g)
            batches.append((_inputs(catalog, users, items), _labels(items)))

        # SGD everywhere, so that one sharded step equals one unsharded step on the mean loss.
        torch.manual_seed(0)
        reference = UserItemModel(config.tower)
        apply_embedding_optimizer(reference, lr=0.1, optimizer_class=torch.optim.SGD)
        model = UserItemModel(config.tower, device=torch.device("meta"))
        apply_embedding_optimizer(model, lr=0.1, optimizer_class=torch.optim.SGD)

        # Plain TorchRec: its planner (table-wise: gloo on CPU has no row-wise) and DMP with the
        # default sharders.
        planner = EmbeddingShardingPlanner(
            topology=Topology(
                world_size=world_size, compute_device="cpu", local_world_size=world_size
            ),
            constraints={
                t: ParameterConstraints(sharding_types=["table_wise"]) for t in table_names(model)
            },
        )
        plan = planner.collective_plan(model, get_default_sharders(), pg)
        dmp = DistributedModelParallel(module=model, device=torch.device("cpu"), plan=plan)
        load_unsharded_state_dict(dmp, reference.state_dict())

        modules = dict(dmp.module.named_modules())
        types = {
            name: type(modules[name]).__name__
            for name in ("user_ebc", "item_tower.embedding.ebc", "item_tower.embedding.ec")
        }
        unsharded_left = [
            n
            for n, m in modules.items()
            if type(m) in (EmbeddingBagCollection, EmbeddingCollection)
        ]
        checks = {
            "user_ebc": isinstance(modules["user_ebc"], ShardedEmbeddingBagCollection),
            "tower_ebc": isinstance(
                modules["item_tower.embedding.ebc"], ShardedEmbeddingBagCollection
            ),
            "tower_ec": isinstance(modules["item_tower.embedding.ec"], ShardedEmbeddingCollection),
        }
        tables_on_rank = sorted(
            t
            for module_plan in dmp.plan.plan.values()
            for t, p in module_plan.items()
            if rank in (p.ranks or [])
        )

        inputs, labels = batches[rank]
        with torch.no_grad():
            logits, aux = dmp(**inputs)
            ref_logits, ref_aux = reference(**inputs)

        optimizer = training_optimizer(dmp, lr=0.1, optimizer_class=torch.optim.SGD)
        reference_optimizer = training_optimizer(
            reference, lr=0.1, optimizer_class=torch.optim.SGD
        )
        loss = _losses(dmp, inputs, labels)["total"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ref_total = sum(_losses(reference, i, l)["total"] for i, l in batches) / world_size
        ref_total.backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad()
        with torch.no_grad():
            after = dmp(**inputs)[0]
            ref_after = reference(**inputs)[0]

        return {
            "types": types,
            "unsharded_left": unsharded_left,
            "checks": checks,
            "tables_on_rank": tables_on_rank,
            "all_tables": sorted(table_names(reference)),
            "logit_diff": (logits - ref_logits).abs().max().item(),
            "aux_diff": max((aux[k] - ref_aux[k]).abs().item() for k in ref_aux),
            "aux_keys": sorted(aux),
            "loss": loss.item(),
            "changed": (after - logits).abs().max().item(),
            "after_diff": (after - ref_after).abs().max().item(),
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_tower_in_user_item_model_shards_with_default_sharders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DMP with TorchRec's default sharders replaces the user EBC and the tower's EBC/EC by
    sharded modules, predicts what the unsharded model predicts from the same weights, and a train
    step matches the unsharded step."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "GLOO_DEVICE_TRANSPORT", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(key, "")  # run_multi_process_func overwrites them; restored after
    results: List[Dict[str, Any]] = run_multi_process_func(
        _sharded_worker,
        multiprocessing_method="spawn",
        use_deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        world_size=WORLD_SIZE,
    )
    all_tables = results[0]["all_tables"]
    assert {"t_user_id", "t_user_city", "t_item_id", "t_title_words"} <= set(all_tables)
    # Table-wise: every table on exactly one rank, and both ranks hold some.
    on_rank = [set(r["tables_on_rank"]) for r in results]
    assert on_rank[0] | on_rank[1] == set(all_tables) and not on_rank[0] & on_rank[1]
    assert on_rank[0] and on_rank[1]
    for result in results:
        assert result["types"] == {
            "user_ebc": "ShardedEmbeddingBagCollection",
            "item_tower.embedding.ebc": "ShardedEmbeddingBagCollection",
            "item_tower.embedding.ec": "ShardedEmbeddingCollection",
        }
        assert all(result["checks"].values()), result["checks"]
        assert result["unsharded_left"] == []
        assert result["aux_keys"] == ["adv", "d0", "d1", "ds"]
        assert result["logit_diff"] < 1e-6
        assert result["aux_diff"] < 1e-6
        assert math.isfinite(result["loss"])
        assert result["changed"] > 1e-4  # the step did something
        assert result["after_diff"] < 1e-5  # and the same thing as the unsharded step
