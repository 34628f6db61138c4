"""MARN under DistributedModelParallel on 2 gloo processes (CPU).

Each test spawns one pair of processes with TorchRec's ``run_multi_process_func``. The workers do
all collectives first and return plain numbers; the assertions run in the pytest process, so a
failed check on one rank can never leave the other waiting in a collective.

Reference semantics: DDP averages the dense gradients over ranks and TorchRec's sharded tables
divide their gradients by the world size, so one DMP step over the per-rank batches equals one
unsharded step on ``mean_r(loss(batch_r))``.
"""

import math
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.sharding_plan import column_wise, construct_module_sharding_plan
from torchrec.distributed.test_utils.multi_process import run_multi_process_func
from torchrec.distributed.types import ShardingPlan
from torchrec.optim import RowWiseAdagrad

from marn_rec import MARN, MARNBatch, MARNTrain, ablation, build_batch, tiny
from marn_rec.config import MARNConfig
from marn_rec.training.sharding import (
    apply_embedding_optimizer,
    embedding_tables,
    load_unsharded_state_dict,
    shard_model,
    table_names,
    training_optimizer,
)
from marn_rec.testing import RandomCatalog, random_batch

pytestmark = pytest.mark.distributed

WORLD_SIZE = 2
LR = 0.1
# MARNTrain owns eq. 10's lambda schedule; the tests hold it at its end (lambda = lambda0 > 0) so
# that the adversarial losses take part in the gradients, the same for DMP and reference.
SCHEDULE_END = 10**6
STEPS = 3
# Rank r trains on batches of BATCH_SIZES[r] samples: ranks differ in B and in unique items U.
BATCH_SIZES = (8, 6)
CPU = torch.device("cpu")
META = torch.device("meta")


# ----------------------------------------------------------------------------------- harness


def _forward(model: nn.Module, batch: MARNBatch):
    """``model(batch)`` with the lambda schedule at its end (see SCHEDULE_END)."""
    train = getattr(model, "module", model)  # DMP -> MARNTrain
    train.step.fill_(SCHEDULE_END)
    return model(batch)


def _spawn(monkeypatch: pytest.MonkeyPatch, func: Callable[..., Any], **kwargs: Any) -> List[Any]:
    """``func(rank=r, world_size=2, **kwargs)`` in 2 spawned processes; their return values.

    ``run_multi_process_func`` writes MASTER_ADDR/PORT etc. into this process's environment and
    sets torch's deterministic-algorithms flag here: both are restored/kept as they were.
    """
    for key in ("MASTER_ADDR", "MASTER_PORT", "GLOO_DEVICE_TRANSPORT", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(key, "")  # records the old value (or absence) for teardown
    return run_multi_process_func(
        func,
        multiprocessing_method="spawn",
        use_deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        world_size=WORLD_SIZE,
        **kwargs,
    )


@contextmanager
def _process_group(rank: int, world_size: int) -> Iterator[dist.ProcessGroup]:
    """gloo group with a short timeout: a rank that dies cannot hang the other one for long."""
    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)  # 2 processes on 2 cores
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _reference_and_dmp(
    config: MARNConfig,
    pg: dist.ProcessGroup,
    sharding_types: Optional[Sequence[str]] = None,
    embedding_optimizer: type = RowWiseAdagrad,
    seed: int = 0,
    replicate_max_rows: int = 0,
) -> Tuple[MARNTrain, nn.Module]:
    """An unsharded model built on CPU from ``seed``, and a DMP model built on meta with its
    weights. ``sharding_types=None``: the planner's choice among the CPU sharding types; pooled
    tables of at most ``replicate_max_rows`` rows replicated."""
    torch.manual_seed(seed)
    reference = MARNTrain(MARN(config))
    apply_embedding_optimizer(reference, lr=LR, optimizer_class=embedding_optimizer)
    model = MARNTrain(MARN(config, device=META))
    apply_embedding_optimizer(model, lr=LR, optimizer_class=embedding_optimizer)
    plan = None
    if sharding_types is not None and list(sharding_types) == ["column_wise"]:
        plan = _column_wise_plan(model, dist.get_world_size(pg))
    dmp = shard_model(
        model, CPU, pg, sharding_types=sharding_types, plan=plan, replicate_max_rows=replicate_max_rows
    )
    load_unsharded_state_dict(dmp, reference.state_dict())
    return reference, dmp


