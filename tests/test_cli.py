"""The training command line: every bad value is one line and exit status 2, before anything runs."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from marn_rec.training.cli import parse_train_args, train_parser
from marn_rec.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _launch_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


def _error(capsys: pytest.CaptureFixture, argv: List[str]) -> str:
    with pytest.raises(SystemExit) as e:
        parse_train_args(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


BAD = [
    (["--stop-after", "0"], r"--stop-after must be in \[1, --steps = 300\], got 0"),
    (["--stop-after", "301"], r"--stop-after must be in \[1, --steps = 300\], got 301"),
    (["--steps", "5", "--stop-after", "6"], r"--stop-after must be in \[1, --steps = 5\], got 6"),
    (["--checkpoint-every", "-1"], r"--checkpoint-every must be >= 0 \(0: only at the end\), got -1"),
    (["--steps", "0"], r"--steps must be a positive integer, got 0"),
    (["--batch-size", "-3"], r"--batch-size must be a positive integer, got -3"),
    (["--eval-every", "0"], r"--eval-every must be a positive integer, got 0"),
    (["--eval-batches", "0"], r"--eval-batches must be a positive integer, got 0"),
    (["--num-workers", "-1"], r"--num-workers must be >= 0, got -1"),
    (["--seed", "-1"], r"--seed must be in \[0, 2\*\*63\), got -1"),
    (["--lr", "0"], r"--lr must be a finite number > 0, got 0.0"),
    (["--lr", "nan"], r"--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], r"--lr must be a finite number > 0, got inf"),
    (["--lambda0", "-0.1"], r"--lambda0 must be a finite number >= 0 \(paper: 0.05\), got -0.1"),
    (["--lambda0", "nan"], r"--lambda0 must be a finite number >= 0"),
    (["--gamma=-inf"], r"--gamma must be a finite number >= 0 \(paper: 10;"),
    (["--gamma", "nan"], r"--gamma must be a finite number >= 0"),
    (["--cold-item-dropout", "1"], r"--cold-item-dropout must be in \[0, 1\), got 1.0"),
    (["--cold-item-dropout", "nan"], r"--cold-item-dropout must be in \[0, 1\), got nan"),
    (["--cold-item-dropout", "0.1"], r"--cold-item-dropout needs --data \(the synthetic stream"),
    (["--sharding-types", "row_wize"], r"--sharding-types: unknown \['row_wize'\]; known: data_parallel, "),
    (["--sharding-types", "table_wise", "table_wise"], r"--sharding-types lists a type twice"),
    (["--sharding-types"], r"argument --sharding-types: expected at least one argument"),
    (["--steps", "ten"], r"argument --steps: invalid int value: 'ten'"),
    (["--preset", "huge"], r"argument --preset: invalid choice: 'huge'"),
    (["--resume", "maybe"], r"argument --resume: invalid choice: 'maybe'"),
    (["--no-such-flag"], r"unrecognized arguments: --no-such-flag"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_bad_value_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture, tmp_path: Path, argv: List[str], message: str
) -> None:
    out = tmp_path / "out"
    line = _error(capsys, [*argv, "--out-dir", str(out)])
    assert line.startswith(f"{os.path.basename(sys.argv[0])}: error: ")
    assert re.search(message, line), line
    assert not out.exists()  # checked before the output directory is made


def test_other_ranks_exit_quietly_with_the_same_status(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--stop-after", "0", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr() == ("", "")
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--help"])
    assert e.value.code == 0
    assert capsys.readouterr() == ("", "")  # --help once, by rank 0


def test_more_ranks_than_eval_batches(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    line = _error(capsys, ["--eval-batches", "3", "--out-dir", str(tmp_path)])
    assert ("--eval-batches 3 is fewer than the 4 ranks (WORLD_SIZE): every rank needs at least "
            "one evaluation batch; pass --eval-batches 4 or more") in line
    assert parse_train_args(["--eval-batches", "4", "--out-dir", str(tmp_path)]).eval_batches == 4


def test_an_unusable_out_dir(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = _error(capsys, ["--out-dir", str(a_file)])
    assert f"--out-dir: {a_file} exists and is not a directory" in line
    line = _error(capsys, ["--out-dir", str(a_file / "sub")])
    assert f"--out-dir: cannot create {a_file / 'sub'}" in line
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        line = _error(capsys, ["--out-dir", str(ro)])
        assert f"--out-dir: cannot write in {ro}" in line


def test_good_values(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    cfg = parse_train_args([
        "--preset", "tiny", "--model", "BaseModel+MAF", "--seed", "3", "--batch-size", "8",
        "--steps", "20", "--eval-every", "5", "--eval-batches", "2", "--lr", "0.05",
        "--lambda0", "0.1", "--gamma", "5", "--out-dir", str(out), "--checkpoint-every", "0",
        "--resume", "never", "--sharding-types", "table_wise", "column_wise", "--no-dedup",
        "--num-workers", "2", "--stop-after", "20", "--no-progress",
    ])
    assert cfg == TrainConfig(
        preset="tiny", model="BaseModel+MAF", seed=3, batch_size=8, steps=20, eval_every=5,
        eval_batches=2, learning_rate=0.05, lambda0=0.1, gamma=5.0, out_dir=str(out),
        checkpoint_every=0, resume="never", sharding_types=["table_wise", "column_wise"],
        dedup=False, num_workers=2, stop_after=20, progress=False,
    )
    assert out.is_dir() and list(out.iterdir()) == []  # created, the probe removed
    model = cfg.model_config()
    assert (model.lambda0, model.gamma) == (0.1, 5.0)


def test_defaults_are_the_train_configs(tmp_path: Path) -> None:
    cfg = parse_train_args(["--out-dir", str(tmp_path)])
    d = TrainConfig()
    assert cfg == TrainConfig(**{**vars(d), "out_dir": str(tmp_path)})
    assert cfg.lambda0 is None and cfg.gamma is None  # the preset's values
    other = TrainConfig(steps=7, checkpoint_every=3, preset="tiny", out_dir=str(tmp_path))
    assert parse_train_args([], defaults=other) == other


def test_help_shows_defaults_and_the_papers_values(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    d = TrainConfig()
    assert f"(default: {d.steps})" in text
    assert f"(default: {d.checkpoint_every})" in text
    assert f"(default: {d.out_dir})" in text
    assert "--lambda0 LAMBDA0 lambda0 of eq. 10" in text and "(paper section 4.1: 0.05)" in text
    assert "(paper section 4.1: 10)" in text
    assert "(default: None)" not in text


def test_parser_options_cover_train_config() -> None:
    dests = {a.dest for a in train_parser()._actions}
    fields = set(vars(TrainConfig()))
    # Not on the command line: evaluation cut-offs and the data generator's knobs.
    assert fields - dests == {"recall_at", "data_overrides"}


def test_the_example_exits_2_without_traceback_before_starting(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_taobao_synthetic.py"), "--stop-after", "0",
         "--out-dir", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        "train_taobao_synthetic.py: error: --stop-after must be in [1, --steps = 300], got 0"
    ]
    assert not out.exists()


def _ablation_example():
    spec = importlib.util.spec_from_file_location("ablation_study", ROOT / "examples" / "ablation_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "-1"], r"--seeds must be in \[0, 2\*\*63\), got \[-1\]"),
    (["--seeds", "1", "1"], r"--seeds lists a seed twice"),
    (["--models", "MARN", "MARN"], r"--models lists a model twice"),
    (["--models", "GPT"], r"argument --models: invalid choice: 'GPT'"),
    (["--jobs", "0"], r"--jobs must be a positive integer, got 0"),
    (["--steps", "0"], r"--steps must be a positive integer, got 0"),
    (["--batch-size", "0"], r"--batch-size must be a positive integer, got 0"),
    (["--eval-batches", "0"], r"--eval-batches must be a positive integer, got 0"),
    (["--report-only"], r"--report-only: .*results.jsonl does not exist"),
])
def test_the_ablation_study_checks_its_values(
    capsys: pytest.CaptureFixture, tmp_path: Path, argv: List[str], message: str
) -> None:
    with pytest.raises(SystemExit) as e:
        _ablation_example().main([*argv, "--out-dir", str(tmp_path / "study")])
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and re.search(message, err), err


def test_the_ablation_study_help_shows_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        _ablation_example().main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1500)" in text and "(default: runs/ablation)" in text


def test_train_config_refuses_a_cold_item_dropout_it_cannot_apply() -> None:
    with pytest.raises(ValueError, match=r"cold_item_dropout must be in \[0, 1\), got -0.1"):
        TrainConfig(data_dir="d", cold_item_dropout=-0.1)
    with pytest.raises(ValueError, match="cold_item_dropout needs data_dir"):
        TrainConfig(cold_item_dropout=0.1)
    assert TrainConfig(data_dir="d", cold_item_dropout=0.1).cold_item_dropout == 0.1
