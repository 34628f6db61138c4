"""Issue-9 style claims against generator knobs: each module's paired gain over its ablation in
studies of the synthetic stream run with different knobs (examples/ablation_study.py --synthetic).

    python examples/generator_claims.py --setting default=runs/ablation \\
        --setting quality=runs/ablation_quality \\
        --claim "BaseModel+MAF>BaseModel+CONC" "MARN>BaseModel+CONC" --out runs/claims_quality.md

Writes OUT (markdown), OUT's .json and .png. The first setting is the baseline that the others'
changes are measured against (paired by seed). Logic: marn_rec.training.ablation.claims.
"""

import os
from typing import Optional, Sequence

from marn_rec.training.ablation.claims import claims_report, parse_claim
from marn_rec.training.cli import CheckedArgumentParser


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = CheckedArgumentParser(description=__doc__)
    p.add_argument("--setting", action="append", required=True, metavar="NAME=STUDY_DIR",
                   help="a study of examples/ablation_study.py and its name (repeat; first = baseline)")
    p.add_argument("--claim", nargs="+", required=True, metavar="MODEL>REFERENCE",
                   help="pairs whose paired difference is compared across the settings")
    p.add_argument("--out", required=True, help="markdown file to write (.json and .png beside it)")
    a = p.parse_args(argv)
    settings = []
    for s in a.setting:
        name, sep, path = s.partition("=")
        if not sep or not name:
            p.error(f"--setting expects NAME=STUDY_DIR, got {s!r}")
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("results.jsonl", "results.partial.jsonl")):
            p.error(f"--setting {s}: no results.jsonl in {path}")
        settings.append((name, path))
    try:
        claims = [parse_claim(c) for c in a.claim]
    except ValueError as e:
        p.error(str(e))
    print(claims_report(settings, claims, a.out))


if __name__ == "__main__":
    main()
