"""Seeded corruptions of valid MARN inputs, and a crash-proof runner that judges what the input
checks (:mod:`marn_rec.validation`) and the model make of each.

A *kind* is a small named function ``kind(ctx) -> Case`` over a fresh valid
:class:`~marn_rec.batch.MARNBatch` (``ctx.batch()``, drawn from the case's seed). It returns the
input to feed and says whether that input is genuinely valid; valid variants of a batch (keys in
another order, an extra feature, int32 indices, non-contiguous views, offsets instead of lengths...)
name the canonical batch of the same meaning, whose logits they must reproduce. ``KINDS`` lists
them all; families of KJT corruptions exist once per KJT (``lengths_wrap[item_title]``...).

Each case runs as a training step would (:class:`Harness`):

1. ``validate_batch`` (``validate_tower_inputs`` for the standalone tower's kinds
   ``item_weights_*`` / ``tower_*``; ``build_batch``, then ``validate_batch``, for the ``build_*``
   kinds, which corrupt item IDs and the ``ItemFeatures`` a catalogue returns);
2. rejected (``ValueError``): model and optimizer state must be unchanged; an invalid model input
   must also be rejected by ``MARN(validate=True)`` itself, again without a state change;
3. accepted: the input must be valid (an invalid one is reported as ``silently_accepted``, with
   what the model then does with it); forward, backward and an optimizer step of a tiny
   ``MARNTrain(MARN(tiny(), validate=False))`` (fused row-wise AdaGrad on the tables, AdaGrad on
   the rest) must give a finite loss, finite parameters and optimizer state, and the reference's
   logits where there is one.

:func:`run_fuzz` runs the cases in a worker process (``python -m marn_rec.fuzzing --worker``) that
reports each case before and after it runs, so a crash (a signal, an abort in a kernel, memory
exhaustion: the worker's address space is limited) or a hang is recorded against its case and the
run goes on in a new worker. Outcomes: ``rejected`` and ``accepted`` are passes; everything in
:data:`FAILURES` is a failure.

Example::

    report = run_fuzz(num_cases=1600, seed=0)
    print(report.summary())
    assert not report.failures()

Command line: ``python -m marn_rec.fuzzing --cases 1600 --seed 0``.

The package, one concern a file (importing it registers every kind, in this order):

- ``cases.py``: :class:`Case`, :class:`Ctx`, :class:`TowerInputs`, the :data:`KINDS` registry and
  its ``@kind`` decorator, :data:`PASSES` / :data:`FAILURES`;
- ``kjt.py``: helpers over KeyedJaggedTensors (``kjt_parts``, ``kjt_from_parts``...);
- ``kjt_data.py``: corruptions of a KJT's lengths, offsets, values, dtypes and layout;
- ``kjt_kinds.py``: corruptions of its keys, batch size, declared derived values and type, and the
  table that registers every KJT family once per KJT field;
- ``dense_kinds.py``: dense and index inputs (image, candidate / history indices, history
  lengths, labels, user IDs);
- ``build_kinds.py``: ``build_batch``'s own inputs (item IDs and the catalogue's ItemFeatures);
- ``batch_kinds.py``: whole histories, soft labels, ``meta``, the batch's structure, and inputs
  that are not a batch at all;
- ``tower_kinds.py``: the standalone tower's inputs (``item_weights_*``, ``tower_*``);
- ``harness.py``: :class:`Harness`, which runs one case as a training step would;
- ``runner.py``: :func:`build_case`, :func:`case_plan`, the worker protocol, :func:`run_fuzz`, the
  report and the command line (``__main__.py`` runs it).
"""

# The kind modules register into KINDS when imported: this order is the order of KINDS (and so of
# every seeded case plan), so keep it and do not let an import sorter reorder it.
# isort: off
from marn_rec.fuzzing.cases import (
    FAILURES,
    KINDS,
    PASSES,
    Case,
    Ctx,
    KindFn,
    TowerInputs,
    kind,
)
from marn_rec.fuzzing.kjt import KJT_FIELDS, kjt_from_parts, kjt_parts
from marn_rec.fuzzing import kjt_data  # noqa: F401  (its families: kjt_kinds registers them)
from marn_rec.fuzzing import kjt_kinds  # noqa: F401
from marn_rec.fuzzing import dense_kinds  # noqa: F401
from marn_rec.fuzzing import build_kinds  # noqa: F401
from marn_rec.fuzzing import batch_kinds  # noqa: F401
from marn_rec.fuzzing import tower_kinds  # noqa: F401
from marn_rec.fuzzing.harness import Harness
from marn_rec.fuzzing.runner import (
    CaseResult,
    FuzzReport,
    build_case,
    case_plan,
    kind_function,
    main,
    run_fuzz,
)

# isort: on

__all__ = [
    "FAILURES",
    "KINDS",
    "KJT_FIELDS",
    "PASSES",
    "Case",
    "CaseResult",
    "Ctx",
    "FuzzReport",
    "Harness",
    "KindFn",
    "TowerInputs",
    "build_case",
    "case_plan",
    "kind",
    "kind_function",
    "kjt_from_parts",
    "kjt_parts",
    "main",
    "run_fuzz",
]
