"""The training loop stops loudly on divergence and never loses or duplicates metrics."""

import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

from marn_rec.training.loop import TrainConfig, TrainingDiverged, train


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(preset="tiny", batch_size=16, steps=6, eval_every=3, eval_batches=2,
                out_dir=str(out), progress=False, recall_at=(1, 2), checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


def _records(out: Path) -> List[Dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    # An absurd learning rate blows the weights up within a few steps.
    with pytest.raises(TrainingDiverged, match="non-finite|CTR loss"):
        train(_cfg(tmp_path, learning_rate=1e30, steps=40, eval_every=20))
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*"))
    # Whatever was saved was saved before the divergence was seen: it holds finite weights, so a
    # run with a sane learning rate is refused only because its configuration differs.
    assert all((c / "COMPLETE").exists() for c in checkpoints)


def test_resumed_run_rewrites_later_metrics_instead_of_duplicating_them(tmp_path: Path) -> None:
    train(_cfg(tmp_path))  # steps 1-6, evaluations at 3 and 6, checkpoints at 2, 4, 6
    full = _records(tmp_path)
    # Roll back to the checkpoint of step 4, as if the run had died after its last evaluation.
    shutil.rmtree(tmp_path / "checkpoints" / "step_000000006")
    train(_cfg(tmp_path))
    again = _records(tmp_path)
    steps = [(r["step"], r["split"]) for r in again]
    assert len(steps) == len(set(steps)), steps  # no record twice
    evals = lambda records: [r for r in records if r["split"] == "eval"]  # noqa: E731
    assert evals(again) == evals(full)  # the same values: resume is exact
    # (train records average the steps since the last record, so the resumed window is shorter)
    assert [(r["step"], r["split"]) for r in again] == [(r["step"], r["split"]) for r in full]


def test_fresh_start_moves_an_earlier_runs_metrics_aside(tmp_path: Path) -> None:
    train(_cfg(tmp_path))
    before = (tmp_path / "metrics.jsonl").read_text()
    shutil.rmtree(tmp_path / "checkpoints")
    train(_cfg(tmp_path, steps=3, eval_every=3))
    kept = [p for p in tmp_path.glob("metrics.jsonl.*")]
    assert len(kept) == 1 and kept[0].read_text() == before
    assert [r["step"] for r in _records(tmp_path)] == [3, 3]