def _column_wise_plan(model: nn.Module, world_size: int) -> ShardingPlan:
    """Column-wise over all ranks, built with TorchRec's ``column_wise`` generator.

    The planner would keep tiny()'s narrow tables in one column shard (column-wise in name only).
    ``column_wise`` splits a table into blocks of at least 4 columns (FBGEMM's kernels need that),
    so the 8-d item table gets one half on each rank and the 4-d tables stay whole on rank 0.
    """
    plans = {}
    for path, module in embedding_tables(model):
        tables = [name for name, _ in module.named_parameters()]
        plans[path] = construct_module_sharding_plan(
            module,
            {t.split(".")[-2]: column_wise(ranks=list(range(world_size))) for t in tables},
            local_size=world_size,
            world_size=world_size,
            device_type="cpu",
        )
    return ShardingPlan(plans)


def _table_keys(model: nn.Module) -> List[str]:
    """state_dict keys of the embedding tables of an unsharded model."""
    return sorted(
        f"{path}.{key}" for path, module in embedding_tables(model) for key in module.state_dict()
    )


def _state_max_diff(dmp: nn.Module, ref_state: Dict[str, torch.Tensor]) -> Dict[str, float]:
    """Max |dmp - ref_state| over this rank's part of every state entry (tables: local shards)."""
    diffs = {}
    for name, value in dmp.state_dict().items():
        source = ref_state[name]
        if isinstance(value, ShardedTensor):
            diff = 0.0
            for shard in value.local_shards():
                index = tuple(
                    slice(o, o + s)
                    for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                )
                diff = max(diff, (shard.tensor - source[index]).abs().max().item())
        else:
            diff = (value - source).abs().max().item() if value.numel() else 0.0
        diffs[name] = diff
    return diffs


def _dmp_and_reference_step(
    dmp: nn.Module,
    reference: MARNTrain,
    optimizer: Any,
    reference_optimizer: Any,
    batches: List[MARNBatch],
    rank: int,
) -> Tuple[float, float, float]:
    """One step of both, the reference on the mean of all ranks' losses.

    Returns (DMP loss, reference loss, max |logit difference|) on this rank's batch.
    """
    loss, (_, logits, _) = _forward(dmp, batches[rank])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    outputs = [_forward(reference, b) for b in batches]
    (sum(o[0] for o in outputs) / len(batches)).backward()
    reference_optimizer.step()
    reference_optimizer.zero_grad()
    ref_loss, (_, ref_logits, _) = outputs[rank]
    return loss.item(), ref_loss.item(), (logits - ref_logits).abs().max().item()


def _parity_batches(config: MARNConfig, world_size: int) -> List[List[MARNBatch]]:
    """STEPS steps of one batch per rank, ranks of different sizes (BATCH_SIZES)."""
    catalog = RandomCatalog(config)
    return [
        [random_batch(config, BATCH_SIZES[r], seed=100 * step + r, catalog=catalog) for r in range(world_size)]
        for step in range(STEPS)
    ]


def _trajectory(dmp: nn.Module, reference: MARNTrain, optimizer: Any, reference_optimizer: Any,
                batches: List[List[MARNBatch]], rank: int) -> Dict[str, Any]:
    """Both models trained on ``batches``: this rank's losses, the reference's, the logit
    differences per step, and the largest difference of this rank's state at the end."""
    steps = [
        _dmp_and_reference_step(dmp, reference, optimizer, reference_optimizer, b, rank) for b in batches
    ]
    return {
        "losses": [s[0] for s in steps],
        "reference_losses": [s[1] for s in steps],
        "logit_diffs": [s[2] for s in steps],
        "state_diff": max(_state_max_diff(dmp, reference.state_dict()).values()),
    }


