"""The benchmark's logic (marn_rec/benchmark.py): profiler buckets, memory prediction, embedding
bytes per rank against the plan, markdown, and ``--quick`` end to end. Never timing goals."""

import json
import os

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from marn_rec import benchmark as bm
from marn_rec.training.sharding import apply_embedding_optimizer, column_shards
from marn_rec.models.marn import MARN, MARNTrain

META = torch.device("meta")


# ------------------------------------------------------------------------------ profiler buckets


def test_bucket_of_real_event_names() -> None:
    expect = {
        "c10d::alltoall_base_": bm.COMMUNICATION,
        "## all2all_data:kjt lengths ##": bm.COMMUNICATION,
        "## KJTAllToAllTensorsAwaitable wait() ##": bm.COMMUNICATION,
        "All2All_Pooled_ReqBackward": bm.COMMUNICATION,
        "c10d::allreduce_": bm.COMMUNICATION,
        "fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function_pt2": bm.EMBEDDING,
        "fbgemm::split_embedding_backward_codegen_rowwise_adagrad_cpu": bm.EMBEDDING,
        "[lookup]_[model.tower.embedding.ebc]_[column_wise]": bm.EMBEDDING,
        "aten::_embedding_bag": bm.EMBEDDING,
        "autograd::engine::evaluate_function: EmbeddingBagBackward0": bm.EMBEDDING,
        "Optimizer.step#Adagrad.step": bm.OPTIMIZER,
        "Optimizer.zero_grad#Adagrad.zero_grad": bm.OPTIMIZER,
        "aten::mm": None,
        "fbgemm::jagged_to_padded_dense_forward": None,  # dense part of the model
        "DistributedDataParallel.forward": None,
    }
    for name, bucket in expect.items():
        assert bm.bucket_of(name) == bucket, name


def test_bucket_times_nearest_matching_ancestor() -> None:
    E = bm.ProfEvent
    events = [
        E(bm.STEP_EVENT, 5.0, None),  # 0: Python between ops -> other
        E("DistributedDataParallel.forward", 1.0, 0),  # 1: dense
        E("aten::mm", 10.0, 1),  # 2: dense
        E("## all2all_data:kjt lengths ##", 2.0, 1),  # 3: communication
        E("aten::copy_", 3.0, 3),  # 4: communication by its parent
        E("[lookup]_[model.tower.embedding.ebc]_[table_wise]", 0.5, 1),  # 5: embedding
        E("fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function_pt2", 7.0, 5),  # 6
        E("Optimizer.step#Adagrad.step", 1.0, 0),  # 7: optimizer
        E("aten::add_", 4.0, 7),  # 8: optimizer by its parent
        E("autograd::engine::evaluate_function: EmbeddingBagBackward0", 0.5, 0),  # 9: embedding
        E("aten::index_select", 2.0, 9),  # 10: embedding by its parent
        E("aten::relu", 6.0, None),  # 11: outside any step -> dense
    ]
    got = bm.bucket_times(events)
    assert got == {
        bm.OTHER: 5.0,
        bm.DENSE: 17.0,
        bm.COMMUNICATION: 5.0,
        bm.EMBEDDING: 10.0,
        bm.OPTIMIZER: 5.0,
    }
    assert sum(got.values()) == pytest.approx(sum(e.self_time for e in events))


def test_profiler_pass_on_a_real_step() -> None:
    """A profiled step of an nn.EmbeddingBag (sparse) + Linear with AdaGrad: the buckets cover
    the step and each part lands where it should."""
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(1000, 16, mode="sum", sparse=True)
    lin = nn.Linear(16, 1)
    opt = torch.optim.Adagrad(list(bag.parameters()) + list(lin.parameters()), lr=0.1)
    ids = torch.randint(0, 1000, (512,))
    offsets = torch.arange(0, 512, 4)

    def step() -> None:
        lin(bag(ids, offsets)).sum().backward()
        opt.step()
        opt.zero_grad()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function(bm.STEP_EVENT):
                step()
    events, step_total = bm.profiler_events(prof)
    buckets = bm.bucket_times(events)
    assert buckets[bm.EMBEDDING] > 0 and buckets[bm.OPTIMIZER] > 0 and buckets[bm.DENSE] > 0
    assert buckets[bm.COMMUNICATION] == 0
    # Self times of everything inside the steps add up to the steps' total time.
    inside = sum(buckets.values())
    assert inside == pytest.approx(step_total, rel=0.05)


# ------------------------------------------------------------------------------ memory


