"""The compute floor of a training step: FLOPs per component, this machine's GEMM rate for the
shapes that dominate them, and the measured time of each component against its floor.

* **FLOPs** are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
  their backward; lookups, element-wise ops and reductions count 0): for the whole step (forward
  and backward counted apart), and for each component (item tower, title CNN inside it, APGRU,
  candidate attention, prediction MLP) run on its own, forward and backward apart. A module-level
  breakdown of one counter over the whole step attributes the forward correctly but not the
  backward (its module tracker credits backward ops to whatever modules' hooks last fired), hence
  the per-component runs. ``rest`` = whole step minus the top-level components (losses, gathers).
* **GEMM rate**: every matmul-family call of the step (``mm``, ``addmm``, ``bmm``, ``baddbmm``) is
  recorded with its shape; the shapes that hold 80% of those FLOPs (at most
  :data:`MAX_RATE_SHAPES`) are timed alone, contiguous fp32 operands, in this process's threads.
  Their FLOP-weighted rate (total FLOPs / total time) is the rate of the floor; a square 1024 GEMM
  is timed too, for the machine's peak.
* **Time per component**: the component's forward + backward timed *in isolation*, on the inputs
  it received in a real step (captured by a forward hook, then detached) and a gradient of ones for
  each of its differentiable outputs; median of ``reps``. The whole step's forward, backward and
  optimizer step are timed inside real steps.

``floor = FLOPs / rate``; ``time / floor`` says how far above the compute floor each part runs
(1.0x: at the measured GEMM rate; the lookups, element-wise work and Python a component also does
all count as time above the floor).
"""

import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import FlopCounterMode

# (name, path under MARNTrain, part of) in print order; absent modules (ablations) are skipped.
COMPONENTS: Tuple[Tuple[str, str, Optional[str]], ...] = (
    ("item tower", "model.tower", None),
    ("title CNN", "model.tower.embedding.title_cnn", "item tower"),
    ("APGRU", "model.behavior", None),
    ("attention", "model.attention", None),
    ("MLP", "model.over", None),
)
MAX_RATE_SHAPES = 8
RATE_SHARE = 0.8
PEAK_SHAPE = (1024, 1024, 1024)
_GEMMS = ("mm", "addmm", "bmm", "baddbmm")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _submodule(root: nn.Module, path: str) -> Optional[nn.Module]:
    m: Optional[nn.Module] = root
    for part in path.split("."):
        m = getattr(m, part, None) if m is not None else None
    return m if isinstance(m, nn.Module) else None


