"""No crafted input crashes the process or is silently accepted (issue "Hardening", points 1-2).

``marn_rec.fuzzing`` corrupts valid batches in seeded ways (its ``KINDS``) and runs each case
through ``validate_batch`` and, if accepted, a training step of a tiny model, in a worker process: a
crash fails its case instead of killing pytest. CI runs every kind once (a few hundred cases);
``MARN_FUZZ_CASES=2000`` runs more (``MARN_FUZZ_SEED`` picks another seed).

The DMP test shows on 2 gloo ranks that keys in another order, or an extra feature, are put back in
the model's order by ``validate_batch`` (exactly the canonical logits, sharded and unsharded alike),
and that duplicate keys are rejected: a sharded EmbeddingBagCollection reads features by position.
"""

import os
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any, Callable, Dict, Iterator, List

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed.test_utils.multi_process import run_multi_process_func
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec import MARN, MARNBatch, MARNTrain, tiny
from marn_rec.fuzzing import FAILURES, KINDS, build_case, case_plan, kjt_from_parts, kjt_parts
from marn_rec.fuzzing import run_fuzz
from marn_rec.testing import RandomCatalog, random_batch
from marn_rec.training.sharding import (
    apply_embedding_optimizer,
    load_unsharded_state_dict,
    shard_model,
)
from marn_rec.validation import validate_batch

CASES = int(os.environ.get("MARN_FUZZ_CASES", len(KINDS)))
SEED = int(os.environ.get("MARN_FUZZ_SEED", 0))


# ---------------------------------------------------------------------------------- fuzzing


def test_fuzz_cases_never_crash_and_never_slip_through() -> None:
    """Every case is rejected with a ValueError that leaves model and optimizer state as they
    were (also when MARN(validate=True) is fed the raw input), or is a genuinely valid input that
    trains to finite values and, for a variant of a canonical batch, its exact logits."""
    report = run_fuzz(CASES, seed=SEED)
    print(report.summary())
    assert not report.failures(), report.summary()
    counts = report.counts()
    assert counts.get("rejected", 0) > 0 and counts.get("accepted", 0) > 0, counts
    if CASES >= len(KINDS):
        assert {r.kind for r in report.results} == set(KINDS)
    assert report.workers == 1  # no crash, no hang: one worker ran them all


def test_kinds_cover_the_issue_and_are_deterministic() -> None:
    assert len(KINDS) >= 60
    measured_on_the_old_code = [
        "lengths_wrap[item_title]",  # 2**62 added to four lengths: sum wraps, then exit 134
        "history_lengths_wrap",
        "keys_swap_same_table_size[item_sparse]",  # stat0_b10 <-> stat1_b10
        "keys_reversed[item_sparse]",
        "key_duplicate[item_sparse]",  # the later copy won
        "item_image_huge_1e20",
        "item_image_max_float32",
        "item_weights_nan",
        "item_weights_inf",
        "item_image_float64",
        "item_image_float16",
        "batch_empty",
        "item_image_meta",
        "values_meta[item_sparse]",
    ]
    missing = [k for k in measured_on_the_old_code if k not in KINDS]
    assert not missing, missing
    for name in ("keys_permuted[item_sparse]", "lengths_wrap[item_title]", "item_image_nan"):
        a, b = build_case(name, 7), build_case(name, 7)
        for field in ("item_sparse", "item_title", "item_image"):
            x, y = getattr(a.value, field), getattr(b.value, field)
            if isinstance(x, KeyedJaggedTensor):
                assert x.keys() == y.keys()
                x, y = x.values(), y.values()
            assert torch.equal(x.nan_to_num(), y.nan_to_num()), (name, field)
    assert case_plan(50, 3) == case_plan(50, 3)
    assert case_plan(50, 3) != case_plan(50, 4)
    # Every kind once before any kind twice.
    plan = case_plan(len(KINDS) + 5, 0)
    assert {k for k, _ in plan[: len(KINDS)]} == set(KINDS)


def test_runner_detects_crashes_hangs_and_silent_acceptance() -> None:
    """The runner's own failure modes: a worker that aborts, a case that never ends, and an input
    that is accepted though the kind calls it invalid. The run goes on after each."""
    kinds = ["_selftest_abort", "_selftest_silent", "_selftest_hang", "labels_nan"]
    # 15 s: at 5 s a loaded machine once made the ordinary case count as a hang.
    report = run_fuzz(len(kinds), seed=0, kinds=kinds, case_timeout=15.0)
    outcome = {r.kind: r for r in report.results}
    assert outcome["_selftest_abort"].outcome == "crash"
    assert "worker exited with" in outcome["_selftest_abort"].detail
    assert outcome["_selftest_hang"].outcome == "hang"
    assert outcome["_selftest_silent"].outcome == "silently_accepted"
    assert outcome["labels_nan"].outcome == "rejected"
    assert report.workers == 3
    assert {r.outcome for r in report.failures()} <= set(FAILURES)


