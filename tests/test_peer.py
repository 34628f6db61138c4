"""The DIN peer (marn_rec/benchmarks/peer.py, benchmarks/peer/din_worker.py): its scores are checked
to be of the prepared test samples and scored with marn_rec's metrics; and, where the peer
environment exists (bash benchmarks/peer/setup.sh; CI does not build it), a tiny DIN run end to end
and the t quantiles of marn_rec.training.ablation against scipy's."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from marn_rec.benchmarks.peer import PEER_PYTHON, peer_python_problem, run_peer, score_run, prepared_test_facts
from marn_rec.benchmarks.peer import write_peer_report
from marn_rec.training.ablation.statistics import student_t_quantile
from test_ablation_study import write_movielens_like

needs_peer = pytest.mark.skipif(
    not os.path.exists(PEER_PYTHON), reason="benchmarks/peer/.venv absent (bash benchmarks/peer/setup.sh)"
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    return write_movielens_like(tmp_path_factory.mktemp("peer_movielens_like"))


def _fake_npz(path: Path, prepared: str, scores: np.ndarray, **changes) -> str:
    facts = {**prepared_test_facts(prepared), **changes}
    np.savez(path, scores=scores, steps_per_epoch=7, seconds=np.ones(len(scores)), **facts)
    return str(path)


def _mann_whitney_auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def test_scores_are_scored_with_marn_metrics(prepared: str, tmp_path: Path) -> None:
    facts = prepared_test_facts(prepared)
    rng = np.random.default_rng(0)
    scores = rng.random((2, len(facts["label"])))
    r = score_run(_fake_npz(tmp_path / "a.npz", prepared, scores), prepared, "DIN", 4)
    assert r["model"] == "DIN" and r["seed"] == 4 and r["epochs"] == 2
    assert [c["step"] for c in r["curve"]] == [7, 14]
    y = facts["label"]
    assert r["auc"] == pytest.approx(_mann_whitney_auc(scores[1].astype(np.float32), y), abs=1e-6)
    assert r["curve"][0]["auc"] == pytest.approx(_mann_whitney_auc(scores[0].astype(np.float32), y), abs=1e-6)
    cold = facts["candidate_cold"].astype(bool)
    if 0 < y[cold].sum() < cold.sum():
        assert r["cold_auc"] == pytest.approx(_mann_whitney_auc(scores[1][cold].astype(np.float32), y[cold]), abs=1e-6)


def test_scores_of_other_samples_are_refused(prepared: str, tmp_path: Path) -> None:
    facts = prepared_test_facts(prepared)
    scores = np.zeros((1, len(facts["label"])))
    flipped = _fake_npz(tmp_path / "b.npz", prepared, scores, label=1.0 - facts["label"])
    with pytest.raises(ValueError, match="label differ"):
        score_run(flipped, prepared, "DIN", 1)
    shorter = {k: v[:-1] for k, v in facts.items()}
    np.savez(tmp_path / "c.npz", scores=scores[:, :-1], steps_per_epoch=1, seconds=np.ones(1), **shorter)
    with pytest.raises(ValueError, match="not the same samples"):
        score_run(str(tmp_path / "c.npz"), prepared, "DIN", 1)


@needs_peer
def test_din_end_to_end(prepared: str, tmp_path: Path) -> None:
    assert peer_python_problem() is None
    runs = run_peer(prepared, [1], epochs=2, out_dir=str(tmp_path), jobs=1,
                    extra=["--batch-size", "16"])
    (r,) = runs
    assert r["model"] == "DIN (deepctr-torch)" and r["epochs"] == 2 and len(r["curve"]) == 2
    assert 0.0 <= r["auc"] <= 1.0 and "user_auc" in r
    others = [{"model": "MARN", "seed": s, "auc": 0.7 + 0.01 * s, "user_auc": 0.6, "cold_auc": 0.5} for s in (1, 2)]
    text = write_peer_report(runs, others, str(tmp_path / "report"), "cmd", "settings line")
    assert "| DIN (deepctr-torch) | " in text and "Welch" in text and "| MARN | " in text
    assert (tmp_path / "report" / "table.png").exists()


@needs_peer
def test_t_quantiles_match_scipy() -> None:
    dfs = [1, 2, 3, 4, 7.5, 29, 200]
    code = ("import json, sys; from scipy.stats import t; "
            f"print(json.dumps([[t.ppf(p, df) for df in {dfs}] for p in (0.9, 0.975, 0.995)]))")
    out = subprocess.run([PEER_PYTHON, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    expected = json.loads(out.stdout)
    for row, p in zip(expected, (0.9, 0.975, 0.995)):
        for want, df in zip(row, dfs):
            assert student_t_quantile(p, df) == pytest.approx(want, rel=1e-9), (p, df)
