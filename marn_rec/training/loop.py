"""Training and evaluation of MARN on the synthetic Taobao stream, sharded with DMP.

``examples/train_taobao_synthetic.py`` is a thin command line over :func:`train`. Under torchrun
every process runs :func:`train`; NCCL is used on GPUs and gloo on CPU.

Pipelined training (``TrainConfig.pipeline``, the default): TorchRec's ``TrainPipelineSparseDist``
starts the next batch's input distribution (the sparse features' all-to-all) before this batch's
forward, so communication runs behind compute. The pipeline reads up to two batches ahead of the
step it trains, so the loop feeds it one *segment* at a time: the batches up to the next evaluation
or checkpoint step (:func:`segment_lengths`). At the end of a segment the pipeline has trained every
batch it read, the loader has yielded exactly the trained batches, and a checkpoint records the
loader's own state: resume stays bit-identical, whatever the loader. Evaluation detaches the model
from the pipeline (its sharded modules get their own forward back) and the next segment re-attaches
it. Batches are validated (:func:`marn_rec.validation.validated_batches`) before they enter it.
"""

import itertools
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from tqdm import tqdm

from marn_rec.batch import MARNBatch
from marn_rec.training.allocator import keep_freed_memory
from marn_rec.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)
from marn_rec.config import PRESETS, REFERENCE, MARNConfig, ablation
from marn_rec.features import TABLE_DTYPES
from marn_rec.data import SyntheticTaobaoConfig
from marn_rec.data.prepared import cold_item_dropout_problem
from marn_rec.training.sharding import (
    ADAGRAD_INITIAL_ACCUMULATOR,
    ATTENTION_INITIAL_ACCUMULATOR,
    apply_embedding_optimizer,
    initial_accumulator_problem,
    plan_summary,
    shard_model,
    training_optimizer,
)
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.training.divergence import (
    DIVERGENCE_CTR_LOSS,
    TrainingDiverged,
    _all_finite,
    _all_ranks_finite_parameters,
)
from marn_rec.training.evaluation import evaluate
from marn_rec.training.plots import plot_training
from marn_rec.training.run_lock import lock_out_dir
from marn_rec.training.run_meta import meta_defaults, run_meta
from marn_rec.training.sources import prepared_data, synthetic_data
from marn_rec.validation import validated_batches


