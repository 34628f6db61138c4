#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the test suite. pytest exit code 5 (no tests) fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest -q tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "ci: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
