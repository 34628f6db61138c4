"""Training throughput of MARN: sharded (DistributedModelParallel) against an unsharded baseline,
and APGRU against ``torch.nn.GRU``.

``benchmarks/qps.py`` and ``benchmarks/apgru.py`` are thin command lines over :func:`qps_main` and
:func:`apgru_main`. What is measured (all in one run, side by side):

* **baseline**: ``MARNTrain(MARN(cfg))`` in one process, the TorchRec collections left unsharded
  with ``.sparse = True`` on their ``nn.EmbeddingBag`` / ``nn.Embedding`` modules and
  ``torch.optim.Adagrad`` (sparse gradients) for them, ``torch.optim.Adagrad`` for the dense
  parameters, lr 0.1.
* **sharded**: the same model under DistributedModelParallel over ``world_size`` processes (gloo
  on CPU, NCCL on GPU), FBGEMM's fused table-batched kernels with the fused row-wise AdaGrad
  (:func:`marn_rec.training.sharding.apply_embedding_optimizer`, :func:`~marn_rec.training.sharding.shard_model`,
  :func:`~marn_rec.training.sharding.training_optimizer`), one run per sharding type. Table-wise and
  row-wise plans come from TorchRec's planner restricted to that type; the column-wise plan splits
  every table into ``world_size`` equal column blocks (TorchRec's ``column_wise`` generator), because
  the planner keeps 32-d tables whole (its column shards are at least 128 wide by default).

Every run is a fresh set of processes (peak memory is per run), all on the same pre-generated
batches (data generation is timed separately, in the parent). Each process uses the same
per-process batch; rank ``r`` starts ``r`` batches into the shared pool.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

GIB = 1 << 30
MIB = 1 << 20

BASELINE = "baseline"
TABLE_WISE = "table_wise"
COLUMN_WISE = "column_wise"
ROW_WISE = "row_wise"
CPU_SHARDING_TYPES = (TABLE_WISE, COLUMN_WISE)  # gloo has no reduce-scatter for row-wise
GPU_SHARDING_TYPES = (TABLE_WISE, COLUMN_WISE, ROW_WISE)

# Goals of issue 4, checked as ratios from one run.
GOAL_SHARDED_SPEEDUP = 1.5
GOAL_DEDUP_SPEEDUP = 3.0
GOAL_APGRU_RATIO = 1.2
GOAL_MEMORY_BALANCE = 0.05

# DESIGN.md, "Behaviour sequences and cost": 2-core machine, torch 2.13 CPU, B=1024, T=50, 64-d,
# forward+backward, milliseconds.
DESIGN_APGRU_MS = {
    "torch.nn.GRU": 95.0,
    "gate loop indexing gi[t]": 713.0,
    "gate loop over gi.unbind(0)": 103.0,
    "torch.compile of the loop (after a 74 s compile)": 136.0,
}


# ============================================================================ machine, memory


def machine_info() -> Dict[str, Any]:
    """What the markdown section states about the machine and software."""
    import fbgemm_gpu  # noqa: F401  (version below)
    import torchrec

    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchrec": getattr(torchrec, "__version__", "?"),
        "fbgemm_gpu": getattr(sys.modules["fbgemm_gpu"], "__version__", "?"),
        "memory_total_bytes": _meminfo().get("MemTotal"),
        "memory_available_bytes": _meminfo().get("MemAvailable"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return info


def _meminfo() -> Dict[str, int]:
    out: Dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out


def available_memory_bytes() -> int:
    """Host memory available for new allocations now (``MemAvailable``)."""
    info = _meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Resets this process's peak resident set (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set of this process (``VmHWM``, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


# ============================================================================ model, tables, plans


def model_config(preset: str, num_items: int):
    """The preset's MARN with ``num_items`` rows in the item table."""
    from marn_rec.config import PRESETS

    cfg = PRESETS[preset]()
    return replace(cfg, tower=replace(cfg.tower, num_items=num_items))


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


def make_plan(model: nn.Module, world_size: int, device_type: str, sharding_type: str, batch_size: int = 1024):
    """The sharding plan of a benchmark run (computed without a process group).

    ``column_wise``: every table in equal column blocks over as many ranks as its width allows
    (FBGEMM needs multiples of 4 columns), so that each rank holds ~1/N of every table.
    Otherwise TorchRec's planner restricted to ``sharding_type`` (what ``shard_model`` would do).
    """
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import (
        column_wise,
        construct_module_sharding_plan,
        get_default_sharders,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    from marn_rec.training.sharding import column_shards, embedding_tables, sharding_constraints

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
                per_table[table] = column_wise(ranks=ranks) if k > 1 else table_wise(rank=ranks[0])
            plans[path] = construct_module_sharding_plan(
                module, per_table, local_size=world_size, world_size=world_size, device_type=device_type
            )
        return ShardingPlan(plans)
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=world_size, compute_device=device_type, local_world_size=world_size),
        batch_size=batch_size,
        constraints=sharding_constraints(model, [sharding_type]),
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


# Calibrated on this machine (small preset, B=1024): imports, dense model, batch pool, activations
# and allocator slack of one training process. Replaced by the measured value of the last
# successful run of the same kind once there is one (see ``MemoryModel``).
DEFAULT_PROCESS_OVERHEAD = int(1.25 * GIB)


@dataclass
class MemoryModel:
    """Predicts the peak resident memory of each process of a run before allocating it.

    ``peak = overhead + embedding weights + optimizer state``: the baseline holds every table
    and a full-size AdaGrad ``sum``; a sharded rank holds its shards and one float per shard row.
    ``overhead`` is :data:`DEFAULT_PROCESS_OVERHEAD` until a run of the same (mode, dedup) has
    completed; then it is that run's measured peak minus its embedding bytes (plus 10%).
    """

    default_overhead: int = DEFAULT_PROCESS_OVERHEAD
    measured_overhead: Dict[str, int] = field(default_factory=dict)

    @staticmethod
    def key(mode: str, dedup: bool) -> str:
        return f"{mode}/{'dedup' if dedup else 'per_slot'}"

    def overhead(self, mode: str, dedup: bool) -> int:
        return self.measured_overhead.get(self.key(mode, dedup), self.default_overhead)

    def predict(self, mode: str, dedup: bool, embedding_per_process: Sequence[Dict[str, int]]) -> List[int]:
        o = self.overhead(mode, dedup)
        return [o + e["weights"] + e["optimizer"] for e in embedding_per_process]

    def observe(self, mode: str, dedup: bool, embedding_per_process: Sequence[Dict[str, int]], peaks: Sequence[int]) -> None:
        excess = max(p - e["weights"] - e["optimizer"] for p, e in zip(peaks, embedding_per_process))
        self.measured_overhead[self.key(mode, dedup)] = max(int(excess * 1.1), 256 * MIB)


def fits(predicted_per_process: Sequence[int], budget: int) -> bool:
    return sum(predicted_per_process) <= budget


# ============================================================================ profiler buckets

EMBEDDING = "embedding"
DENSE = "dense"
COMMUNICATION = "communication"
OPTIMIZER = "optimizer"
OTHER = "other"
BUCKETS = (EMBEDDING, DENSE, COMMUNICATION, OPTIMIZER, OTHER)
STEP_EVENT = "benchmark_step"

# Checked in this order on an event and then on its enclosing events, innermost first. FBGEMM's
# fused TBE ops (``split_embedding_*_rowwise_adagrad``) do lookup, gradient and optimizer update in
# one kernel: they count as embedding. ``Optimizer.step`` is the dense AdaGrad (and, in the
# baseline, the sparse AdaGrad of the tables).
BUCKET_RULES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    (COMMUNICATION, ("all2all", "alltoall", "all_to_all", "allreduce", "all_reduce", "allgather",
                     "all_gather", "reduce_scatter", "reducescatter", "broadcast", "gloo", "nccl",
                     "c10d::", "barrier", "input_dist", "output_dist", "wait_tensor")),
    (EMBEDDING, ("split_embedding", "embedding_bag", "embeddingbag", "embeddingbackward",
                 "aten::embedding", "[lookup]", "tbe")),
    (OPTIMIZER, ("optimizer.step", "optimizer.zero_grad")),
    (EMBEDDING, ("embedding", "lookup")),
)


