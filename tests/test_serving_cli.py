"""The serving commands end to end on a tiny checkpoint: extract (fp32 and int8), score, export,
score with the exported head; their refusals; and the serving benchmark's --quick run."""

import json
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from marn_rec import MARN, MARNTrain, tiny
from marn_rec.data import SyntheticTaobaoConfig
from marn_rec.serving import RepresentationStore
from marn_rec.serving.cli import extract_main, score_main
from marn_rec.serving.testing import write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    write_checkpoint(MARNTrain(MARN(tiny())), str(out), step=7,
                     data=SyntheticTaobaoConfig.from_model_config(tiny(), batch_size=8))
    return out


def _score_args(store: Path, head: List[str], *extra: str) -> List[str]:
    return ["--store", str(store), *head, "--history", "3,17,5", "--behavior-types", "0,1,2", "--time-buckets", "4,2,0",
            *extra]


def _score(capsys: pytest.CaptureFixture, *args: str) -> Tuple[int, str, str]:
    """examples/score.py's main in this process (status, stdout, stderr)."""
    try:
        status = score_main(list(args))
    except SystemExit as e:  # argparse
        status = int(e.code or 0)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_extract_score_export_commands(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from marn_rec.data import ItemCatalog

    store = tmp_path / "store"
    done = _run("examples/extract_representations.py", "--checkpoint-dir", str(run_dir), "--out", str(store),
                "--batch-size", "16", "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stored 50 of 50 items" in done.stdout and "step 7" in done.stdout
    assert "Warning" not in done.stderr and "is_fx_tracing" not in done.stderr  # no library noise
    manifest = RepresentationStore(str(store)).manifest
    assert manifest["checkpoint"]["step"] == 7 and manifest["source"]["kind"] == "synthetic"
    items = ItemCatalog(SyntheticTaobaoConfig.from_model_config(tiny(), batch_size=8)).ids_of_ranks(torch.arange(50))
    candidates = ",".join(str(int(i)) for i in items[:4])
    eager = _run("examples/score.py", *_score_args(store, ["--checkpoint-dir", str(run_dir)], "--candidates", candidates, "--json"))
    assert eager.returncode == 0, eager.stderr[-2000:]
    scores = json.loads(eager.stdout)["scores"]
    assert [s["item"] for s in scores] == [int(i) for i in items[:4]]
    # Export, then score with the exported head: the same logits.
    program = tmp_path / "scorer.pt2"
    done = _run("examples/export_scorer.py", "--store", str(store), "--checkpoint-dir", str(run_dir), "--out", str(program))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reloaded" in done.stdout and program.exists() and (tmp_path / "scorer.json").exists()
    status, out, _ = _score(capsys, *_score_args(store, ["--exported", str(program)], "--candidates", candidates, "--json"))
    assert status == 0
    for a, b in zip(scores, json.loads(out)["scores"]):
        assert abs(a["logit"] - b["logit"]) <= 1e-5
    eager_head = ["--checkpoint-dir", str(run_dir)]
    status, out, _ = _score(capsys, *_score_args(store, eager_head, "--candidates", candidates))
    assert status == 0 and out.splitlines()[0].split() == ["rank", "item", "logit", "p(click)"]
    # Refusals: unknown candidates (or the counted fallback), a bad bucket, a float ID, an existing store.
    status, _, err = _score(capsys, *_score_args(store, eager_head, "--candidates", f"{candidates},999999"))
    assert status == 1 and "error: items not in the representation store: 1 candidates (999999)" in err
    status, out, _ = _score(capsys, *_score_args(store, eager_head, "--candidates", f"{candidates},999999", "--missing", "mean"))
    assert status == 0 and "1 items were not in the store and got the mean representation" in out
    status, _, err = _score(capsys, "--store", str(store), *eager_head, "--history", "3", "--time-buckets", "99",
                            "--candidates", candidates)
    assert status == 1 and "time_buckets: values must be in [0, 5)" in err
    status, _, err = _score(capsys, *_score_args(store, eager_head, "--candidates", "1.5"))
    assert status == 2 and "expected integers" in err
    assert extract_main(["--checkpoint-dir", str(run_dir), "--out", str(store), "--no-progress"]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_int8_extraction_and_other_checkpoint_refused(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = tmp_path / "store8"
    status = extract_main(["--checkpoint-dir", str(run_dir), "--out", str(store), "--dtype", "int8", "--max-items", "20",
                           "--no-progress"])
    assert status == 0, capsys.readouterr().err
    s = RepresentationStore(str(store))
    assert s.dtype == "int8" and s.num_items == 20 and s.matrix.dtype.name == "int8"
    other = tmp_path / "other"
    torch.manual_seed(1)
    write_checkpoint(MARNTrain(MARN(tiny())), str(other), step=2)
    status, _, err = _score(capsys, *_score_args(store, ["--checkpoint-dir", str(other)], "--candidates", "1"))
    assert status == 1 and "other trained weights" in err


def test_serving_benchmark_quick(tmp_path: Path) -> None:
    done = _run("benchmarks/serving.py", "--quick", "--preset", "tiny", "--catalog-items", "50", "--store-items", "20000",
                "--seconds", "0.1", "--max-requests", "6", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    ratios = [line for line in done.stdout.splitlines() if line.startswith("ratio")]
    assert any(line.startswith("ratio scorer/full requests/s [1x100]") for line in ratios)
    assert any(line.startswith("ratio exported/full requests/s [1x10]") for line in ratios)
    results = json.loads((tmp_path / "serving.json").read_text())
    assert {c["case"] for c in results["cases"]} == {"1x10", "1x100", "4x100"}
    for case in results["cases"]:
        assert max(case["max_abs_logit_diff"].values()) <= 1e-5
    assert [s["dtype"] for s in results["stores"]] == ["fp32", "fp16", "int8"]
    assert (tmp_path / "serving.md").read_text().startswith("## Serving")
    refused = _run("benchmarks/serving.py", "--quick", "--update-records")
    assert refused.returncode == 2 and "smoke test" in refused.stderr
