"""Sharding plans of the benchmark runs and the embedding bytes each process holds under them,
computed before anything is allocated (on a meta-device model, without a process group)."""

from typing import Dict, List, Sequence, Tuple

from torch import nn

from marn_rec.benchmarks.config import COLUMN_WISE

_DTYPE_BYTES = {"FP32": 4, "FP16": 2, "BF16": 2, "INT8": 1, "FP8": 1, "INT4": 1, "INT2": 1}


def table_shapes(model: nn.Module) -> Dict[str, Tuple[int, int, int]]:
    """Table name -> (rows, columns, bytes per element) of every TorchRec table of ``model``."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from marn_rec.training.sharding import embedding_tables

    shapes: Dict[str, Tuple[int, int, int]] = {}
    for _, module in embedding_tables(model):
        configs = (
            module.embedding_bag_configs()
            if isinstance(module, EmbeddingBagCollection)
            else module.embedding_configs()
        )
        for c in configs:
            shapes[c.name] = (c.num_embeddings, c.embedding_dim, _DTYPE_BYTES.get(c.data_type.name, 4))
    return shapes


def make_plan(model: nn.Module, world_size: int, device_type: str, sharding_type: str, batch_size: int = 1024,
              replicate_max_rows: int = 0):
    """The sharding plan of a benchmark run (computed without a process group).

    ``column_wise``: every table in equal column blocks over as many ranks as its width allows
    (FBGEMM needs multiples of 4 columns), so that each rank holds ~1/N of every table.
    Otherwise TorchRec's planner restricted to ``sharding_type`` (what ``shard_model`` would do).
    Either way the pooled tables of at most ``replicate_max_rows`` rows are replicated
    (``data_parallel``), as ``shard_model(..., replicate_max_rows=...)`` does.
    """
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        data_parallel,
        get_default_sharders,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    from marn_rec.training.sharding import column_shards, embedding_tables, replicated_tables, sharding_constraints

    replicated = set(replicated_tables(model, replicate_max_rows))
    if sharding_type == COLUMN_WISE:
        plans = {}
        next_rank = 0
        for path, module in embedding_tables(model):
            per_table = {}
            for name, param in module.named_parameters():
                table = name.split(".")[-2]
                k = column_shards(param.shape[1], world_size)
                ranks = [(next_rank + j) % world_size for j in range(k)]
                next_rank = (next_rank + k) % world_size
                if table in replicated:
                    per_table[table] = data_parallel()
                    continue
                per_table[table] = column_wise(ranks=ranks) if k > 1 else table_wise(rank=ranks[0])
            plans[path] = construct_module_sharding_plan(
                module, per_table, local_size=world_size, world_size=world_size, device_type=device_type
            )
        return ShardingPlan(plans)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device_type, local_world_size=world_size),
        batch_size=batch_size,
        constraints=sharding_constraints(model, [sharding_type], replicate_max_rows=replicate_max_rows),
    )
    return planner.plan(model, get_default_sharders())


def plan_bytes_per_rank(
    plan, shapes: Dict[str, Tuple[int, int, int]], world_size: int, optimizer_state_bytes_per_row: int = 4
) -> List[Dict[str, int]]:
    """Per rank: ``weights`` (sum of the local table shards) and ``optimizer`` (row-wise AdaGrad
    keeps one fp32 per row of each shard, so ``rows * 4`` bytes per shard) in bytes.

    ``shapes`` maps table name -> (rows, columns, bytes per element), see :func:`table_shapes`.
    A data-parallel table counts in full on every rank.
    """
    out = [{"weights": 0, "optimizer": 0} for _ in range(world_size)]
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():
            rows, cols, elem = shapes[table]
            if ps.sharding_spec is None:  # data parallel: a full replica everywhere
                for r in range(world_size):
                    out[r]["weights"] += rows * cols * elem
                    out[r]["optimizer"] += rows * optimizer_state_bytes_per_row
                continue
            for shard in ps.sharding_spec.shards:
                r = shard.placement.rank()
                shard_rows, shard_cols = shard.shard_sizes
                out[r]["weights"] += shard_rows * shard_cols * elem
                out[r]["optimizer"] += shard_rows * optimizer_state_bytes_per_row
    return out


def baseline_embedding_bytes(shapes: Dict[str, Tuple[int, int, int]]) -> Dict[str, int]:
    """The unsharded model: every table, and ``torch.optim.Adagrad``'s dense ``sum`` (same size)."""
    weights = sum(r * c * e for r, c, e in shapes.values())
    return {"weights": weights, "optimizer": weights}


def imbalance(per_rank: Sequence[int]) -> float:
    """max_r |bytes_r - total/N| / (total/N): 0 for a perfectly even split."""
    total = sum(per_rank)
    if total == 0:
        return 0.0
    even = total / len(per_rank)
    return max(abs(b - even) for b in per_rank) / even
