"""The ablation study's statistics, aggregation and report, and its runner on a prepared directory
(the training runs themselves are train(), tested elsewhere).

scipy is not in marn_rec's environment, so the t quantiles are checked against closed forms
(Student's t with 1 and 2 degrees of freedom has an elementary CDF) and tabulated values, and the
intervals against the textbook formula computed by hand here. tests/test_peer.py also checks them
against scipy where benchmarks/peer/.venv exists.
"""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marn_rec.training.ablation import (
    applicable_models,
    markdown_table,
    paired_differences,
    read_results,
    read_skipped,
    summarize,
    write_report,
)
from marn_rec.training.ablation.statistics import (
    detectable_difference,
    regularized_incomplete_beta,
    seeds_to_detect,
    student_t_cdf,
    student_t_quantile,
    t_interval,
    welch_interval,
)
from marn_rec.training.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# t(0.975, df) and t(0.95, df), from any table (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2).
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 5: 2.570581836,
        9: 2.262157163, 30: 2.042272456, 100: 1.983971519}
T95 = {1: 6.313751515, 5: 2.015048373, 10: 1.812461123}


def _results():
    out = []
    for model, base in (("BaseModel+IDs", 0.60), ("MARN", 0.65)):
        for seed, delta in ((1, 0.0), (2, 0.02)):
            out.append({"model": model, "seed": seed, "auc": base + delta, "user_auc": base,
                        "cold_auc": base - 0.05, "bayes_auc": 0.8, "bayes_user_auc": 0.79,
                        "bayes_cold_auc": 0.78,
                        "auc_by_popularity_level": {"0": base - 0.1, "1": base + 0.1},
                        "bayes_auc_by_popularity_level": {"0": 0.7, "1": 0.9},
                        "cold_recall": {"1": 0.2 + delta, "3": 0.5},
                        "random_cold_recall": {"1": 0.1, "3": 0.3},
                        "bayes_cold_recall": {"1": 0.4, "3": 0.7}})
    return out


def test_summary_is_mean_and_sample_std_per_model_in_order() -> None:
    rows = summarize(_results())
    assert [r["model"] for r in rows] == ["BaseModel+IDs", "MARN"]
    assert rows[1]["auc"] == statistics.fmean([0.65, 0.67])
    assert rows[1]["auc_std"] == statistics.stdev([0.65, 0.67])
    assert rows[0]["seeds"] == [1, 2]
    table = markdown_table(rows)
    assert "| MARN | 0.6600 ± 0.0141 | 0.6500 ± 0.0000 | 0.6000 ± 0.0000 |" in table
    assert "| Bayes-optimal (true p) | 0.8000 | 0.7900 | 0.7800 |" in table


def test_bayes_row_of_a_merged_study_is_that_of_the_most_seeds() -> None:
    """A merged study whose configurations ran on different seeds: the Bayes row is the mean over
    the largest seed set (the Bayes AUC depends on the seed only) and says which seeds."""
    runs = [{"model": "A", "seed": s, "auc": 0.6, "bayes_auc": b} for s, b in ((1, 0.80), (2, 0.82))]
    runs += [{"model": "B", "seed": s, "auc": 0.6, "bayes_auc": b}
             for s, b in ((1, 0.80), (2, 0.82), (3, 0.78), (4, 0.84), (5, 0.81))]
    table = markdown_table(summarize(runs))
    assert "| Bayes-optimal (true p), seeds 1, 2, 3, 4, 5 | 0.8100 |" in table


