"""Divergence checks of the training loop: a non-finite loss or parameter, or an exploded CTR
loss, stops training loudly (:class:`TrainingDiverged`); each check is collective, so every rank
stops at the same step."""

from typing import List

import torch
import torch.distributed as dist


class TrainingDiverged(RuntimeError):
    """The loss or the parameters stopped being finite, or the CTR loss exploded: training stops,
    keeping the last good checkpoint."""


# A constant predictor has a CTR loss of at most ln 2 (0.69) on balanced labels; a window mean
# above this many nats means the logits have blown up (measured: lambda0 = 1.8 before it turned
# NaN went through 2,013).
DIVERGENCE_CTR_LOSS = 20.0


def _all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (collective), so that all ranks stop together."""
    ok = torch.isfinite(loss.detach()).all().reshape(1).to(torch.int32).cpu()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite: one pass, no tensor-sized temporary (a sum is
    non-finite iff some value is, short of a float64 overflow, itself a divergence)."""
    return bool(torch.isfinite(t.sum(dtype=torch.float64)))


def _non_finite_parameters(model: torch.nn.Module) -> List[str]:
    """Names of the local (shards of) floating-point state entries holding a NaN or an infinity."""
    bad = []
    for name, value in model.state_dict().items():
        tensors = value.local_shards() if hasattr(value, "local_shards") else [value]
        for t in tensors:
            t = getattr(t, "tensor", t)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not _finite(t):
                bad.append(name)
                break
    return bad


def _all_ranks_finite_parameters(model: torch.nn.Module) -> List[str]:
    """:func:`_non_finite_parameters` of this rank; collective: every rank learns whether any rank
    found one (the first names found on this rank, or a placeholder naming another rank)."""
    bad = _non_finite_parameters(model)
    flag = torch.tensor([1 if bad else 0], dtype=torch.int32)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if int(flag) and not bad:
        bad = ["(on another rank)"]
    return bad


__all__ = ["DIVERGENCE_CTR_LOSS", "TrainingDiverged"]
