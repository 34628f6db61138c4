"""The compute floor of a training step (marn_rec/benchmarks/floor.py): FLOPs per component that add
up to the step's, the matmul shapes behind them, and the rows the report prints. No timing goal."""

import pytest
import torch

from marn_rec import MARN, MARNTrain, tiny
from marn_rec.benchmarks.floor import (
    COMPONENTS,
    _Component,
    capture_inputs,
    floor_lines,
    floor_rows,
    gemm_shapes,
    measure_floor,
)
from marn_rec.benchmarks.goals import floor_goal
from marn_rec.benchmarks.report import render_floor_markdown
from marn_rec.testing import random_batch


def _model_and_batch():
    config = tiny()
    model = MARNTrain(MARN(config), total_steps=10).train()
    return model, random_batch(config, batch_size=8, seed=3)


def test_component_flops_add_up_to_the_step() -> None:
    model, batch = _model_and_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)

    def step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    floor = measure_floor(model, [batch], step, torch.device("cpu"), reps=1)
    names = [c["name"] for c in floor["components"]]
    assert names == [name for name, _, _ in COMPONENTS]
    top = [c for c in floor["components"] if c["part_of"] is None]
    # MARN's matmuls all live in the four top-level components: the rest is 0, forward and backward.
    assert floor["rest_forward_flops"] == 0 and floor["rest_backward_flops"] == 0
    assert sum(c["forward_flops"] for c in top) == floor["step_forward_flops"] > 0
    # The backward of a matmul costs about twice its forward (two matmuls; first layers skip the
    # gradient of their input).
    assert floor["step_forward_flops"] < floor["step_backward_flops"] <= 2 * floor["step_forward_flops"]
    cnn = next(c for c in floor["components"] if c["name"] == "title CNN")
    tower = next(c for c in floor["components"] if c["name"] == "item tower")
    assert 0 < cnn["forward_flops"] < tower["forward_flops"]
    g = floor["gemm"]
    assert g["flop_per_s"] > 0 and g["peak_flop_per_s"] > 0 and 0 < g["share_of_gemm_flops"] <= 1
    rows = floor_rows(floor)
    assert [r["name"] for r in rows][-1] == "whole step"
    whole = rows[-1]
    assert whole["floor_ms"] == pytest.approx(
        1e3 * (floor["step_forward_flops"] + floor["step_backward_flops"]) / g["flop_per_s"])
    assert whole["ratio"] == pytest.approx(whole["ms"] / whole["floor_ms"])
    assert any("time/floor" in line for line in floor_lines(floor))
    md = render_floor_markdown(floor, 12.0, 1000)
    assert "| whole step |" in md and "FlopCounterMode" in md and "GEMM shape" in md
    goal = floor_goal([{"mode": "baseline", "status": "ok", "num_items": 1000, "step_ms": 12.0, "floor": floor}])
    assert goal["step_ms"] == 12.0 and goal["ratio"] == pytest.approx(12.0 / goal["floor_ms"])


def test_gemm_shapes_are_recorded_with_their_flops() -> None:
    a, b = torch.randn(5, 3), torch.randn(3, 7)
    x, y = torch.randn(2, 5, 3), torch.randn(2, 3, 4)
    bias = torch.randn(7)

    def work() -> None:
        torch.mm(a, b)
        torch.mm(a, b)
        torch.addmm(bias, a, b)
        torch.bmm(x, y)

    shapes = gemm_shapes(work)
    by_shape = {(s["op"], s["batch"], s["m"], s["k"], s["n"]): s for s in shapes}
    assert by_shape[("mm", 1, 5, 3, 7)]["calls"] == 3  # mm and addmm: the same matmul
    assert by_shape[("mm", 1, 5, 3, 7)]["flops"] == 3 * 2 * 5 * 3 * 7
    assert by_shape[("bmm", 2, 5, 3, 4)]["flops"] == 2 * 2 * 5 * 3 * 4
    assert shapes[0]["flops"] >= shapes[-1]["flops"]


def test_a_component_runs_alone_on_its_captured_inputs() -> None:
    """The captured inputs reproduce the component's output in the step, and its backward leaves
    no gradient behind (the timing loop repeats it)."""
    model, batch = _model_and_batch()
    outputs = {}
    handle = model.model.over.register_forward_hook(lambda m, a, o: outputs.setdefault("over", o.detach()))
    captured = capture_inputs(model, lambda: model(batch)[0].backward(), ["model.over", "model.behavior"])
    handle.remove()
    model.zero_grad(set_to_none=True)
    assert set(captured) == {"model.over", "model.behavior"}
    comp = _Component(model.model.over, captured["model.over"], lambda: model.zero_grad(set_to_none=True))
    outs = comp.forward()
    torch.testing.assert_close(outs[0].detach(), outputs["over"])
    comp.backward(outs)
    assert all(p.grad is None for p in model.parameters())
