"""README.md's Python blocks run as written, and every path it names exists."""

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> List[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_blocks() -> None:
    assert len(_python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_python_block_runs(index: int, tmp_path: Path) -> None:
    code = _python_blocks()[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # a block that joins a process group starts a group of one
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"README block {index}:\n{code}\n--- output ---\n{run.stdout[-2000:]}{run.stderr[-4000:]}"


def test_every_path_named_exists() -> None:
    named = set(re.findall(r"`((?:marn_rec|examples|benchmarks|docs|scripts|tests)/[\w./-]*)`", README))
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert not missing, missing