# --------------------------------------------------------------------- parity with unsharded

# (name, table optimizer, dense optimizer). "paper" is section 4.1: row-wise AdaGrad for the
# tables (fused into TorchRec's kernels), AdaGrad for the dense parameters.
OPTIMIZERS = (
    ("sgd", torch.optim.SGD, torch.optim.SGD),
    ("rowwise_tables", RowWiseAdagrad, torch.optim.SGD),
    ("paper", RowWiseAdagrad, torch.optim.Adagrad),
)


def _parity_worker(rank: int, world_size: int, sharding_type: str) -> Dict[str, Any]:
    """The layout of the DMP model, then STEPS steps of DMP and reference per optimizer."""
    with _process_group(rank, world_size) as pg:
        config = tiny()
        batches = _parity_batches(config, world_size)
        out: Dict[str, Any] = {
            "unique_items": [[b.num_unique_items for b in step] for step in batches]
        }
        for name, embedding_optimizer, dense_optimizer in OPTIMIZERS:
            reference, dmp = _reference_and_dmp(
                config, pg, [sharding_type], embedding_optimizer=embedding_optimizer
            )
            if name == "sgd":  # the layout, once
                out["tables"] = table_names(reference)
                out["plan"] = {
                    table: (p.sharding_type, list(p.ranks or []))
                    for module_plan in dmp.plan.plan.values()
                    for table, p in module_plan.items()
                }
                out["table_keys"] = _table_keys(reference)
                state = dmp.state_dict()
                out["sharded_keys"] = sorted(
                    k for k, v in state.items() if isinstance(v, ShardedTensor)
                )
                out["local_shards"] = {
                    k: (list(v.size()), [list(s.tensor.shape) for s in v.local_shards()])
                    for k, v in state.items()
                    if isinstance(v, ShardedTensor)
                }
            optimizer = training_optimizer(dmp, LR, dense_optimizer)
            reference_optimizer = training_optimizer(reference, LR, dense_optimizer)
            out[name] = _trajectory(dmp, reference, optimizer, reference_optimizer, batches, rank)
        return out


