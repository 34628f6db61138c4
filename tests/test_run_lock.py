"""One training run per out-dir: a second live run into it stops before writing anything."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from marn_rec.training.loop import TrainConfig, train
from marn_rec.training.run_lock import LOCK_FILE, OutDirInUse, lock_out_dir

ROOT = Path(__file__).resolve().parents[1]

# A process that takes the lock as training does and holds it until killed.
_HOLDER = """
import sys, time
from marn_rec.training.run_lock import lock_out_dir
lock = lock_out_dir(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(preset="tiny", batch_size=16, steps=2, eval_every=2, eval_batches=1,
                out_dir=str(out), progress=False, recall_at=(1,))
    return TrainConfig(**{**base, **kw})


def _hold(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_live_run_is_refused_and_a_killed_one_leaves_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(OutDirInUse, match=rf"in use by another training run \(pid {holder.pid} on "):
            train(_cfg(out))
        assert sorted(os.listdir(out)) == [LOCK_FILE]  # nothing of the refused run was written
    finally:
        holder.send_signal(signal.SIGKILL)  # as a killed job: the kernel drops its lock
        holder.wait()
    result = train(_cfg(out))
    assert "auc" in result and (out / "metrics.jsonl").exists()


def test_the_lock_is_released_when_the_run_ends(tmp_path: Path) -> None:
    train(_cfg(tmp_path))
    with lock_out_dir(str(tmp_path)) as lock:  # free again; and now held by this process
        assert lock is not None
        with pytest.raises(OutDirInUse):  # a second descriptor conflicts, in this process too
            lock_out_dir(str(tmp_path))
    lock_out_dir(str(tmp_path)).release()


def test_the_command_line_says_it_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        cmd = [sys.executable, str(ROOT / "examples" / "train_taobao_synthetic.py"), "--preset", "tiny",
               "--batch-size", "16", "--steps", "2", "--no-progress", "--out-dir", str(out)]
        # A process group of its own: not the one an earlier test left in this process's env.
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"OutDirInUse: --out-dir {out} is in use by another training run (pid {holder.pid}" in run.stderr
    assert "Traceback" not in run.stderr