def bucket_of(name: str) -> Optional[str]:
    """The bucket an event name belongs to by :data:`BUCKET_RULES`, or None."""
    low = name.lower()
    for bucket, patterns in BUCKET_RULES:
        if any(p in low for p in patterns):
            return bucket
    return None


@dataclass
class ProfEvent:
    """What :func:`bucket_times` needs of a profiler event: its name, self time, parent."""

    name: str
    self_time: float
    parent: Optional[int]  # index into the event list


def bucket_times(events: Sequence[ProfEvent]) -> Dict[str, float]:
    """Self time of every event, summed by bucket.

    An event goes to the bucket of the nearest event (itself, then its parents) whose name matches
    a rule of :data:`BUCKET_RULES`; events under no matching name are ``dense``. The
    self time of the ``benchmark_step`` event itself (Python between ops, and waits not inside any
    op, e.g. DDP's allreduce at the end of backward) is ``other``.
    """
    out = {b: 0.0 for b in BUCKETS}
    memo: Dict[int, Optional[str]] = {}

    def resolve(i: int) -> Optional[str]:
        chain = []
        j: Optional[int] = i
        found: Optional[str] = None
        while j is not None:
            if j in memo:
                found = memo[j]
                break
            chain.append(j)
            found = bucket_of(events[j].name)
            if found is not None:
                break
            j = events[j].parent
        for k in chain:
            memo[k] = found
        return found

    for i, e in enumerate(events):
        if e.name == STEP_EVENT:
            out[OTHER] += e.self_time
            continue
        out[resolve(i) or DENSE] += e.self_time
    return out


def profiler_events(prof, device_time: bool = False) -> Tuple[List[ProfEvent], float]:
    """The events of a ``torch.profiler`` run as :class:`ProfEvent` (microseconds), and the total
    time of the ``benchmark_step`` events."""
    raw = list(prof.events())
    index = {id(e): i for i, e in enumerate(raw)}
    events = []
    step_total = 0.0
    for e in raw:
        parent = getattr(e, "cpu_parent", None)
        self_time = e.self_device_time_total if device_time else e.self_cpu_time_total
        events.append(ProfEvent(e.name, float(self_time), index.get(id(parent)) if parent is not None else None))
        if e.name == STEP_EVENT:
            step_total += e.device_time_total if device_time else e.cpu_time_total
    return events, step_total


# ============================================================================ workers


@dataclass
class RunSpec:
    """One measurement: a mode (baseline or a sharding type), a table size, dedup on or off."""

    mode: str
    num_items: int
    dedup: bool
    world_size: int
    threads: int
    batch_path: str = ""
    plan_path: Optional[str] = None
    embedding_per_process: List[Dict[str, int]] = field(default_factory=list)
    predicted_peak_per_process: List[int] = field(default_factory=list)


@dataclass
class QPSConfig:
    """Options of :func:`run_qps` (the command-line flags of ``benchmarks/qps.py``)."""

    sizes: List[int] = field(default_factory=lambda: [100_000, 1_000_000, 10_000_000, 30_000_000, 60_000_000, 100_000_000])
    preset: str = "small"
    batch_size: int = 1024
    num_batches: int = 8
    warmup_steps: int = 5
    windows: int = 5
    steps_per_window: int = 10
    profile_steps: int = 5
    tower_reps: int = 3
    sharding_types: Optional[List[str]] = None  # None: CPU_SHARDING_TYPES or GPU_SHARDING_TYPES
    world_size: int = 2
    dedup: List[bool] = field(default_factory=lambda: [True, False])
    per_slot_sizes: Optional[List[int]] = None  # None: the smallest size only
    baseline: bool = True
    baseline_threads: int = 2
    sharded_threads: int = 1
    lr: float = 0.1
    seed: int = 0
    memory_fraction: float = 0.85
    device: str = "auto"
    out_dir: str = "benchmarks/results"
    isolate: bool = True  # a fresh set of processes per run (per-run peak memory, OOM isolation)
    timeout_s: float = 1800.0
    command: str = ""

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def resolved_sharding_types(self) -> List[str]:
        if self.sharding_types:
            return list(self.sharding_types)
        return list(GPU_SHARDING_TYPES if self.resolved_device() == "cuda" else CPU_SHARDING_TYPES)

    def dedup_modes(self, num_items: int) -> List[bool]:
        per_slot = self.per_slot_sizes if self.per_slot_sizes is not None else [min(self.sizes)]
        return [d for d in self.dedup if d or num_items in per_slot]


QUICK = dict(
    sizes=[2_000],
    preset="tiny",
    batch_size=16,
    num_batches=2,
    warmup_steps=1,
    windows=2,
    steps_per_window=2,
    profile_steps=1,
    tower_reps=1,
    isolate=False,
    timeout_s=300.0,
)


def _sparse_baseline(model: nn.Module, lr: float):
    """Sets ``.sparse = True`` on the embedding modules inside the unsharded TorchRec collections;
    AdaGrad (sparse) for them and AdaGrad for the rest. Returns (optimizers, table parameters)."""
    from marn_rec.training.sharding import ADAGRAD_EPS, ADAGRAD_INITIAL_ACCUMULATOR, embedding_tables

    tables: List[nn.Parameter] = []
    for _, collection in embedding_tables(model):
        for module in collection.modules():
            if isinstance(module, (nn.EmbeddingBag, nn.Embedding)):
                module.sparse = True
                tables += list(module.parameters())
    ids = {id(p) for p in tables}
    dense = [p for p in model.parameters() if id(p) not in ids]
    return [
        torch.optim.Adagrad(tables, lr=lr, eps=ADAGRAD_EPS, foreach=False),
        torch.optim.Adagrad(dense, lr=lr, initial_accumulator_value=ADAGRAD_INITIAL_ACCUMULATOR),
    ], tables