# -------------------------------------------------------------------- key order under DMP

WORLD_SIZE = 2
BATCH_SIZES = (7, 5)
CPU = torch.device("cpu")
META = torch.device("meta")


def _spawn(monkeypatch: pytest.MonkeyPatch, func: Callable[..., Any], **kwargs: Any) -> List[Any]:
    """``func(rank=r, world_size=2, **kwargs)`` in 2 spawned processes (as in
    tests/test_distributed.py); their return values."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "GLOO_DEVICE_TRANSPORT", "NCCL_SOCKET_IFNAME"):
        monkeypatch.setenv(key, "")  # records the old value (or absence) for teardown
    return run_multi_process_func(
        func,
        multiprocessing_method="spawn",
        use_deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
        world_size=WORLD_SIZE,
        **kwargs,
    )


@contextmanager
def _process_group(rank: int, world_size: int) -> Iterator[dist.ProcessGroup]:
    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
    )
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def _reordered(
    field: str, order: Callable[[List[str]], List[int]]
) -> Callable[[MARNBatch], MARNBatch]:
    def make(batch: MARNBatch) -> MARNBatch:
        keys, values, lengths = kjt_parts(getattr(batch, field))
        idx = order(keys)
        return replace(
            batch, **{field: kjt_from_parts([keys[i] for i in idx], [values[i] for i in idx],
                                            [lengths[i] for i in idx])}
        )

    return make


def _swap(a: str, b: str) -> Callable[[List[str]], List[int]]:
    def order(keys: List[str]) -> List[int]:
        idx = list(range(len(keys)))
        i, j = keys.index(a), keys.index(b)
        idx[i], idx[j] = idx[j], idx[i]
        return idx

    return order


def _reverse(keys: List[str]) -> List[int]:
    return list(range(len(keys)))[::-1]


def _shuffled(keys: List[str]) -> List[int]:
    return [int(i) for i in torch.randperm(len(keys), generator=torch.Generator().manual_seed(5))]


def _with_extra_key(field: str, first: bool) -> Callable[[MARNBatch], MARNBatch]:
    def make(batch: MARNBatch) -> MARNBatch:
        keys, values, lengths = kjt_parts(getattr(batch, field))
        stride = lengths[0].numel()
        extra_lengths = torch.ones(stride, dtype=torch.long)
        extra_values = torch.arange(stride) * 1000  # far outside every table: must not be read
        pos = 0 if first else len(keys)
        keys.insert(pos, "extra_feature")
        values.insert(pos, extra_values)
        lengths.insert(pos, extra_lengths)
        return replace(batch, **{field: kjt_from_parts(keys, values, lengths)})

    return make


def _duplicated(field: str, key: str, rename: str = "") -> Callable[[MARNBatch], MARNBatch]:
    """A second ``key``: appended with other values, or (``rename``) another feature renamed."""

    def make(batch: MARNBatch) -> MARNBatch:
        keys, values, lengths = kjt_parts(getattr(batch, field))
        if rename:
            keys[keys.index(rename)] = key
        else:
            i = keys.index(key)
            keys.append(key)
            values.append(torch.zeros_like(values[i]))
            lengths.append(lengths[i].clone())
        return replace(batch, **{field: kjt_from_parts(keys, values, lengths)})

    return make


def _all_permuted(batch: MARNBatch) -> MARNBatch:
    batch = _reordered("item_sparse", _shuffled)(batch)
    batch = _reordered("history_property", _reverse)(batch)
    return _with_extra_key("item_title", first=True)(batch)


REORDERED: Dict[str, Callable[[MARNBatch], MARNBatch]] = {
    "item_sparse swap stat0_b10 <-> stat1_b10": _reordered(
        "item_sparse", _swap("stat0_b10", "stat1_b10")
    ),
    "item_sparse reversed": _reordered("item_sparse", _reverse),
    "item_sparse shuffled": _reordered("item_sparse", _shuffled),
    "item_sparse extra feature first": _with_extra_key("item_sparse", first=True),
    "item_sparse extra feature last": _with_extra_key("item_sparse", first=False),
    "history_property reversed": _reordered("history_property", _reverse),
    "item_title extra feature first": _with_extra_key("item_title", first=True),
    "all three KJTs reordered": _all_permuted,
}
DUPLICATED: Dict[str, Callable[[MARNBatch], MARNBatch]] = {
    "item_sparse stat0_b10 twice": _duplicated("item_sparse", "stat0_b10"),
    "item_sparse stat1_b10 renamed stat0_b10": _duplicated(
        "item_sparse", "stat0_b10", rename="stat1_b10"
    ),
    "history_property behavior_type twice": _duplicated("history_property", "behavior_type"),
    "item_title title_words twice": _duplicated("item_title", "title_words"),
}


def _key_order_worker(rank: int, world_size: int) -> Dict[str, Any]:
    with _process_group(rank, world_size) as pg:
        config = tiny()
        catalog = RandomCatalog(config)
        batch = random_batch(
            config, BATCH_SIZES[rank], seed=20 + rank, catalog=catalog, min_length=1
        )
        torch.manual_seed(0)
        reference = MARNTrain(MARN(config))
        apply_embedding_optimizer(reference)
        model = MARNTrain(MARN(config, device=META))
        apply_embedding_optimizer(model)
        # Table-wise: each table whole on one rank, features routed to their rank by position.
        dmp = shard_model(model, CPU, pg, sharding_types=["table_wise"])
        load_unsharded_state_dict(dmp, reference.state_dict())

        def logits(m: torch.nn.Module, b: MARNBatch) -> torch.Tensor:
            with torch.no_grad():
                return m(b)[1][1]

        # The first batch fixes the sharded modules' feature order.
        canonical = validate_batch(batch, config)
        sharded = logits(dmp, canonical)
        unsharded = logits(reference, canonical)
        out: Dict[str, Any] = {
            "validate_keeps_canonical": canonical is batch,
            "sharded_vs_unsharded": (sharded - unsharded).abs().max().item(),
            "variants": {},
        }
        for name, make in {**REORDERED, **DUPLICATED}.items():
            variant = make(batch)
            try:
                checked, message = validate_batch(variant, config), ""
            except ValueError as e:
                checked, message = None, str(e)
            # Both ranks must take part in a sharded forward: go on only if both accepted.
            accepted = torch.tensor([int(checked is not None)])
            dist.all_reduce(accepted, op=dist.ReduceOp.MIN)
            if not int(accepted):
                out["variants"][name] = {"rejected": message}
                continue
            s, u = logits(dmp, checked), logits(reference, checked)
            out["variants"][name] = {
                "keys": checked.item_sparse.keys() == batch.item_sparse.keys()
                and checked.history_property.keys() == batch.history_property.keys()
                and checked.item_title.keys() == batch.item_title.keys(),
                "sharded_equal": torch.equal(s, sharded),
                "unsharded_equal": torch.equal(u, unsharded),
            }
        # Without validate_batch the sharded model reads by position: what the validator prevents.
        swapped = REORDERED["item_sparse swap stat0_b10 <-> stat1_b10"](batch)
        out["unvalidated_swap_diff"] = (logits(dmp, swapped) - sharded).abs().max().item()
        out["unvalidated_swap_unsharded_diff"] = (
            (logits(reference, swapped) - unsharded).abs().max().item()
        )
        return out


@pytest.mark.distributed
def test_key_order_is_restored_or_rejected_under_dmp(monkeypatch: pytest.MonkeyPatch) -> None:
    results = _spawn(monkeypatch, _key_order_worker)
    for rank, result in enumerate(results):
        print(rank, {k: v for k, v in result.items() if k != "variants"})
        assert result["validate_keeps_canonical"]
        assert result["sharded_vs_unsharded"] < 1e-6, rank
        for name in REORDERED:
            v = result["variants"][name]
            assert "rejected" not in v, (rank, name, v)
            # Reordered by name to the model's order: bit for bit the canonical logits.
            assert v == {"keys": True, "sharded_equal": True, "unsharded_equal": True}, (rank, name)
        for name in DUPLICATED:
            v = result["variants"][name]
            assert "duplicate feature keys" in v.get("rejected", ""), (rank, name, v)
        # The hazard is real: unvalidated, the sharded tables read the swapped features by
        # position (the unsharded ones by name).
        assert result["unvalidated_swap_unsharded_diff"] == 0.0
        assert result["unvalidated_swap_diff"] > 1e-6, result["unvalidated_swap_diff"]