@dataclass
class TrainConfig:
    """One training run.

    Args:
        preset: model sizes, a key of :data:`marn_rec.config.PRESETS`.
        model: a Table 3 configuration (:data:`marn_rec.config.ABLATIONS`), a diagnostic one
            (:data:`marn_rec.config.DIAGNOSTIC_ABLATIONS`), or
            :data:`marn_rec.config.REFERENCE` (synthetic stream: the true-factor ceiling).
        seed: seed of the data stream and the initial weights.
        batch_size: samples per rank and step.
        steps: training steps (every rank takes each step).
        eval_every: steps between evaluations (and one at the end).
        eval_batches: evaluation batches in all ranks together (a fixed set).
        learning_rate: AdaGrad's, for tables and dense parameters (paper 4.1).
        lambda0: eq. 10's lambda0 (section 4.1: 0.05); None keeps the preset's.
        gamma: the lambda schedule's gamma (section 4.1: 10); None keeps the preset's.
        out_dir: metrics.jsonl and checkpoints/ go here.
        checkpoint_every: steps between checkpoints (0: only at the end); a killed run loses at
            most this many steps.
        resume: "auto" (from the latest complete checkpoint if any), "required", or "never".
        sharding_types: allowed sharding types, None for the planner's choice (on CPU,
            table-wise and column-wise).
        replicate_max_rows: replicate the pooled tables of at most this many rows on every rank
            (TorchRec's ``data_parallel``: their lookups need no all-to-all; 0: none). They
            train as table-wise tables do (:mod:`marn_rec.training.sharding`).
        dedup: item tower once per unique item (True) or once per slot.
        num_workers: data generator processes per rank.
        recall_at: N of the cold-item recall@N (Table 5).
        data_overrides: fields of :class:`SyntheticTaobaoConfig` to change.
        data_dir: a prepared directory of real data (:mod:`marn_rec.data.prepare`) to train on
            instead of the synthetic stream; its manifest sets the model's features.
        progress: show a tqdm bar on rank 0.
        stop_after: stop (with a checkpoint) after this many steps, as a preemption would; a later
            run with the same configuration resumes and finishes.
        pipeline: train with TorchRec's ``TrainPipelineSparseDist`` (the next batch's input
            distribution overlaps this batch's forward and backward); False: the plain loop
            (forward, backward, optimizer step, one batch at a time). Same losses (to float
            rounding; ``tests/test_train_pipeline.py``); may change on resume.
        table_dtype: storage of the item tower's tables, "fp32" or "fp16"
            (:attr:`marn_rec.config.ItemTowerConfig.table_dtype`): fp16 holds twice the rows per
            byte; lookups still return fp32.
        dense_dtype: "fp32", or "bf16": the training forward runs under
            ``torch.autocast(dtype=torch.bfloat16)`` (matmuls and convolutions in bf16; weights,
            gradients, optimizer state, tables and evaluation stay fp32), only where the hardware
            has native bf16 (AVX512-BF16 or AMX on CPUs; checked). Predictions of the same weights
            differ from fp32 by bf16 rounding (see benchmarks/RESULTS.md, "Speed and scale").
        keep_freed_memory: keep the memory a step frees mapped for the next step (glibc's malloc;
            :mod:`marn_rec.training.allocator`): fewer page faults, same arithmetic; the process
            keeps up to 1 GiB of freed memory. Nothing happens where libc is not glibc. Off by
            default: the 2-process tiny run aborted at exit ("terminate called without an active
            exception") in 2 of 12 tries with it, 1 of 26 without (0 of 12 at the code of
            2026-12-01); whether it makes that abort likelier is not settled.
        fused_optimizer: the dense AdaGrad's fused kernel instead of its Python loop (same update,
            last-bit rounding differs).
        dense_initial_accumulator: the dense AdaGrad's initial accumulator (TensorFlow's 0.1 by
            default, :data:`marn_rec.training.sharding.ADAGRAD_INITIAL_ACCUMULATOR`): until a
            parameter's summed squared gradients reach it, AdaGrad is SGD at lr / sqrt(it).
        attention_initial_accumulator: the same for APGRU's candidate attention alone (0 by
            default, :data:`marn_rec.training.sharding.ATTENTION_INITIAL_ACCUMULATOR`: plain
            AdaGrad, whose step does not depend on the gradient's scale); None: as the other dense
            parameters. Checkpoints from before the field (which ran as None) are accepted at the
            default and resume exactly: the optimizer's sums come from the checkpoint.
        fusion_initial_accumulator: the same for MAF's attention (eq. 3) alone; None (default): as
            the other dense parameters.
        cold_item_dropout: 0 (not in the paper). With ``data_dir``, each item of a training batch
            is shown with this probability as an item the training period never observed (its
            ``item_id`` out of vocabulary, its training-period counts missing), so that the model
            learns to score cold items from the rest of their features (DropoutNet, Volkovs et
            al. 2017); :class:`marn_rec.data.prepared.PreparedBatchDataset`.
    """

    preset: str = "small"
    model: str = "MARN"
    seed: int = 0
    batch_size: int = 256
    steps: int = 300
    eval_every: int = 100
    eval_batches: int = 16
    learning_rate: float = 0.1
    lambda0: Optional[float] = None
    gamma: Optional[float] = None
    out_dir: str = "runs/taobao_synthetic"
    checkpoint_every: int = 100
    resume: str = "auto"
    sharding_types: Optional[List[str]] = None
    replicate_max_rows: int = 0
    dedup: bool = True
    num_workers: int = 0
    recall_at: Tuple[int, ...] = (1, 3, 5)
    data_overrides: Dict[str, Any] = field(default_factory=dict)
    data_dir: Optional[str] = None
    progress: bool = True
    stop_after: Optional[int] = None
    pipeline: bool = True
    table_dtype: str = "fp32"
    dense_dtype: str = "fp32"
    fused_optimizer: bool = False
    keep_freed_memory: bool = False
    dense_initial_accumulator: float = ADAGRAD_INITIAL_ACCUMULATOR
    attention_initial_accumulator: Optional[float] = ATTENTION_INITIAL_ACCUMULATOR
    fusion_initial_accumulator: Optional[float] = None
    cold_item_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.table_dtype not in TABLE_DTYPES:
            raise ValueError(f"table_dtype must be one of {TABLE_DTYPES}, got {self.table_dtype!r}")
        if self.dense_dtype not in DENSE_DTYPES:
            raise ValueError(f"dense_dtype must be one of {DENSE_DTYPES}, got {self.dense_dtype!r}")
        if self.resume not in ("auto", "required", "never"):
            raise ValueError(f"resume must be auto, required or never, got {self.resume!r}")
        if self.replicate_max_rows < 0:
            raise ValueError(f"replicate_max_rows must be >= 0 (0: none), got {self.replicate_max_rows}")
        for name in ("batch_size", "steps", "eval_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if problem := initial_accumulator_problem(self.dense_initial_accumulator):
            raise ValueError(f"dense_initial_accumulator {problem}")
        for name in ("attention_initial_accumulator", "fusion_initial_accumulator"):
            a = getattr(self, name)
            if a is not None and (problem := initial_accumulator_problem(a)):
                raise ValueError(f"{name} (or None) {problem}")
        if problem := cold_item_dropout_problem(self.cold_item_dropout):
            raise ValueError(f"cold_item_dropout {problem}")
        if self.cold_item_dropout and not self.data_dir:
            raise ValueError("cold_item_dropout needs data_dir (a prepared directory, where row 0 of "
                             "item_id and bucket 0 of a statistic mean 'never observed')")
        if self.model == REFERENCE and self.data_dir:
            raise ValueError(f"model {REFERENCE!r} maps the synthetic generator's true item factors: "
                             f"it cannot train on data_dir {self.data_dir!r}")

    def model_config(self) -> MARNConfig:
        config = ablation(self.model, PRESETS[self.preset]())
        changes: Dict[str, Any] = {
            k: getattr(self, k) for k in ("lambda0", "gamma") if getattr(self, k) is not None
        }
        if self.table_dtype != config.tower.table_dtype:
            changes["tower"] = replace(config.tower, table_dtype=self.table_dtype)
        return replace(config, **changes) if changes else config

    def data_config(self, world_size: int) -> SyntheticTaobaoConfig:
        return SyntheticTaobaoConfig.from_model_config(
            self.model_config(),
            seed=self.seed,
            batch_size=self.batch_size,
            num_train_batches=self.steps * world_size,
            num_eval_batches=self.eval_batches,
            **self.data_overrides,
        )


DENSE_DTYPES = ("fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (CPU: AVX512-BF16 or AMX, as oneDNN
    reports it; CUDA: compute capability 8.0 and up)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def forward_context(device: torch.device, dense_dtype: str) -> Any:
    """The context the training forward runs in: ``torch.autocast`` to bf16, or nothing.

    Raises:
        ValueError: bf16 asked for on hardware without native bf16 (it would run slower, emulated).
    """
    import contextlib

    if dense_dtype == "fp32":
        return contextlib.nullcontext()
    if not native_bf16(device):
        raise ValueError(f"dense_dtype=bf16: this {device.type} has no native bf16 (emulated bf16 is "
                         "slower than fp32); use fp32")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> Tuple[int, int, torch.device]:
    """Joins torchrun's process group (or a one-process gloo group); NCCL on GPUs, gloo on CPU."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # plain `python`: a group of one
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, dist.get_world_size(), device


def segment_lengths(start: int, last_step: int, boundaries: Sequence[int]) -> Iterator[int]:
    """Steps of each pipeline segment from ``start`` to ``last_step``: a segment ends at every
    multiple of a positive value of ``boundaries`` (evaluation, checkpoint) and at ``last_step``.

    >>> list(segment_lengths(4, 10, [3, 100]))
    [2, 3, 1]
    """
    step = start
    while step < last_step:
        ends = [last_step] + [(step // b + 1) * b for b in boundaries if b > 0]
        end = min(ends)
        yield end - step
        step = end


def _prepare_metrics_file(path: str, step: int) -> None:
    """Resuming at ``step``: keep the records up to it (later ones are rewritten, never
    duplicated). Starting afresh: move an earlier run's file aside, never delete it."""
    if not os.path.exists(path):
        return
    if step == 0:
        kept = f"{path}.{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(path, kept)
        print(f"an earlier run's {os.path.basename(path)} was moved to {kept}", flush=True)
        return
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    with open(path, "w") as f:
        for r in records:
            if r.get("step", 0) <= step:
                f.write(json.dumps(r) + "\n")


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Trains and evaluates; returns the last evaluation's metrics (on every rank).

    Every batch is checked (:func:`marn_rec.validation.validate_batch`) before it moves to the
    device. Writes ``metrics.jsonl``, ``metrics.png`` and ``sharding_plan.txt`` (rank 0) and
    checkpoints under ``cfg.out_dir``.

    Raises:
        TrainingDiverged: non-finite loss or parameters, or an exploded CTR loss; the last good
            checkpoint is kept.
        CheckpointError: a checkpoint that cannot be resumed from.
        OutDirInUse: another live run holds ``cfg.out_dir`` (a CheckpointError).
    """
    if cfg.keep_freed_memory:
        keep_freed_memory()
    rank, world, device = init_distributed()
    with lock_out_dir(cfg.out_dir):  # one run per out-dir at a time (marn_rec.training.run_lock)
        return _train(cfg, rank, world, device)


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> Dict[str, Any]:
    """:func:`train` once the process group is up and the out-dir is this run's."""
    ckpt_root = os.path.join(cfg.out_dir, "checkpoints")
    latest = resume_point(ckpt_root, cfg.resume)  # refuses before anything is built
    torch.manual_seed(cfg.seed)
    base = cfg.model_config()
    data = (
        prepared_data(cfg, base, rank, world)
        if cfg.data_dir
        else synthetic_data(cfg, base, rank, world)
    )
    model_cfg = data.model_config
    train_loader = data.train_loader

    marn = MARN(model_cfg, device=torch.device("meta"), validate=False)
    if cfg.model == REFERENCE:
        # The ceiling: the learned item tower replaced by a map of the generator's true factors
        # (marn_rec.models.reference); DMP materialises it like the dense towers.
        from marn_rec.models.reference import install_reference_tower

        install_reference_tower(marn, cfg.data_config(world))
    model = MARNTrain(marn, total_steps=cfg.steps)
    apply_embedding_optimizer(model, lr=cfg.learning_rate)
    dmp = shard_model(model, device, sharding_types=cfg.sharding_types,
                      replicate_max_rows=cfg.replicate_max_rows)
    optimizer = training_optimizer(dmp, lr=cfg.learning_rate, fused=cfg.fused_optimizer,
                                   initial_accumulator_value=cfg.dense_initial_accumulator,
                                   attention_initial_accumulator=cfg.attention_initial_accumulator,
                                   fusion_initial_accumulator=cfg.fusion_initial_accumulator)
    forward_in = lambda: forward_context(device, cfg.dense_dtype)  # noqa: E731
    forward_in()  # refuses bf16 without native support, before anything is trained
    if rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "sharding_plan.txt"), "w") as f:
            f.write(str(dmp.plan) + "\n")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        nodes = f"{world // local} node(s) x {local} (LOCAL_WORLD_SIZE)"
        print(f"sharding plan ({world} ranks: {nodes}, {device.type}):\n{plan_summary(dmp.plan)}", flush=True)

    meta = run_meta(cfg, model_cfg, data.description)
    step = 0
    if latest is not None:
        defaults = meta_defaults(cfg, model_cfg, SyntheticTaobaoConfig if cfg.data_dir is None else None)
        step = load_checkpoint(latest, dmp, optimizer, train_loader, meta, defaults)
        if rank == 0:
            print(f"resumed from {latest} at step {step}", flush=True)
    train_module = dmp.module  # MARNTrain, unwrapped: its schedule and logged losses
    if int(train_module.step) != step:
        raise CheckpointError(
            f"{latest}: the model's schedule is at step {int(train_module.step)}, "
            f"the checkpoint says {step}"
        )

    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if rank == 0:
        _prepare_metrics_file(metrics_path, step)

    def log(record: Dict[str, Any]) -> None:
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate_now() -> Dict[str, Any]:
        bad = _all_ranks_finite_parameters(dmp)
        if bad:
            raise TrainingDiverged(f"non-finite parameters after step {step}: {bad[:5]}")
        final = step >= cfg.steps or data.curve_eval_batches is None
        batches = data.eval_batches() if final else data.curve_eval_batches()
        return evaluate(dmp, batches, device, model_cfg, cfg.recall_at)

    last_eval: Dict[str, Any] = {}
    window: Dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress, desc="train", dynamic_ncols=True)
    # Checked before a batch moves to the device or enters the pipeline.
    batches = validated_batches(train_loader, model_cfg)
    dmp.train()
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.stop_after, cfg.steps)
    pipeline = None
    if cfg.pipeline:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

        def model_forward(batch: MARNBatch) -> Any:
            with forward_in():
                return dmp(batch)

        pipeline = TrainPipelineSparseDist(dmp, optimizer, device, custom_model_fwd=model_forward)
    # Pipeline segments end at every evaluation and checkpoint step (see the module docstring).
    segments = segment_lengths(step, last_step, [cfg.eval_every, cfg.checkpoint_every, cfg.steps])
    segment: Optional[Iterator[MARNBatch]] = None
    segment_left = 0
    while step < last_step:
        lam = float(train_module.adv_lambda())
        if pipeline is None:
            batch = next(batches).to(device)
            with forward_in():
                loss, _ = dmp(batch)
            if not _all_finite(loss):
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1} (lambda {lam:.4g}); nothing of this step "
                    f"was applied; the last checkpoint in {ckpt_root} is intact"
                )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            if segment_left == 0:
                segment_left = next(segments)
                segment = itertools.islice(batches, segment_left)
            loss, _, _ = pipeline.progress(segment)
            segment_left -= 1
            if not _all_finite(loss):
                # The pipeline runs forward, backward and optimizer step in one call: the step is
                # applied by the time its loss is seen. No checkpoint is written after it.
                raise TrainingDiverged(
                    f"non-finite loss at step {step + 1} (lambda {lam:.4g}); the pipeline had "
                    f"already applied this step to the weights in memory, which are abandoned; "
                    f"the last checkpoint in {ckpt_root} (written before this step, with finite "
                    f"parameters) is intact"
                )
        step += 1
        logged = {**train_module.losses, **train_module.diagnostics}
        for k, v in logged.items():
            window[k] = window.get(k, 0.0) + float(v)
        window_steps += 1
        bar.update(1)
        bar.set_postfix(ctr_loss=f"{float(train_module.losses['ctr']):.4f}", lam=f"{lam:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            means = {k: v / window_steps for k, v in window.items()}
            log({"step": step, "split": "train", "lambda": lam,
                 "samples_per_s": window_steps * cfg.batch_size * world / elapsed,
                 **{(f"{k}_loss" if k in train_module.losses else k): v for k, v in means.items()}})
            if means.get("ctr", 0.0) > DIVERGENCE_CTR_LOSS:
                raise TrainingDiverged(
                    f"CTR loss {means['ctr']:.4g} over steps {step - window_steps + 1}-{step} "
                    f"(a constant predictor scores 0.69); lambda {lam:.4g}"
                )
            if pipeline is not None:
                # The segment ended here: nothing in flight. The sharded modules get their own
                # forward back for evaluation; the next segment's first step re-attaches them.
                pipeline.detach()
            last_eval = evaluate_now()
            log({"step": step, "split": "eval", **last_eval})
            if rank == 0:
                tqdm.write(_eval_line(step, last_eval))
            window, window_steps, window_start = {}, 0, time.perf_counter()
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == last_step:
            # Only finite weights are written, so the latest checkpoint is always a good one.
            bad = _all_ranks_finite_parameters(dmp)
            if bad:
                raise TrainingDiverged(
                    f"non-finite parameters after step {step}: {bad[:5]}; no checkpoint was written "
                    f"for it; the last checkpoint in {ckpt_root} is intact"
                )
            # Without a pipeline, and with one at the end of its segment, the loader has yielded
            # exactly the batches trained so far: its state is the resume point.
            save_checkpoint(ckpt_root, step, dmp, optimizer, train_loader, meta)
    bar.close()
    if not last_eval and step >= cfg.steps:
        # Resumed from the final checkpoint of a finished run: report its model again.
        if rank == 0:
            print(f"run already complete at step {step}; evaluating the restored model "
                  f"(new run: another --out-dir or --resume never)", flush=True)
        last_eval = evaluate_now()
    if rank == 0 and last_eval:
        plot_training(metrics_path, os.path.join(cfg.out_dir, "metrics.png"))
    return last_eval


def _eval_line(step: int, e: Dict[str, Any]) -> str:
    parts = [f"step {step}:"]
    for key in ("auc", "user_auc", "cold_auc"):
        if key in e:
            bayes = f" (bayes {e['bayes_' + key]:.4f})" if f"bayes_{key}" in e else ""
            parts.append(f"{key} {e[key]:.4f}{bayes}")
    return " ".join(parts)
