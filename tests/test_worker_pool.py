"""A study's workers die with the study (``training/worker_pool.py``): SIGKILL the process that
holds the pool and its worker must be gone within seconds, where a plain spawn pool's worker lives
on (the control, which shows the check can fail)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

HOLDER = """
import multiprocessing as mp, sys, time
from marn_rec.training.worker_pool import study_pool
if __name__ == "__main__":
    pool = study_pool(1) if sys.argv[1] == "study" else mp.get_context("spawn").Pool(1, maxtasksperchild=1)
    pool.apply_async(time.sleep, (300,))
    print("ready", flush=True)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _workers(parent: int) -> List[int]:
    """The pool workers among ``parent``'s children (not multiprocessing's resource tracker)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmd:
            found.append(int(d))
    return found


def _orphaned_worker_lives(kind: str, tmp_path: Path) -> bool:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, str(script), kind], stdout=subprocess.PIPE, text=True, env=env)
    workers: List[int] = []
    try:
        assert holder.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not workers and time.monotonic() < deadline:
            workers = _workers(holder.pid)
            time.sleep(0.1)
        assert len(workers) == 1, workers
        time.sleep(1.0)  # let the worker pass its initializer
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 5  # the study's worker goes in milliseconds
        while _alive(workers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        return _alive(workers[0])
    finally:
        holder.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_study_workers_die_with_the_study(tmp_path: Path) -> None:
    assert not _orphaned_worker_lives("study", tmp_path)


def test_a_plain_spawn_pool_leaves_its_worker_running(tmp_path: Path) -> None:
    """The control: the same check on a pool without the initializer finds the orphan."""
    assert _orphaned_worker_lives("plain", tmp_path)
