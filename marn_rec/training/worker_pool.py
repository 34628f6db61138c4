"""The process pool that studies train their runs in: spawned workers, one run each, that die with
the study.

Without the last part, a worker whose study was killed (SIGKILL, a lost terminal) trains on until
it tries to send its result back, writing into run directories that a new study may already have
re-created; the out-dir lock (``run_lock``) cannot see that once the directory was deleted.
"""

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from multiprocessing.pool import Pool

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent(parent_pid: int) -> None:
    """Makes this process receive SIGTERM when ``parent_pid`` (its parent) ends, and exits at once if
    it already has. Linux only (``prctl``); elsewhere a no-op beyond the check."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def study_pool(jobs: int) -> Pool:
    """``jobs`` spawned workers, each running one task (a training run) in a fresh process, each
    ending when this process does.

    Spawned, not forked: a run initialises its own process group and threads. Replacement workers
    (``maxtasksperchild=1``) are started by the pool's handler thread, which lives as long as the
    pool; PR_SET_PDEATHSIG follows the starting thread, so it fires only when the study goes.
    """
    ctx = mp.get_context("spawn")
    return ctx.Pool(jobs, initializer=exit_with_parent, initargs=(os.getpid(),), maxtasksperchild=1)