def test_baseline_bytes_match_the_built_baseline() -> None:
    """The predictor's baseline accounting (tables + AdaGrad's full-size sum) equals what the
    unsharded baseline actually allocates for its tables and optimizer state."""
    cfg = bm.model_config("tiny", 300)
    shapes = bm.table_shapes(MARNTrain(MARN(cfg, device=META)))
    predicted = bm.baseline_embedding_bytes(shapes)
    model = MARNTrain(MARN(cfg))
    optimizers, tables = bm._sparse_baseline(model, 0.1)
    weights = sum(p.numel() * p.element_size() for p in tables)
    state = sum(bm._local_bytes(optimizers[0].state[p]["sum"]) for p in tables)
    assert predicted == {"weights": weights, "optimizer": state}
    assert shapes["t_item_id"] == (300, cfg.tower.item_dim, 4)
    # Every embedding module is sparse and owned by the sparse optimizer only.
    sparse = [m for m in model.modules() if isinstance(m, (nn.EmbeddingBag, nn.Embedding))]
    assert sparse and all(m.sparse for m in sparse)
    assert {id(p) for p in tables}.isdisjoint(
        id(p) for g in optimizers[1].param_groups for p in g["params"]
    )


def test_memory_model_predicts_and_calibrates() -> None:
    mem = bm.MemoryModel(default_overhead=100)
    per_process = [{"weights": 1000, "optimizer": 10}, {"weights": 500, "optimizer": 5}]
    assert mem.predict("column_wise", True, per_process) == [1110, 605]
    assert bm.fits([1110, 605], 1715) and not bm.fits([1110, 605], 1714)
    # A measured run replaces the default overhead for that (mode, dedup) only.
    mem.observe("column_wise", True, per_process, [1010 + 1000 * bm.MIB, 505])
    assert mem.overhead("column_wise", True) == int(1000 * bm.MIB * 1.1)
    assert mem.overhead("column_wise", False) == 100
    assert mem.overhead("baseline", True) == 100


def test_skip_instead_of_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bm, "available_memory_bytes", lambda: 10 * bm.GIB)
    cfg = bm.QPSConfig(device="cpu", memory_fraction=0.5)
    mem = bm.MemoryModel(default_overhead=bm.GIB)
    small = bm.RunSpec("baseline", 1, True, 1, 2, embedding_per_process=[{"weights": bm.GIB, "optimizer": bm.GIB}])
    big = bm.RunSpec("baseline", 2, True, 1, 2, embedding_per_process=[{"weights": 3 * bm.GIB, "optimizer": 3 * bm.GIB}])
    assert bm._predict(small, cfg, mem)[0]
    ok, reason, _ = bm._predict(big, cfg, mem)
    assert not ok and "skipped" in reason and "7.0 GiB" in reason
    assert big.predicted_peak_per_process == [7 * bm.GIB]


# ------------------------------------------------------------------------------ plans


def _meta_small(num_items: int = 100_000) -> MARNTrain:
    model = MARNTrain(MARN(bm.model_config("small", num_items), device=META))
    apply_embedding_optimizer(model, lr=0.1)
    return model


def test_column_wise_plan_bytes_per_rank() -> None:
    model = _meta_small()
    shapes = bm.table_shapes(model)
    plan = bm.make_plan(model, 2, "cpu", bm.COLUMN_WISE)
    per_rank = bm.plan_bytes_per_rank(plan, shapes, 2)
    total = sum(r * c * e for r, c, e in shapes.values())
    assert sum(p["weights"] for p in per_rank) == total
    # Every small-preset table is 8k wide: two column shards, each with its own row-wise state.
    assert sum(p["optimizer"] for p in per_rank) == 2 * 4 * sum(r for r, _, _ in shapes.values())
    assert bm.imbalance([p["weights"] + p["optimizer"] for p in per_rank]) < bm.GOAL_MEMORY_BALANCE
    for module_plan in plan.plan.values():
        for ps in module_plan.values():
            assert ps.sharding_type == "column_wise" and ps.compute_kernel == "fused"
            assert sorted(s.placement.rank() for s in ps.sharding_spec.shards) == [0, 1]


def test_table_wise_plan_bytes_per_rank() -> None:
    model = _meta_small()
    shapes = bm.table_shapes(model)
    plan = bm.make_plan(model, 2, "cpu", bm.TABLE_WISE)
    per_rank = bm.plan_bytes_per_rank(plan, shapes, 2)
    assert sum(p["weights"] for p in per_rank) == sum(r * c * e for r, c, e in shapes.values())
    assert sum(p["optimizer"] for p in per_rank) == 4 * sum(r for r, _, _ in shapes.values())
    # The item table is one shard on one rank: table-wise cannot balance it.
    item_rows, item_dim, _ = shapes["t_item_id"]
    assert max(p["weights"] for p in per_rank) >= item_rows * item_dim * 4


def test_even_column_split_respects_fbgemm_multiple_of_4() -> None:
    assert column_shards(32, 2) == 2
    assert column_shards(8, 4) == 2  # 4 columns per shard at least
    assert column_shards(4, 2) == 1
    assert column_shards(24, 4) == 3
    model = MARNTrain(MARN(bm.model_config("tiny", 100), device=META))
    apply_embedding_optimizer(model, lr=0.1)
    shapes = bm.table_shapes(model)
    per_rank = bm.plan_bytes_per_rank(bm.make_plan(model, 4, "cpu", bm.COLUMN_WISE), shapes, 4)
    assert sum(p["weights"] for p in per_rank) == sum(r * c * e for r, c, e in shapes.values())


