"""What the benchmark concludes and writes (marn_rec/benchmarks/goals.py, report.py): the goal
ratios of a sweep, and the markdown sections RESULTS.md quotes. Never timing goals."""

from dataclasses import asdict

import pytest

from marn_rec.benchmarks.apgru import APGRUConfig
from marn_rec.benchmarks.config import QPSConfig
from marn_rec.benchmarks.goals import evaluate_goals, goal_lines
from marn_rec.benchmarks.machine import GIB, MIB
from marn_rec.benchmarks.profiling import BUCKETS
from marn_rec.benchmarks.report import render_apgru_markdown, render_qps_markdown


def _run(mode, n, dedup, rate, status="ok", **extra):
    rec = {"mode": mode, "num_items": n, "dedup": dedup, "status": status, "processes": 1 if mode == "baseline" else 2}
    if status != "ok":
        rec.update(reason="predicted 30.0 GiB > 85% of host MemAvailable: skipped",
                   predicted_peak_per_process=[30 * GIB], embedding_planned_per_process=[])
        return rec
    procs = rec["processes"]
    emb = extra.pop("emb", [{"weights": 100 * MIB, "optimizer": MIB}] * procs)
    rec.update(
        threads_per_process=2 if procs == 1 else 1,
        global_samples_per_s=rate, per_process_samples_per_s=rate / procs, step_ms=10.0,
        cpu_ms_per_step=[12.0] * procs, peak_rss_per_process=[GIB] * procs,
        predicted_peak_per_process=[GIB] * procs, embedding_measured_per_process=emb,
        embedding_planned_per_process=emb, unique_items_per_batch=100.0, slots_per_batch=300.0,
        profile_ms_per_step={b: 2.0 for b in BUCKETS},
    )
    rec.update(extra)
    return rec


def _fake_results():
    runs = [
        _run("baseline", 1000, True, 100.0, tower_ms=10.0),
        _run("column_wise", 1000, True, 180.0),
        _run("baseline", 1000, False, 40.0, tower_ms=35.0),
        _run("column_wise", 1000, False, 60.0),
        _run("baseline", 10_000, True, 90.0, tower_ms=10.0),
        _run("column_wise", 10_000, True, 200.0,
             emb=[{"weights": 100 * MIB, "optimizer": MIB}, {"weights": 98 * MIB, "optimizer": MIB}]),
        _run("baseline", 100_000, True, 0.0, status="skipped"),
        _run("column_wise", 100_000, True, 150.0),
    ]
    cfg = QPSConfig(sizes=[1000, 10_000, 100_000], command="python benchmarks/qps.py --sizes 1e3,1e4,1e5")
    results = {
        "config": asdict(cfg),
        "machine": {"platform": "Linux-test-x86_64", "cpu_count": 2, "torch": "2.13.0+cpu",
                    "torchrec": "1.8.0", "fbgemm_gpu": "1.8.0", "memory_total_bytes": 24 * GIB,
                    "cuda": None, "date": "2026-01-02 03:04 UTC"},
        "data": [{"num_items": 1000, "dedup": True, "generate_ms_per_batch": 12.0, "zipf_exponent": 1.1}],
        "runs": runs,
    }
    results["goals"] = evaluate_goals(results)
    return results


def test_goals_from_a_run() -> None:
    goals = _fake_results()["goals"]
    # Largest size both hold is 10_000 (the baseline was skipped at 100_000).
    assert goals["sharded_speedup"]["column_wise"]["num_items"] == 10_000
    assert goals["sharded_speedup"]["column_wise"]["ratio"] == pytest.approx(200 / 90)
    assert goals["baseline_first_not_held"] == 100_000
    assert goals["baseline_largest_held"] == 10_000
    assert goals["sharded_largest_held"] == 100_000
    assert goals["dedup_speedup"]["tower_ratio"] == pytest.approx(3.5)
    assert goals["dedup_speedup"]["step_ratio"] == pytest.approx(2.5)
    assert goals["dedup_step_ratio_sharded"]["column_wise"] == pytest.approx(3.0)
    # Balance is read at the largest sharded size with data: 100_000, evenly split.
    assert goals["memory_balance"]["column_wise"]["imbalance"] == 0.0
    lines = goal_lines(goals)
    assert any(line.startswith("ratio sharded/baseline") and "2.22x" in line and "met" in line for line in lines)
    assert any(line.startswith("ratio dedup/per-slot item tower") and "3.50x" in line for line in lines)
    assert any("not at 100,000" in line for line in lines)


