"""Sharding MARN with TorchRec: optimizers, planner constraints, DistributedModelParallel.

Paper 4.1 trains everything with AdaGrad at lr 0.1. Tables get FBGEMM's fused row-wise AdaGrad
(``apply_optimizer_in_backward(RowWiseAdagrad)``: DMP turns it into the TBE kernels' fused update,
and on an unsharded model it runs the same update in the backward hooks, so with table-wise (or
row-wise) sharding a sharded and an unsharded run train identically. Column-wise sharding keeps one
row-wise accumulator per column shard, a slightly different optimizer. Dense parameters get
``torch.optim.Adagrad``.

Small pooled tables can be replicated instead (``replicate_max_rows``: TorchRec's ``data_parallel``
sharding, which its planner picks for small tables on GPUs). Their lookups then need no all-to-all
at all, and their gradients join DDP's all-reduce of the dense ones. TorchRec gives replicated
tables a plain (non-fused) kernel and drops their in-backward optimizer, so
:func:`training_optimizer` steps them with the optimizer they were given (``RowWiseAdagrad``:
TorchRec's dense implementation of FBGEMM's update) after the all-reduce. DDP averages their
gradients over ranks as TorchRec's sharded tables do, so a replicated table trains as a table-wise
one does (``tests/test_distributed.py``).
"""

import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from marn_rec.modules.candidate_attention import CandidateAttention
from marn_rec.modules.maf import MultimodalAttentionFusion

# FBGEMM's row-wise AdaGrad default; set explicitly so the unsharded reference matches it.
ADAGRAD_EPS = 1e-8

# gloo has no reduce-scatter, which row-wise (and table-row-wise) sharding needs on CPU.
CPU_SHARDING_TYPES: Tuple[str, ...] = (
    ShardingType.TABLE_WISE.value,
    ShardingType.COLUMN_WISE.value,
)


def embedding_tables(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Every EmbeddingBagCollection / EmbeddingCollection of ``model``, by qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, (EmbeddingBagCollection, EmbeddingCollection)):
            yield name, module


def table_dims(model: nn.Module) -> Dict[str, int]:
    """Embedding dim of every table of ``model``, by table name (the planner's parameter names)."""
    dims = {}
    for _, module in embedding_tables(model):
        configs = (
            module.embedding_bag_configs()
            if isinstance(module, EmbeddingBagCollection)
            else module.embedding_configs()
        )
        dims.update({c.name: c.embedding_dim for c in configs})
    return dims


def table_names(model: nn.Module) -> List[str]:
    """Names of all embedding tables of ``model``."""
    return list(table_dims(model))


def replicated_tables(model: nn.Module, max_rows: int) -> List[str]:
    """Tables of ``model``'s EmbeddingBagCollections with at most ``max_rows`` rows (0: none): those
    that :func:`plan_sharding` replicates. Sequence tables (EmbeddingCollection) stay sharded:
    TorchRec 1.8's data-parallel EmbeddingCollection failed on our deduplicated item tower
    (``split_with_sizes`` of the title words against the unique items)."""
    if max_rows <= 0:
        return []
    return [
        config.name
        for _, module in embedding_tables(model)
        if isinstance(module, EmbeddingBagCollection)
        for config in module.embedding_bag_configs()
        if config.num_embeddings <= max_rows
    ]