def test_report_files(tmp_path: Path) -> None:
    table, png = write_report(_results(), str(tmp_path), "python examples/ablation_study.py")
    assert (tmp_path / "table.md").read_text().startswith("`python examples/ablation_study.py`")
    assert Path(png).stat().st_size > 10_000
    assert (tmp_path / "differences.png").stat().st_size > 10_000
    assert not (tmp_path / "curves.png").exists()  # one evaluation per run: no curve
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
    assert "| MARN | 0.550 | 0.750 |" in table  # Table 4, mean over seeds
    assert "| Bayes-optimal | 0.700 | 0.900 |" in table
    assert "| MARN | 0.210 | 0.500 |" in table  # Table 5: recall@1 mean of 0.2 and 0.22
    assert "| RANDOM | 0.100 | 0.300 |" in table
    # Paired by seed: MARN - IDs is +0.05 on both seeds, so the interval has no width.
    assert "| MARN | +0.0500 [+0.0500, +0.0500] |" in table
    assert read_results(str(tmp_path))[1] == "python examples/ablation_study.py"


# --- statistics --------------------------------------------------------------------------------

def test_t_cdf_matches_the_closed_forms_of_one_and_two_degrees_of_freedom() -> None:
    for t in (-30.0, -2.5, -0.3, 0.0, 0.7, 1.0, 4.3, 50.0):
        cauchy = 0.5 + math.atan(t) / math.pi
        two = 0.5 + t / (2.0 * math.sqrt(2.0 + t * t))
        assert student_t_cdf(t, 1) == pytest.approx(cauchy, abs=1e-12)
        assert student_t_cdf(t, 2) == pytest.approx(two, abs=1e-12)
    for p in (0.6, 0.9, 0.975, 0.999):
        assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        # df = 2: t = (2p - 1) * sqrt(2 / (4 p (1 - p)))
        assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)


def test_t_quantiles_match_the_tables() -> None:
    for df, t in T975.items():
        assert student_t_quantile(0.975, df) == pytest.approx(t, abs=2e-9)
        assert student_t_quantile(0.025, df) == pytest.approx(-t, abs=2e-9)
    for df, t in T95.items():
        assert student_t_quantile(0.95, df) == pytest.approx(t, abs=2e-9)
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.959963985, abs=1e-6)  # the normal's


def test_incomplete_beta_special_cases() -> None:
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x)
        assert regularized_incomplete_beta(3.5, 1, x) == pytest.approx(x**3.5)
        assert regularized_incomplete_beta(2.0, 5.0, x) == pytest.approx(
            1.0 - regularized_incomplete_beta(5.0, 2.0, 1.0 - x))
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0, 1, 0.5)


def test_t_interval_is_the_textbook_formula() -> None:
    values = [0.012, -0.004, 0.021, 0.008, 0.015]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    got = t_interval(values)
    assert got["n"] == n and got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(sd)
    assert got["low"] == pytest.approx(mean - half, abs=1e-10)
    assert got["high"] == pytest.approx(mean + half, abs=1e-10)
    one = t_interval([0.3])
    assert one["mean"] == 0.3 and one["low"] is None and one["half_width"] is None


@pytest.mark.parametrize("n", [3, 5, 10])
def test_detectable_difference_is_found_at_the_stated_power(n: int) -> None:
    # Simulation as the reference: paired differences drawn with the detectable difference as
    # their true mean; the share of t-intervals that exclude zero is the power (the formula is the
    # usual approximation, slightly optimistic for few seeds: within 0.06 of 80% here).
    import torch

    std = 0.004
    delta = detectable_difference(std, n)
    assert delta == pytest.approx((T975[n - 1] + student_t_quantile(0.8, n - 1)) * std / math.sqrt(n))
    gen = torch.Generator().manual_seed(n)
    draws = delta + std * torch.randn(50_000, n, generator=gen, dtype=torch.float64)

    def share_found(d: torch.Tensor) -> float:  # t_interval's low > 0, for every row at once
        low = d.mean(1) - T975[n - 1] * d.std(1) / math.sqrt(n)
        return (low > 0).double().mean().item()

    assert t_interval(draws[0].tolist())["low"] == pytest.approx(
        (draws[0].mean() - T975[n - 1] * draws[0].std() / math.sqrt(n)).item())
    assert 0.74 <= share_found(draws) <= 0.82
    # Half the difference is found far less often: the figure is a threshold, not a formality.
    assert share_found(draws - delta / 2) < 0.45


