"""Freed memory kept mapped (marn_rec.training.allocator): fewer page faults, in a fresh process."""

import subprocess
import sys

import pytest

from marn_rec.training import allocator

_CHURN = """
import ctypes, resource, sys
from marn_rec.training.allocator import keep_freed_memory, kept
assert kept() is None
if sys.argv[1] == "keep":
    assert keep_freed_memory() and kept()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE, COUNT = 2 << 20, 40

def churn():
    # 40 live blocks of 2 MiB, written, then all freed: a step's activations in miniature, through
    # libc directly so that no small allocation of the interpreter lands between them.
    blocks = [libc.malloc(SIZE) for _ in range(COUNT)]
    for b in blocks:
        ctypes.memset(b, 1, SIZE)
    for b in blocks:
        libc.free(b)

for _ in range(3):
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_reused_memory() -> None:
    default, keep = _faults("default"), _faults("keep")
    # 5 rounds of 80 MiB: about 100,000 faults of 4 KiB pages when glibc trims the heap after each.
    # (Through libc directly: with torch tensors, small allocations between the blocks can keep
    # the heap's top in use, and then glibc trims nothing even by default.)
    assert default > 20_000, default
    assert keep < default / 10, (keep, default)


def test_keep_freed_memory_elsewhere_changes_nothing(monkeypatch) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.keep_freed_memory() is False and allocator.kept() is False


def test_training_keeps_freed_memory_only_when_asked(tmp_path) -> None:
    """Off by default in training (a 2-process run aborted at exit in 2 of 12 tries with it, 1 of 26
    without: not settled)."""
    from marn_rec.training.cli import parse_train_args
    from marn_rec.training.loop import TrainConfig
    from marn_rec.training.run_meta import NOT_CHECKED

    assert TrainConfig().keep_freed_memory is False
    assert parse_train_args(["--out-dir", str(tmp_path)]).keep_freed_memory is False
    assert parse_train_args(["--out-dir", str(tmp_path), "--keep-freed-memory"]).keep_freed_memory is True
    assert "keep_freed_memory" in NOT_CHECKED  # a resumed run may change it: no arithmetic changes


def test_benchmarks_keep_freed_memory_unless_told_not_to() -> None:
    """qps.py's processes keep freed memory mapped, as training does (its interleaved old/fast
    windows are only fair so: RESULTS, "Speed and scale", item 2)."""
    from marn_rec.benchmarks import cli

    parser = cli.qps_parser()
    assert cli.qps_config_from_args(parser.parse_args([]), []).keep_freed_memory is True
    args = ["--no-keep-freed-memory"]
    assert cli.qps_config_from_args(parser.parse_args(args), args).keep_freed_memory is False
