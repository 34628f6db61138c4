"""Pipelined training (TrainConfig.pipeline, TorchRec's TrainPipelineSparseDist) in the training
loop: it is really used, trains as the plain loop does, is drained at every evaluation and
checkpoint (so a checkpoint's loader state is the number of batches trained), and stops honestly
on a non-finite loss, keeping the last good checkpoint. The killed 2-process run of
tests/test_train_resume.py runs with the pipeline on (the default)."""

import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torchrec.distributed.train_pipeline as train_pipeline

import marn_rec.models.marn as marn_module
from marn_rec.training.checkpoint import latest_checkpoint
from marn_rec.training.divergence import _all_ranks_finite_parameters, _finite
from marn_rec.training.loop import TrainConfig, TrainingDiverged, segment_lengths, train
from marn_rec.validation import is_tracing


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(preset="tiny", batch_size=16, steps=6, eval_every=3, eval_batches=2,
                out_dir=str(out), progress=False, recall_at=(1, 2))
    return TrainConfig(**{**base, **kw})


def _records(out: Path, split: str) -> List[Dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def test_segments_end_at_every_evaluation_and_checkpoint() -> None:
    assert list(segment_lengths(0, 10, [3, 100, 10])) == [3, 3, 3, 1]
    assert list(segment_lengths(4, 10, [3, 100])) == [2, 3, 1]
    assert list(segment_lengths(0, 4, [3, 0, 6])) == [3, 1]  # 0: no checkpoints but the last
    assert list(segment_lengths(6, 6, [3])) == []
    assert sum(segment_lengths(7, 1000, [100, 250])) == 993


def test_default_is_pipelined() -> None:
    assert TrainConfig().pipeline is True


def test_pipelined_loop_trains_as_the_plain_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    progress = train_pipeline.TrainPipelineSparseDist.progress

    def counting(self, it):
        calls.append(1)
        return progress(self, it)

    monkeypatch.setattr(train_pipeline.TrainPipelineSparseDist, "progress", counting)
    piped = train(_cfg(tmp_path / "piped", pipeline=True))
    assert len(calls) == 6  # one call per step: the pipeline trained every batch
    plain = train(_cfg(tmp_path / "plain", pipeline=False))
    assert len(calls) == 6
    # An evaluation in the middle (step 3) detaches the model; training goes on unchanged.
    for a, b in zip(_records(tmp_path / "piped", "train"), _records(tmp_path / "plain", "train")):
        assert a["step"] == b["step"]
        for key in ("ctr_loss", "total_loss", "d0_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
    assert piped["auc"] == pytest.approx(plain["auc"], abs=1e-6)
    assert piped["user_auc"] == pytest.approx(plain["user_auc"], abs=1e-6)


def test_stopped_pipelined_run_resumes_exactly_across_a_segment_boundary(tmp_path: Path) -> None:
    """Stop at step 4 (inside the evaluation segment 3-6), resume: the pipeline had read ahead of
    step 4 only up to the segment's end, so the loader state in the checkpoint is step 4's."""
    full = train(_cfg(tmp_path / "full", checkpoint_every=0))
    train(_cfg(tmp_path / "resumed", checkpoint_every=0, stop_after=4))
    assert latest_checkpoint(str(tmp_path / "resumed" / "checkpoints")).endswith("step_000000004")
    assert train(_cfg(tmp_path / "resumed", checkpoint_every=0)) == full



def test_run_with_replicated_tables_resumes_exactly(tmp_path: Path) -> None:
    """``replicate_max_rows``: the replicated tables and their optimizer state are checkpointed
    with the rest (under the optimizer's ``replicated`` group): a stopped run resumes to the
    uninterrupted result."""
    from torch.distributed.checkpoint import FileSystemReader

    full = train(_cfg(tmp_path / "full", checkpoint_every=0, replicate_max_rows=10))
    train(_cfg(tmp_path / "resumed", checkpoint_every=0, stop_after=4, replicate_max_rows=10))
    checkpoint = latest_checkpoint(str(tmp_path / "resumed" / "checkpoints"))
    keys = FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    replicated = [k for k in keys if ".replicated." in f".{k}." or k.startswith("replicated")]
    assert any("t_shop_id" in k for k in replicated), sorted(keys)[:20]
    assert train(_cfg(tmp_path / "resumed", checkpoint_every=0, replicate_max_rows=10)) == full

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From step 4 on the loss is NaN: the pipeline has applied that step by the time the loss is
    seen, so training stops and says so; the checkpoint of step 3 (finite) is the latest, and
    resuming from it (without the fault) ends where an uninterrupted run ends."""
    uninterrupted = train(_cfg(tmp_path / "clean", checkpoint_every=1))
    training_calls = []
    loss_fn = marn_module.marn_loss

    def faulty(logits, labels, aux, lam):
        losses = loss_fn(logits, labels, aux, lam)
        if not is_tracing() and torch.is_grad_enabled():
            training_calls.append(1)
            if len(training_calls) >= 4:
                losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(marn_module, "marn_loss", faulty)
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 4 .*already applied this step"):
        train(_cfg(tmp_path / "run", checkpoint_every=1))
    ckpt = latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert ckpt.endswith("step_000000003")
    monkeypatch.setattr(marn_module, "marn_loss", loss_fn)
    assert train(_cfg(tmp_path / "run", checkpoint_every=1)) == uninterrupted


def test_parameter_check_finds_non_finite_values() -> None:
    half = torch.full((1000,), 60000.0, dtype=torch.float16)
    assert _finite(half)  # its sum overflows fp16, not the float64 accumulation
    module = torch.nn.Linear(3, 2)
    assert _all_ranks_finite_parameters(module) == []
    with torch.no_grad():
        module.weight[0, 1] = float("inf")
    assert _all_ranks_finite_parameters(module) == ["weight"]


def test_fast_step_options(tmp_path: Path) -> None:
    """dense_dtype="bf16" (autocast where the hardware has native bf16) and the fused dense AdaGrad
    train, pipelined; the plain fp32 loop stays the default. Without native bf16 it is refused."""
    from marn_rec.training.loop import forward_context, native_bf16

    assert (TrainConfig().dense_dtype, TrainConfig().fused_optimizer) == ("fp32", False)
    with pytest.raises(ValueError, match="dense_dtype must be one of"):
        TrainConfig(dense_dtype="fp16")
    cpu = torch.device("cpu")
    if not native_bf16(cpu):
        with pytest.raises(ValueError, match="no native bf16"):
            forward_context(cpu, "bf16")
        return
    with forward_context(cpu, "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    result = train(_cfg(tmp_path, dense_dtype="bf16", fused_optimizer=True, steps=4, eval_every=4))
    assert 0.0 <= result["auc"] <= 1.0
    assert all(r["ctr_loss"] == r["ctr_loss"] for r in _records(tmp_path, "train"))  # not NaN


def test_command_line_flags(tmp_path: Path) -> None:
    from marn_rec.training.cli import parse_train_args

    cfg = parse_train_args(["--preset", "tiny", "--out-dir", str(tmp_path)])
    assert (cfg.pipeline, cfg.dense_dtype, cfg.fused_optimizer) == (True, "fp32", False)
    cfg = parse_train_args(["--preset", "tiny", "--out-dir", str(tmp_path), "--no-pipeline",
                            "--dense-dtype", "bf16", "--fused-optimizer"])
    assert (cfg.pipeline, cfg.dense_dtype, cfg.fused_optimizer) == (False, "bf16", True)
    assert cfg.replicate_max_rows == 0
    cfg = parse_train_args(["--preset", "tiny", "--out-dir", str(tmp_path), "--replicate-max-rows", "100"])
    assert cfg.replicate_max_rows == 100
    with pytest.raises(SystemExit):
        parse_train_args(["--preset", "tiny", "--out-dir", str(tmp_path), "--replicate-max-rows", "-1"])
