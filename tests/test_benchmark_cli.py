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
    argv = ["--quick", "--sharding-types", "column_wise", "--baseline-threads", "1", "--interleave-pipeline",
            "--out-dir", str(tmp_path)]
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
    assert any(line.startswith("ratio pipelined sharded/baseline samples/s at fixed compute [column_wise")
               for line in out.splitlines())
    assert any(line.startswith("ratio step time / compute floor [baseline") for line in out.splitlines())
    assert "compute floor (B=16" in out and "whole step" in out
    results = json.loads((tmp_path / "qps.json").read_text())
    assert [(r["mode"], r["dedup"], r["pipeline"], r["status"]) for r in results["runs"]] == [
        ("baseline", True, False, "ok"), ("column_wise", True, False, "ok"), ("column_wise", True, True, "ok"),
        ("baseline", False, False, "ok"), ("column_wise", False, False, "ok"), ("column_wise", False, True, "ok"),
    ]
    for r in results["runs"]:
        assert r["global_samples_per_s"] > 0
        # The live modules hold exactly what the plan says, rank by rank.
        assert r["embedding_measured_per_process"] == r["embedding_planned_per_process"]
        assert set(r["profile_ms_per_step"]) == set(BUCKETS)
    # The floor is measured once: in the baseline run of the smallest size, dedup on; the fast step
    # by default in every run of the smallest size with dedup on; the plain-loop twin in the
    # pipelined runs (--interleave-pipeline).
    assert [("floor" in r) for r in results["runs"]] == [True, False, False, False, False, False]
    assert [("fast_step" in r) for r in results["runs"]] == [True, True, True, False, False, False]
    assert [("vs_plain" in r) for r in results["runs"]] == [r["pipeline"] for r in results["runs"]]
    assert all(r["vs_plain"]["ratio"] > 0 for r in results["runs"] if r["pipeline"])
    assert "pipelined / plain loop (twin model, interleaved windows)" in out
    assert any(line.startswith("ratio fast/old step samples/s [baseline") for line in out.splitlines())
    md = (tmp_path / "qps.md").read_text()
    assert md.startswith("## ") and "column_wise+pipeline" in md and "| whole step |" in md
    assert os.path.getsize(tmp_path / "qps.png") > 0


@pytest.mark.distributed
def test_qps_fp16_tables_hold_more_items_per_byte(tmp_path, capsys) -> None:
    """``--table-dtype fp32,fp16``: both sharded runs train; the fp16 tables hold about half the
    bytes of weights (the row-wise AdaGrad state stays one fp32 per row), measured = planned."""
    argv = ["--quick", "--sharding-types", "column_wise", "--pipeline", "off", "--no-baseline",
            "--dedup", "on", "--table-dtype", "fp32,fp16", "--out-dir", str(tmp_path)]
    assert cli.qps_main(argv) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "qps.json").read_text())
    runs = {r["table_dtype"]: r for r in results["runs"]}
    assert set(runs) == {"fp32", "fp16"} and all(r["status"] == "ok" for r in runs.values())
    for r in runs.values():
        assert r["embedding_measured_per_process"] == r["embedding_planned_per_process"]
    weights = {d: sum(e["weights"] for e in r["embedding_measured_per_process"]) for d, r in runs.items()}
    optimizer = {d: sum(e["optimizer"] for e in r["embedding_measured_per_process"]) for d, r in runs.items()}
    assert optimizer["fp16"] == optimizer["fp32"]
    assert 0.5 <= weights["fp16"] / weights["fp32"] < 0.52  # the tiny fp32 property tables stay fp32
    assert any(line.startswith("ratio fp16/fp32 catalogue items per GiB") for line in out.splitlines())


def test_flags_of_speed_and_scale() -> None:
    p = cli.qps_parser()
    cfg = cli.qps_config_from_args(p.parse_args([]), [])
    assert cfg.pipeline == [False, True] and cfg.table_dtypes == ["fp32"] and cfg.floor and not cfg.floor_only
    assert cfg.replicate_max_rows == 0
    argv = ["--pipeline", "on", "--table-dtype", "fp16", "--memory-budget-gib", "6", "--no-floor",
            "--replicate-max-rows", "5000"]
    cfg = cli.qps_config_from_args(p.parse_args(argv), argv)
    assert cfg.pipeline == [True] and cfg.table_dtypes == ["fp16"] and cfg.memory_budget_gib == 6.0
    assert cfg.replicate_max_rows == 5000
    assert not cfg.floor
    with pytest.raises(SystemExit):
        cli.qps_config_from_args(p.parse_args(["--table-dtype", "int8"]), ["--table-dtype", "int8"])


