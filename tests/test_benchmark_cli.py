"""The benchmark command lines (marn_rec/benchmarks/cli.py): where results go (scratch unless
--update-records), --help, library chatter kept out, and ``--quick`` end to end."""

import json
import logging
import os
import warnings

import pytest
import torch

from marn_rec.benchmarks import cli
from marn_rec.benchmarks.config import QUICK, RECORDS_DIR, QPSConfig, RunSpec
from marn_rec.benchmarks.memory import MemoryModel
from marn_rec.benchmarks.profiling import BUCKETS
from marn_rec.benchmarks.qps import run_grouped
from marn_rec.quiet import quiet_libraries


def test_results_go_to_scratch_unless_update_records(capsys) -> None:
    qps = cli.qps_parser()
    assert cli.qps_config_from_args(qps.parse_args([]), []).out_dir == "runs/benchmarks/qps"
    cfg = cli.qps_config_from_args(qps.parse_args(["--update-records", "--sizes", "1e5"]), ["--update-records", "--sizes", "1e5"])
    assert cfg.out_dir == RECORDS_DIR == "benchmarks/results"
    # Where a record was written is not part of the command it states.
    assert cfg.command == "python benchmarks/qps.py --sizes 1e5"
    assert cli.apgru_parser().parse_args([]).out_dir == "runs/benchmarks/apgru"
    for argv in (["--update-records", "--out-dir", "x"], ["--update-records", "--quick"]):
        with pytest.raises(SystemExit):
            cli.qps_main(argv)
    with pytest.raises(SystemExit):
        cli.apgru_main(["--update-records", "--quick"])
    err = capsys.readouterr().err
    assert "--out-dir: not allowed with argument --update-records" in err and "--quick figures are a smoke test" in err


def test_help_shows_defaults_and_outputs() -> None:
    for parser, scratch in ((cli.qps_parser(), "runs/benchmarks/qps"), (cli.apgru_parser(), "runs/benchmarks/apgru")):
        text = " ".join(parser.format_help().split())
        assert f"(default: {scratch})" in text and "--update-records" in text and "benchmarks/results/" in text
        assert "(default: None)" not in text
    assert "(default: 100000,1000000,10000000" in " ".join(cli.qps_parser().format_help().split())
    assert cli.qps_parser().parse_args([]).sizes == QPSConfig().sizes


def test_quiet_libraries_drops_only_the_known_chatter(caplog) -> None:
    fx = logging.getLogger("torch.fx._symbolic_trace")
    fx_message = "is_fx_tracing will return true for both fx.symbolic_trace and torch.export."
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert os.environ["KINETO_LOG_LEVEL"]
            fx.warning(fx_message)
            fx.warning("something else")
            warnings.warn("Sparse invariant checks are implicitly disabled. ...", UserWarning)
            warnings.warn("HeuristicalStorageReservation is known to cause issues ...", FutureWarning)
            warnings.warn("an unexpected warning", UserWarning)
        fx.warning(fx_message)  # restored afterwards
    assert [r.getMessage() for r in caplog.records] == ["something else", fx_message]
    assert [str(w.message) for w in caught] == ["an unexpected warning"]


def test_apgru_quick(tmp_path, capsys) -> None:
    assert cli.apgru_main(["--quick", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ratio APGRU/nn.GRU [d=8]" in out
    assert (tmp_path / "apgru.md").exists() and (tmp_path / "apgru.json").exists()


@pytest.mark.distributed
def test_qps_quick_end_to_end(tmp_path, capsys) -> None:
    """``--quick`` runs baseline and a 2-process gloo DMP run, dedup on and off, and prints the ratio
    lines; outputs are written. (No timing is asserted.)"""
    threads = torch.get_num_threads()
    # One baseline thread: a 2-thread OpenMP process stalls for long when other work holds a core.
    argv = ["--quick", "--sharding-types", "column_wise", "--baseline-threads", "1", "--out-dir", str(tmp_path)]
    assert cli.qps_main(argv) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "threads: baseline 1 process x 1 thread(s); sharded 2 processes x 1 thread(s)" in out
    for prefix in (
        "ratio sharded/baseline samples/s [column_wise",
        "ratio dedup/per-slot item tower [baseline",
        "ratio per-rank embedding memory / (total/N) [column_wise",
    ):
        assert any(line.startswith(prefix) for line in out.splitlines()), prefix
    results = json.loads((tmp_path / "qps.json").read_text())
    assert [(r["mode"], r["dedup"], r["status"]) for r in results["runs"]] == [
        ("baseline", True, "ok"), ("column_wise", True, "ok"),
        ("baseline", False, "ok"), ("column_wise", False, "ok"),
    ]
    for r in results["runs"]:
        assert r["global_samples_per_s"] > 0
        # The live modules hold exactly what the plan says, rank by rank.
        assert r["embedding_measured_per_process"] == r["embedding_planned_per_process"]
        assert set(r["profile_ms_per_step"]) == set(BUCKETS)
    assert (tmp_path / "qps.md").read_text().startswith("## ")
    assert os.path.getsize(tmp_path / "qps.png") > 0


def test_a_failing_run_is_recorded_not_raised(tmp_path) -> None:
    """A run whose process fails becomes a ``failed`` record and the sweep goes on."""
    cfg = QPSConfig(**{**QUICK, "device": "cpu"})
    spec = RunSpec("baseline", 2000, True, 1, 1, str(tmp_path / "missing.pt"), None,
                   [{"weights": 0, "optimizer": 0}])
    lines = []
    records = run_grouped([(spec, {})], cfg, MemoryModel(), str(tmp_path), lines.append)
    assert records[0]["status"] == "failed" and "missing.pt" in records[0]["reason"]
    assert any("failed" in line for line in lines)
