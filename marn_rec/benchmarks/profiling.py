"""Where a training step's time goes: ``torch.profiler`` events attributed to embedding, dense,
communication, optimizer and other, by the names of the events and of their enclosing events."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

EMBEDDING = "embedding"
DENSE = "dense"
COMMUNICATION = "communication"
OPTIMIZER = "optimizer"
OTHER = "other"
BUCKETS = (EMBEDDING, DENSE, COMMUNICATION, OPTIMIZER, OTHER)
STEP_EVENT = "benchmark_step"

# Checked in this order on an event and then on its enclosing events, innermost first. FBGEMM's
# fused TBE ops (``split_embedding_*_rowwise_adagrad``) do lookup, gradient and optimizer update in
# one kernel: they count as embedding. ``Optimizer.step`` is the dense AdaGrad (and, in the
# baseline, the sparse AdaGrad of the tables). TorchRec's train pipeline starts and waits for the
# next batch's input distribution under ``## start_sparse_data_dist N ##`` and
# ``## wait_sparse_data_dist N ##``: communication.
BUCKET_RULES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    (COMMUNICATION, ("all2all", "alltoall", "all_to_all", "allreduce", "all_reduce", "allgather",
                     "all_gather", "reduce_scatter", "reducescatter", "broadcast", "gloo", "nccl",
                     "c10d::", "barrier", "input_dist", "output_dist", "wait_tensor",
                     "sparse_data_dist")),
    (EMBEDDING, ("split_embedding", "embedding_bag", "embeddingbag", "embeddingbackward",
                 "aten::embedding", "[lookup]", "tbe")),
    (OPTIMIZER, ("optimizer.step", "optimizer.zero_grad")),
    (EMBEDDING, ("embedding", "lookup")),
)


def bucket_of(name: str) -> Optional[str]:
    """The bucket an event name belongs to by :data:`BUCKET_RULES`, or None."""
    low = name.lower()
    for bucket, patterns in BUCKET_RULES:
        if any(p in low for p in patterns):
            return bucket
    return None


@dataclass
class ProfEvent:
    """What :func:`bucket_times` needs of a profiler event: its name, self time, parent."""

    name: str
    self_time: float
    parent: Optional[int]  # index into the event list


def bucket_times(events: Sequence[ProfEvent]) -> Dict[str, float]:
    """Self time of every event, summed by bucket.

    An event goes to the bucket of the nearest event (itself, then its parents) whose name matches
    a rule of :data:`BUCKET_RULES`; events under no matching name are ``dense``. The
    self time of the ``benchmark_step`` event itself (Python between ops, and waits not inside any
    op, e.g. DDP's allreduce at the end of backward) is ``other``.
    """
    out = {b: 0.0 for b in BUCKETS}
    memo: Dict[int, Optional[str]] = {}

    def resolve(i: int) -> Optional[str]:
        chain = []
        j: Optional[int] = i
        found: Optional[str] = None
        while j is not None:
            if j in memo:
                found = memo[j]
                break
            chain.append(j)
            found = bucket_of(events[j].name)
            if found is not None:
                break
            j = events[j].parent
        for k in chain:
            memo[k] = found
        return found

    for i, e in enumerate(events):
        if e.name == STEP_EVENT:
            out[OTHER] += e.self_time
            continue
        out[resolve(i) or DENSE] += e.self_time
    return out


def profiler_events(prof, device_time: bool = False) -> Tuple[List[ProfEvent], float]:
    """The events of a ``torch.profiler`` run as :class:`ProfEvent` (microseconds), and the total
    time of the ``benchmark_step`` events."""
    raw = list(prof.events())
    index = {id(e): i for i, e in enumerate(raw)}
    events = []
    step_total = 0.0
    for e in raw:
        parent = getattr(e, "cpu_parent", None)
        self_time = e.self_device_time_total if device_time else e.self_cpu_time_total
        events.append(ProfEvent(e.name, float(self_time), index.get(id(parent)) if parent is not None else None))
        if e.name == STEP_EVENT:
            step_total += e.device_time_total if device_time else e.cpu_time_total
    return events, step_total
