"""Memory accounting of the benchmark (marn_rec/benchmarks/plans.py, memory.py): embedding bytes
per rank from the sharding plans and from the built baseline, peak prediction and calibration,
and skipping a run that would not fit."""

import pytest
import torch
from torch import nn

from marn_rec.benchmarks import memory
from marn_rec.benchmarks.config import COLUMN_WISE, TABLE_WISE, QPSConfig, RunSpec, model_config
from marn_rec.benchmarks.goals import GOAL_MEMORY_BALANCE
from marn_rec.benchmarks.machine import GIB, MIB
from marn_rec.benchmarks.measure import local_bytes, sparse_baseline
from marn_rec.benchmarks.memory import MemoryModel, fits
from marn_rec.benchmarks.plans import (
    baseline_embedding_bytes,
    imbalance,
    make_plan,
    plan_bytes_per_rank,
    table_shapes,
)
from marn_rec.benchmarks.qps import predict
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.training.sharding import apply_embedding_optimizer, column_shards

META = torch.device("meta")


def test_baseline_bytes_match_the_built_baseline() -> None:
    """The predictor's baseline accounting (tables + AdaGrad's full-size sum) equals what the
    unsharded baseline actually allocates for its tables and optimizer state."""
    cfg = model_config("tiny", 300)
    shapes = table_shapes(MARNTrain(MARN(cfg, device=META)))
    predicted = baseline_embedding_bytes(shapes)
    model = MARNTrain(MARN(cfg))
    optimizers, tables = sparse_baseline(model, 0.1)
    weights = sum(p.numel() * p.element_size() for p in tables)
    state = sum(local_bytes(optimizers[0].state[p]["sum"]) for p in tables)
    assert predicted == {"weights": weights, "optimizer": state}
    assert shapes["t_item_id"] == (300, cfg.tower.item_dim, 4)
    # Every embedding module is sparse and owned by the sparse optimizer only.
    sparse = [m for m in model.modules() if isinstance(m, (nn.EmbeddingBag, nn.Embedding))]
    assert sparse and all(m.sparse for m in sparse)
    assert {id(p) for p in tables}.isdisjoint(
        id(p) for g in optimizers[1].param_groups for p in g["params"]
    )


def test_memory_model_predicts_and_calibrates() -> None:
    mem = MemoryModel(default_overhead=100)
    per_process = [{"weights": 1000, "optimizer": 10}, {"weights": 500, "optimizer": 5}]
    assert mem.predict("column_wise", True, per_process) == [1110, 605]
    assert fits([1110, 605], 1715) and not fits([1110, 605], 1714)
    # A measured run replaces the default overhead for that (mode, dedup) only.
    mem.observe("column_wise", True, per_process, [1010 + 1000 * MIB, 505])
    assert mem.overhead("column_wise", True) == int(1000 * MIB * 1.1)
    assert mem.overhead("column_wise", False) == 100
    assert mem.overhead("baseline", True) == 100


def test_skip_instead_of_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10 * GIB)
    cfg = QPSConfig(device="cpu", memory_fraction=0.5)
    mem = MemoryModel(default_overhead=GIB)
    small = RunSpec("baseline", 1, True, 1, 2, embedding_per_process=[{"weights": GIB, "optimizer": GIB}])
    big = RunSpec("baseline", 2, True, 1, 2, embedding_per_process=[{"weights": 3 * GIB, "optimizer": 3 * GIB}])
    assert predict(small, cfg, mem)[0]
    ok, reason, _ = predict(big, cfg, mem)
    assert not ok and "skipped" in reason and "7.0 GiB" in reason
    assert big.predicted_peak_per_process == [7 * GIB]


def _meta_small(num_items: int = 100_000) -> MARNTrain:
    model = MARNTrain(MARN(model_config("small", num_items), device=META))
    apply_embedding_optimizer(model, lr=0.1)
    return model


