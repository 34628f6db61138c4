"""APGRU forward + backward time against ``torch.nn.GRU`` of the same sizes, timed interleaved
(a change of load on the machine hits every case alike)."""

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

from marn_rec.benchmarks.config import SCRATCH_DIR
from marn_rec.benchmarks.goals import GOAL_APGRU_RATIO
from marn_rec.benchmarks.machine import machine_info

# docs/design.md, "Behaviour sequences and cost": 2-core machine, torch 2.13 CPU, B=1024, T=50,
# 64-d, forward+backward, milliseconds.
DESIGN_APGRU_MS = {
    "torch.nn.GRU": 95.0,
    "gate loop indexing gi[t]": 713.0,
    "gate loop over gi.unbind(0)": 103.0,
    "torch.compile of the loop (after a 74 s compile)": 136.0,
}


@dataclass
class APGRUConfig:
    """Options of :func:`run_apgru` (the flags of ``benchmarks/apgru.py``)."""

    batch_size: int = 1024
    steps: int = 50
    dims: List[int] = field(default_factory=lambda: [64, 256])
    property_dim: int = 16  # behavior_type_dim + time_dim of the presets
    warmup: int = 2
    reps: int = 5
    threads: int = 0  # 0: leave torch's default
    out_dir: str = f"{SCRATCH_DIR}/apgru"
    command: str = ""


APGRU_QUICK = dict(batch_size=32, steps=6, dims=[8], warmup=1, reps=2)


def _fwd_bwd_ms(module: nn.Module, run: Callable[[], torch.Tensor], inputs: torch.Tensor) -> float:
    """Milliseconds of ``run().sum().backward()`` (gradients of the weights and the inputs)."""
    t = time.perf_counter()
    run().sum().backward()
    dt = (time.perf_counter() - t) * 1e3
    module.zero_grad(set_to_none=True)
    inputs.grad = None
    return dt


def _interleaved(
    cases: Dict[str, Tuple[nn.Module, Callable[[], torch.Tensor]]], inputs: torch.Tensor, warmup: int, reps: int
) -> Dict[str, List[float]]:
    """Times every case ``reps`` times, round-robin (a change of load on the machine hits all
    cases alike), after ``warmup`` untimed passes each."""
    for module, run in cases.values():
        for _ in range(warmup):
            _fwd_bwd_ms(module, run, inputs)
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(reps):
        for k, (module, run) in cases.items():
            times[k].append(_fwd_bwd_ms(module, run, inputs))
    return times


def run_apgru(cfg: APGRUConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Forward + backward of APGRU (with and without the property term) and ``torch.nn.GRU``."""
    from marn_rec.modules.apgru import APGRU

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    b, t = cfg.batch_size, cfg.steps
    rows = []
    log(f"APGRU vs nn.GRU: B={b}, T={t}, forward+backward, {torch.get_num_threads()} threads, "
        f"median of {cfg.reps} interleaved repetitions after {cfg.warmup} warm-up")
    for d in cfg.dims:
        x = torch.randn(b, t, d, requires_grad=True)
        props = torch.randn(b, t, cfg.property_dim)
        lengths = torch.full((b,), t, dtype=torch.long)
        gru = nn.GRU(d, d, batch_first=True)
        apgru = APGRU(d, d, cfg.property_dim)
        plain = APGRU(d, d, 0)
        timings = _interleaved(
            {
                "torch.nn.GRU": (gru, lambda: gru(x)[0]),
                "APGRU (property gate)": (apgru, lambda: apgru(x, lengths, props)[0]),
                "APGRU (no property)": (plain, lambda: plain(x, lengths)[0]),
            },
            x, cfg.warmup, cfg.reps,
        )
        med = {k: statistics.median(v) for k, v in timings.items()}
        row = {"dim": d, "ms": med, "all_ms": timings,
               "ratio": med["APGRU (property gate)"] / med["torch.nn.GRU"],
               "ratio_no_property": med["APGRU (no property)"] / med["torch.nn.GRU"]}
        rows.append(row)
        log(f"  d={d}: nn.GRU {med['torch.nn.GRU']:.1f} ms, APGRU {med['APGRU (property gate)']:.1f} ms, "
            f"APGRU without property {med['APGRU (no property)']:.1f} ms")
        log(f"ratio APGRU/nn.GRU [d={d}]: {row['ratio']:.2f}x (without property {row['ratio_no_property']:.2f}x) "
            f"(goal <= {GOAL_APGRU_RATIO}x: {'met' if row['ratio'] <= GOAL_APGRU_RATIO else 'NOT met'})")
    return {"config": asdict(cfg), "machine": machine_info(), "threads": torch.get_num_threads(), "rows": rows}
