"""Export the scoring head with torch.export (no TorchRec inside), optionally as an AOTInductor package.

    python examples/export_scorer.py --store runs/store --checkpoint-dir runs/taobao_synthetic --out runs/scorer.pt2
    python examples/export_scorer.py --store runs/store --checkpoint-dir runs/taobao_synthetic --out runs/scorer.pt2 --aoti

Writes scorer.pt2, scorer.json (inputs, fingerprints) and scorer.example.pt (inputs and expected
logits) and reloads the program to check it. All logic lives in marn_rec.serving.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from marn_rec.serving.cli import export_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(export_main())