def test_goal_lines_when_the_baseline_held_no_table() -> None:
    """Every baseline run failed or was skipped: the lines say so instead of raising."""
    results = {"runs": [_run("baseline", 1000, True, 0.0, status="failed"), _run("column_wise", 1000, True, 180.0)]}
    lines = goal_lines(evaluate_goals(results))
    assert any("largest table held 0 items; not at 1,000" in line for line in lines)
    assert "ratio sharded/baseline samples/s: no table size where both ran" in lines


def test_render_markdown() -> None:
    md = render_qps_markdown(_fake_results())
    assert md.startswith("## ")
    assert "python benchmarks/qps.py --sizes 1e3,1e4,1e5" in md
    for fact in ("Linux-test-x86_64", "2 CPUs", "torch 2.13.0+cpu", "2026-01-02 03:04 UTC"):
        assert fact in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 8  # header + one per run
    assert any("skipped" in r and "predicted 30.0 GiB" in r for r in rows)
    assert any("column_wise" in r and "2.22x" in r for r in rows)
    assert "- ratio sharded/baseline" in md
    assert "torch.profiler" in md


def test_render_apgru_markdown() -> None:
    results = {
        "config": asdict(APGRUConfig(command="python benchmarks/apgru.py")),
        "machine": _fake_results()["machine"],
        "threads": 2,
        "rows": [{"dim": 64, "ms": {"torch.nn.GRU": 100.0, "APGRU (property gate)": 110.0,
                                    "APGRU (no property)": 105.0}, "ratio": 1.1, "ratio_no_property": 1.05}],
    }
    md = render_apgru_markdown(results)
    assert "python benchmarks/apgru.py" in md and "2 CPUs" in md and "| 64 | 100.0 | 110.0 | 105.0 | 1.10x | met |" in md
    assert "docs/design.md's numbers" in md and "95 ms" in md  # docs/design.md's measured nn.GRU time


def test_pipelined_and_fp16_goals() -> None:
    """Pipelined runs and fp16 runs are compared on their own lines; the first issue's goals still
    read the plain fp32 runs only."""
    emb32 = [{"weights": 200 * MIB, "optimizer": 4 * MIB}] * 2
    emb16 = [{"weights": 100 * MIB, "optimizer": 4 * MIB}] * 2
    runs = [
        _run("baseline", 1000, True, 100.0),
        _run("column_wise", 1000, True, 90.0, pipeline=False, emb=emb32,
             profile_ms_per_step={**{b: 2.0 for b in BUCKETS}, "communication": 8.0}),
        _run("column_wise", 1000, True, 110.0, pipeline=True, emb=emb32,
             profile_ms_per_step={**{b: 2.0 for b in BUCKETS}, "communication": 3.0}),
        _run("column_wise", 1000, True, 95.0, pipeline=False, table_dtype="fp16", emb=emb16),
        _run("column_wise", 5000, True, 0.0, status="skipped", pipeline=False),
        _run("column_wise", 5000, True, 94.0, pipeline=False, table_dtype="fp16", emb=emb16),
    ]
    runs[4]["table_dtype"] = "fp32"
    goals = evaluate_goals({"runs": runs})
    assert goals["sharded_speedup"]["column_wise"]["ratio"] == pytest.approx(0.9)  # the plain fp32 run
    p = goals["pipelined"]["column_wise"]
    assert p["ratio_vs_baseline"] == pytest.approx(1.1) and p["ratio_vs_plain"] == pytest.approx(110 / 90)
    assert p["communication_ms"] == {"plain": 8.0, "pipelined": 3.0}
    t = goals["table_dtype"]["column_wise"]
    assert t["num_items"] == 1000 and t["items_per_gib_ratio"] == pytest.approx(204 / 104)
    assert t["largest_held"] == {"fp32": 1000, "fp16": 5000} and t["first_not_held"]["fp32"] == 5000
    lines = goal_lines(goals)
    assert any(line.startswith("ratio pipelined sharded/baseline") and "1.10x" in line and "met" in line
               and "communication 8.0 -> 3.0 ms/step" in line for line in lines)
    assert any(line.startswith("ratio fp16/fp32 catalogue items per GiB") and "1.96x" in line for line in lines)
    assert "largest catalogue held [column_wise]: fp32 1,000 (not 5,000), fp16 5,000" in lines
    md = render_qps_markdown({**_fake_results(), "runs": runs, "goals": goals})
    assert "column_wise+pipeline" in md and "column_wise fp16" in md