@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_dmp_matches_unsharded_model(monkeypatch: pytest.MonkeyPatch, sharding_type: str) -> None:
    """DMP on 2 ranks == the unsharded model: same predictions from the same weights, and the
    same training trajectory (exactly with SGD, within stated tolerances with AdaGrad)."""
    results = _spawn(monkeypatch, _parity_worker, sharding_type=sharding_type)

    # Ranks see different batches: different sizes and numbers of unique items at every step.
    for step_counts in results[0]["unique_items"]:
        assert step_counts[0] != step_counts[1], step_counts

    # The tables really are sharded, the way asked, and their state entries are ShardedTensors.
    r0 = results[0]
    tables = r0["tables"]
    assert sorted(r0["plan"]) == sorted(tables)
    assert {kind for kind, _ in r0["plan"].values()} == {sharding_type}
    assert len(r0["table_keys"]) == len(tables)
    for result in results:
        assert result["sharded_keys"] == result["table_keys"]
    if sharding_type == "table_wise":
        # Each table whole on one rank, and the tables spread over both ranks.
        assert all(len(ranks) == 1 for _, ranks in r0["plan"].values())
        assert {ranks[0] for _, ranks in r0["plan"].values()} == set(range(WORLD_SIZE))
        for result in results:
            assert any(shards for _, shards in result["local_shards"].values())
            for size, shards in result["local_shards"].values():
                assert shards in ([], [size])
    else:
        # The 8-d item table is split over both ranks (the 4-d ones cannot be: FBGEMM needs column
        # shards of a multiple of 4): each rank holds all rows and half the columns.
        item_table = "t_item_id"
        assert r0["plan"][item_table][1] == list(range(WORLD_SIZE))
        for result in results:
            ((size, shards),) = (
                v for k, v in result["local_shards"].items() if f".{item_table}." in k
            )
            assert len(shards) == 1 and shards[0][0] == size[0] and shards[0][1] < size[1]

    for result in results:
        # Same initial weights, same predictions: the first step's logits and loss come before
        # any update.
        for name, _, _ in OPTIMIZERS:
            assert result[name]["logit_diffs"][0] < 1e-6, name
            assert result[name]["losses"][0] == pytest.approx(
                result[name]["reference_losses"][0], abs=1e-6
            ), name
        # SGD is linear in the gradient: sharded training follows the unsharded one to float
        # rounding, step after step, and ends with the same weights.
        sgd = result["sgd"]
        assert sgd["losses"] == pytest.approx(sgd["reference_losses"], abs=1e-5)
        assert max(sgd["logit_diffs"]) < 1e-5
        assert sgd["state_diff"] < 1e-5

        rowwise, paper = result["rowwise_tables"], result["paper"]
        if sharding_type == "table_wise":
            # FBGEMM's fused row-wise AdaGrad on a whole table == the unsharded in-backward one.
            assert rowwise["losses"] == pytest.approx(rowwise["reference_losses"], abs=1e-5)
            assert rowwise["state_diff"] < 1e-5
            # Dense AdaGrad divides by sqrt(sum g^2): for gradient entries that are zero up to
            # float noise (e.g. CandidateAttention's score bias, softmax is shift invariant) it
            # turns the rounding difference between DDP's all-reduced and the reference's summed
            # gradient into updates of up to +-lr. They sit in (near) output-invariant directions,
            # so the losses agree far better than the weights; 1e-3 leaves room for the drift.
            assert paper["losses"] == pytest.approx(paper["reference_losses"], abs=1e-3)
        else:
            # Row-wise AdaGrad keeps one accumulator per row *of each shard*: a column-wise shard
            # normalises by the mean g^2 over its own columns, not the whole row, so sharded and
            # unsharded updates differ from the first update on (~5e-4 in the logits after one
            # step, ~3e-3 in the loss after three with the paper's optimizers).
            assert rowwise["losses"] == pytest.approx(rowwise["reference_losses"], abs=1e-2)
            assert paper["losses"] == pytest.approx(paper["reference_losses"], abs=2e-2)
        for name in ("rowwise_tables", "paper"):
            assert all(math.isfinite(x) for x in result[name]["losses"]), name


# ---------------------------------------------------------------------- replicated small tables

REPLICATE_MAX_ROWS = 10  # tiny(): shop, brand, category, the 10-bucket statistics, both properties


def _replicated_worker(rank: int, world_size: int) -> Dict[str, Any]:
    """Table-wise DMP with the small pooled tables replicated, against the unsharded model."""
    from marn_rec.training.sharding import replicated_tables

    with _process_group(rank, world_size) as pg:
        config = tiny()
        batches = _parity_batches(config, world_size)
        out: Dict[str, Any] = {}
        for name, embedding_optimizer, dense_optimizer in OPTIMIZERS[1:]:
            reference, dmp = _reference_and_dmp(
                config, pg, ["table_wise"], embedding_optimizer, replicate_max_rows=REPLICATE_MAX_ROWS
            )
            out["expected"] = replicated_tables(reference, REPLICATE_MAX_ROWS)
            out["plan"] = {
                table: p.sharding_type for module_plan in dmp.plan.plan.values() for table, p in module_plan.items()
            }
            optimizer = training_optimizer(dmp, LR, dense_optimizer)
            out["optimizer_groups"] = sorted({k.split(".")[0] for k in optimizer.state_dict()["state"]})
            reference_optimizer = training_optimizer(reference, LR, dense_optimizer)
            out[name] = _trajectory(dmp, reference, optimizer, reference_optimizer, batches, rank)
            # The replicated tables, as this rank holds them after training (same on every rank?).
            out[name]["replicated"] = {
                k: v.clone() for k, v in dmp.state_dict().items()
                if not isinstance(v, ShardedTensor) and any(f".{t}." in k for t in out["expected"])
            }
        return out


