"""The ablation study's aggregation and report (the runs themselves are train(), tested elsewhere)."""

import statistics
from pathlib import Path

from marn_rec.training.ablation import markdown_table, summarize, write_report


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


def test_report_files(tmp_path: Path) -> None:
    table, png = write_report(_results(), str(tmp_path), "python examples/ablation_study.py")
    assert (tmp_path / "table.md").read_text().startswith("`python examples/ablation_study.py`")
    assert Path(png).stat().st_size > 10_000
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
    assert "| MARN | 0.550 | 0.750 |" in table  # Table 4, mean over seeds
    assert "| Bayes-optimal | 0.700 | 0.900 |" in table
    assert "| MARN | 0.210 | 0.500 |" in table  # Table 5: recall@1 mean of 0.2 and 0.22
