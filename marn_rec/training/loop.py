"""Training and evaluation of MARN on the synthetic Taobao stream, sharded with DMP.

``examples/train_taobao_synthetic.py`` is a thin command line over :func:`train`. Under torchrun
every process runs :func:`train`; NCCL is used on GPUs and gloo on CPU.
"""

import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from tqdm import tqdm

from marn_rec.training import metrics
from marn_rec.batch import MARNBatch
from marn_rec.training.checkpoint import (
    CheckpointError,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from marn_rec.config import PRESETS, MARNConfig, ablation
from marn_rec.data import SyntheticTaobao, SyntheticTaobaoConfig, make_loader
from marn_rec.training.sharding import (
    apply_embedding_optimizer,
    plan_summary,
    shard_model,
    training_optimizer,
)
from marn_rec.models.loss import adversarial_lambda
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.training.plots import plot_training


@dataclass
class TrainConfig:
    """One training run.

    Args:
        preset: model sizes, a key of :data:`marn_rec.config.PRESETS`.
        model: a Table 3 configuration (:data:`marn_rec.config.ABLATIONS`).
        seed: seed of the data stream and the initial weights.
        batch_size: samples per rank and step.
        steps: training steps (every rank takes each step).
        eval_every: steps between evaluations (and one at the end).
        eval_batches: evaluation batches in all ranks together (a fixed set).
        learning_rate: AdaGrad's, for tables and dense parameters (paper 4.1).
        out_dir: metrics.jsonl and checkpoints/ go here.
        checkpoint_every: steps between checkpoints (0: only at the end).
        resume: "auto" (from the latest complete checkpoint if any), "required", or "never".
        sharding_types: allowed sharding types, None for the planner's choice (on CPU,
            table-wise and column-wise).
        dedup: item tower once per unique item (True) or once per slot.
        num_workers: data generator processes per rank.
        recall_at: N of the cold-item recall@N (Table 5).
        data_overrides: fields of :class:`SyntheticTaobaoConfig` to change.
        progress: show a tqdm bar on rank 0.
        stop_after: stop (with a checkpoint) after this many steps, as a preemption would; a later
            run with the same configuration resumes and finishes.
    """

    preset: str = "small"
    model: str = "MARN"
    seed: int = 0
    batch_size: int = 256
    steps: int = 300
    eval_every: int = 100
    eval_batches: int = 16
    learning_rate: float = 0.1
    out_dir: str = "runs/taobao_synthetic"
    checkpoint_every: int = 0
    resume: str = "auto"
    sharding_types: Optional[List[str]] = None
    dedup: bool = True
    num_workers: int = 0
    recall_at: Tuple[int, ...] = (1, 3, 5)
    data_overrides: Dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    stop_after: Optional[int] = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.resume not in ("auto", "required", "never"):
            raise ValueError(f"resume must be auto, required or never, got {self.resume!r}")
        for name in ("batch_size", "steps", "eval_every", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def model_config(self) -> MARNConfig:
        return ablation(self.model, PRESETS[self.preset]())

    def data_config(self, world_size: int) -> SyntheticTaobaoConfig:
        return SyntheticTaobaoConfig.from_model_config(
            self.model_config(),
            seed=self.seed,
            batch_size=self.batch_size,
            num_train_batches=self.steps * world_size,
            num_eval_batches=self.eval_batches,
            **self.data_overrides,
        )


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


def _gather(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Concatenation over ranks (in rank order) of each tensor."""
    world = dist.get_world_size()
    parts: List[Optional[Dict[str, torch.Tensor]]] = [None] * world
    dist.all_gather_object(parts, {k: v.cpu() for k, v in tensors.items()})
    return {k: torch.cat([p[k] for p in parts]) for k in tensors}  # type: ignore[index]


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterator[MARNBatch], device: torch.device) -> Dict[str, torch.Tensor]:
    """Predictions and the evaluation facts of every sample, gathered from all ranks."""
    cols: Dict[str, List[torch.Tensor]] = {}
    for batch in batches:
        batch = batch.to(device)
        _, (_, logits, labels) = model(batch, 0.0)
        got = {"score": torch.sigmoid(logits), "label": labels, "user": batch.user_ids, **batch.meta}
        for k, v in got.items():
            cols.setdefault(k, []).append(v.detach().cpu())
    return _gather({k: torch.cat(v) for k, v in cols.items()})


def evaluation_metrics(e: Dict[str, torch.Tensor], recall_at: Sequence[int]) -> Dict[str, Any]:
    """The paper's metrics of the model and, from the true click probability, their Bayes ceiling."""
    score, label, user, truth = e["score"], e["label"], e["user"], e["click_prob"]
    cold = e["candidate_cold"].bool()
    level = e["candidate_popularity_level"]
    out: Dict[str, Any] = {
        "samples": int(label.numel()),
        "ctr": float(label.mean()),
        "auc": metrics.auc(score, label),
        "bayes_auc": metrics.auc(truth, label),
        "user_auc": metrics.user_auc(score, label, user),
        "bayes_user_auc": metrics.user_auc(truth, label, user),
        "auc_by_popularity_level": metrics.auc_by_level(score, label, level),
        "bayes_auc_by_popularity_level": metrics.auc_by_level(truth, label, level),
    }
    if bool(cold.any()):
        out["cold_auc"] = metrics.auc(score[cold], label[cold])
        out["bayes_cold_auc"] = metrics.auc(truth[cold], label[cold])
        out["cold_recall"] = metrics.recall_at_n(score, label, user, recall_at, mask=cold)
        out["bayes_cold_recall"] = metrics.recall_at_n(truth, label, user, recall_at, mask=cold)
    return out


# Settings that may change between a run and its resumption.
_NOT_CHECKED = ("out_dir", "resume", "progress", "num_workers", "eval_every", "checkpoint_every", "stop_after")


def _run_meta(cfg: TrainConfig, data_cfg: SyntheticTaobaoConfig) -> Dict[str, Any]:
    """What a checkpoint must agree on to be resumed (JSON round-tripped for comparison)."""
    run = {k: v for k, v in asdict(cfg).items() if k not in _NOT_CHECKED}
    return json.loads(json.dumps({"train": run, "data": asdict(data_cfg)}))


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Trains and evaluates; returns the last evaluation's metrics (on every rank).

    Writes ``metrics.jsonl`` (rank 0) and checkpoints under ``cfg.out_dir``.
    """
    rank, world, device = init_distributed()
    model_cfg = cfg.model_config()
    data_cfg = cfg.data_config(world)
    torch.manual_seed(cfg.seed)

    model = MARNTrain(MARN(model_cfg, device=torch.device("meta")))
    apply_embedding_optimizer(model, lr=cfg.learning_rate)
    dmp = shard_model(model, device, sharding_types=cfg.sharding_types)
    optimizer = training_optimizer(dmp, lr=cfg.learning_rate)
    if rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "sharding_plan.txt"), "w") as f:
            f.write(str(dmp.plan) + "\n")
        print(f"sharding plan ({world} ranks, {device.type}):\n{plan_summary(dmp.plan)}", flush=True)

    source = SyntheticTaobao(data_cfg)
    train_loader = make_loader(data_cfg, model_cfg, "train", rank, world, cfg.num_workers, cfg.dedup, source=source)
    eval_loader = make_loader(data_cfg, model_cfg, "eval", rank, world, 0, cfg.dedup, source=source)

    ckpt_root = os.path.join(cfg.out_dir, "checkpoints")
    meta = _run_meta(cfg, data_cfg)
    step = 0
    latest = latest_checkpoint(ckpt_root)
    if cfg.resume == "required" and latest is None:
        raise CheckpointError(f"resume=required but {ckpt_root} has no complete checkpoint")
    if cfg.resume == "never" and complete_checkpoints(ckpt_root):
        raise CheckpointError(f"resume=never but {ckpt_root} has checkpoints of an earlier run")
    if latest is not None and cfg.resume != "never":
        step = load_checkpoint(latest, dmp, optimizer, train_loader, meta)
        if rank == 0:
            print(f"resumed from {latest} at step {step}", flush=True)

    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if rank == 0:
        if step == 0 and os.path.exists(metrics_path):
            os.remove(metrics_path)

    def log(record: Dict[str, Any]) -> None:
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    last_eval: Dict[str, Any] = {}
    window: Dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0 or not cfg.progress, desc="train", dynamic_ncols=True)
    batches = iter(train_loader)
    dmp.train()
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.stop_after, cfg.steps)
    while step < last_step:
        batch = next(batches).to(device)
        lam = adversarial_lambda(step / max(cfg.steps - 1, 1), model_cfg.lambda0, model_cfg.gamma)
        loss, (losses, _, _) = dmp(batch, lam)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        for k, v in losses.items():
            window[k] = window.get(k, 0.0) + float(v)
        window_steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(losses['total']):.4f}", lam=f"{lam:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            log({"step": step, "split": "train", "lambda": lam,
                 "samples_per_s": window_steps * cfg.batch_size * world / elapsed,
                 **{k: v / window_steps for k, v in window.items()}})
            dmp.eval()
            last_eval = evaluation_metrics(predict(dmp, iter(eval_loader), device), cfg.recall_at)
            dmp.train()
            log({"step": step, "split": "eval", **last_eval})
            if rank == 0:
                tqdm.write(f"step {step}: auc {last_eval['auc']:.4f} (bayes {last_eval['bayes_auc']:.4f}) "
                           f"user_auc {last_eval['user_auc']:.4f} (bayes {last_eval['bayes_user_auc']:.4f})")
            window, window_steps, window_start = {}, 0, time.perf_counter()
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == last_step:
            save_checkpoint(ckpt_root, step, dmp, optimizer, train_loader, meta)
    bar.close()
    if not last_eval and step >= cfg.steps:
        # Resumed from the final checkpoint of a finished run: report its model again.
        if rank == 0:
            print(f"run already complete at step {step}; evaluating the restored model "
                  f"(new run: another --out-dir or --resume never)", flush=True)
        dmp.eval()
        last_eval = evaluation_metrics(predict(dmp, iter(eval_loader), device), cfg.recall_at)
    if rank == 0 and last_eval:
        plot_training(metrics_path, os.path.join(cfg.out_dir, "metrics.png"))
    return last_eval
