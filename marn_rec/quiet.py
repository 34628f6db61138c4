"""Keeps library chatter out of the output of training, benchmarks and serving: the profiler's
start/stop markers, and the torch/TorchRec warnings and log lines raised by calls marn_rec makes on
purpose (each once per process, so once per rank), which say nothing about the run. Anything else
still shows."""

import contextlib
import logging
import os
import warnings
from typing import Dict, Iterator, Tuple

# (category, message regex) of warnings dropped.
WARNINGS: Tuple[Tuple[type, str], ...] = (
    # TorchRec's planner builds its default storage reservation itself; the benchmark plans as
    # ``shard_model`` does, on purpose.
    (FutureWarning, r"HeuristicalStorageReservation is known to cause issues"),
    # TorchRec's DistributedModelParallel wraps the dense part in DDP with this argument itself.
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
    # The baseline's sparse AdaGrad: torch asks to opt in or out of checks that are off by default.
    (UserWarning, r"Sparse invariant checks are implicitly disabled"),
    # torchdata 0.11's StatefulDataLoader calls a deprecated torch API on every construction.
    (UserWarning, r"'set_vital' is deprecated"),
    # Replicated tables (--replicate-max-rows) run FBGEMM's dense TBE, whose CPU op warns that it
    # has no autograd kernel of its own. Its gradients are right: tests/test_distributed.py trains
    # replicated tables against the unsharded model and they agree to 1e-5.
    (UserWarning, r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered"),
)

# Logger name -> starts of the messages dropped on that logger (its other messages still show).
LOG_MESSAGES: Dict[str, Tuple[str, ...]] = {
    # Plans are made on a meta model with a hand-built Topology (no process group to probe).
    "torchrec.distributed.planner.types": ("The topology was constructed directly",),
    "torchrec.distributed.planner.storage_reservations": ("There is a known issue with TorchRec's dense tensor",),
    # TorchRec's modules call torch.fx's is_fx_tracing(), which warns that it is ambiguous.
    "torch.fx._symbolic_trace": ("is_fx_tracing will return true",),
}

# libkineto prints ``profiler_start``/``profiler_stop`` at its highest level (USDT, above ERROR)
# each time a profiler starts or stops, in every process; no level keeps errors but drops these,
# so this one (above all levels) also hides kineto's own errors. It is read when a process first
# profiles and inherited by spawned ranks; an explicit KINETO_LOG_LEVEL (e.g. 4, errors) wins.
KINETO_LOG_LEVEL = "6"


class _DropMessages(logging.Filter):
    def __init__(self, starts: Tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: :data:`WARNINGS` ignored, :data:`LOG_MESSAGES` dropped, and the kineto
    log level of :data:`KINETO_LOG_LEVEL` unless one is set; all restored afterwards."""
    filters = [(logging.getLogger(name), _DropMessages(starts)) for name, starts in LOG_MESSAGES.items()]
    for logger, f in filters:
        logger.addFilter(f)
    set_kineto = "KINETO_LOG_LEVEL" not in os.environ
    if set_kineto:
        os.environ["KINETO_LOG_LEVEL"] = KINETO_LOG_LEVEL
    try:
        with warnings.catch_warnings():
            for category, message in WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, f in filters:
            logger.removeFilter(f)
        if set_kineto:
            os.environ.pop("KINETO_LOG_LEVEL", None)
