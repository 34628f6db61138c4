#!/usr/bin/env bash
# Creates benchmarks/peer/.venv: deepctr-torch (pinned, requirements.txt) for benchmarks/peer_din.py,
# in its own environment so that it never touches marn_rec's .venv. Idempotent: a second run checks
# a stamp and returns.
#
#   PYTHON                Python 3.11 to build the environment with (default: python3).
#   MARN_TORCH_INDEX_URL  optional extra index for torch, e.g. https://download.pytorch.org/whl/cpu
#                         (from PyPI alone, torch==2.13.0 is the CUDA build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
py=${PYTHON:-python3}
stamp_key="$(cat "$here/requirements.txt" "$here/setup.sh" | sha256sum | cut -c1-16)"
stamp="$venv/.peer_setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ] && "$venv/bin/python" -c "import deepctr_torch.models, sklearn, pyarrow" 2>/dev/null; then
  echo "peer setup: $venv is up to date"
  exit 0
fi
echo "peer setup: installing deepctr-torch into $venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
torch_index=()
if [ -n "${MARN_TORCH_INDEX_URL:-}" ]; then
  torch_index=(--extra-index-url "$MARN_TORCH_INDEX_URL")
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -q "${torch_index[@]}" -r "$here/requirements.txt"
"$venv/bin/python" - <<'PY'
import importlib.metadata as m
print("peer setup:", ", ".join(f"{p} {m.version(p)}" for p in ("deepctr-torch", "torch", "scikit-learn", "numpy")))
PY
echo "$stamp_key" > "$stamp"