def test_memory_cap_skips_what_would_not_fit() -> None:
    from marn_rec.benchmarks.machine import GIB
    from marn_rec.benchmarks.qps import predict

    cfg = QPSConfig(**{**QUICK, "device": "cpu", "memory_budget_gib": 2.0})
    small = RunSpec("column_wise", 10, True, 2, 1, "", None, [{"weights": 0, "optimizer": 0}] * 2)
    big = RunSpec("column_wise", 10, True, 2, 1, "", None, [{"weights": GIB, "optimizer": 0}] * 2)
    memory = MemoryModel(default_overhead=GIB // 4)
    assert predict(small, cfg, memory)[0]
    fits, reason, _ = predict(big, cfg, memory)
    assert not fits and "the 2 GiB cap (--memory-budget-gib)" in reason


def test_a_failing_run_is_recorded_not_raised(tmp_path) -> None:
    """A run whose process fails becomes a ``failed`` record and the sweep goes on."""
    cfg = QPSConfig(**{**QUICK, "device": "cpu"})
    spec = RunSpec("baseline", 2000, True, 1, 1, str(tmp_path / "missing.pt"), None,
                   [{"weights": 0, "optimizer": 0}])
    lines = []
    records = run_grouped([(spec, {})], cfg, MemoryModel(), str(tmp_path), lines.append)
    assert records[0]["status"] == "failed" and "missing.pt" in records[0]["reason"]
    assert any("failed" in line for line in lines)


def test_floor_only_with_the_fast_step(tmp_path, capsys) -> None:
    """``--floor-only``: the baseline alone (smallest size, dedup on) with its compute floor;
    ``--fast-step`` adds the interleaved old/fast comparison and the prediction difference."""
    argv = ["--quick", "--floor-only", "--fast-step", "--baseline-threads", "1", "--out-dir", str(tmp_path)]
    assert cli.qps_main(argv) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "qps.json").read_text())
    assert [(r["mode"], r["dedup"]) for r in results["runs"]] == [("baseline", True)]
    run = results["runs"][0]
    assert "floor" in run
    fast = run["fast_step"]
    assert len(fast["pair_ratios"]) == QUICK["windows"] and fast["ratio"] > 0
    assert 0 <= fast["mean_abs_probability_difference"] <= fast["max_abs_probability_difference"] < 0.05
    assert any(line.startswith("ratio fast/old step samples/s [baseline") for line in out.splitlines())
    assert fast["dtype"] == "bf16" and "bf16 autocast + fused AdaGrad" in out


def test_fast_step_in_fp32_predicts_as_the_old_step(tmp_path, capsys) -> None:
    """``--fast-dtype fp32``: the current kernels and the fused AdaGrad without autocast; the
    predictions equal the old step's to fp32 rounding (bf16's differ by up to 0.05 above)."""
    argv = ["--quick", "--floor-only", "--no-floor", "--fast-step", "--fast-dtype", "fp32",
            "--baseline-threads", "1", "--out-dir", str(tmp_path)]
    assert cli.qps_main(argv) == 0
    out = capsys.readouterr().out
    fast = json.loads((tmp_path / "qps.json").read_text())["runs"][0]["fast_step"]
    assert fast["dtype"] == "fp32" and fast["max_abs_probability_difference"] < 1e-5
    assert "fast step (fp32 + fused AdaGrad + new kernels) / old" in out
    with pytest.raises(SystemExit):
        cli.qps_main(["--fast-dtype", "fp16"])


def test_fast_step_runs_by_default_at_the_smallest_size_only() -> None:
    args = cli.qps_parser().parse_args([])
    cfg = QPSConfig(sizes=[1000, 10_000], fast_step=args.fast_step)
    assert [cfg.fast_step_at(1000), cfg.fast_step_at(1000, dedup=False), cfg.fast_step_at(10_000)] == [
        True, False, False]
    assert cli.qps_parser().parse_args(["--fast-step"]).fast_step == "all"
    assert not QPSConfig(fast_step="off").fast_step_at(min(QPSConfig().sizes))
    with pytest.raises(ValueError, match="fast_step"):
        QPSConfig(fast_step="sometimes").fast_step_at(1000)