def test_seeds_to_detect() -> None:
    n = seeds_to_detect(0.003, 0.004)
    assert detectable_difference(0.004, n) <= 0.003 < detectable_difference(0.004, n - 1)
    assert seeds_to_detect(-0.003, 0.004) == n  # either sign
    assert detectable_difference(0.004, 1) is None and seeds_to_detect(0.0, 0.004) is None
    assert seeds_to_detect(1e-9, 0.004, max_seeds=50) is None


def test_welch_interval_by_hand() -> None:
    a, b = [0.80, 0.82, 0.81, 0.83], [0.78, 0.74, 0.76]
    va, vb = statistics.variance(a) / 4, statistics.variance(b) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    got = welch_interval(a, b)
    assert got["df"] == pytest.approx(df)
    assert got["mean"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert got["half_width"] == pytest.approx(student_t_quantile(0.975, df) * math.sqrt(va + vb))
    # Equal sizes and variances: Welch's df is 2(n - 1) and the interval the pooled one.
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]
    got = welch_interval(a, b)
    assert got["df"] == pytest.approx(4.0)
    assert got["half_width"] == pytest.approx(T975[4] * math.sqrt(2 * 1.0 / 3))


def test_paired_differences_pair_by_seed() -> None:
    results = [
        {"model": "BaseModel+IDs", "seed": 1, "auc": 0.70, "cold_auc": 0.50},
        {"model": "BaseModel+IDs", "seed": 2, "auc": 0.60, "cold_auc": 0.55},
        {"model": "BaseModel+IDs", "seed": 3, "auc": 0.65},
        {"model": "MARN", "seed": 3, "auc": 0.66, "cold_auc": 0.60},
        {"model": "MARN", "seed": 1, "auc": 0.72, "cold_auc": 0.52},
        {"model": "MARN", "seed": 2, "auc": 0.61, "cold_auc": 0.58},
        {"model": "BaseModel+CONC", "seed": 2, "auc": 0.62},
    ]
    rows = {r["model"]: r for r in paired_differences(results, "BaseModel+IDs")}
    marn = rows["MARN"]
    assert marn["seeds"] == [1, 2, 3]
    assert marn["auc"]["values"] == pytest.approx([0.02, 0.01, 0.01])
    expected = t_interval([0.02, 0.01, 0.01])
    assert marn["auc"]["low"] == pytest.approx(expected["low"])
    # cold_auc: seed 3 of the reference lacks it, so only seeds 1 and 2 pair.
    assert marn["cold_auc"]["seeds"] == [1, 2]
    assert marn["cold_auc"]["values"] == pytest.approx([0.02, 0.03])
    assert rows["BaseModel+CONC"]["auc"]["n"] == 1 and rows["BaseModel+CONC"]["auc"]["low"] is None
    assert "user_auc" not in marn
    assert paired_differences(results, "BaseModel+MAF") == []


def _real_data_results():
    """As a prepared directory gives them: no Bayes values, no popularity levels; curves."""
    out = []
    for model, base in (("BaseModel+IDs", 0.80), ("BaseModel+CONC", 0.78), ("MARN", 0.79)):
        for seed, delta in ((1, 0.0), (2, 0.01), (3, -0.005)):
            curve = [{"step": s, "auc": base + delta - 0.1 / s, "user_auc": base - 0.1 / s,
                      "cold_auc": 0.6} for s in (100, 200, 300)]
            out.append({"model": model, "seed": seed, "auc": base + delta + 0.001 * (model == "MARN") * seed,
                        "user_auc": base, "cold_auc": 0.6 + 0.01 * seed, "cold_recall": {"1": 0.9},
                        "curve": curve})
    return out


