"""What a fuzz case is (:class:`Case`, :class:`TowerInputs`), what a kind draws from (:class:`Ctx`),
the :data:`KINDS` registry with its ``@kind`` decorator, and the outcomes (:data:`PASSES`,
:data:`FAILURES`)."""

import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from marn_rec.batch import MARNBatch
from marn_rec.config import MARNConfig
from marn_rec.testing import RandomCatalog, random_batch

PASSES = ("rejected", "accepted")
FAILURES = (
    "crash",  # the worker died (signal, abort, out of memory) during the case
    "hang",  # no result within the case timeout
    "silently_accepted",  # validate_batch accepted an invalid input
    "silently_accepted_in_model",  # MARN(validate=True) ran on an invalid model input
    "wrong_exception",  # a check raised something other than ValueError
    "state_changed",  # a rejected input changed model or optimizer state
    "false_rejection",  # a valid input was rejected
    "model_error",  # an accepted (valid) input made the model raise
    "mismatch",  # an accepted valid variant gave other logits than its canonical batch
    "non_finite",  # an accepted input gave a non-finite loss, logits, parameters or state
    "harness_error",  # the kind itself failed to build its case (a bug of the fuzzer)
)


@dataclass
class TowerInputs:
    """Inputs of a standalone :class:`~marn_rec.models.tower.MARNTower`."""

    item_sparse: Any
    item_title: Any
    item_image: Any
    item_weights: Any = None


@dataclass
class Case:
    """One fuzz input and what it must give.

    Args:
        value: what is fed: a MARNBatch (or anything, for the kinds that are not a batch), or
            :class:`TowerInputs` for ``target="tower"``.
        valid: a genuinely valid input, which must be accepted and train to finite values.
        reference: for valid variants, the canonical input of the same meaning: the logits must
            equal its logits (bit for bit if ``exact``, else within 1e-5).
        model_checked: an invalid input that concerns the model's own inputs (not labels, users,
            meta or the batch object): ``MARN(validate=True)`` must reject it as well.
        target: ``"batch"`` (validate_batch + MARNTrain) or ``"tower"`` (MARNTower).
    """

    value: Any
    valid: bool
    reference: Any = None
    exact: bool = True
    model_checked: bool = True
    target: str = "batch"


class Ctx:
    """What a kind draws from: the config, a seeded RNG and fresh valid batches."""

    def __init__(self, config: MARNConfig, catalog: RandomCatalog, seed: int) -> None:
        self.config = config
        self.catalog = catalog
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed % (2**63))

    def batch(self, min_length: int = 0, batch_size: Optional[int] = None) -> MARNBatch:
        """A fresh valid (canonical) batch of 1 to 8 samples."""
        b = batch_size if batch_size is not None else self.rng.randint(1, 8)
        return random_batch(
            self.config,
            b,
            seed=self.rng.randrange(2**31),
            catalog=self.catalog,
            min_length=min_length,
        )

    def batch_where(self, ok: Callable[[MARNBatch], bool], min_length: int = 0) -> MARNBatch:
        """A fresh batch for which ``ok`` holds (e.g. a KJT with values to corrupt)."""
        for attempt in range(50):
            b = self.batch(min_length=min_length, batch_size=None if attempt < 25 else 8)
            if ok(b):
                return b
        raise RuntimeError("no batch satisfies the kind's condition")

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]


KindFn = Callable[[Ctx], Case]
KINDS: Dict[str, KindFn] = {}
_SELFTEST_KINDS: Dict[str, KindFn] = {}


def kind(name: str) -> Callable[[KindFn], KindFn]:
    def register(fn: KindFn) -> KindFn:
        if name in KINDS:
            raise ValueError(f"kind {name!r} registered twice")
        KINDS[name] = fn
        return fn

    return register
