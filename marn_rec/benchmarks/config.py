"""What a throughput benchmark runs: the modes compared, the options of a sweep
(:class:`QPSConfig`, with its ``--quick`` preset) and one measurement (:class:`RunSpec`).

A sharded run has two more dimensions: ``pipeline`` (the plain loop, or TorchRec's
``TrainPipelineSparseDist``, which starts the next batch's input all-to-all before this batch's
forward) and ``table_dtype`` (the item tower's tables in fp32 or fp16). The baseline is fp32 and
unpipelined (an unsharded model has no input distribution to overlap, and ``torch.optim.Adagrad``
would keep an fp16 state for fp16 tables)."""

from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional

import torch

from marn_rec.config import MARNConfig

BASELINE = "baseline"
TABLE_WISE = "table_wise"
COLUMN_WISE = "column_wise"
ROW_WISE = "row_wise"
CPU_SHARDING_TYPES = (TABLE_WISE, COLUMN_WISE)  # gloo has no reduce-scatter for row-wise
GPU_SHARDING_TYPES = (TABLE_WISE, COLUMN_WISE, ROW_WISE)

# Where ``benchmarks/*.py`` write: a scratch folder by default, so that trying a command never
# overwrites the recorded figures; ``--update-records`` writes over the records instead.
SCRATCH_DIR = "runs/benchmarks"
RECORDS_DIR = "benchmarks/results"


def model_config(preset: str, num_items: int, table_dtype: str = "fp32") -> MARNConfig:
    """The preset's MARN with ``num_items`` rows in the item table, tables in ``table_dtype``."""
    from marn_rec.config import PRESETS

    cfg = PRESETS[preset]()
    return replace(cfg, tower=replace(cfg.tower, num_items=num_items, table_dtype=table_dtype))


def run_label(mode: str, pipeline: bool = False, table_dtype: str = "fp32") -> str:
    """How a run is named in tables: ``column_wise``, ``column_wise+pipeline``, ``table_wise fp16``."""
    return mode + ("+pipeline" if pipeline else "") + (f" {table_dtype}" if table_dtype != "fp32" else "")


FAST_STEP_MODES = ("off", "smallest", "all")
FAST_DTYPES = ("bf16", "fp32")


@dataclass
class QPSConfig:
    """Options of :func:`~marn_rec.benchmarks.qps.run_qps` (the flags of ``benchmarks/qps.py``)."""

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
    out_dir: str = f"{SCRATCH_DIR}/qps"
    isolate: bool = True  # a fresh set of processes per run (per-run peak memory, OOM isolation)
    timeout_s: float = 1800.0
    command: str = ""
    # Sharded runs: plain loop (False) and/or TrainPipelineSparseDist (True); item tower tables.
    pipeline: List[bool] = field(default_factory=lambda: [False, True])
    table_dtypes: List[str] = field(default_factory=lambda: ["fp32"])
    # Skip runs predicted to need more than this many GiB in all (all processes of the run on the
    # host, the largest process on a GPU), as if the machine had only this much; None: no cap.
    memory_budget_gib: Optional[float] = None
    # The compute floor (marn_rec.benchmarks.floor), measured in the baseline process of the
    # smallest size (dedup on); ``floor_only``: that run alone, no sharded runs.
    floor: bool = True
    floor_reps: int = 5
    floor_only: bool = False
    # The fast step against the old one in interleaved windows: the training forward under bf16
    # autocast (where the hardware has native bf16) and the dense AdaGrad's fused kernel. "smallest":
    # in the runs of the smallest size with dedup on (the default: the ratio in every full sweep, at the cost of
    # one size's extra windows), "all": every run, "off".
    fast_step: str = "smallest"
    # The fast step's dense dtype: "bf16" (autocast) or "fp32" (the current kernels and the fused
    # AdaGrad alone, whose predictions equal the old step's to rounding).
    fast_dtype: str = "bf16"
    # Every benchmark process keeps the memory a step frees mapped (training: --keep-freed-memory)
    # (marn_rec.training.allocator). Besides the speed, this keeps the interleaved windows fair:
    # with glibc's malloc as it comes, the old step ran 20-25% slower in a process where the fast
    # step had run than alone (benchmarks/RESULTS.md, "Speed and scale", item 2).
    keep_freed_memory: bool = True
    # Pipelined runs also build a plain-loop twin of the model (twice the tables' memory) and time
    # the two in interleaved windows: the pipeline's effect, immune to a drift of the machine's load.
    interleave_pipeline: bool = False
    # Sharded runs replicate the pooled tables of at most this many rows on every rank (TorchRec's
    # data_parallel: no all-to-all for their lookups; training: --replicate-max-rows); 0: none.
    replicate_max_rows: int = 0
    # Pipelined sharded runs are also timed against the baseline in windows taken in turn by the
    # two process sets, both alive at once: the sharded/baseline ratio immune to a drift of the
    # machine between runs (both models' memory at once).
    interleave_baseline: bool = False

    def fast_step_at(self, num_items: int, dedup: bool = True) -> bool:
        """Whether a run of ``num_items`` (item tower over unique items if ``dedup``) compares the
        fast step with the old one."""
        if self.fast_dtype not in FAST_DTYPES:
            raise ValueError(f"fast_dtype must be one of {FAST_DTYPES}, got {self.fast_dtype!r}")
        if self.fast_step not in FAST_STEP_MODES:
            raise ValueError(f"fast_step must be one of {FAST_STEP_MODES}, got {self.fast_step!r}")
        return self.fast_step == "all" or (
            self.fast_step == "smallest" and dedup and num_items == min(self.sizes))

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


# ``--quick``: seconds, end to end (in-process baseline, one set of processes per mode).
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
    floor_reps=1,
    isolate=False,
    timeout_s=300.0,
)


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
    pipeline: bool = False
    table_dtype: str = "fp32"
    floor: bool = False  # also measure the compute floor (baseline only)

    @property
    def label(self) -> str:
        return run_label(self.mode, self.pipeline, self.table_dtype)