def test_column_wise_plan_bytes_per_rank() -> None:
    model = _meta_small()
    shapes = table_shapes(model)
    plan = make_plan(model, 2, "cpu", COLUMN_WISE)
    per_rank = plan_bytes_per_rank(plan, shapes, 2)
    total = sum(r * c * e for r, c, e in shapes.values())
    assert sum(p["weights"] for p in per_rank) == total
    # Every small-preset table is 8k wide: two column shards, each with its own row-wise state.
    assert sum(p["optimizer"] for p in per_rank) == 2 * 4 * sum(r for r, _, _ in shapes.values())
    assert imbalance([p["weights"] + p["optimizer"] for p in per_rank]) < GOAL_MEMORY_BALANCE
    for module_plan in plan.plan.values():
        for ps in module_plan.values():
            assert ps.sharding_type == "column_wise" and ps.compute_kernel == "fused"
            assert sorted(s.placement.rank() for s in ps.sharding_spec.shards) == [0, 1]


def test_table_wise_plan_bytes_per_rank() -> None:
    model = _meta_small()
    shapes = table_shapes(model)
    plan = make_plan(model, 2, "cpu", TABLE_WISE)
    per_rank = plan_bytes_per_rank(plan, shapes, 2)
    assert sum(p["weights"] for p in per_rank) == sum(r * c * e for r, c, e in shapes.values())
    assert sum(p["optimizer"] for p in per_rank) == 4 * sum(r for r, _, _ in shapes.values())
    # The item table is one shard on one rank: table-wise cannot balance it.
    item_rows, item_dim, _ = shapes["t_item_id"]
    assert max(p["weights"] for p in per_rank) >= item_rows * item_dim * 4



@pytest.mark.parametrize("sharding_type", [COLUMN_WISE, TABLE_WISE])
def test_replicated_small_tables_in_the_plans(sharding_type: str) -> None:
    """``replicate_max_rows``: exactly the pooled tables that small are data-parallel (dense kernel,
    a full replica on every rank); the item table and the title words' sequence table are not."""
    from marn_rec.training.sharding import replicated_tables

    model = _meta_small()
    shapes = table_shapes(model)
    expected = {t for t, (rows, _, _) in shapes.items() if rows <= 5000 and t != "t_title_words"}
    assert set(replicated_tables(model, 5000)) == expected and "t_shop_id" in expected
    plan = make_plan(model, 2, "cpu", sharding_type, replicate_max_rows=5000)
    kinds = {t: ps for module_plan in plan.plan.values() for t, ps in module_plan.items()}
    assert {t for t, ps in kinds.items() if ps.sharding_type == "data_parallel"} == expected
    assert all(kinds[t].compute_kernel == "dense" for t in expected)
    assert kinds["t_item_id"].sharding_type == sharding_type
    assert kinds["t_title_words"].sharding_type != "data_parallel"
    per_rank = plan_bytes_per_rank(plan, shapes, 2)
    replica = sum(r * c * e for t, (r, c, e) in shapes.items() if t in expected)
    total = sum(r * c * e for r, c, e in shapes.values())
    assert sum(p["weights"] for p in per_rank) == total + replica  # one more copy of each replica
    assert set(replicated_tables(model, 0)) == set()

def test_even_column_split_respects_fbgemm_multiple_of_4() -> None:
    assert column_shards(32, 2) == 2
    assert column_shards(8, 4) == 2  # 4 columns per shard at least
    assert column_shards(4, 2) == 1
    assert column_shards(24, 4) == 3
    model = MARNTrain(MARN(model_config("tiny", 100), device=META))
    apply_embedding_optimizer(model, lr=0.1)
    shapes = table_shapes(model)
    per_rank = plan_bytes_per_rank(make_plan(model, 4, "cpu", COLUMN_WISE), shapes, 4)
    assert sum(p["weights"] for p in per_rank) == sum(r * c * e for r, c, e in shapes.values())


def test_imbalance() -> None:
    assert imbalance([5, 5]) == 0.0
    assert imbalance([10, 0]) == 1.0
    assert imbalance([0, 0]) == 0.0
