"""Claims across generator settings: paired differences and their changes, checked by hand."""

import json
import math
from pathlib import Path

import pytest

from marn_rec.training.ablation.claims import claim_differences, claim_table, claims_report, parse_claim
from marn_rec.training.ablation.statistics import student_t_quantile


def _runs(values):
    return [{"model": m, "seed": s, "auc": v, "cold_auc": v / 2} for (m, s), v in values.items()]


DEFAULT = _runs({("CONC", 1): 0.70, ("CONC", 2): 0.71, ("CONC", 3): 0.69,
                 ("MAF", 1): 0.69, ("MAF", 2): 0.71, ("MAF", 3): 0.68})
QUALITY = _runs({("CONC", 1): 0.66, ("CONC", 2): 0.67, ("CONC", 3): 0.65,
                 ("MAF", 1): 0.67, ("MAF", 2): 0.685, ("MAF", 3): 0.66})


def test_differences_pair_by_seed_and_changes_pair_across_settings() -> None:
    assert claim_differences(DEFAULT, ("MAF", "CONC")) == pytest.approx({1: -0.01, 2: 0.0, 3: -0.01})
    t = claim_table([("default", DEFAULT), ("quality", QUALITY)], [("MAF", "CONC")])
    c = t["claims"][0]
    q = c["by_setting"]["quality"]
    diffs = [0.01, 0.015, 0.01]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert q["mean"] == pytest.approx(mean)
    assert q["high"] - q["mean"] == pytest.approx(student_t_quantile(0.975, 2) * sd / math.sqrt(3))
    change = c["change"]["quality"]
    assert change["values"] == pytest.approx([0.02, 0.015, 0.02]) and change["seeds"] == [1, 2, 3]
    assert c["baseline"] == "default"


def test_a_claim_missing_from_a_setting_is_skipped_not_invented() -> None:
    only_conc = [r for r in QUALITY if r["model"] == "CONC"]
    c = claim_table([("default", DEFAULT), ("quality", only_conc)], [("MAF", "CONC")])["claims"][0]
    assert c["by_setting"]["quality"] is None and c["change"] == {}


def test_report_files_and_bad_claims(tmp_path: Path) -> None:
    for name, runs in (("d", DEFAULT), ("q", QUALITY)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    text = claims_report([("default", str(tmp_path / "d")), ("quality", str(tmp_path / "q"))],
                         [parse_claim("MAF>CONC")], str(tmp_path / "out" / "claims.md"))
    assert "| MAF − CONC |" in text and "+0.0117" in text
    assert (tmp_path / "out" / "claims.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "claims.json").read_text())[0]["metric"] == "auc"
    with pytest.raises(ValueError, match="MODEL>REFERENCE"):
        parse_claim("MAF")
