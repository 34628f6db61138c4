"""Step-time attribution of the benchmark (marn_rec/benchmarks/profiling.py): event names to
buckets, self times summed by nearest matching ancestor, and a real profiled step."""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from marn_rec.benchmarks.profiling import (
    COMMUNICATION,
    DENSE,
    EMBEDDING,
    OPTIMIZER,
    OTHER,
    STEP_EVENT,
    ProfEvent,
    bucket_of,
    bucket_times,
    profiler_events,
)


def test_bucket_of_real_event_names() -> None:
    expect = {
        "c10d::alltoall_base_": COMMUNICATION,
        "## all2all_data:kjt lengths ##": COMMUNICATION,
        "## KJTAllToAllTensorsAwaitable wait() ##": COMMUNICATION,
        "All2All_Pooled_ReqBackward": COMMUNICATION,
        "c10d::allreduce_": COMMUNICATION,
        "fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function_pt2": EMBEDDING,
        "fbgemm::split_embedding_backward_codegen_rowwise_adagrad_cpu": EMBEDDING,
        "[lookup]_[model.tower.embedding.ebc]_[column_wise]": EMBEDDING,
        "aten::_embedding_bag": EMBEDDING,
        "autograd::engine::evaluate_function: EmbeddingBagBackward0": EMBEDDING,
        "Optimizer.step#Adagrad.step": OPTIMIZER,
        "Optimizer.zero_grad#Adagrad.zero_grad": OPTIMIZER,
        "aten::mm": None,
        "fbgemm::jagged_to_padded_dense_forward": None,  # dense part of the model
        "DistributedDataParallel.forward": None,
    }
    for name, bucket in expect.items():
        assert bucket_of(name) == bucket, name


def test_bucket_times_nearest_matching_ancestor() -> None:
    E = ProfEvent
    events = [
        E(STEP_EVENT, 5.0, None),  # 0: Python between ops -> other
        E("DistributedDataParallel.forward", 1.0, 0),  # 1: dense
        E("aten::mm", 10.0, 1),  # 2: dense
        E("## all2all_data:kjt lengths ##", 2.0, 1),  # 3: communication
        E("aten::copy_", 3.0, 3),  # 4: communication by its parent
        E("[lookup]_[model.tower.embedding.ebc]_[table_wise]", 0.5, 1),  # 5: embedding
        E("fbgemm::split_embedding_codegen_lookup_rowwise_adagrad_function_pt2", 7.0, 5),  # 6
        E("Optimizer.step#Adagrad.step", 1.0, 0),  # 7: optimizer
        E("aten::add_", 4.0, 7),  # 8: optimizer by its parent
        E("autograd::engine::evaluate_function: EmbeddingBagBackward0", 0.5, 0),  # 9: embedding
        E("aten::index_select", 2.0, 9),  # 10: embedding by its parent
        E("aten::relu", 6.0, None),  # 11: outside any step -> dense
    ]
    got = bucket_times(events)
    assert got == {
        OTHER: 5.0,
        DENSE: 17.0,
        COMMUNICATION: 5.0,
        EMBEDDING: 10.0,
        OPTIMIZER: 5.0,
    }
    assert sum(got.values()) == pytest.approx(sum(e.self_time for e in events))


def test_profiler_pass_on_a_real_step() -> None:
    """A profiled step of an nn.EmbeddingBag (sparse) + Linear with AdaGrad: the buckets cover
    the step and each part lands where it should."""
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(1000, 16, mode="sum", sparse=True)
    lin = nn.Linear(16, 1)
    opt = torch.optim.Adagrad(list(bag.parameters()) + list(lin.parameters()), lr=0.1)
    ids = torch.randint(0, 1000, (512,))
    offsets = torch.arange(0, 512, 4)

    def step() -> None:
        lin(bag(ids, offsets)).sum().backward()
        opt.step()
        opt.zero_grad()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function(STEP_EVENT):
                step()
    events, step_total = profiler_events(prof)
    buckets = bucket_times(events)
    assert buckets[EMBEDDING] > 0 and buckets[OPTIMIZER] > 0 and buckets[DENSE] > 0
    assert buckets[COMMUNICATION] == 0
    # Self times of everything inside the steps add up to the steps' total time.
    inside = sum(buckets.values())
    assert inside == pytest.approx(step_total, rel=0.05)