def test_real_data_report(tmp_path: Path) -> None:
    skipped = {"BaseModel+IMAGE": "the data set has none of the modalities ('image',)"}
    table, png = write_report(_real_data_results(), str(tmp_path), "python x.py --data d",
                              skipped=skipped, title="Table 3 configurations on d")
    assert "Bayes" not in table and "Table 4" not in table
    assert "Paired by seed, minus BaseModel+IDs" in table
    assert "Paired by seed, minus BaseModel+CONC" in table
    assert "- BaseModel+IMAGE: the data set has none" in table
    # MARN - CONC: +0.01 + 0.001 * seed on seeds 1, 2, 3.
    assert "| MARN | +0.0120 [+0.0095, +0.0145] |" in table
    assert "1: +0.0110, 2: +0.0120, 3: +0.0130 | 3/3 |" in table
    for name in ("table.png", "differences.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert read_skipped(str(tmp_path)) == skipped


# --- on a prepared directory --------------------------------------------------------------------

def write_movielens_like(root: Path, n_items: int = 30, n_users: int = 24, seed: int = 0) -> str:
    """A raw directory shaped like converted MovieLens (title, release_year, genres; ratings)."""
    rng = np.random.default_rng(seed)
    raw = root / "raw"
    raw.mkdir(parents=True)
    genres = ["Drama", "Comedy", "Action", "Horror"]
    items = pa.table({
        "item_id": pa.array(np.arange(1, n_items + 1, dtype=np.int64)),
        "title": [f"movie {k} part {k % 3}" for k in range(n_items)],
        "release_year": pa.array(rng.integers(1990, 1996, n_items).astype(np.int64)),
        "genres": pa.array([list(rng.choice(genres, rng.integers(1, 3), replace=False)) for _ in range(n_items)],
                           pa.list_(pa.string())),
    })
    users, item_ids, times, ratings = [], [], [], []
    for u in range(n_users):
        for k in range(int(rng.integers(4, 9))):
            users.append(u)
            item_ids.append(int(rng.integers(1, n_items + 1)))
            times.append(1_000_000 + 1000 * u + 60 * k)
            ratings.append(float(rng.integers(1, 6)))
    inter = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(item_ids, pa.int64()),
                      "timestamp": pa.array(times, pa.int64()), "rating": pa.array(ratings, pa.float32())})
    pq.write_table(items, raw / "items.parquet")
    pq.write_table(inter, raw / "interactions.parquet")
    from marn_rec.data.prepare import PrepareConfig, prepare

    out = root / "prepared"
    prepare(str(raw), str(out), PrepareConfig(max_length=6, cold_item_fraction=0.2, progress=False))
    return str(out)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> str:
    return write_movielens_like(tmp_path_factory.mktemp("movielens_like"))


def test_applicable_models_skip_what_the_data_lacks(prepared: str) -> None:
    base = TrainConfig(preset="tiny", data_dir=prepared, out_dir="unused")
    kept, skipped = applicable_models(base, ["BaseModel+IDs", "BaseModel+IMAGE", "BaseModel+CONC", "MARN"])
    assert kept == ["BaseModel+IDs", "BaseModel+CONC", "MARN"]
    assert list(skipped) == ["BaseModel+IMAGE"] and "image" in skipped["BaseModel+IMAGE"]
    synthetic = TrainConfig(preset="tiny", out_dir="unused")
    assert applicable_models(synthetic, ["BaseModel+IMAGE", "MARN"]) == (["BaseModel+IMAGE", "MARN"], {})