def test_replicated_small_tables_train_as_table_wise_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """``replicate_max_rows``: the small pooled tables are data-parallel, the rest (and the sequence
    table) sharded; training follows the unsharded model as table-wise sharding does, and the
    replicated tables stay equal on both ranks."""
    results = _spawn(monkeypatch, _replicated_worker)
    r0 = results[0]
    expected = set(r0["expected"])
    assert expected == {"t_shop_id", "t_brand_id", "t_category_id", "t_stat0_b10", "t_stat1_b10",
                        "t_behavior_type", "t_behavior_time"}
    assert {t for t, kind in r0["plan"].items() if kind == "data_parallel"} == expected
    assert r0["plan"]["t_title_words"] == "table_wise" and r0["plan"]["t_item_id"] == "table_wise"
    assert "replicated" in r0["optimizer_groups"]
    for result in results:
        rowwise, paper = result["rowwise_tables"], result["paper"]
        assert rowwise["logit_diffs"][0] < 1e-6
        # Row-wise AdaGrad on a replicated table (TorchRec's dense RowWiseAdagrad after DDP's
        # average) == FBGEMM's fused one on the unsharded table.
        assert rowwise["losses"] == pytest.approx(rowwise["reference_losses"], abs=1e-5)
        assert rowwise["state_diff"] < 1e-5
        assert paper["losses"] == pytest.approx(paper["reference_losses"], abs=1e-3)
    for name in ("rowwise_tables", "paper"):
        tables = results[0][name]["replicated"]
        assert len(tables) == len(expected)
        for key, value in tables.items():
            torch.testing.assert_close(value, results[1][name]["replicated"][key], rtol=0, atol=0)


# --------------------------------------------------------------------------------- ablations

ABLATION_NAMES = ("BaseModel+IDs", "BaseModel+MAF+ADV")


def _ablation_worker(rank: int, world_size: int) -> Dict[str, Any]:
    with _process_group(rank, world_size) as pg:
        out: Dict[str, Any] = {}
        for name in ABLATION_NAMES:
            config = ablation(name, tiny())
            catalog = RandomCatalog(config)
            batches = [
                [
                    random_batch(config, BATCH_SIZES[r], seed=10 * step + r, catalog=catalog)
                    for r in range(world_size)
                ]
                for step in range(2)
            ]
            # Unsharded, no fused optimizer: every parameter must get a gradient, or DDP's static
            # graph would be built over unused parameters.
            torch.manual_seed(1)
            plain = MARNTrain(MARN(config))
            _forward(plain, batches[0][rank])[0].backward()
            unused = sorted(n for n, p in plain.named_parameters() if p.grad is None)

            reference, dmp = _reference_and_dmp(config, pg, seed=1)  # planner's CPU types
            initial = {k: v.clone() for k, v in reference.state_dict().items()}
            optimizer = training_optimizer(dmp, LR)
            reference_optimizer = training_optimizer(reference, LR)
            steps = [
                _dmp_and_reference_step(dmp, reference, optimizer, reference_optimizer, b, rank)
                for b in batches
            ]
            # What changed on this rank: dense parameters and the local shards of the tables.
            changed = {k: d > 0 for k, d in _state_max_diff(dmp, initial).items()}
            out[name] = {
                "unused": unused,
                "losses": [s[0] for s in steps],
                "first_logit_diff": steps[0][2],
                "tables": set(_table_keys(reference)),
                "changed": changed,
                "sharding_types": {
                    p.sharding_type
                    for module_plan in dmp.plan.plan.values()
                    for p in module_plan.values()
                },
            }
        return out


