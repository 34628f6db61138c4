"""Facts about the machine and this process: what a record states about where it was measured,
available host memory, and resident-set readings (Linux ``/proc``, with portable fallbacks)."""

import datetime
import os
import platform
import resource
import sys
from typing import Any, Dict

import torch

GIB = 1 << 30
MIB = 1 << 20


def machine_info() -> Dict[str, Any]:
    """What the markdown section states about the machine and software."""
    import fbgemm_gpu  # noqa: F401  (version below)
    import torchrec

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torchrec": getattr(torchrec, "__version__", "?"),
        "fbgemm_gpu": getattr(sys.modules["fbgemm_gpu"], "__version__", "?"),
        "memory_total_bytes": meminfo().get("MemTotal"),
        "memory_available_bytes": meminfo().get("MemAvailable"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # OpenMP's wait policy: PASSIVE (threads sleep at a barrier) matters on a shared machine.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def meminfo() -> Dict[str, int]:
    """``/proc/meminfo`` in bytes (empty where there is none)."""
    out: Dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out


def available_memory_bytes() -> int:
    """Host memory available for new allocations now (``MemAvailable``)."""
    info = meminfo()
    if "MemAvailable" in info:
        return info["MemAvailable"]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Resets this process's peak resident set (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set of this process (``VmHWM``, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """Resident set of this process now (``statm``, else the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()