def column_shards(dim: int, world_size: int) -> int:
    """Most column shards (<= world_size) that split ``dim`` into equal multiples of 4 columns
    (FBGEMM's kernels need every shard's width divisible by 4)."""
    for k in range(world_size, 0, -1):
        if dim % k == 0 and (dim // k) % 4 == 0:
            return k
    return 1


def apply_embedding_optimizer(
    model: nn.Module,
    lr: float = 0.1,
    optimizer_class: Type[torch.optim.Optimizer] = RowWiseAdagrad,
    **kwargs: Any,
) -> None:
    """An optimizer fused into the backward pass for every embedding table of ``model``.

    Row-wise AdaGrad by default (paper 4.1, with FBGEMM's ``eps``); any optimizer that TorchRec maps
    to an FBGEMM kernel works (``torch.optim.SGD`` for tests that need a scale-sensitive update).
    Call before DistributedModelParallel, which reads it to configure the FBGEMM kernels.
    """
    if optimizer_class is RowWiseAdagrad:
        kwargs.setdefault("eps", ADAGRAD_EPS)
    for _, module in embedding_tables(model):
        apply_optimizer_in_backward(optimizer_class, module.parameters(), {"lr": lr, **kwargs})


# TensorFlow's AdaGrad default, which a 2019 implementation of the paper would have had. With
# torch's default of 0 the first step moves every weight by lr (0.1) whatever its gradient, and on
# 256-wide layers the CTR loss spikes to hundreds in the first steps (measured on the small preset).
ADAGRAD_INITIAL_ACCUMULATOR = 0.1

# APGRU's candidate attention alone starts from plain AdaGrad (Duchi et al., which the paper
# cites: no initial sum). Its gradients are about 1e-8 at initialisation and 1e-5 to 1e-4 for the
# first hundreds of steps, two to four orders below the rest (a softmax over ~40 near-equal
# scores, of states that barely differ yet). From a sum of 0.1 that is SGD at lr / 0.32 on them,
# and the attention stays uniform: on MovieLens-100K it put 0.046 on the latest behaviour after 3
# epochs (uniform: 0.028) and cost MARN 3.5 AUC points against the last state. From 0 each weight
# steps by lr * g / sqrt(sum g^2), whatever the gradient's scale (benchmarks/RESULTS.md, "The
# candidate attention's optimizer").
ATTENTION_INITIAL_ACCUMULATOR = 0.0


def initial_accumulator_problem(value: Any) -> Optional[str]:
    """Why ``value`` cannot start AdaGrad's sums (the end of a message), or None when it can."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
        return None
    return f"must be a finite number >= 0, got {value}"


def dense_optimizer(
    model: nn.Module,
    lr: float = 0.1,
    optimizer_class: Type[torch.optim.Optimizer] = torch.optim.Adagrad,
    **kwargs: Any,
) -> KeyedOptimizerWrapper:
    """AdaGrad (by default) over the parameters that no in-backward optimizer owns, replicated
    tables excepted (see :func:`training_optimizer`)."""
    if optimizer_class is torch.optim.Adagrad:
        kwargs.setdefault("initial_accumulator_value", ADAGRAD_INITIAL_ACCUMULATOR)
    params: Dict[str, nn.Parameter] = {
        name: p
        for name, p in in_backward_optimizer_filter(model.named_parameters())
        if not hasattr(p, REPLICATED_OPTIMIZER)
    }
    return KeyedOptimizerWrapper(params, lambda ps: optimizer_class(ps, lr=lr, **kwargs))


# Set by :func:`shard_model` on the parameter of each replicated table: (optimizer class, kwargs)
# as ``apply_embedding_optimizer`` gave them to the unsharded table.
REPLICATED_OPTIMIZER = "_marn_replicated_optimizer"


def replicated_optimizer(model: nn.Module) -> Optional[CombinedOptimizer]:
    """The replicated tables' optimizers (one per optimizer setting), or None without any."""
    groups: Dict[str, Tuple[Type[torch.optim.Optimizer], Dict[str, Any], Dict[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        spec = getattr(p, REPLICATED_OPTIMIZER, None)
        if spec is not None:
            cls, kwargs = spec
            key = f"{cls.__name__}{sorted(kwargs.items())}"
            groups.setdefault(key, (cls, kwargs, {}))[2][name] = p
    if not groups:
        return None
    return CombinedOptimizer([
        KeyedOptimizerWrapper(params, lambda ps, cls=cls, kwargs=kwargs: cls(ps, **kwargs))
        for cls, kwargs, params in groups.values()
    ])


def candidate_attention_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of the candidate attentions (APGRU's, paper 3.4.1) in ``model``."""
    return [p for m in model.modules() if isinstance(m, CandidateAttention) for p in m.parameters()]


def fusion_attention_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The parameters of MAF's attention (eq. 3: ``W_m``, ``b_m``) in ``model``."""
    return [p for m in model.modules() if isinstance(m, MultimodalAttentionFusion) for p in m.parameters()]


def _start_sums(dense: KeyedOptimizerWrapper, params: List[nn.Parameter], value: Optional[float]) -> None:
    """AdaGrad's summed squared gradients of ``params`` start at ``value`` (None: unchanged)."""
    if value is None:
        return
    for p in params:
        if p in dense.state and "sum" in dense.state[p]:
            dense.state[p]["sum"].fill_(value)


def training_optimizer(
    model: nn.Module,
    lr: float = 0.1,
    optimizer_class: Type[torch.optim.Optimizer] = torch.optim.Adagrad,
    fused: bool = False,
    initial_accumulator_value: Optional[float] = None,
    attention_initial_accumulator: Optional[float] = ATTENTION_INITIAL_ACCUMULATOR,
    fusion_initial_accumulator: Optional[float] = None,
) -> CombinedOptimizer:
    """One optimizer over everything: the fused table optimizer (sharded models) and dense AdaGrad.

    Step it after ``backward``; the table part has already been applied inside the backward.
    ``fused``: the dense optimizer's fused kernel (``torch.optim.Adagrad(fused=True)``, one
    kernel over all parameters instead of a Python loop over them: the same update, rounded
    differently in the last bit); the default keeps the for-loop implementation.
    ``initial_accumulator_value``: the dense AdaGrad's (default :data:`ADAGRAD_INITIAL_ACCUMULATOR`).
    ``attention_initial_accumulator``: the same for the parameters of every
    :class:`~marn_rec.modules.candidate_attention.CandidateAttention` (default
    :data:`ATTENTION_INITIAL_ACCUMULATOR`; None: as the other dense ones).
    ``fusion_initial_accumulator``: the same for MAF's attention (eq. 3; default None: as the
    other dense ones; benchmarks/RESULTS.md, "What eq. 3's gate can see"). Only the starting sums
    differ: the optimizer, its groups and its checkpointed state keep their shape, so checkpoints
    from either setting load into the other.
    """
    kwargs: Dict[str, Any] = {"fused": True} if fused else {}
    if initial_accumulator_value is not None:
        kwargs["initial_accumulator_value"] = initial_accumulator_value
    dense = dense_optimizer(model, lr, optimizer_class, **kwargs)
    _start_sums(dense, candidate_attention_parameters(model), attention_initial_accumulator)
    _start_sums(dense, fusion_attention_parameters(model), fusion_initial_accumulator)
    optimizers = [("dense", dense)]
    replicated = replicated_optimizer(model)
    if replicated is not None:  # (absent without replicated tables: checkpoints keep their keys)
        optimizers.insert(0, ("replicated", replicated))
    if isinstance(model, DistributedModelParallel):
        optimizers.insert(0, ("sparse", model.fused_optimizer))
    return CombinedOptimizer(optimizers)


def sharding_constraints(
    model: nn.Module,
    sharding_types: Optional[Sequence[str]],
    world_size: int = 1,
    replicate_max_rows: int = 0,
) -> Dict[str, ParameterConstraints]:
    """The same allowed sharding types for every table of ``model`` (None: the planner's choice),
    except that the pooled tables of at most ``replicate_max_rows`` rows are replicated
    (``data_parallel``).

    TorchRec's planner never cuts a table into column shards narrower than 128 columns, so
    column-wise would leave MARN's 8- to 300-wide tables whole; where column-wise is allowed the
    minimum shard width is set so that a table can split over up to ``world_size`` ranks.
    """
    replicated = set(replicated_tables(model, replicate_max_rows))
    constraints = {
        name: ParameterConstraints(sharding_types=[ShardingType.DATA_PARALLEL.value])
        for name in replicated
    }
    if not sharding_types:
        return constraints
    for name, dim in table_dims(model).items():
        if name in replicated:
            continue
        shards = column_shards(dim, world_size)
        min_partition = (
            dim // shards
            if ShardingType.COLUMN_WISE.value in sharding_types and shards > 1
            else None
        )
        constraints[name] = ParameterConstraints(
            sharding_types=list(sharding_types), min_partition=min_partition
        )
    return constraints


def plan_sharding(
    model: nn.Module,
    pg: dist.ProcessGroup,
    compute_device: str,
    sharding_types: Optional[Sequence[str]] = None,
    batch_size: int = 1024,
    replicate_max_rows: int = 0,
) -> ShardingPlan:
    """TorchRec's planner over the ranks of ``pg``; on CPU limited to :data:`CPU_SHARDING_TYPES`.
    Pooled tables of at most ``replicate_max_rows`` rows are replicated (0: none)."""
    if sharding_types is None and compute_device == "cpu":
        sharding_types = CPU_SHARDING_TYPES
    world_size = dist.get_world_size(pg)
    constraints = sharding_constraints(model, sharding_types, world_size, replicate_max_rows) or None
    # torchrun's LOCAL_WORLD_SIZE: ranks per node, so that the planner's cost model tells intra-
    # from inter-node communication on more than one node.
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if local_world_size <= 0 or world_size % local_world_size:
        raise ValueError(
            f"LOCAL_WORLD_SIZE={local_world_size} does not divide the world size {world_size}"
        )
    planner = EmbeddingShardingPlanner(
        topology=Topology(
            world_size=world_size, compute_device=compute_device, local_world_size=local_world_size
        ),
        batch_size=batch_size,
        constraints=constraints,
    )
    return planner.collective_plan(model, None, pg)


def shard_model(
    model: nn.Module,
    device: torch.device,
    pg: Optional[dist.ProcessGroup] = None,
    sharding_types: Optional[Sequence[str]] = None,
    plan: Optional[ShardingPlan] = None,
    replicate_max_rows: int = 0,
) -> DistributedModelParallel:
    """Plans and wraps ``model`` (built on ``meta`` or CPU) in DistributedModelParallel.

    Call :func:`apply_embedding_optimizer` first. Dense parameters are replicated with DDP, and so
    are the pooled tables of at most ``replicate_max_rows`` rows (or those ``plan`` replicates);
    each replicated table's parameter is marked with the optimizer it was given, for
    :func:`training_optimizer`.
    """
    missing = [
        f"{path}.{name}"
        for path, module in embedding_tables(model)
        for name, p in module.named_parameters()
        if not hasattr(p, "_in_backward_optimizers")
    ]
    if missing:
        # Without it TorchRec picks the non-fused kernel, which crashed a column-wise gloo run.
        raise ValueError(
            f"embedding tables without an in-backward optimizer: {missing[:3]}; call "
            "marn_rec.training.sharding.apply_embedding_optimizer(model) before shard_model"
        )
    pg = pg or dist.GroupMember.WORLD
    if plan is None:
        plan = plan_sharding(model, pg, device.type, sharding_types, replicate_max_rows=replicate_max_rows)
    # The optimizer each table was given, by the parameter's name (DMP keeps the names).
    optimizers: Dict[str, Tuple[Type[torch.optim.Optimizer], Dict[str, Any]]] = {}
    for path, module in embedding_tables(model):
        module_plan = plan.plan.get(path, {})
        for name, p in module.named_parameters():
            table = name.split(".")[-2]
            sharding = module_plan.get(table)  # type: ignore[union-attr]
            if sharding is not None and sharding.sharding_type == ShardingType.DATA_PARALLEL.value:
                optimizers[f"{path}.{name}"] = (p._optimizer_classes[0], dict(p._optimizer_kwargs[0]))
    dmp = DistributedModelParallel(module=model, device=device, plan=plan)
    for name, p in dmp.named_parameters():
        if name in optimizers:
            setattr(p, REPLICATED_OPTIMIZER, optimizers.pop(name))
    if optimizers:
        raise RuntimeError(f"replicated tables not found after sharding: {sorted(optimizers)}")
    return dmp


@torch.no_grad()
def load_unsharded_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Copies an unsharded model's ``state_dict`` into a sharded one, shard by shard.

    (``torchrec.distributed.test_utils.test_sharding.copy_state_dict`` does this too, but that
    module imports TorchRec's test package, which the wheel does not ship.)
    """
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    local = model.state_dict()
    missing = sorted(set(local) - set(state))
    if missing:
        raise ValueError(f"state has no entry for {missing[:5]}{'...' if len(missing) > 5 else ''}")
    for name, target in local.items():
        source = state[name]
        if isinstance(target, ShardedTensor):
            if list(source.shape) != list(target.size()):
                raise ValueError(f"{name}: global shape {list(target.size())}, got {list(source.shape)}")
            for shard in target.local_shards():
                index = tuple(
                    slice(o, o + s)
                    for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes)
                )
                shard.tensor.copy_(source[index])
        elif isinstance(target, torch.Tensor):
            if target.shape != source.shape:
                raise ValueError(f"{name}: shape {list(target.shape)}, got {list(source.shape)}")
            target.copy_(source)
        else:
            raise ValueError(f"{name}: unsupported state type {type(target).__name__}")


def plan_summary(plan: ShardingPlan) -> str:
    """One line per table: sharding type, compute kernel and the ranks that hold it."""
    lines = []
    for path, tables in plan.plan.items():
        for table, p in tables.items():  # type: ignore[union-attr]
            lines.append(f"{path}.{table}: {p.sharding_type} {p.compute_kernel} ranks {p.ranks}")
    return "\n".join(lines)