def _local_bytes(obj: Any) -> int:
    """Bytes of the local part of every (Sharded)Tensor inside ``obj`` (dicts, lists)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(obj, ShardedTensor):
        return sum(s.tensor.numel() * s.tensor.element_size() for s in obj.local_shards())
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "local_shards"):  # DTensor-like
            return sum(t.numel() * t.element_size() for t in obj.local_shards())
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_local_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_local_bytes(v) for v in obj)
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(
    spec: RunSpec,
    cfg: QPSConfig,
    rank: int,
    device: torch.device,
    pg,
) -> Dict[str, Any]:
    """One run in this process (rank ``rank`` of ``spec.world_size``)."""
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile, record_function

    from marn_rec.training.sharding import apply_embedding_optimizer, shard_model, training_optimizer
    from marn_rec.models.loss import adversarial_lambda
    from marn_rec.models.marn import MARN, MARNTrain

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    peak_reset = reset_peak_rss()
    rss_start = current_rss_bytes()
    model_cfg = model_config(cfg.preset, spec.num_items)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    out: Dict[str, Any] = {"rank": rank, "threads": torch.get_num_threads(), "peak_reset": peak_reset}
    if spec.mode == BASELINE:
        model = MARNTrain(MARN(model_cfg, device=device))
        optimizers, tables = _sparse_baseline(model, cfg.lr)
        out["emb_weights_bytes"] = sum(p.numel() * p.element_size() for p in tables)
        out["emb_optimizer_bytes"] = sum(_local_bytes(optimizers[0].state[p]["sum"]) for p in tables)
        step_model = model

        def optimizer_step() -> None:
            for o in optimizers:
                o.step()
            for o in optimizers:
                o.zero_grad(set_to_none=True)

    else:
        plan = torch.load(spec.plan_path, weights_only=False)
        model = MARNTrain(MARN(model_cfg, device=torch.device("meta")))
        apply_embedding_optimizer(model, lr=cfg.lr)
        dmp = shard_model(model, device, pg, plan=plan)
        optimizer = training_optimizer(dmp, lr=cfg.lr)
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        out["emb_weights_bytes"] = sum(
            _local_bytes(v) for v in dmp.state_dict().values() if isinstance(v, ShardedTensor)
        )
        out["emb_optimizer_bytes"] = _local_bytes(dmp.fused_optimizer.state_dict().get("state", {}))
        step_model = dmp

        def optimizer_step() -> None:
            optimizer.step()
            optimizer.zero_grad()

    out["build_s"] = time.perf_counter() - t0
    out["rss_after_build"] = current_rss_bytes()
    batches = [b.to(device) for b in torch.load(spec.batch_path, weights_only=False)]
    lam = adversarial_lambda(0.5)
    step_model.train()

    def step(i: int) -> None:
        loss, _ = step_model(batches[(i + rank) % len(batches)], lam)
        loss.backward()
        optimizer_step()

    def barrier() -> None:
        if pg is not None:
            dist.barrier(pg)

    i = 0
    for _ in range(cfg.warmup_steps):
        step(i)
        i += 1
    _sync(device)
    barrier()
    window_s, cpu_s = [], []
    for _ in range(cfg.windows):
        _sync(device)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(cfg.steps_per_window):
            step(i)
            i += 1
        _sync(device)
        window_s.append(time.perf_counter() - t)
        cpu_s.append(time.process_time() - c)
    out["window_s"] = window_s
    out["cpu_s"] = cpu_s  # CPU time of all this process's threads (gloo's included)
    barrier()

    if cfg.profile_steps > 0:
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(cfg.profile_steps):
                with record_function(STEP_EVENT):
                    step(i)
                    _sync(device)
                i += 1
        events, step_total = profiler_events(prof, device_time=False)
        buckets = bucket_times(events)
        out["profile_ms_per_step"] = {k: v / 1e3 / cfg.profile_steps for k, v in buckets.items()}
        out["profile_step_ms"] = step_total / 1e3 / cfg.profile_steps
        if device.type == "cuda":
            dev_events, dev_total = profiler_events(prof, device_time=True)
            out["profile_device_ms_per_step"] = {
                k: v / 1e3 / cfg.profile_steps for k, v in bucket_times(dev_events).items()
            }
        del prof
        barrier()

    if spec.mode == BASELINE and cfg.tower_reps > 0:
        out["tower_ms"] = _tower_ms(model, batches, cfg.tower_reps, device)
    out["peak_rss"] = peak_rss_bytes()
    out["rss_start"] = rss_start
    if device.type == "cuda":
        out["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
    out["unique_items"] = statistics.mean(b.num_unique_items for b in batches)
    out["slots"] = statistics.mean(b.batch_size + b.history_index.numel() for b in batches)
    return out


def _tower_ms(model: nn.Module, batches: Sequence[Any], reps: int, device: torch.device) -> float:
    """Median ms of the item tower's forward + backward on one batch (no optimizer step)."""
    tower = model.model.tower
    times = []
    for _ in range(reps):
        for b in batches:
            slots = torch.cat([b.candidate_index, b.history_index])
            weights = torch.bincount(slots, minlength=b.num_unique_items).to(b.item_image.dtype)
            _sync(device)
            t = time.perf_counter()
            out = tower(b.item_sparse, b.item_title, b.item_image, weights)
            loss = out.representation.sum() + sum(out.losses.values())
            loss.backward()
            _sync(device)
            times.append((time.perf_counter() - t) * 1e3)
            model.zero_grad(set_to_none=True)
    return statistics.median(times)


def _worker(rank: int, world_size: int, port: int, specs_path: str, out_dir: str, spawned: bool = True) -> None:
    """Entry point of every spawned process: runs each spec of ``specs_path`` in turn."""
    if spawned:
        import warnings

        warnings.filterwarnings("ignore")
    with open(specs_path) as f:
        payload = json.load(f)
    cfg = QPSConfig(**payload["config"])
    specs = [RunSpec(**s) for s in payload["specs"]]
    torch.set_num_threads(specs[0].threads)
    device_type = cfg.resolved_device()
    pg = None
    if device_type == "cuda":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    if specs[0].mode != BASELINE:
        import torch.distributed as dist

        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
            WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        )
        dist.init_process_group(
            "nccl" if device_type == "cuda" else "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=cfg.timeout_s),
        )
        pg = dist.group.WORLD
    try:
        for n, spec in enumerate(specs):
            result = _measure(spec, cfg, rank, device, pg)
            with open(os.path.join(out_dir, f"result_{n}_rank{rank}.json"), "w") as f:
                json.dump(result, f)
    finally:
        if pg is not None:
            import torch.distributed as dist

            dist.destroy_process_group()


