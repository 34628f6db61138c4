"""Peak-memory prediction: what each process of a run will need (:class:`MemoryModel`) against
what the machine has (:func:`memory_budget`), so that a run that would not fit is skipped
instead of being allocated (and killed)."""

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from marn_rec.benchmarks.machine import GIB, MIB, available_memory_bytes

# Calibrated on this machine (small preset, B=1024): imports, dense model, batch pool, activations
# and allocator slack of one training process. Replaced by the measured value of the last
# successful run of the same kind once there is one (see ``MemoryModel``).
DEFAULT_PROCESS_OVERHEAD = int(1.25 * GIB)


@dataclass
class MemoryModel:
    """Predicts the peak resident memory of each process of a run before allocating it.

    ``peak = overhead + embedding weights + optimizer state``: the baseline holds every table
    and a full-size AdaGrad ``sum``; a sharded rank holds its shards and one float per shard row.
    ``overhead`` is :data:`DEFAULT_PROCESS_OVERHEAD` until a run of the same (mode, dedup) has
    completed; then it is that run's measured peak minus its embedding bytes (plus 10%).
    """

    default_overhead: int = DEFAULT_PROCESS_OVERHEAD
    measured_overhead: Dict[str, int] = field(default_factory=dict)

    @staticmethod
    def key(mode: str, dedup: bool) -> str:
        return f"{mode}/{'dedup' if dedup else 'per_slot'}"

    def overhead(self, mode: str, dedup: bool) -> int:
        return self.measured_overhead.get(self.key(mode, dedup), self.default_overhead)

    def predict(self, mode: str, dedup: bool, embedding_per_process: Sequence[Dict[str, int]]) -> List[int]:
        o = self.overhead(mode, dedup)
        return [o + e["weights"] + e["optimizer"] for e in embedding_per_process]

    def observe(self, mode: str, dedup: bool, embedding_per_process: Sequence[Dict[str, int]], peaks: Sequence[int]) -> None:
        excess = max(p - e["weights"] - e["optimizer"] for p, e in zip(peaks, embedding_per_process))
        self.measured_overhead[self.key(mode, dedup)] = max(int(excess * 1.1), 256 * MIB)


def fits(predicted_per_process: Sequence[int], budget: int) -> bool:
    return sum(predicted_per_process) <= budget


def memory_budget(device: str, world_size: int, fraction: float) -> Tuple[int, str]:
    """``fraction`` of the memory free now (per GPU, or host ``MemAvailable``) and what it is."""
    if device == "cuda":
        free = min(torch.cuda.mem_get_info(r)[0] for r in range(min(world_size, torch.cuda.device_count())))
        return int(fraction * free), "GPU memory free per device"
    return int(fraction * available_memory_bytes()), "host MemAvailable"
