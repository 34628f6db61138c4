"""One training run per output directory at a time.

Two runs writing into the same ``--out-dir`` interleave their ``metrics.jsonl`` lines and their
checkpoints without any error: a run restarted while an earlier process of it still lives (an
orphaned rank, a job started twice) silently mixes two runs. :func:`lock_out_dir` makes the second
run stop before it writes anything. The lock is ``flock`` on ``OUT_DIR/.marn_rec.lock``, held by
rank 0 for the run: the kernel releases it when the process ends, however it ends (a SIGKILLed run
leaves no stale lock to clear by hand), and it works across nodes where the file system supports
``flock`` (local disks, recent NFS). Where it does not, the run goes on unlocked and says so.
It cannot see an out-dir deleted under a live run: that run's lock is on the deleted file.
"""

import errno
import fcntl
import os
import socket
import time
from typing import Optional, Tuple

from marn_rec.training.checkpoint import CheckpointError, _broadcast, _rank_world

LOCK_FILE = ".marn_rec.lock"


class OutDirInUse(CheckpointError):
    """Another live training run holds the output directory."""


class OutDirLock:
    """The held lock (rank 0; a no-op on the other ranks). :meth:`release` or ``with``."""

    def __init__(self, fd: Optional[int]) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "OutDirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "a process that has not written its name yet"
    except OSError:
        return "an unknown process"


def _try_lock(out_dir: str) -> Tuple[Optional[int], Optional[str], Optional[str]]:
    """(descriptor, error, warning) of rank 0's attempt."""
    path = os.path.join(out_dir, LOCK_FILE)
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        return None, None, f"could not open {path} ({e.strerror}); training without the out-dir lock"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None, (
                f"--out-dir {out_dir} is in use by another training run ({_holder(path)}); wait "
                f"for it to end, stop it, or choose another --out-dir"
            ), None
        return None, None, f"cannot lock {path} ({e.strerror}); training without the out-dir lock"
    # Who holds it, for the message of a run that finds it taken.
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    return fd, None, None


def lock_out_dir(out_dir: str) -> OutDirLock:
    """Collective: rank 0 takes the lock of ``out_dir`` (creating the directory); every rank gets
    the same answer.

    Raises:
        OutDirInUse: on every rank, when another live process holds the lock.
    """
    rank, _ = _rank_world()
    fd, error, warning = _try_lock(out_dir) if rank == 0 else (None, None, None)
    error = _broadcast(error)
    if error is not None:
        raise OutDirInUse(error)
    if warning is not None:
        print(f"warning: {warning}", flush=True)
    return OutDirLock(fd)


__all__ = ["LOCK_FILE", "OutDirInUse", "OutDirLock", "lock_out_dir"]