def _leaf(x: Any) -> Any:
    """A detached copy of a float tensor, differentiable again if it was; anything else as is."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().clone().requires_grad_(x.requires_grad)
    return x


def _differentiable(out: Any) -> List[torch.Tensor]:
    leaves, _ = tree_flatten(out)
    return [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]


def capture_inputs(model: nn.Module, step: Callable[[], Any], paths: Sequence[str]) -> Dict[str, Tuple[Any, Any]]:
    """The (args, kwargs) each module of ``paths`` received in its first call during ``step()``."""
    captured: Dict[str, Tuple[Any, Any]] = {}
    handles = []
    for path in paths:
        module = _submodule(model, path)
        if module is None:
            continue

        def hook(mod, args, kwargs, path=path):
            if path not in captured:
                captured[path] = tree_map(_leaf, (args, kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        step()
    finally:
        for h in handles:
            h.remove()
    return captured


class _Component:
    """One module run on its own: forward on the captured inputs, backward of ones."""

    def __init__(self, module: nn.Module, inputs: Tuple[Any, Any], zero_grad: Callable[[], None]):
        self.module = module
        self.args, self.kwargs = inputs
        self.zero_grad = zero_grad
        self.grads: Optional[List[torch.Tensor]] = None

    def forward(self) -> List[torch.Tensor]:
        outs = _differentiable(self.module(*self.args, **self.kwargs))
        if self.grads is None:
            self.grads = [torch.ones_like(t) for t in outs]
        return outs

    def backward(self, outs: List[torch.Tensor]) -> None:
        if outs:
            torch.autograd.backward(outs, self.grads)
        self.zero_grad()
        for x in tree_flatten((self.args, self.kwargs))[0]:
            if isinstance(x, torch.Tensor) and x.grad is not None:
                x.grad = None


def _flops(fn: Callable[[], Any]) -> Tuple[int, Any]:
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return counter.get_total_flops(), out


class _GemmRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (op, batch, m, k, n) of every matmul-family call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Tuple[str, int, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _GEMMS:
            a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
            if a.dim() == 2:
                self.calls.append(("mm", 1, a.shape[0], a.shape[1], b.shape[1]))
            else:
                self.calls.append(("bmm", a.shape[0], a.shape[1], a.shape[2], b.shape[2]))
        return func(*args, **(kwargs or {}))


def gemm_shapes(step: Callable[[], Any]) -> List[Dict[str, Any]]:
    """The matmul-family shapes of ``step()``, largest total FLOPs first."""
    rec = _GemmRecorder()
    with rec:
        step()
    totals: Dict[Tuple[str, int, int, int, int], Dict[str, int]] = {}
    for call in rec.calls:
        op, b, m, k, n = call
        t = totals.setdefault(call, {"calls": 0, "flops": 0})
        t["calls"] += 1
        t["flops"] += 2 * b * m * k * n
    rows = [
        {"op": op, "batch": b, "m": m, "k": k, "n": n, **t}
        for (op, b, m, k, n), t in totals.items()
    ]
    return sorted(rows, key=lambda r: -r["flops"])


def time_gemm(op: str, b: int, m: int, k: int, n: int, device: torch.device,
              min_s: float = 0.05, max_reps: int = 200) -> float:
    """FLOP/s of one contiguous fp32 matmul of this shape (median of repeated calls)."""
    if op == "mm":
        x, y = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        fn = lambda: torch.mm(x, y)  # noqa: E731
    else:
        x, y = torch.randn(b, m, k, device=device), torch.randn(b, k, n, device=device)
        fn = lambda: torch.bmm(x, y)  # noqa: E731
    for _ in range(3):
        fn()
    times: List[float] = []
    total = 0.0
    while (total < min_s or len(times) < 5) and len(times) < max_reps:
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t
        times.append(dt)
        total += dt
    return 2.0 * b * m * k * n / max(statistics.median(times), 1e-9)


def gemm_rate(shapes: List[Dict[str, Any]], device: torch.device) -> Dict[str, Any]:
    """Times the dominant shapes (those holding :data:`RATE_SHARE` of the matmul FLOPs, at most
    :data:`MAX_RATE_SHAPES`); their FLOP-weighted rate and the peak rate of a square GEMM."""
    total = sum(s["flops"] for s in shapes) or 1
    chosen, covered = [], 0
    for s in shapes:
        if covered >= RATE_SHARE * total or len(chosen) >= MAX_RATE_SHAPES:
            break
        chosen.append(dict(s))
        covered += s["flops"]
    for s in chosen:
        s["flop_per_s"] = time_gemm(s["op"], s["batch"], s["m"], s["k"], s["n"], device)
    seconds = sum(s["flops"] / s["flop_per_s"] for s in chosen)
    m, k, n = PEAK_SHAPE
    return {
        "shapes": chosen,
        "share_of_gemm_flops": covered / total,
        "gemm_flops_per_step": total,
        "flop_per_s": covered / seconds if seconds else 0.0,
        "peak_shape": list(PEAK_SHAPE),
        "peak_flop_per_s": time_gemm("mm", 1, m, k, n, device),
    }


def measure_floor(
    model: nn.Module,
    batches: Sequence[Any],
    optimizer_step: Callable[[], None],
    device: torch.device,
    reps: int = 5,
) -> Dict[str, Any]:
    """The floor of a training step of ``model`` (an unsharded ``MARNTrain`` in train mode) on
    ``batches[0]``; ``optimizer_step`` steps and zeroes its optimizers. See the module docstring."""
    batch = batches[0]

    def zero() -> None:
        model.zero_grad(set_to_none=True)

    def forward() -> torch.Tensor:
        return model(batch)[0]

    # Whole step: FLOPs forward and backward apart.
    fwd_flops, loss = _flops(forward)
    bwd_flops, _ = _flops(loss.backward)
    zero()
    shapes = gemm_shapes(lambda: forward().backward())
    zero()
    rate = gemm_rate(shapes, device)

    # Whole step timed in parts (forward, backward, optimizer), median over reps.
    parts: Dict[str, List[float]] = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        loss = forward()
        _sync(device)
        t1 = time.perf_counter()
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        optimizer_step()
        _sync(device)
        t3 = time.perf_counter()
        for key, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(1e3 * seconds)
    step_ms = {k: statistics.median(v[1:]) for k, v in parts.items()}  # first: warm-up

    # Components on their own.
    captured = capture_inputs(model, lambda: forward().backward(), [p for _, p, _ in COMPONENTS])
    zero()
    components: List[Dict[str, Any]] = []
    for name, path, part_of in COMPONENTS:
        module = _submodule(model, path)
        if module is None or path not in captured:
            continue
        comp = _Component(module, captured[path], zero)
        f_flops, outs = _flops(comp.forward)
        b_flops, _ = _flops(lambda: comp.backward(outs))
        fwd_ms, bwd_ms = [], []
        for _ in range(reps + 1):
            _sync(device)
            t0 = time.perf_counter()
            outs = comp.forward()
            _sync(device)
            t1 = time.perf_counter()
            comp.backward(outs)
            _sync(device)
            t2 = time.perf_counter()
            fwd_ms.append(1e3 * (t1 - t0))
            bwd_ms.append(1e3 * (t2 - t1))
        components.append({
            "name": name, "path": path, "part_of": part_of,
            "forward_flops": f_flops, "backward_flops": b_flops,
            "forward_ms": statistics.median(fwd_ms[1:]), "backward_ms": statistics.median(bwd_ms[1:]),
        })
    top = [c for c in components if c["part_of"] is None]
    return {
        "batch_size": batch.batch_size,
        "unique_items": batch.num_unique_items,
        "threads": torch.get_num_threads(),
        "step_forward_flops": fwd_flops,
        "step_backward_flops": bwd_flops,
        "rest_forward_flops": fwd_flops - sum(c["forward_flops"] for c in top),
        "rest_backward_flops": bwd_flops - sum(c["backward_flops"] for c in top),
        "step_ms": step_ms,
        "components": components,
        "gemm": rate,
        "reps": reps,
    }


def floor_rows(floor: Dict[str, Any], step_ms: Optional[float] = None) -> List[Dict[str, Any]]:
    """Rows of the floor table: name, GFLOP forward / backward, ms measured, ms floor, ratio.

    ``step_ms``: the whole step's time from the timed windows (default: the floor pass's own)."""
    rate = floor["gemm"]["flop_per_s"] or 1.0
    rows = []

    def row(name: str, f: float, b: float, ms: float, how: str) -> None:
        floor_ms = 1e3 * (f + b) / rate
        rows.append({"name": name, "forward_gflop": f / 1e9, "backward_gflop": b / 1e9, "ms": ms,
                     "floor_ms": floor_ms, "ratio": ms / floor_ms if floor_ms > 0 else None, "how": how})

    for c in floor["components"]:
        label = c["name"] if c["part_of"] is None else f"  {c['name']} (in {c['part_of']})"
        row(label, c["forward_flops"], c["backward_flops"], c["forward_ms"] + c["backward_ms"],
            "isolated forward+backward")
    s = floor["step_ms"]
    row("rest (losses, gathers, padding)", floor["rest_forward_flops"], floor["rest_backward_flops"],
        float("nan"), "-")
    row("forward (whole step)", floor["step_forward_flops"], 0, s["forward"], "in the step")
    row("backward (whole step)", 0, floor["step_backward_flops"], s["backward"], "in the step")
    row("optimizer step", 0, 0, s["optimizer"], "in the step")
    whole = step_ms if step_ms is not None else s["forward"] + s["backward"] + s["optimizer"]
    row("whole step", floor["step_forward_flops"], floor["step_backward_flops"], whole,
        "timed windows" if step_ms is not None else "in the step")
    return rows


def floor_lines(floor: Dict[str, Any], step_ms: Optional[float] = None) -> List[str]:
    """The floor as printed lines (a plain-text table and the GEMM rates)."""
    g = floor["gemm"]
    lines = [
        f"compute floor (B={floor['batch_size']}, {floor['unique_items']} unique items, "
        f"{floor['threads']} threads): fp32 GEMM rate {g['flop_per_s'] / 1e9:.1f} GFLOP/s for the "
        f"{len(g['shapes'])} dominant shapes ({100 * g['share_of_gemm_flops']:.0f}% of the step's "
        f"matmul FLOPs); square {g['peak_shape'][0]} GEMM {g['peak_flop_per_s'] / 1e9:.1f} GFLOP/s",
        f"  {'component':<34} {'fwd GFLOP':>9} {'bwd GFLOP':>9} {'ms':>8} {'floor ms':>8} {'time/floor':>10}",
    ]
    for r in floor_rows(floor, step_ms):
        ms = "-" if r["ms"] != r["ms"] else f"{r['ms']:.1f}"
        ratio = "-" if r["ratio"] is None or r["ratio"] != r["ratio"] else f"{r['ratio']:.1f}x"
        lines.append(f"  {r['name']:<34} {r['forward_gflop']:>9.4g} {r['backward_gflop']:>9.4g} "
                     f"{ms:>8} {r['floor_ms']:>8.2f} {ratio:>10}")
    return lines
