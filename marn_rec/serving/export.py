"""Exporting the scoring head: ``torch.export`` (``.pt2``) and an AOTInductor package.

What is exported is :class:`~marn_rec.serving.head.ScoringHead` (APGRU, attention, MLP and the
property tables as plain tensors): a graph of ATen ops, no TorchRec, no FBGEMM, no ``marn_rec``, so
``torch.export.load`` in a process that never imports them runs it. The number of users U and of
candidates C are dynamic; the history is padded to ``max_length`` steps T (static: APGRU's masked
path unrolls T steps under export; padding costs no accuracy, the masked steps change nothing).
Item lookups stay outside the graph: the store is a memory-mapped numpy array (``store.py``), too
large to embed at catalogue scale, and readable with numpy alone.

``export_scorer(head, "scorer.pt2", store)`` writes::

    scorer.pt2            torch.export.save of the head
    scorer.json           inputs, T, d, the model configuration and both fingerprints (the scorer
                          refuses a store of another model or checkpoint)
    scorer.example.pt     example inputs (a 2-user request from the store) and their eager logits
    scorer.aoti.pt2       with aoti=True: torch._inductor.aoti_compile_and_package of the same program
"""

import json
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from marn_rec.serving.head import ScoringHead
from marn_rec.serving.store import RepresentationStore
from marn_rec.serving.weights import config_fingerprint, config_json, head_fingerprint

INPUT_NAMES = ("history", "history_lengths", "behavior_types", "time_buckets", "candidates", "candidate_user")
FORMAT = "marn_rec.scorer/1"


def sidecar_paths(path: str) -> Dict[str, str]:
    """The files beside an exported head ``path`` (``x.pt2`` or ``x.aoti.pt2``)."""
    stem = path[: -len(".aoti.pt2")] if path.endswith(".aoti.pt2") else path[: -len(".pt2")] if path.endswith(".pt2") else path
    return {"program": f"{stem}.pt2", "meta": f"{stem}.json", "example": f"{stem}.example.pt", "aoti": f"{stem}.aoti.pt2"}


def export_head(head: ScoringHead, example: Tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """``torch.export`` of ``head`` with U and C dynamic (``example``: inputs with T = max_length,
    at least 2 users and 2 candidates, so that neither size is specialised)."""
    users = torch.export.Dim("users", min=1)
    candidates = torch.export.Dim("candidates", min=1)
    dynamic = ({0: users}, {0: users}, {0: users}, {0: users}, {0: candidates}, {0: candidates})
    with torch.no_grad():
        return torch.export.export(head.eval(), example, dynamic_shapes=dynamic)


def example_request(store: RepresentationStore, max_length: int, seed: int = 0) -> Dict[str, Any]:
    """A 2-user request over items of the store (a full history and a short one; 5 and 3
    candidates), as :meth:`~marn_rec.serving.scorer.MARNScorer.forward` keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.from_numpy(store.ids[: min(store.num_items, 1000)].copy())
    lengths = [max_length, min(2, max_length)]
    pick = lambda k: ids[torch.randint(0, ids.numel(), (k,), generator=g)]  # noqa: E731
    n = sum(lengths)
    return dict(
        history_items=pick(n), behavior_types=torch.zeros(n, dtype=torch.int64),
        time_buckets=torch.arange(n) % 4, candidate_items=pick(8),
        history_lengths=torch.tensor(lengths), candidate_counts=torch.tensor([5, 3]),
    )


def export_scorer(
    head: ScoringHead,
    path: str,
    store: RepresentationStore,
    aoti: bool = False,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Exports ``head`` (checked against ``store``) to ``path`` (``.pt2``) with its sidecar files;
    with ``aoti`` also an AOTInductor package. Returns what was written and how long it took.

    Example::

        export_scorer(load_head("runs/taobao_synthetic"), "runs/scorer.pt2", RepresentationStore("runs/store"))
    """
    from marn_rec.serving.scorer import MARNScorer

    if not path.endswith(".pt2") or path.endswith(".aoti.pt2"):
        raise ValueError(f"the exported program's path must end in .pt2 (not .aoti.pt2), got {path!r}")
    head = head.eval()
    config = head.config
    head_fp = head_fingerprint(head.state_dict())
    scorer = MARNScorer(head, store, config, pad_to_max_length=True)
    store.check_model(config_fingerprint(config), head_fp)
    request = example_request(store, config.behavior.max_length)
    inputs = scorer.prepare(**request)
    with torch.no_grad():
        expected = head(*inputs)
    files = sidecar_paths(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t = time.perf_counter()
    program = export_head(head, inputs)
    torch.export.save(program, files["program"])
    out: Dict[str, Any] = {"program": files["program"], "export_s": time.perf_counter() - t}
    log(f"exported the scoring head to {files['program']} in {out['export_s']:.1f} s")
    meta = {
        "format": FORMAT, "inputs": list(INPUT_NAMES), "max_length": config.behavior.max_length,
        "dim": config.tower.hidden_dim, "model": config_json(config),
        "config_fingerprint": config_fingerprint(config), "head_fingerprint": head_fp,
        "store": {"path": os.path.abspath(store.path), "dtype": store.dtype,
                  "checkpoint": store.manifest.get("checkpoint")},
        "torch": torch.__version__,
    }
    torch.save({"inputs": list(inputs), "request": request, "logits": expected}, files["example"])
    if aoti:
        t = time.perf_counter()
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=files["aoti"])
            out["aoti"] = files["aoti"]
            out["aoti_s"] = time.perf_counter() - t
            log(f"AOTInductor package {files['aoti']} built in {out['aoti_s']:.1f} s")
        except Exception as e:  # noqa: BLE001 - reported; the .pt2 stands on its own
            out["aoti_error"] = f"{type(e).__name__}: {e}"
            log(f"AOTInductor package not built: {out['aoti_error'][:500]}")
    meta["aoti"] = out.get("aoti") is not None
    with open(files["meta"], "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    out.update(meta=files["meta"], example=files["example"])
    return out


def load_exported_head(path: str) -> Tuple[Callable[..., torch.Tensor], Dict[str, Any]]:
    """(callable head, sidecar metadata) of ``x.pt2`` (``torch.export.load``) or ``x.aoti.pt2``
    (``torch._inductor.aoti_load_package``)."""
    files = sidecar_paths(path)
    if not os.path.exists(files["meta"]):
        raise FileNotFoundError(f"{files['meta']}: the exported head's metadata is missing (written by export_scorer)")
    with open(files["meta"]) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{files['meta']}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if path.endswith(".aoti.pt2"):
        runner = torch._inductor.aoti_load_package(path)
        return runner, meta
    program = torch.export.load(path)
    return program.module(), meta


def compare_with_example(head: Callable[..., torch.Tensor], path: str) -> Optional[float]:
    """Largest absolute difference between ``head`` on the saved example inputs and the saved
    eager logits (None when no example was saved)."""
    example_path = sidecar_paths(path)["example"]
    if not os.path.exists(example_path):
        return None
    example = torch.load(example_path, weights_only=True)
    with torch.no_grad():
        out = head(*example["inputs"])
    return float((out - example["logits"]).abs().max())