def _launch(specs: List[RunSpec], cfg: QPSConfig, work_dir: str) -> List[Dict[str, Any]]:
    """Runs ``specs`` (same mode, same world size) in one set of spawned processes.

    Returns, per spec, the per-rank results, or raises RuntimeError (a rank failed or was killed).
    """
    import torch.multiprocessing as mp

    from marn_rec.training.loop import free_port

    out_dir = tempfile.mkdtemp(dir=work_dir)
    specs_path = os.path.join(out_dir, "specs.json")
    with open(specs_path, "w") as f:
        json.dump({"config": asdict(cfg), "specs": [asdict(s) for s in specs]}, f)
    world = specs[0].world_size
    if not cfg.isolate and specs[0].mode == BASELINE:
        # In this process (``--quick``: saves a process start-up); threads restored afterwards.
        threads = torch.get_num_threads()
        try:
            _worker(0, 1, 0, specs_path, out_dir, spawned=False)
        except Exception as e:
            raise RuntimeError(f"{type(e).__name__}: {e}") from e
        finally:
            torch.set_num_threads(threads)
        return _read_results(out_dir, len(specs), world)
    context = mp.start_processes(
        _worker,
        args=(world, free_port(), specs_path, out_dir),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + cfg.timeout_s * len(specs)
    try:
        while not context.join(timeout=2.0):
            if time.monotonic() > deadline:
                for proc in context.processes:  # our own children only
                    if proc.is_alive():
                        proc.terminate()
                for proc in context.processes:
                    proc.join(10)
                raise RuntimeError(f"timed out after {cfg.timeout_s * len(specs):.0f} s")
    except RuntimeError:
        raise
    except Exception as e:  # ProcessRaisedException / ProcessExitedException (e.g. OOM kill)
        text = str(e).strip()
        raise RuntimeError(f"{type(e).__name__}: {text.splitlines()[-1] if text else ''}") from e
    return _read_results(out_dir, len(specs), world)


def _read_results(out_dir: str, num_specs: int, world: int) -> List[List[Dict[str, Any]]]:
    results = []
    for n in range(num_specs):
        per_rank = []
        for r in range(world):
            with open(os.path.join(out_dir, f"result_{n}_rank{r}.json")) as f:
                per_rank.append(json.load(f))
        results.append(per_rank)
    return results


def summarise(spec: RunSpec, per_rank: List[Dict[str, Any]], cfg: QPSConfig) -> Dict[str, Any]:
    """One result record from the ranks' raw measurements."""
    world = spec.world_size
    samples = cfg.steps_per_window * cfg.batch_size
    windows = list(zip(*[r["window_s"] for r in per_rank]))
    global_rates = [world * samples / max(w) for w in windows]
    rec: Dict[str, Any] = {
        "mode": spec.mode,
        "num_items": spec.num_items,
        "dedup": spec.dedup,
        "status": "ok",
        "processes": world,
        "threads_per_process": per_rank[0]["threads"],
        "global_samples_per_s": statistics.median(global_rates),
        "per_process_samples_per_s": statistics.median(global_rates) / world,
        "window_global_samples_per_s": global_rates,
        "step_ms": 1e3 * statistics.median(max(w) for w in windows) / cfg.steps_per_window,
        # Process CPU time per step (all threads): less sensitive than wall time to other work on
        # the machine, but it counts OpenMP spin-waits.
        "cpu_ms_per_step": [
            1e3 * statistics.median(r["cpu_s"]) / cfg.steps_per_window for r in per_rank
        ],
        "peak_rss_per_process": [r["peak_rss"] for r in per_rank],
        "predicted_peak_per_process": spec.predicted_peak_per_process,
        "peak_is_per_run": all(r["peak_reset"] for r in per_rank),
        "embedding_planned_per_process": spec.embedding_per_process,
        "embedding_measured_per_process": [
            {"weights": r["emb_weights_bytes"], "optimizer": r["emb_optimizer_bytes"]} for r in per_rank
        ],
        "build_s": max(r["build_s"] for r in per_rank),
        "unique_items_per_batch": statistics.mean(r["unique_items"] for r in per_rank),
        "slots_per_batch": statistics.mean(r["slots"] for r in per_rank),
    }
    if "profile_ms_per_step" in per_rank[0]:
        buckets = {b: statistics.mean(r["profile_ms_per_step"][b] for r in per_rank) for b in BUCKETS}
        rec["profile_ms_per_step"] = buckets
        rec["profile_step_ms"] = statistics.mean(r["profile_step_ms"] for r in per_rank)
    if "profile_device_ms_per_step" in per_rank[0]:
        rec["profile_device_ms_per_step"] = per_rank[0]["profile_device_ms_per_step"]
    if "peak_device_bytes" in per_rank[0]:
        rec["peak_device_bytes_per_process"] = [r["peak_device_bytes"] for r in per_rank]
    if "tower_ms" in per_rank[0]:
        rec["tower_ms"] = per_rank[0]["tower_ms"]
    return rec


# ============================================================================ batches


def generate_batches(cfg: QPSConfig, num_items: int, dedup: bool, path: str) -> Dict[str, float]:
    """Pre-generates ``cfg.num_batches`` batches of the synthetic stream into ``path``.

    Returns timings (catalog build, ms per batch) and the mean unique items and slots per batch.
    """
    from marn_rec.data import SyntheticTaobao, SyntheticTaobaoConfig

    data_cfg = SyntheticTaobaoConfig.from_model_config(
        model_config(cfg.preset, num_items), seed=cfg.seed, batch_size=cfg.batch_size,
        num_train_batches=cfg.num_batches,
    )
    t = time.perf_counter()
    source = SyntheticTaobao(data_cfg)
    catalog_s = time.perf_counter() - t
    t = time.perf_counter()
    batches = [source.batch("train", i, dedup=dedup) for i in range(cfg.num_batches)]
    per_batch_ms = (time.perf_counter() - t) * 1e3 / cfg.num_batches
    torch.save(batches, path)
    stats = {
        "catalog_s": catalog_s,
        "generate_ms_per_batch": per_batch_ms,
        "unique_items_per_batch": statistics.mean(b.num_unique_items for b in batches),
        "slots_per_batch": statistics.mean(b.batch_size + b.history_index.numel() for b in batches),
        "zipf_exponent": data_cfg.zipf_exponent,
    }
    del batches, source
    gc.collect()
    return stats


# ============================================================================ the sweep


def _memory_budget(device: str, world_size: int, fraction: float) -> Tuple[int, str]:
    if device == "cuda":
        free = min(torch.cuda.mem_get_info(r)[0] for r in range(min(world_size, torch.cuda.device_count())))
        return int(fraction * free), "GPU memory free per device"
    return int(fraction * available_memory_bytes()), "host MemAvailable"


def run_qps(cfg: QPSConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """The whole side-by-side sweep; returns the results (also written by :func:`qps_main`)."""
    from marn_rec.training.sharding import apply_embedding_optimizer
    from marn_rec.models.marn import MARN, MARNTrain

    device = cfg.resolved_device()
    sharding_types = cfg.resolved_sharding_types()
    if device == "cpu" and ROW_WISE in sharding_types:
        raise ValueError("row_wise needs reduce-scatter, which gloo (CPU) does not have")
    machine = machine_info()
    log(f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
        f"torchrec {machine['torchrec']}, device {device}")
    load = machine.get("load_average")
    if load and load[0] > 0.25 * (machine["cpu_count"] or 1):
        log(f"WARNING: load average {load[0]:.2f} before starting: other work shares the CPUs, "
            "throughput numbers will be noisy (2-thread OpenMP regions stall when a core is taken)")
    log(f"threads: baseline 1 process x {cfg.baseline_threads} thread(s); sharded "
        f"{cfg.world_size} processes x {cfg.sharded_threads} thread(s) "
        f"({'gloo' if device == 'cpu' else 'nccl'})")
    log(f"preset {cfg.preset}, batch {cfg.batch_size} per process, {cfg.warmup_steps} warm-up steps, "
        f"{cfg.windows} windows x {cfg.steps_per_window} steps (median), {cfg.profile_steps} profiled steps")
    memory = MemoryModel()
    records: List[Dict[str, Any]] = []
    data_stats: List[Dict[str, Any]] = []
    work_dir = tempfile.mkdtemp(prefix="marn_qps_")
    try:
        pending: List[Tuple[RunSpec, Dict[str, Any]]] = []
        for num_items in sorted(cfg.sizes):
            model_cfg = model_config(cfg.preset, num_items)
            meta_model = MARNTrain(MARN(model_cfg, device=torch.device("meta")))
            # As in the workers: the in-backward optimizer makes the plans use the FUSED kernel.
            apply_embedding_optimizer(meta_model, lr=cfg.lr)
            shapes = table_shapes(meta_model)
            table_total = sum(r * c * e for r, c, e in shapes.values())
            plans = {}
            for st in sharding_types:
                plan = make_plan(meta_model, cfg.world_size, device, st, cfg.batch_size)
                path = os.path.join(work_dir, f"plan_{num_items}_{st}.pt")
                torch.save(plan, path)
                plans[st] = (path, plan_bytes_per_rank(plan, shapes, cfg.world_size))
            for dedup in cfg.dedup_modes(num_items):
                batch_path = os.path.join(work_dir, f"batches_{num_items}_{int(dedup)}.pt")
                stats = generate_batches(cfg, num_items, dedup, batch_path)
                data_stats.append({"num_items": num_items, "dedup": dedup, **stats})
                log(f"data num_items={num_items:,} dedup={dedup}: {stats['generate_ms_per_batch']:.0f} ms/batch "
                    f"to generate (not timed below), {stats['unique_items_per_batch']:.0f} unique items of "
                    f"{stats['slots_per_batch']:.0f} slots per batch")
                modes = ([BASELINE] if cfg.baseline else []) + sharding_types
                for mode in modes:
                    if mode == BASELINE:
                        spec = RunSpec(mode, num_items, dedup, 1, cfg.baseline_threads, batch_path,
                                       None, [baseline_embedding_bytes(shapes)])
                    else:
                        spec = RunSpec(mode, num_items, dedup, cfg.world_size, cfg.sharded_threads,
                                       batch_path, plans[mode][0], plans[mode][1])
                    info = {"table_bytes": table_total}
                    if cfg.isolate:
                        records.append(_run_isolated(spec, cfg, memory, work_dir, info, log))
                    else:
                        pending.append((spec, info))
        if pending:
            records += _run_grouped(pending, cfg, memory, work_dir, log)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    results = {
        "config": asdict(cfg),
        "machine": machine,
        "data": data_stats,
        "runs": records,
    }
    results["goals"] = evaluate_goals(results)
    return results


def _predict(spec: RunSpec, cfg: QPSConfig, memory: MemoryModel) -> Tuple[bool, str, int]:
    spec.predicted_peak_per_process = memory.predict(spec.mode, spec.dedup, spec.embedding_per_process)
    budget, what = _memory_budget(cfg.resolved_device(), spec.world_size, cfg.memory_fraction)
    if cfg.resolved_device() == "cuda":
        need = max(spec.predicted_peak_per_process)
    else:
        need = sum(spec.predicted_peak_per_process)
    if need > budget:
        return False, (f"predicted {need / GIB:.1f} GiB > {cfg.memory_fraction:.0%} of {what} "
                       f"({budget / cfg.memory_fraction / GIB:.1f} GiB): skipped"), budget
    return True, "", budget


def _label(spec: RunSpec) -> str:
    return f"{spec.mode} num_items={spec.num_items:,} {'dedup' if spec.dedup else 'per-slot'}"


def _skip_record(spec: RunSpec, status: str, reason: str) -> Dict[str, Any]:
    return {
        "mode": spec.mode, "num_items": spec.num_items, "dedup": spec.dedup, "status": status,
        "reason": reason, "processes": spec.world_size,
        "predicted_peak_per_process": spec.predicted_peak_per_process,
        "embedding_planned_per_process": spec.embedding_per_process,
    }


def _log_record(rec: Dict[str, Any], log: Callable[[str], None]) -> None:
    if rec["status"] != "ok":
        log(f"  {rec['mode']:<12} {rec['num_items']:>13,} {'dedup' if rec['dedup'] else 'per-slot':<8} "
            f"{rec['status']}: {rec['reason']}")
        return
    peak = "/".join(f"{p / GIB:.2f}" for p in rec["peak_rss_per_process"])
    pred = "/".join(f"{p / GIB:.2f}" for p in rec["predicted_peak_per_process"])
    emb = "/".join(f"{(e['weights'] + e['optimizer']) / MIB:.1f}" for e in rec["embedding_measured_per_process"])
    line = (f"  {rec['mode']:<12} {rec['num_items']:>13,} {'dedup' if rec['dedup'] else 'per-slot':<8} "
            f"{rec['global_samples_per_s']:>9.0f} samples/s global, {rec['per_process_samples_per_s']:>8.0f} per process "
            f"({rec['processes']}x{rec['threads_per_process']} threads), step {rec['step_ms']:.1f} ms "
            f"(CPU {'/'.join(f'{c:.0f}' for c in rec['cpu_ms_per_step'])} ms), "
            f"peak RSS {peak} GiB (predicted {pred}), embedding+opt {emb} MiB per process")
    log(line)
    if "profile_ms_per_step" in rec:
        p = rec["profile_ms_per_step"]
        total = sum(p.values()) or 1.0
        log("      profile: " + ", ".join(f"{b} {100 * p[b] / total:.0f}%" for b in BUCKETS)
            + f" of {total:.1f} ms/step")
    if "tower_ms" in rec:
        log(f"      item tower forward+backward: {rec['tower_ms']:.1f} ms per batch")


def _run_isolated(spec, cfg, memory, work_dir, info, log) -> Dict[str, Any]:
    ok, reason, _ = _predict(spec, cfg, memory)
    if not ok:
        rec = _skip_record(spec, "skipped", reason)
        _log_record(rec, log)
        return rec
    try:
        per_rank = _launch([spec], cfg, work_dir)[0]
    except RuntimeError as e:
        rec = _skip_record(spec, "failed", str(e))
        _log_record(rec, log)
        return rec
    rec = summarise(spec, per_rank, cfg)
    rec.update(info)
    memory.observe(spec.mode, spec.dedup, rec["embedding_measured_per_process"], rec["peak_rss_per_process"])
    _log_record(rec, log)
    return rec


def _run_grouped(pending, cfg, memory, work_dir, log) -> List[Dict[str, Any]]:
    """One set of processes per mode for all its runs (``--quick``: saves process start-up)."""
    records: Dict[int, Dict[str, Any]] = {}
    by_mode: Dict[str, List[int]] = {}
    for n, (spec, _) in enumerate(pending):
        ok, reason, _ = _predict(spec, cfg, memory)
        if ok:
            by_mode.setdefault(spec.mode, []).append(n)
        else:
            records[n] = _skip_record(spec, "skipped", reason)
    for mode, idx in by_mode.items():
        specs = [pending[n][0] for n in idx]
        try:
            results = _launch(specs, cfg, work_dir)
        except RuntimeError as e:
            for n in idx:
                records[n] = _skip_record(pending[n][0], "failed", str(e))
            continue
        for n, per_rank in zip(idx, results):
            rec = summarise(pending[n][0], per_rank, cfg)
            rec.update(pending[n][1])
            records[n] = rec
    out = [records[n] for n in range(len(pending))]
    for rec in out:
        _log_record(rec, log)
    return out


# ============================================================================ goals


def _ok(records: Iterable[Dict[str, Any]], **match: Any) -> List[Dict[str, Any]]:
    return [r for r in records if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def evaluate_goals(results: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's goals as ratios from this run (None where the run has no data for one)."""
    runs = results["runs"]
    goals: Dict[str, Any] = {}
    sharding_types = sorted({r["mode"] for r in runs if r["mode"] != BASELINE})

    # 1. sharded >= 1.5x baseline samples/s on the largest table both hold (dedup on).
    speedups = {}
    for st in sharding_types:
        both = [
            n for n in {r["num_items"] for r in _ok(runs, mode=st, dedup=True)}
            if _ok(runs, mode=BASELINE, num_items=n, dedup=True)
        ]
        if not both:
            continue
        n = max(both)
        s = _ok(runs, mode=st, num_items=n, dedup=True)[0]
        b = _ok(runs, mode=BASELINE, num_items=n, dedup=True)[0]
        speedups[st] = {
            "num_items": n,
            "ratio": s["global_samples_per_s"] / b["global_samples_per_s"],
            "per_process_ratio": s["per_process_samples_per_s"] / b["per_process_samples_per_s"],
        }
    goals["sharded_speedup"] = speedups
    baseline_all = [r for r in runs if r["mode"] == BASELINE and r["dedup"]]
    not_held = sorted(r["num_items"] for r in baseline_all if r["status"] != "ok")
    goals["baseline_largest_held"] = max((r["num_items"] for r in _ok(baseline_all)), default=None)
    goals["baseline_first_not_held"] = not_held[0] if not_held else None
    held = sorted(_ok(baseline_all), key=lambda r: r["num_items"])
    if len(held) >= 2:
        goals["baseline_slowdown"] = {
            "from_items": held[0]["num_items"],
            "to_items": held[-1]["num_items"],
            "ratio": held[0]["global_samples_per_s"] / held[-1]["global_samples_per_s"],
        }
    sharded_ok = [r["num_items"] for r in runs if r["mode"] != BASELINE and r["status"] == "ok"]
    goals["sharded_largest_held"] = max(sharded_ok, default=None)

    # 2. dedup item tower >= 3x the per-slot one (same table size, baseline process).
    dedup = {}
    for r in _ok(runs, mode=BASELINE, dedup=False):
        d = _ok(runs, mode=BASELINE, dedup=True, num_items=r["num_items"])
        if d and "tower_ms" in r and "tower_ms" in d[0]:
            dedup = {
                "num_items": r["num_items"],
                "tower_ratio": r["tower_ms"] / d[0]["tower_ms"],
                "step_ratio": d[0]["global_samples_per_s"] / r["global_samples_per_s"],
                "slots_per_unique_item": d[0]["slots_per_batch"] / d[0]["unique_items_per_batch"],
            }
            break
    goals["dedup_speedup"] = dedup or None
    dedup_sharded = {}
    for st in sharding_types:
        for r in _ok(runs, mode=st, dedup=False):
            d = _ok(runs, mode=st, dedup=True, num_items=r["num_items"])
            if d:
                dedup_sharded[st] = d[0]["global_samples_per_s"] / r["global_samples_per_s"]
                break
    goals["dedup_step_ratio_sharded"] = dedup_sharded

    # 4. per-rank embedding memory within 5% of total/N (measured, weights + optimizer state).
    balance = {}
    for st in sharding_types:
        rs = _ok(runs, mode=st, dedup=True)
        if not rs:
            continue
        r = max(rs, key=lambda x: x["num_items"])
        per_rank = [e["weights"] + e["optimizer"] for e in r["embedding_measured_per_process"]]
        planned = [e["weights"] + e["optimizer"] for e in r["embedding_planned_per_process"]]
        balance[st] = {
            "num_items": r["num_items"],
            "imbalance": imbalance(per_rank),
            "measured_per_rank": per_rank,
            "planned_per_rank": planned,
            "measured_matches_plan": per_rank == planned,
        }
    goals["memory_balance"] = balance
    return goals


def goal_lines(goals: Dict[str, Any]) -> List[str]:
    """Human-readable ratio lines (printed and put in the markdown)."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines = []
    for st, s in goals.get("sharded_speedup", {}).items():
        lines.append(
            f"ratio sharded/baseline samples/s [{st}, num_items={s['num_items']:,}, largest both hold]: "
            f"{s['ratio']:.2f}x global, {s['per_process_ratio']:.2f}x per process "
            f"(goal >= {GOAL_SHARDED_SPEEDUP}x: {verdict(s['ratio'] >= GOAL_SHARDED_SPEEDUP)})"
        )
    if not goals.get("sharded_speedup"):
        lines.append("ratio sharded/baseline samples/s: no table size where both ran")
    if goals.get("baseline_first_not_held") is not None:
        lines.append(
            f"baseline: largest table held {goals['baseline_largest_held']:,} items; "
            f"not at {goals['baseline_first_not_held']:,} (sharded held up to "
            f"{goals['sharded_largest_held'] or 0:,})"
        )
    slow = goals.get("baseline_slowdown")
    if slow:
        lines.append(
            f"ratio baseline samples/s at {slow['from_items']:,} / at {slow['to_items']:,} items: "
            f"{slow['ratio']:.2f}x (above 1: the baseline slows as its table grows)"
        )
    d = goals.get("dedup_speedup")
    if d:
        lines.append(
            f"ratio dedup/per-slot item tower [baseline, num_items={d['num_items']:,}]: "
            f"{d['tower_ratio']:.2f}x tower forward+backward, {d['step_ratio']:.2f}x whole step, "
            f"{d['slots_per_unique_item']:.2f} slots per unique item "
            f"(goal >= {GOAL_DEDUP_SPEEDUP}x: {verdict(d['tower_ratio'] >= GOAL_DEDUP_SPEEDUP)})"
        )
    else:
        lines.append("ratio dedup/per-slot item tower: not measured (needs baseline with dedup on and off)")
    for st, r in goals.get("dedup_step_ratio_sharded", {}).items():
        lines.append(f"ratio dedup/per-slot whole step [{st}]: {r:.2f}x")
    for st, b in goals.get("memory_balance", {}).items():
        per = "/".join(f"{x / MIB:.1f}" for x in b["measured_per_rank"])
        lines.append(
            f"ratio per-rank embedding memory / (total/N) [{st}, num_items={b['num_items']:,}]: "
            f"max deviation {100 * b['imbalance']:.1f}% ({per} MiB; "
            f"{'equals' if b['measured_matches_plan'] else 'differs from'} the plan) "
            f"(goal <= {100 * GOAL_MEMORY_BALANCE:.0f}%: {verdict(b['imbalance'] <= GOAL_MEMORY_BALANCE)})"
        )
    lines.append("APGRU <= 1.2x nn.GRU: see benchmarks/apgru.py")
    return lines


# ============================================================================ rendering


def _machine_line(m: Dict[str, Any]) -> str:
    mem = m.get("memory_total_bytes")
    parts = [
        f"`{m['platform']}`",
        f"{m['cpu_count']} CPUs",
        f"{mem / GIB:.0f} GiB RAM" if mem else None,
        f"torch {m['torch']}",
        f"torchrec {m.get('torchrec', '?')}",
        f"fbgemm-gpu {m.get('fbgemm_gpu', '?')}",
        f"GPU {m['cuda']}" if m.get("cuda") else "no GPU",
    ]
    return ", ".join(p for p in parts if p)


def render_qps_markdown(results: Dict[str, Any], command: Optional[str] = None) -> str:
    """A markdown section for benchmarks/RESULTS.md: command, machine, date, table, goal ratios."""
    cfg = results["config"]
    m = results["machine"]
    command = command or cfg.get("command") or "python benchmarks/qps.py"
    out = [
        "## Training throughput: sharded (DMP) vs unsharded baseline",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {_machine_line(m)}. Date: {m['date']}.",
        "",
        f"Model: `{cfg['preset']}` preset, `num_items` swept; batch {cfg['batch_size']} per process; "
        f"baseline 1 process x {cfg['baseline_threads']} threads, unsharded TorchRec collections with "
        f"`sparse=True` and `torch.optim.Adagrad`; sharded {cfg['world_size']} processes x "
        f"{cfg['sharded_threads']} thread(s), DMP with FBGEMM's fused row-wise AdaGrad. "
        f"samples/s is the median of {cfg['windows']} windows of {cfg['steps_per_window']} steps after "
        f"{cfg['warmup_steps']} warm-up steps, on {cfg['num_batches']} pre-generated batches (generation "
        "not timed); global = all processes together.",
        "",
        "| num_items | dedup | mode | procs x threads | samples/s global | per process | vs baseline "
        "| step ms wall (CPU) | peak RSS / process GiB (predicted) | embedding + optimizer MiB / process "
        "| step: emb / dense / comm / opt / other |",
        "| ---: | :---: | --- | :---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    baseline = {(r["num_items"], r["dedup"]): r for r in _ok(results["runs"], mode=BASELINE)}
    for r in results["runs"]:
        head = f"| {r['num_items']:,} | {'on' if r['dedup'] else 'off'} | {r['mode']} | "
        if r["status"] != "ok":
            pred = "/".join(f"{p / GIB:.1f}" for p in r.get("predicted_peak_per_process") or [])
            out.append(head + f"{r['processes']} x - | {r['status']} | | | | ({pred}) | | {r['reason']} |")
            continue
        b = baseline.get((r["num_items"], r["dedup"]))
        ratio = f"{r['global_samples_per_s'] / b['global_samples_per_s']:.2f}x" if b else "-"
        peak = "/".join(f"{p / GIB:.2f}" for p in r["peak_rss_per_process"])
        pred = "/".join(f"{p / GIB:.2f}" for p in r["predicted_peak_per_process"])
        emb = "/".join(f"{(e['weights'] + e['optimizer']) / MIB:,.0f}" for e in r["embedding_measured_per_process"])
        shares = "-"
        if "profile_ms_per_step" in r:
            p = r["profile_ms_per_step"]
            total = sum(p.values()) or 1.0
            shares = " / ".join(f"{100 * p[k] / total:.0f}%" for k in BUCKETS)
        out.append(
            head + f"{r['processes']} x {r['threads_per_process']} | {r['global_samples_per_s']:,.0f} | "
            f"{r['per_process_samples_per_s']:,.0f} | {ratio} | {r['step_ms']:.0f} "
            f"({'/'.join(f'{c:.0f}' for c in r['cpu_ms_per_step'])}) | {peak} ({pred}) | {emb} | {shares} |"
        )
    out += ["", "Goals (ratios from this run):", ""]
    out += [f"- {line}" for line in goal_lines(results["goals"])]
    data = results.get("data") or []
    if data:
        d = data[0]
        out += [
            "",
            f"Data: synthetic Taobao stream (Zipf exponent {d['zipf_exponent']}), generation "
            + ", ".join(f"{x['generate_ms_per_batch']:.0f} ms/batch at {x['num_items']:,} items"
                        + ("" if x["dedup"] else " per-slot") for x in data)
            + " (outside the timed steps).",
        ]
    out += [
        "",
        "How it is measured: peak RSS is the Linux high-water mark (`VmHWM`) of each process, reset "
        "at the start of the run; it includes about 0.5 GiB of torch/TorchRec imports. The prediction "
        "(made before allocating, runs that would not fit in "
        f"{cfg['memory_fraction']:.0%} of `MemAvailable` are skipped) is overhead + table weights + optimizer "
        "state (AdaGrad's full-size `sum` for the baseline, one float per shard row for the fused row-wise "
        "AdaGrad). Embedding bytes per process are the local table shards plus the fused optimizer "
        "state (sharded) or the tables plus AdaGrad state (baseline), read from the live modules and "
        "checked against the plan. Step shares come from a `torch.profiler` pass over "
        f"{cfg['profile_steps']} steps: each op's self CPU time goes to the bucket of its nearest "
        "enclosing event whose name matches communication (all2all, allreduce, gloo, c10d, input/output "
        "dist), optimizer (`Optimizer.step`, AdaGrad), or embedding (embedding, TBE, lookup); the rest "
        "is dense. FBGEMM's fused optimizer runs inside the TBE backward and counts as embedding; "
        "\"other\" is time inside the step but outside every op (Python, and waits such as DDP's "
        "allreduce at the end of backward).",
    ]
    return "\n".join(out) + "\n"


def plot_qps(results: Dict[str, Any], path: str) -> None:
    """PNG: samples/s and peak RSS per process against num_items, and the step breakdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    modes = [BASELINE] + sorted({r["mode"] for r in runs if r["mode"] != BASELINE})
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    for mode in modes:
        for dedup in (True, False):
            rs = sorted(_ok(runs, mode=mode, dedup=dedup), key=lambda r: r["num_items"])
            if not rs:
                continue
            style = "-o" if dedup else "--x"
            label = f"{mode} ({'dedup' if dedup else 'per-slot'})"
            x = [r["num_items"] for r in rs]
            axes[0].plot(x, [r["global_samples_per_s"] for r in rs], style, label=label)
            if dedup:
                axes[1].plot(x, [max(r["peak_rss_per_process"]) / GIB for r in rs], style, label=label)
    for n in sorted({r["num_items"] for r in runs if r["status"] == "skipped" and r["mode"] == BASELINE}):
        axes[0].axvline(n, color="grey", linestyle=":", linewidth=1)
    axes[0].set(xscale="log", xlabel="num_items", ylabel="training samples/s (global)",
                title="throughput")
    axes[1].set(xscale="log", xlabel="num_items", ylabel="peak RSS of the largest process (GiB)",
                title="memory per process")
    for ax in axes[:2]:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    bars = [r for r in runs if r["status"] == "ok" and "profile_ms_per_step" in r and r["dedup"]]
    if bars:
        largest = max(r["num_items"] for r in bars)
        bars = [r for r in bars if r["num_items"] == largest]
        bottom = [0.0] * len(bars)
        for b in BUCKETS:
            vals = [r["profile_ms_per_step"][b] for r in bars]
            axes[2].bar([r["mode"] for r in bars], vals, bottom=bottom, label=b)
            bottom = [x + y for x, y in zip(bottom, vals)]
        axes[2].set(ylabel="ms per step (profiled, per process)", title=f"step breakdown, {largest:,} items")
        axes[2].legend(fontsize=8)
    else:
        axes[2].text(0.5, 0.5, "no profiler pass (--profile-steps 0)", ha="center", va="center")
        axes[2].set_axis_off()
    fig.suptitle(f"MARN {results['config']['preset']} preset, batch {results['config']['batch_size']} "
                 f"per process, {results['machine']['platform']}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ============================================================================ APGRU


@dataclass
class APGRUConfig:
    batch_size: int = 1024
    steps: int = 50
    dims: List[int] = field(default_factory=lambda: [64, 256])
    property_dim: int = 16  # behavior_type_dim + time_dim of the presets
    warmup: int = 2
    reps: int = 5
    threads: int = 0  # 0: leave torch's default
    out_dir: str = "benchmarks/results"
    command: str = ""


APGRU_QUICK = dict(batch_size=32, steps=6, dims=[8], warmup=1, reps=2)


def _fwd_bwd_ms(module: nn.Module, run: Callable[[], torch.Tensor], inputs: torch.Tensor) -> float:
    """Milliseconds of ``run().sum().backward()`` (gradients of the weights and the inputs)."""
    t = time.perf_counter()
    run().sum().backward()
    dt = (time.perf_counter() - t) * 1e3
    module.zero_grad(set_to_none=True)
    inputs.grad = None
    return dt


def _interleaved(
    cases: Dict[str, Tuple[nn.Module, Callable[[], torch.Tensor]]], inputs: torch.Tensor, warmup: int, reps: int
) -> Dict[str, List[float]]:
    """Times every case ``reps`` times, round-robin (a change of load on the machine hits all
    cases alike), after ``warmup`` untimed passes each."""
    for module, run in cases.values():
        for _ in range(warmup):
            _fwd_bwd_ms(module, run, inputs)
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, (module, run) in cases.items():
            times[k].append(_fwd_bwd_ms(module, run, inputs))
    return times


def run_apgru(cfg: APGRUConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Forward + backward of APGRU (with and without the property term) and ``torch.nn.GRU``."""
    from marn_rec.modules.apgru import APGRU

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    b, t = cfg.batch_size, cfg.steps
    rows = []
    log(f"APGRU vs nn.GRU: B={b}, T={t}, forward+backward, {torch.get_num_threads()} threads, "
        f"median of {cfg.reps} interleaved repetitions after {cfg.warmup} warm-up")
    for d in cfg.dims:
        x = torch.randn(b, t, d, requires_grad=True)
        props = torch.randn(b, t, cfg.property_dim)
        lengths = torch.full((b,), t, dtype=torch.long)
        gru = nn.GRU(d, d, batch_first=True)
        apgru = APGRU(d, d, cfg.property_dim)
        plain = APGRU(d, d, 0)
        timings = _interleaved(
            {
                "torch.nn.GRU": (gru, lambda: gru(x)[0]),
                "APGRU (property gate)": (apgru, lambda: apgru(x, lengths, props)[0]),
                "APGRU (no property)": (plain, lambda: plain(x, lengths)[0]),
            },
            x, cfg.warmup, cfg.reps,
        )
        med = {k: statistics.median(v) for k, v in timings.items()}
        row = {"dim": d, "ms": med, "all_ms": timings,
               "ratio": med["APGRU (property gate)"] / med["torch.nn.GRU"],
               "ratio_no_property": med["APGRU (no property)"] / med["torch.nn.GRU"]}
        rows.append(row)
        log(f"  d={d}: nn.GRU {med['torch.nn.GRU']:.1f} ms, APGRU {med['APGRU (property gate)']:.1f} ms, "
            f"APGRU without property {med['APGRU (no property)']:.1f} ms")
        log(f"ratio APGRU/nn.GRU [d={d}]: {row['ratio']:.2f}x (without property {row['ratio_no_property']:.2f}x) "
            f"(goal <= {GOAL_APGRU_RATIO}x: {'met' if row['ratio'] <= GOAL_APGRU_RATIO else 'NOT met'})")
    return {"config": asdict(cfg), "machine": machine_info(), "threads": torch.get_num_threads(), "rows": rows}


def render_apgru_markdown(results: Dict[str, Any], command: Optional[str] = None) -> str:
    cfg = results["config"]
    command = command or cfg.get("command") or "python benchmarks/apgru.py"
    m = results["machine"]
    out = [
        "## APGRU vs torch.nn.GRU (forward + backward)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Machine: {_machine_line(m)}. Date: {m['date']}. {results['threads']} threads.",
        "",
        f"B={cfg['batch_size']}, T={cfg['steps']}, input = hidden = d, property {cfg['property_dim']}-d, "
        f"full-length sequences; loss = sum of all states; median of {cfg['reps']} repetitions (the three "
        f"modules interleaved) after {cfg['warmup']} warm-up, milliseconds. APGRU without property is the "
        "same loop without the `P_u p_t` term (BaseModel's GRU path).",
        "",
        "| d | torch.nn.GRU | APGRU | APGRU without property | APGRU / nn.GRU | goal <= 1.2x |",
        "| ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for r in results["rows"]:
        ms = r["ms"]
        out.append(
            f"| {r['dim']} | {ms['torch.nn.GRU']:.1f} | {ms['APGRU (property gate)']:.1f} | "
            f"{ms['APGRU (no property)']:.1f} | {r['ratio']:.2f}x | "
            f"{'met' if r['ratio'] <= GOAL_APGRU_RATIO else 'not met'} |"
        )
    out += [
        "",
        "DESIGN.md's numbers (same kind of 2-core machine, torch 2.13 CPU, B=1024, T=50, 64-d): "
        + "; ".join(f"{k} {v:.0f} ms" for k, v in DESIGN_APGRU_MS.items())
        + f" (loop over unbind / nn.GRU = {DESIGN_APGRU_MS['gate loop over gi.unbind(0)'] / DESIGN_APGRU_MS['torch.nn.GRU']:.2f}x).",
    ]
    return "\n".join(out) + "\n"


# ============================================================================ command lines


def _sizes(text: str) -> List[int]:
    return [int(float(s)) for s in text.split(",") if s.strip()]


def _write_outputs(results: Dict[str, Any], markdown: str, out_dir: str, stem: str, log: Callable[[str], None]) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "markdown": os.path.join(out_dir, f"{stem}.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1)
    with open(paths["markdown"], "w") as f:
        f.write(markdown)
    return paths


def qps_parser() -> argparse.ArgumentParser:
    d = QPSConfig()
    p = argparse.ArgumentParser(
        description="MARN training samples/s: DMP-sharded vs an unsharded baseline, over item-table sizes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=_sizes, default=d.sizes, help="num_items values, comma-separated (1e6 ok)")
    p.add_argument("--preset", default=d.preset, choices=["small", "tiny", "paper"])
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per process and step")
    p.add_argument("--num-batches", type=int, default=d.num_batches, help="pre-generated batches, cycled")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--windows", type=int, default=d.windows, help="timed windows (median reported)")
    p.add_argument("--steps-per-window", type=int, default=d.steps_per_window)
    p.add_argument("--profile-steps", type=int, default=d.profile_steps, help="0: no profiler pass")
    p.add_argument("--tower-reps", type=int, default=d.tower_reps, help="item-tower-only timing passes (baseline)")
    p.add_argument("--sharding-types", type=lambda s: [x for x in s.split(",") if x], default=None,
                   help="comma-separated; default table_wise,column_wise on CPU (+row_wise on GPUs)")
    p.add_argument("--world-size", type=int, default=d.world_size)
    p.add_argument("--dedup", choices=["both", "on", "off"], default="both")
    p.add_argument("--per-slot-sizes", default=None,
                   help="sizes that also run without dedup: comma-separated, 'all', default the smallest")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--baseline-threads", type=int, default=d.baseline_threads)
    p.add_argument("--sharded-threads", type=int, default=d.sharded_threads)
    p.add_argument("--memory-fraction", type=float, default=d.memory_fraction,
                   help="skip runs predicted to need more than this share of available memory")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--out-dir", default=d.out_dir, help="qps.json, qps.md, qps.png go here")
    p.add_argument("--no-isolate", action="store_true", help="one set of processes per mode, not per run")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quick", action="store_true", help="seconds: tiny preset, one small size, few steps")
    return p


def qps_config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> QPSConfig:
    cfg = QPSConfig(
        sizes=args.sizes, preset=args.preset, batch_size=args.batch_size, num_batches=args.num_batches,
        warmup_steps=args.warmup_steps, windows=args.windows, steps_per_window=args.steps_per_window,
        profile_steps=args.profile_steps, tower_reps=args.tower_reps, sharding_types=args.sharding_types,
        world_size=args.world_size, dedup={"both": [True, False], "on": [True], "off": [False]}[args.dedup],
        baseline=not args.no_baseline, baseline_threads=args.baseline_threads,
        sharded_threads=args.sharded_threads, memory_fraction=args.memory_fraction, device=args.device,
        out_dir=args.out_dir, isolate=not args.no_isolate, seed=args.seed,
        command=" ".join(["python benchmarks/qps.py", *argv]),
    )
    if args.quick:
        # QUICK's values, except for options given explicitly on the command line.
        defaults = vars(qps_parser().parse_args([]))
        for key, value in QUICK.items():
            if key not in defaults or getattr(args, key) == defaults[key]:
                setattr(cfg, key, value)
    if args.per_slot_sizes == "all":
        cfg.per_slot_sizes = list(cfg.sizes)
    elif args.per_slot_sizes:
        cfg.per_slot_sizes = _sizes(args.per_slot_sizes)
    return cfg


def qps_main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = qps_parser().parse_args(argv)
    cfg = qps_config_from_args(args, argv)
    results = run_qps(cfg)
    print()
    for line in goal_lines(results["goals"]):
        print(line)
    markdown = render_qps_markdown(results)
    paths = _write_outputs(results, markdown, cfg.out_dir, "qps", print)
    png = os.path.join(cfg.out_dir, "qps.png")
    plot_qps(results, png)
    print(f"\nwrote {paths['json']}, {paths['markdown']}, {png}")
    return 0


def apgru_parser() -> argparse.ArgumentParser:
    d = APGRUConfig()
    p = argparse.ArgumentParser(
        description="APGRU forward+backward time against torch.nn.GRU of the same sizes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--steps", type=int, default=d.steps, help="sequence length T")
    p.add_argument("--dims", type=_sizes, default=d.dims, help="input = hidden sizes, comma-separated")
    p.add_argument("--property-dim", type=int, default=d.property_dim)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--reps", type=int, default=d.reps)
    p.add_argument("--threads", type=int, default=d.threads, help="0: torch's default")
    p.add_argument("--out-dir", default=d.out_dir, help="apgru.json, apgru.md go here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    return p


def apgru_main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = apgru_parser().parse_args(argv)
    cfg = APGRUConfig(
        batch_size=args.batch_size, steps=args.steps, dims=args.dims, property_dim=args.property_dim,
        warmup=args.warmup, reps=args.reps, threads=args.threads, out_dir=args.out_dir,
        command=" ".join(["python benchmarks/apgru.py", *argv]),
    )
    if args.quick:
        for key, value in APGRU_QUICK.items():
            setattr(cfg, key, value)
    results = run_apgru(cfg)
    paths = _write_outputs(results, render_apgru_markdown(results), cfg.out_dir, "apgru", print)
    print(f"\nwrote {paths['json']}, {paths['markdown']}")
    return 0