def test_study_on_a_prepared_directory_end_to_end(prepared: str, tmp_path: Path) -> None:
    """The command line on real-data-shaped input: the image baseline skipped with its reason,
    two configurations x one seed trained (tiny preset, 4 steps, evaluated twice), the report."""
    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "examples" / "ablation_study.py"), "--data", prepared, "--preset", "tiny",
           "--models", "BaseModel+IDs", "BaseModel+IMAGE", "BaseModel+CONC", "--seeds", "3",
           "--steps", "4", "--eval-every", "2", "--batch-size", "16", "--jobs", "2", "--out-dir", str(out),
           "--cold-item-dropout", "0.25", "--fusion-initial-accumulator", "0", "--fused-optimizer"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metas = [json.loads(m.read_text())["train"] for m in out.glob("*_seed3/checkpoints/step_*/meta.json")]
    assert metas and all(m["cold_item_dropout"] == 0.25 and m["fusion_initial_accumulator"] == 0 for m in metas)
    assert "skipped BaseModel+IMAGE: the data set has none of the modalities ('image',)" in proc.stdout
    results, command = read_results(str(out))
    assert [r["model"] for r in results] == ["BaseModel+IDs", "BaseModel+CONC"]
    assert all(r["seed"] == 3 and "cold_auc" in r and "bayes_auc" not in r for r in results)
    assert [c["step"] for c in results[0]["curve"]] == [2, 4]
    assert "--data" in command
    table = (out / "table.md").read_text()
    assert "| BaseModel+CONC | " in table and "Paired by seed, minus BaseModel+IDs" in table
    assert (out / "curves.png").exists() and (out / "differences.png").exists()
    assert json.loads((out / "skipped.json").read_text())["BaseModel+IMAGE"].startswith("the data set")
    # --report-only rewrites the same report from the results.
    (out / "table.md").unlink()
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "ablation_study.py"), "--report-only",
                           "--out-dir", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "BaseModel+IMAGE: the data set" in (out / "table.md").read_text()


