"""Training, checkpoint and resume: a stopped or killed run resumes to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from marn_rec.training.checkpoint import CheckpointError, latest_checkpoint
from marn_rec.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(preset="tiny", batch_size=16, steps=6, eval_every=3, eval_batches=2,
                out_dir=str(out), progress=False, recall_at=(1, 2))
    return TrainConfig(**{**base, **kw})


def _evals(out: Path) -> List[Dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "eval"]


def test_stopped_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full"))
    train(_cfg(tmp_path / "resumed", stop_after=4))
    assert latest_checkpoint(str(tmp_path / "resumed" / "checkpoints")).endswith("step_000000004")
    assert train(_cfg(tmp_path / "resumed", stop_after=4)) == {}  # already at step 4: no-op
    resumed = train(_cfg(tmp_path / "resumed"))
    # Bit-identical: data is a function of the batch index, every state is restored, CPU is
    # deterministic here; any skipped or repeated batch would change the weights and so the AUCs.
    assert resumed == full
    assert _evals(tmp_path / "resumed")[-1] == _evals(tmp_path / "full")[-1]
    assert {"auc", "bayes_auc", "user_auc", "auc_by_popularity_level"} <= set(full)
    # Running a finished run again restores its final model and reports the same metrics.
    assert train(_cfg(tmp_path / "resumed")) == full
    assert (tmp_path / "full" / "metrics.png").stat().st_size > 10_000


def test_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    train(_cfg(tmp_path, stop_after=2))
    with pytest.raises(CheckpointError, match=r"different run:\n  train.learning_rate: checkpoint 0.1, this run 0.2"):
        train(_cfg(tmp_path, learning_rate=0.2))
    with pytest.raises(CheckpointError, match=r"train.dense_initial_accumulator: checkpoint 0.1, this run 0.001"):
        train(_cfg(tmp_path, dense_initial_accumulator=1e-3))
    with pytest.raises(CheckpointError, match="resume=never"):
        train(_cfg(tmp_path, resume="never"))
    with pytest.raises(CheckpointError, match="has no complete checkpoint"):
        train(_cfg(tmp_path / "empty", resume="required"))


def test_damaged_checkpoint_is_refused(tmp_path: Path) -> None:
    train(_cfg(tmp_path, stop_after=2))
    ckpt = Path(latest_checkpoint(str(tmp_path / "checkpoints")))
    shard = next(ckpt.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        train(_cfg(tmp_path))
    (ckpt / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read meta.json"):
        train(_cfg(tmp_path))


def _torchrun(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "examples" / "train_taobao_synthetic.py"), "--preset", "tiny",
           "--batch-size", "16", "--steps", "16", "--eval-every", "8", "--eval-batches", "2",
           "--checkpoint-every", "2", "--no-progress", "--out-dir", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


@pytest.mark.distributed
def test_killed_two_process_run_resumes(tmp_path: Path) -> None:
    full = _torchrun(tmp_path / "full")
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out[-3000:]

    killed = _torchrun(tmp_path / "killed")
    deadline = time.time() + 240
    while latest_checkpoint(str(tmp_path / "killed" / "checkpoints")) is None:
        assert killed.poll() is None, "finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # every process of the job, mid-run
    killed.wait()
    assert not (tmp_path / "killed" / "checkpoints" / "step_000000016").exists()

    again = _torchrun(tmp_path / "killed")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert "resumed from" in out
    assert _evals(tmp_path / "killed")[-1] == _evals(tmp_path / "full")[-1]