def test_imbalance() -> None:
    assert bm.imbalance([5, 5]) == 0.0
    assert bm.imbalance([10, 0]) == 1.0
    assert bm.imbalance([0, 0]) == 0.0


# ------------------------------------------------------------------------------ goals, markdown


def _run(mode, n, dedup, rate, status="ok", **extra):
    rec = {"mode": mode, "num_items": n, "dedup": dedup, "status": status, "processes": 1 if mode == "baseline" else 2}
    if status != "ok":
        rec.update(reason="predicted 30.0 GiB > 85% of host MemAvailable: skipped",
                   predicted_peak_per_process=[30 * bm.GIB], embedding_planned_per_process=[])
        return rec
    procs = rec["processes"]
    emb = extra.pop("emb", [{"weights": 100 * bm.MIB, "optimizer": bm.MIB}] * procs)
    rec.update(
        threads_per_process=2 if procs == 1 else 1,
        global_samples_per_s=rate, per_process_samples_per_s=rate / procs, step_ms=10.0,
        cpu_ms_per_step=[12.0] * procs, peak_rss_per_process=[bm.GIB] * procs,
        predicted_peak_per_process=[bm.GIB] * procs, embedding_measured_per_process=emb,
        embedding_planned_per_process=emb, unique_items_per_batch=100.0, slots_per_batch=300.0,
        profile_ms_per_step={b: 2.0 for b in bm.BUCKETS},
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
             emb=[{"weights": 100 * bm.MIB, "optimizer": bm.MIB}, {"weights": 98 * bm.MIB, "optimizer": bm.MIB}]),
        _run("baseline", 100_000, True, 0.0, status="skipped"),
        _run("column_wise", 100_000, True, 150.0),
    ]
    cfg = bm.QPSConfig(sizes=[1000, 10_000, 100_000], command="python benchmarks/qps.py --sizes 1e3,1e4,1e5")
    results = {
        "config": bm.asdict(cfg),
        "machine": {"platform": "Linux-test-x86_64", "cpu_count": 2, "torch": "2.13.0+cpu",
                    "torchrec": "1.8.0", "fbgemm_gpu": "1.8.0", "memory_total_bytes": 24 * bm.GIB,
                    "cuda": None, "date": "2026-01-02 03:04 UTC"},
        "data": [{"num_items": 1000, "dedup": True, "generate_ms_per_batch": 12.0, "zipf_exponent": 1.1}],
        "runs": runs,
    }
    results["goals"] = bm.evaluate_goals(results)
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
    lines = bm.goal_lines(goals)
    assert any(line.startswith("ratio sharded/baseline") and "2.22x" in line and "met" in line for line in lines)
    assert any(line.startswith("ratio dedup/per-slot item tower") and "3.50x" in line for line in lines)
    assert any("not at 100,000" in line for line in lines)


def test_render_markdown() -> None:
    md = bm.render_qps_markdown(_fake_results())
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
        "config": bm.asdict(bm.APGRUConfig(command="python benchmarks/apgru.py")),
        "machine": _fake_results()["machine"],
        "threads": 2,
        "rows": [{"dim": 64, "ms": {"torch.nn.GRU": 100.0, "APGRU (property gate)": 110.0,
                                    "APGRU (no property)": 105.0}, "ratio": 1.1, "ratio_no_property": 1.05}],
    }
    md = bm.render_apgru_markdown(results)
    assert "python benchmarks/apgru.py" in md and "2 CPUs" in md and "| 64 | 100.0 | 110.0 | 105.0 | 1.10x | met |" in md
    assert "95 ms" in md  # DESIGN.md's measured nn.GRU time


# ------------------------------------------------------------------------------ end to end


def test_apgru_quick(tmp_path, capsys) -> None:
    assert bm.apgru_main(["--quick", "--out-dir", str(tmp_path)]) == 0
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
    assert bm.qps_main(argv) == 0
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
        assert set(r["profile_ms_per_step"]) == set(bm.BUCKETS)
    assert (tmp_path / "qps.md").read_text().startswith("## ")
    assert os.path.getsize(tmp_path / "qps.png") > 0


def test_a_failing_run_is_recorded_not_raised(tmp_path) -> None:
    """A run whose process fails becomes a ``failed`` record and the sweep goes on."""
    cfg = bm.QPSConfig(**{**bm.QUICK, "device": "cpu"})
    spec = bm.RunSpec("baseline", 2000, True, 1, 1, str(tmp_path / "missing.pt"), None,
                      [{"weights": 0, "optimizer": 0}])
    lines = []
    records = bm._run_grouped([(spec, {})], cfg, bm.MemoryModel(), str(tmp_path), lines.append)
    assert records[0]["status"] == "failed" and "missing.pt" in records[0]["reason"]
    assert any("failed" in line for line in lines)