def test_fast_step_quick(tmp_path, capsys) -> None:
    """benchmarks/fast_step.py: each variant in its own fresh process; only fast+keep keeps freed
    memory mapped; a variant that fails in its process is named."""
    from marn_rec.benchmarks.fast_step import FastStepConfig, _in_fresh_process
    from marn_rec.training import allocator

    assert cli.fast_step_main(["--quick", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "whole step, fast+keep against old" in out and "page faults/step" in out
    results = json.loads((tmp_path / "fast_step.json").read_text())
    assert set(results["ms_per_step"]) == {"old", "fast", "fast+keep", "fp32"}
    assert [o["kept"] for o in results["runs"]["fast+keep"]] == [allocator._glibc() is not None]
    assert not any(o["kept"] for v in ("old", "fast", "fp32") for o in results["runs"][v])
    assert results["ratios"]["fast+keep / old"] == pytest.approx(
        results["ms_per_step"]["old"] / results["ms_per_step"]["fast+keep"])
    assert (tmp_path / "fast_step.md").exists() and not (tmp_path / "batches.pt").exists()
    assert cli.fast_step_parser().parse_args([]).out_dir == "runs/benchmarks/fast_step"
    for argv in (["--rounds", "0"], ["--update-records", "--quick"]):
        with pytest.raises(SystemExit):
            cli.fast_step_main(argv)
    assert "--rounds must be a positive integer" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="the old step failed in its process: FileNotFoundError"):
        _in_fresh_process("old", FastStepConfig(preset="tiny"), str(tmp_path / "missing.pt"))


def test_turns_alternate_the_two_sets_window_by_window() -> None:
    """Turns (--interleave-baseline): with one party in the first set and two in the second, every
    window of the first set ends before the second set's starts, and the second's before the
    first's next; the two parties of the second set run together."""
    import threading
    import time

    from marn_rec.benchmarks.launcher import Turns

    barrier, log, lock = threading.Barrier(3), [], threading.Lock()

    def party(name: str, first: bool) -> None:
        turns = Turns(barrier, first, timeout=30)
        for w in range(3):
            turns.before_window()
            with lock:
                log.append((name, "start", w))
            time.sleep(0.01)
            with lock:
                log.append((name, "end", w))
            turns.after_window()

    threads = [threading.Thread(target=party, args=(n, n == "base")) for n in ("base", "rank0", "rank1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(log) == 18
    for w in range(3):
        chunk = log[6 * w: 6 * (w + 1)]
        assert chunk[:2] == [("base", "start", w), ("base", "end", w)]
        assert {(n, what) for n, what, _ in chunk[2:]} == {(r, e) for r in ("rank0", "rank1") for e in ("start", "end")}
        assert all(x[2] == w for x in chunk)


def test_sharded_against_the_baseline_in_turns(tmp_path, capsys) -> None:
    """--interleave-baseline end to end: the baseline process and a 2-rank gloo set alive at once,
    one ratio per window pair in the pipelined run's record and a goal line. (No timing asserted.)"""
    argv = ["--quick", "--sharding-types", "table_wise", "--pipeline", "on", "--dedup", "on", "--fast-step", "off",
            "--no-floor", "--baseline-threads", "1", "--interleave-baseline", "--out-dir", str(tmp_path)]
    cfg = cli.qps_config_from_args(cli.qps_parser().parse_args(argv), argv)
    assert cfg.interleave_baseline
    from dataclasses import replace

    from marn_rec.benchmarks.qps import run_qps

    results = run_qps(replace(cfg, isolate=True), log=lambda _: None)
    (piped,) = [r for r in results["runs"] if r["mode"] == "table_wise"]
    inter = piped["vs_baseline_interleaved"]
    assert inter["status"] == "ok" and len(inter["pair_ratios"]) == cfg.windows
    assert inter["ratio"] > 0 and results["goals"]["pipelined"]["table_wise"]["interleaved_vs_baseline"] == inter