def test_ablations_train_under_dmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Table 3 ablations (other tables, no property embedding, one plain discriminator) shard and
    train for 2 steps: DDP's static graph finds no unused parameter, losses stay finite."""
    results = _spawn(monkeypatch, _ablation_worker)
    for name in ABLATION_NAMES:
        per_rank = [r[name] for r in results]
        for result in per_rank:
            assert result["unused"] == [], (name, result["unused"])
            assert result["sharding_types"] <= {"table_wise", "column_wise"}
            assert all(math.isfinite(x) for x in result["losses"]), (name, result["losses"])
            assert result["first_logit_diff"] < 1e-6, name
        # Every dense parameter and every table was updated (tables: on the rank(s) holding them).
        keys = per_rank[0]["changed"].keys()
        for key in keys:
            holders = [r["changed"][key] for r in per_rank]
            assert any(holders), (name, key)
            if key not in per_rank[0]["tables"]:
                assert all(holders), (name, key)


# ----------------------------------------------------------------------------- empty history


def _empty_history_worker(rank: int, world_size: int) -> Dict[str, Any]:
    with _process_group(rank, world_size) as pg:
        config = tiny()
        catalog = RandomCatalog(config)
        g = torch.Generator().manual_seed(rank)
        # Rank 0: users 0 and 3 have no behaviour at all. Rank 1: no user has any (N = 0).
        lengths = torch.tensor([0, 3, 2, 0]) if rank == 0 else torch.zeros(3, dtype=torch.long)
        n = int(lengths.sum())
        b = lengths.numel()
        batch = build_batch(
            candidate_items=torch.randint(0, config.tower.num_items, (b,), generator=g),
            history_items=torch.randint(0, config.tower.num_items, (n,), generator=g),
            history_lengths=lengths,
            behavior_types=torch.randint(
                0, config.behavior.num_behavior_types, (n,), generator=g
            ),
            behavior_time_buckets=torch.randint(
                0, config.behavior.num_time_buckets, (n,), generator=g
            ),
            labels=torch.tensor([1.0, 0.0, 1.0, 0.0][:b]),
            item_features=catalog.features,
        )
        reference, dmp = _reference_and_dmp(config, pg)
        with torch.no_grad():
            logits = _forward(dmp, batch)[1][1]
            reference_logits = _forward(reference, batch)[1][1]
        optimizer = training_optimizer(dmp, LR)
        loss = _forward(dmp, batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            after = _forward(dmp, batch)[1][1]
        return {
            "empty": (lengths == 0).tolist(),
            "logits": logits.tolist(),
            "reference_logits": reference_logits.tolist(),
            "loss": loss.item(),
            "logits_after_step": after.tolist(),
        }


def test_empty_history_users_get_finite_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users without behaviours (some, or every user of a rank) in sharded batches: finite
    predictions equal to the unsharded model's, and a finite training step."""
    results = _spawn(monkeypatch, _empty_history_worker)
    assert results[0]["empty"] == [True, False, False, True]
    assert all(results[1]["empty"])
    for result in results:
        assert all(math.isfinite(x) for x in result["logits"] + result["logits_after_step"])
        assert result["logits"] == pytest.approx(result["reference_logits"], abs=1e-6)
        assert math.isfinite(result["loss"])


def test_column_wise_constraints_let_the_planner_split_narrow_tables() -> None:
    from marn_rec.training.sharding import sharding_constraints

    model = MARN(tiny())
    cons = sharding_constraints(model, ["column_wise"], world_size=2)
    assert cons["t_item_id"].min_partition == 4  # 8 columns -> two shards of 4
    assert cons["t_shop_id"].min_partition is None  # 4 columns cannot split
    assert sharding_constraints(model, ["table_wise"], 2)["t_item_id"].min_partition is None


def test_shard_model_requires_the_fused_optimizer() -> None:
    from marn_rec.training.sharding import shard_model

    with pytest.raises(ValueError, match="apply_embedding_optimizer"):
        shard_model(MARNTrain(MARN(tiny(), device=torch.device("meta"))), torch.device("cpu"))
