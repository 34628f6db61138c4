"""The harness: a tiny model, its optimizers and a standalone tower, which run one case as a
training step would and judge its outcome."""

import math
from dataclasses import replace
from typing import Any, Dict, Optional, Tuple

import torch

from marn_rec.batch import MARNBatch, build_batch
from marn_rec.config import MARNConfig, tiny
from marn_rec.fuzzing.cases import Case, TowerInputs
from marn_rec.models.marn import MARN, MARNTrain
from marn_rec.models.tower import MARNTower
from marn_rec.testing import RandomCatalog, random_batch
from marn_rec.validation import validate_batch, validate_tower_inputs

def _flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Every leaf of nested dicts / lists, tensors cloned."""
    out: Dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().clone()
    else:
        out[prefix] = obj
    return out


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[str]:
    """None if equal, else the first differing entry."""
    if a.keys() != b.keys():
        return f"entries differ: {sorted(set(a) ^ set(b))[:3]}"
    for k, x in a.items():
        y = b[k]
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
                    and torch.equal(x.nan_to_num(), y.nan_to_num())
                    and torch.equal(x.isnan(), y.isnan())):
                return k
        elif x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return k
    return None


def _finite(tensors: Dict[str, Any]) -> Optional[str]:
    for k, v in tensors.items():
        if not (isinstance(v, torch.Tensor) and v.is_floating_point()):
            continue
        if not bool(torch.isfinite(v).all()):
            return k
    return None


def _in_backward_state(model: torch.nn.Module) -> Dict[str, Any]:
    """State of the optimizers fused into the backward (the tables' row-wise AdaGrad)."""
    state = {}
    for name, p in model.named_parameters():
        for i, opt in enumerate(getattr(p, "_in_backward_optimizers", [])):
            state[f"{name}#{i}"] = opt.state_dict()
    return state


class Harness:
    """A tiny model, its optimizers and a standalone tower, trained one case at a time."""

    def __init__(self, config: Optional[MARNConfig] = None, seed: int = 0) -> None:
        from marn_rec.training.sharding import apply_embedding_optimizer, training_optimizer

        self._apply = apply_embedding_optimizer
        self._optimizer = training_optimizer
        self.config = config or tiny()
        self.catalog = RandomCatalog(self.config)
        self.seed = seed
        self._build_model()
        self._build_tower()

    def _build_model(self) -> None:
        torch.manual_seed(self.seed)
        self.train = MARNTrain(MARN(self.config, validate=False), total_steps=1000)
        self._apply(self.train)
        self.opt = self._optimizer(self.train)
        # One good step first, so that optimizer state exists and is compared.
        batch = random_batch(self.config, 4, seed=1, catalog=self.catalog)
        loss, _ = self.train(validate_batch(batch, self.config))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()

    def _build_tower(self) -> None:
        torch.manual_seed(self.seed)
        self.tower = MARNTower(self.config.tower, validate=True)
        self._apply(self.tower)
        self.tower_opt = self._optimizer(self.tower)

    def _snapshot(self, module: torch.nn.Module, opt: Any) -> Dict[str, Any]:
        return _flatten({"model": module.state_dict(), "opt": opt.state_dict(),
                         "fused": _in_backward_state(module)})

    def run(self, case: Case) -> Tuple[str, str]:
        """(outcome, detail) of one case."""
        if case.target == "tower":
            return self._run_tower(case)
        if case.target == "build":
            return self._run_build(case)
        return self._run_batch(case)

    def _run_build(self, case: Case) -> Tuple[str, str]:
        """build_batch(**value) first: its ValueError is a rejection; its batch goes on as a batch
        case (the reference: the canonical arguments' batch)."""
        try:
            batch = build_batch(**case.value)
        except ValueError as e:
            return ("false_rejection" if case.valid else "rejected"), f"build_batch: {e}"
        except Exception as e:  # noqa: BLE001
            return "wrong_exception", f"build_batch: {type(e).__name__}: {e}"
        reference = build_batch(**case.reference) if case.reference is not None else None
        return self._run_batch(replace(case, value=batch, reference=reference, target="batch"))

    def _run_batch(self, case: Case) -> Tuple[str, str]:
        cfg = self.config
        before = self._snapshot(self.train, self.opt)
        try:
            checked = validate_batch(case.value, cfg)
        except ValueError as e:
            message = str(e)
            changed = _same(before, self._snapshot(self.train, self.opt))
            if changed:
                return "state_changed", f"{changed} after: {message}"
            if case.valid:
                return "false_rejection", message
            if case.model_checked and isinstance(case.value, MARNBatch):
                outcome = self._model_rejects(case.value, before)
                if outcome is not None:
                    return outcome
            return "rejected", message
        except Exception as e:  # noqa: BLE001 - every other exception is a finding
            return "wrong_exception", f"validate_batch: {type(e).__name__}: {e}"
        if not case.valid:
            return "silently_accepted", "validate_batch accepted it; " + self._probe(checked)
        return self._train_step(case, checked)

    def _probe(self, batch: MARNBatch) -> str:
        """What the model makes of an input that slipped through (no_grad: no state changes;
        this may crash the worker, which is then recorded against the case)."""
        try:
            with torch.no_grad():
                logits = self.train.model(**batch.model_inputs()).logits
        except Exception as e:  # noqa: BLE001
            return f"the model then raised {type(e).__name__}: {str(e)[:200]}"
        finite = bool(torch.isfinite(logits).all())
        return f"the model then gave {'finite' if finite else 'NON-FINITE'} logits"

    def _model_rejects(self, batch: MARNBatch, before: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """MARN(validate=True), fed the raw batch, must raise ValueError and change nothing."""
        self.train.model.validate = True
        try:
            self.train(batch)
        except ValueError:
            pass
        except Exception as e:  # noqa: BLE001
            self._build_model()
            return "wrong_exception", f"MARN(validate=True): {type(e).__name__}: {e}"
        else:
            self._build_model()
            return "silently_accepted_in_model", "MARN(validate=True) ran on it"
        finally:
            self.train.model.validate = False
        changed = _same(before, self._snapshot(self.train, self.opt))
        if changed:
            self._build_model()
            return "state_changed", f"{changed} after MARN(validate=True) rejected it"
        return None

    def _train_step(self, case: Case, checked: MARNBatch) -> Tuple[str, str]:
        cfg = self.config
        reference = None
        try:
            if case.reference is not None:
                with torch.no_grad():
                    reference = self.train(validate_batch(case.reference, cfg))[1][1]
            loss, (_, logits, _) = self.train(checked)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
        except Exception as e:  # noqa: BLE001
            self._build_model()
            return "model_error", f"{type(e).__name__}: {e}"
        if not (bool(torch.isfinite(loss)) and bool(torch.isfinite(logits).all())):
            self._build_model()
            return "non_finite", f"loss {loss.item()}"
        bad = _finite(self._snapshot(self.train, self.opt))
        if bad:
            self._build_model()
            return "non_finite", f"{bad} after the step"
        if reference is not None:
            if case.exact:
                same = torch.equal(logits, reference)
            else:
                same = logits.shape == reference.shape and torch.allclose(
                    logits, reference, atol=1e-5, rtol=1e-5
                )
            if not same:
                diff = (
                    (logits - reference).abs().max().item()
                    if logits.shape == reference.shape
                    else "shape"
                )
                return "mismatch", f"logits differ from the canonical batch's by {diff}"
        return "accepted", f"loss {loss.item():.4g}"

    def _run_tower(self, case: Case) -> Tuple[str, str]:
        t: TowerInputs = case.value
        before = self._snapshot(self.tower, self.tower_opt)
        try:
            validate_tower_inputs(
                self.config.tower, t.item_sparse, t.item_title, t.item_image, t.item_weights
            )
        except ValueError as e:
            message = str(e)
            try:
                self.tower(t.item_sparse, t.item_title, t.item_image, t.item_weights)
            except ValueError:
                pass
            except Exception as e2:  # noqa: BLE001
                self._build_tower()
                return "wrong_exception", f"MARNTower(validate=True): {type(e2).__name__}: {e2}"
            else:
                self._build_tower()
                return "silently_accepted_in_model", "MARNTower(validate=True) ran on it"
            changed = _same(before, self._snapshot(self.tower, self.tower_opt))
            if changed:
                self._build_tower()
                return "state_changed", f"{changed} after: {message}"
            return ("false_rejection" if case.valid else "rejected"), message
        except Exception as e:  # noqa: BLE001
            return "wrong_exception", f"validate_tower_inputs: {type(e).__name__}: {e}"
        if not case.valid:
            try:
                with torch.no_grad():
                    rep = self.tower(t.item_sparse, t.item_title, t.item_image, t.item_weights)
                probe = f"finite: {bool(torch.isfinite(rep.representation).all())}"
            except Exception as e:  # noqa: BLE001
                probe = f"the tower then raised {type(e).__name__}: {str(e)[:200]}"
            return "silently_accepted", f"validate_tower_inputs accepted it; {probe}"
        try:
            out = self.tower(t.item_sparse, t.item_title, t.item_image, t.item_weights)
            loss = out.representation.pow(2).mean() + sum(out.losses.values())
            loss.backward()
            self.tower_opt.step()
            self.tower_opt.zero_grad()
        except Exception as e:  # noqa: BLE001
            self._build_tower()
            return "model_error", f"{type(e).__name__}: {e}"
        bad = None if bool(torch.isfinite(loss)) else "loss"
        bad = bad or _finite(self._snapshot(self.tower, self.tower_opt))
        if bad:
            self._build_tower()
            return "non_finite", f"{bad} after the step"
        return "accepted", f"loss {loss.item():.4g}"
