#!/usr/bin/env bash
# Creates .venv in the checkout and installs marn_rec with pinned dependencies.
# Idempotent: a second run only checks a stamp and returns.
#
#   MARN_TORCH_INDEX_URL  optional extra index for torch, e.g. https://download.pytorch.org/whl/cpu
#                         (on a machine that sees only PyPI, `torch==2.13.0` is the CUDA build).
#   MARN_DEVICE=cpu|cuda  force the fbgemm variant instead of detecting a GPU with nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv"
py=${PYTHON:-python3}

if [ -z "${MARN_DEVICE:-}" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    MARN_DEVICE=cuda
  else
    MARN_DEVICE=cpu
  fi
fi
case "$MARN_DEVICE" in
  cpu) fbgemm="fbgemm-gpu-cpu==1.8.0" extra=cpu ;;
  cuda) fbgemm="fbgemm-gpu==1.8.0" extra=cuda ;;
  *) echo "MARN_DEVICE must be cpu or cuda, got '$MARN_DEVICE'" >&2; exit 2 ;;
esac

# The stamp records what was installed: it changes when the pins or the variant change.
stamp_key="$MARN_DEVICE $(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
stamp="$venv/.marn_rec_setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_key" ] && "$venv/bin/python" -c "import marn_rec, torchrec, fbgemm_gpu" 2>/dev/null; then
  echo "setup: .venv is up to date ($MARN_DEVICE)"
  exit 0
fi

echo "setup: installing marn_rec into .venv for $MARN_DEVICE"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
torch_index=()
if [ -n "${MARN_TORCH_INDEX_URL:-}" ]; then
  torch_index=(--extra-index-url "$MARN_TORCH_INDEX_URL")
fi
"${pip[@]}" "${torch_index[@]}" "torch==2.13.0"
"${pip[@]}" "${torch_index[@]}" "$fbgemm" -e ".[$extra,test]"
# torchrec's metadata asks for the CUDA fbgemm-gpu; its real needs are already pinned above.
"${pip[@]}" --no-deps "torchrec==1.8.0"
"$venv/bin/python" -c "import torch, fbgemm_gpu, torchrec, marn_rec; print('setup: torch', torch.__version__, '| torchrec', torchrec.__version__ if hasattr(torchrec, '__version__') else '1.8.0')"
echo "$stamp_key" > "$stamp"