def test_command_line_refusals(tmp_path: Path) -> None:
    script = str(REPO / "examples" / "ablation_study.py")
    for args, message in (
        (["--data", str(tmp_path / "nothing")], "not a prepared directory"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--seeds", "1", "1"], "lists a seed twice"),
        (["--synthetic", "no_such_knob=1"], "not a field of SyntheticTaobaoConfig"),
        (["--synthetic", "seed=3"], "set by the run itself"),
        (["--synthetic", "missing_image_prob=2"], "missing_image_prob must be in [0, 1]"),
        (["--synthetic", "behavior_type_weights=1,1"], "takes tuple"),
        (["--synthetic", "missing_image_prob=0.1", "--data", str(tmp_path)], "does not apply to --data"),
        (["--cold-set-size", "0"], "--cold-set-size must be >= 1"),
        (["--cold-item-dropout", "0.1"], "--cold-item-dropout needs --data"),
        (["--cold-item-dropout", "1"], "--cold-item-dropout must be in [0, 1)"),
        (["--fusion-initial-accumulator", "-1"], "--fusion-initial-accumulator must be a finite number"),
        (["--dense-dtype", "fp16"], "invalid choice: 'fp16'"),
    ):
        proc = subprocess.run([sys.executable, script, *args, "--out-dir", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1



def test_modality_view_drops_a_modality_on_the_same_samples(prepared: str, tmp_path: Path) -> None:
    from dataclasses import replace

    from marn_rec.data.prepared import PreparedDataset
    from marn_rec.training.ablation.views import modality_view
    from marn_rec.training.sources import model_config_for_manifest

    view = modality_view(prepared, str(tmp_path / "view"), ["statistic"])
    modality_view(prepared, view, ["statistic"])  # again, over the first
    base = TrainConfig(preset="tiny", data_dir=view, out_dir="unused")
    full = PreparedDataset(prepared)
    data = PreparedDataset(view)
    assert data.statistic_features == [] and full.statistic_features
    config = model_config_for_manifest(data.manifest, replace(base, model="MARN").model_config())
    assert config.tower.modalities == ("ids", "title")
    assert (Path(view) / "test.parquet").read_bytes() == (Path(prepared) / "test.parquet").read_bytes()
    assert applicable_models(base, ["BaseModel+IDs", "BaseModel+CONC"]) == (["BaseModel+IDs", "BaseModel+CONC"], {})
    with pytest.raises(ValueError, match="can drop only"):
        modality_view(prepared, str(tmp_path / "v2"), ["ids"])


def test_runs_without_a_modality_pair_with_their_full_twin() -> None:
    from marn_rec.training.ablation import report_text

    results = [{"model": m, "seed": s, "auc": a, "user_auc": 0.7, "cold_auc": c}
               for m, s, a, c in (("BaseModel+CONC", 1, 0.75, 0.50), ("BaseModel+CONC", 2, 0.76, 0.49),
                                  ("BaseModel+CONC without statistic", 1, 0.72, 0.60),
                                  ("BaseModel+CONC without statistic", 2, 0.71, 0.61))]
    text = report_text(results)
    assert "minus the same configuration with every modality" in text
    assert "| BaseModel+CONC without statistic | -0.0400 [" in text
    assert "1: -0.0300, 2: -0.0500 | 0/2 |" in text


def test_synthetic_overrides_are_typed_and_reach_the_stream() -> None:
    from marn_rec.training.cli import synthetic_overrides

    got = synthetic_overrides(["missing_image_prob=0.25", "behavior_type_weights=1,1,1",
                               "num_favorite_categories=2", "recency_half_life_s=1e12"])
    assert got == {"missing_image_prob": 0.25, "behavior_type_weights": (1.0, 1.0, 1.0),
                   "num_favorite_categories": 2, "recency_half_life_s": 1e12}
    cfg = TrainConfig(preset="tiny", steps=2, data_overrides=got).data_config(1)
    assert cfg.missing_image_prob == 0.25 and cfg.behavior_type_weights == (1.0, 1.0, 1.0)
    for bad in (["x"], ["missing_image_prob=nan"], ["num_favorite_categories=2.5"],
                ["missing_image_prob=0.1", "missing_image_prob=0.2"]):
        with pytest.raises(ValueError, match="--synthetic"):
            synthetic_overrides(bad)


def test_summary_means_cover_every_seed_or_none() -> None:
    """A metric some runs lack (e.g. warm_auc, added after they ran) gets no mean rather than a mean
    over fewer seeds than its neighbours."""
    from marn_rec.training.ablation.statistics import summarize

    rows = summarize([
        {"model": "MARN", "seed": 1, "auc": 0.70, "warm_auc": 0.80},
        {"model": "MARN", "seed": 2, "auc": 0.72},
    ])
    assert rows[0]["auc"] == pytest.approx(0.71) and "warm_auc" not in rows[0]


def test_merging_a_study_again_does_not_count_its_runs_twice(tmp_path: Path) -> None:
    """--report-only --merge writes the merged runs into the study's results.jsonl; merging the same
    source again must not repeat them (the means would weight those seeds twice). The same model
    and seed with two different results is refused, naming both studies."""
    from marn_rec.training.ablation import merge_results

    runs = _results()
    ids = [r for r in runs if r["model"] == "BaseModel+IDs"]
    marn = [r for r in runs if r["model"] == "MARN"]
    assert merge_results([("a", ids), ("b", marn), ("a again", ids)]) == ids + marn
    changed = [dict(marn[0], auc=0.9)]
    with pytest.raises(ValueError, match=r"MARN seed 1 ran twice .* in b and 0.9 in c"):
        merge_results([("b", marn), ("c", changed)])

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_report(ids, str(a), "python examples/ablation_study.py --models BaseModel+IDs")
    write_report(marn, str(b), "python examples/ablation_study.py --models MARN")
    write_report(changed, str(c), "python examples/ablation_study.py --models MARN")
    script = [sys.executable, str(REPO / "examples" / "ablation_study.py"), "--report-only", "--out-dir", str(b)]
    for _ in range(2):
        proc = subprocess.run(script + ["--merge", str(a)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted((r["model"], r["seed"]) for r in read_results(str(b))[0]) == [
            ("BaseModel+IDs", 1), ("BaseModel+IDs", 2), ("MARN", 1), ("MARN", 2)]
    proc = subprocess.run(script + ["--merge", str(c)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and "MARN seed 1 ran twice" in proc.stderr
