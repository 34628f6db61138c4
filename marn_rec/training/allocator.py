"""Keep the memory a training step frees mapped, for the next step (glibc's malloc on Linux).

A CPU training step allocates and frees the same few hundred MB of activations and gradients every
step. glibc's malloc serves blocks above its mmap threshold with ``mmap`` and trims the heap's free
top back to the kernel once it exceeds its trim threshold, so every step page-faults much of that
memory back in, and the kernel zeroes each page first. PyTorch's CPU tuning guide recommends
jemalloc or tcmalloc for this reason; both are extra native libraries. glibc's own ``mallopt``
gives the same effect without one, and applies at run time (the ``MALLOC_*_`` environment
variables would need a fresh process). Measured on the small preset's unsharded step
(benchmarks/RESULTS.md, "Speed and scale", item 2): 6,300-6,800 page faults per step fall to
1,100, and the step is 2-13% faster. It also keeps a process's timings independent of what ran in
it before: with glibc's malloc as it comes, the old step ran 20-25% slower once the fast step had
run in the same process. The model and its arithmetic are unchanged; the process keeps up to
``trim_threshold`` bytes of freed memory.
"""

import ctypes
import sys
from typing import Optional

# mallopt's parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2, 32 MiB on 64-bit systems; blocks above
# it are still mmapped (a step's largest temporaries are a few MiB on the presets).
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 256 << 20

_applied: Optional[bool] = None


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # musl and others: no gnu_get_libc_version, other malloc
        return None
    return libc


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD, top_pad: int = TOP_PAD
) -> bool:
    """Sets glibc malloc's thresholds so that freed blocks stay mapped for reuse.

    Returns True where it applied them (Linux with glibc), False elsewhere, where it changes
    nothing. Process-wide and not undone: call it once, before training.
    """
    global _applied
    libc = _glibc()
    if libc is None:
        _applied = False
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold),
            (_M_TRIM_THRESHOLD, trim_threshold),
            (_M_TOP_PAD, top_pad),
        )
    )
    _applied = ok
    return ok


def kept() -> Optional[bool]:
    """Whether :func:`keep_freed_memory` applied in this process (None: not called)."""
    return _applied
