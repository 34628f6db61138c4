"""The online scorer (paper 4.9.2): item representations from the store, then APGRU once per user,
candidate attention and the prediction MLP per candidate.

A request is one user, or a batch of users given as jagged lists (``history_lengths`` and
``candidate_counts``, one entry per user). :class:`MARNScorer` checks it, looks the items up in the
:class:`~marn_rec.serving.store.RepresentationStore`, pads each user's history and calls the
:class:`~marn_rec.serving.head.ScoringHead` (eager, or the ``torch.export``-ed / AOTInductor one).

What a request may hold, and the answers to bad ones (never a crash, never a silent wrong score):

* IDs, behaviour types and time buckets: integer tensors, numpy integer arrays or lists of ints.
  Floats, bools, strings and non-1-d arrays are refused with a ``ValueError`` naming the input.
* An empty history (``history_lengths`` 0) is valid: the user embedding is zero, as in the training
  model (a cold user). More than ``max_length`` (T) behaviours is refused: pass the latest T, in the
  order the model was trained on.
* No candidates at all is refused (``ValueError``); in a batch a user may have none.
* Behaviour types outside ``[0, num_behavior_types)`` and time buckets outside
  ``[0, num_time_buckets)`` are refused, naming the input and the range.
* Items missing from the store (unknown, or reported bad at extraction): with ``missing="error"``
  (the default) an :class:`UnknownItemsError` names them (candidates and history apart). With
  ``missing="mean"`` or ``"zero"`` they are scored with the store's mean representation or a zero
  vector, and counted in :attr:`MARNScorer.stats` (``missing_candidates``, ``missing_history``).
* A store from another model configuration or checkpoint is refused when the scorer is built
  (:class:`~marn_rec.serving.store.StoreError`).
"""

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from marn_rec.config import MARNConfig, config_from_dict
from marn_rec.serving.head import ScoringHead, head_from_marn
from marn_rec.serving.store import RepresentationStore
from marn_rec.serving.weights import (
    CheckpointInfo,
    config_fingerprint,
    config_json,
    head_fingerprint,
    load_model_state,
)

MISSING_POLICIES = ("error", "mean", "zero")
IdsLike = Union[torch.Tensor, np.ndarray, Sequence[int]]
HeadInputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class UnknownItemsError(ValueError):
    """Items of a request that the store does not hold (``missing="error"``)."""

    def __init__(self, candidates: Sequence[int], history: Sequence[int]) -> None:
        self.candidates, self.history = list(candidates), list(history)
        parts = []
        for role, ids in (("candidates", self.candidates), ("history", self.history)):
            if ids:
                shown = ", ".join(str(i) for i in ids[:20]) + (", ..." if len(ids) > 20 else "")
                parts.append(f"{len(ids)} {role} ({shown})")
        super().__init__("items not in the representation store: " + "; ".join(parts)
                         + " (re-extract the catalogue, or build the scorer with missing='mean' or 'zero')")


def as_ids(name: str, x: IdsLike) -> torch.Tensor:
    """A 1-d int64 tensor of ``x``; ``ValueError`` naming ``name`` for anything but integers."""
    if isinstance(x, torch.Tensor):
        if x.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            raise ValueError(f"{name}: expected integer IDs, got a {x.dtype} tensor")
        t = x.detach().cpu()
    elif isinstance(x, np.ndarray):
        if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name}: expected integer IDs, got a numpy {x.dtype} array")
        if x.dtype == np.uint64 and x.size and int(x.max()) >= 2**63:
            raise ValueError(f"{name}: IDs beyond int64")
        t = torch.from_numpy(x.astype(np.int64))
    elif isinstance(x, (list, tuple)):
        bad = [v for v in x if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
        if bad:
            raise ValueError(f"{name}: expected integer IDs, got {bad[0]!r} ({type(bad[0]).__name__})")
        try:
            t = torch.tensor([int(v) for v in x], dtype=torch.int64)
        except RuntimeError as e:  # an int beyond int64
            raise ValueError(f"{name}: {e}") from e
    else:
        raise ValueError(f"{name}: expected a tensor, numpy array or list of ints, got {type(x).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name}: expected a 1-d list, got shape {list(t.shape)}")
    return t.long()


def _check_range(name: str, values: torch.Tensor, upper: int) -> None:
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= upper):
        raise ValueError(f"{name}: values must be in [0, {upper}), got min {int(values.min())} and "
                         f"max {int(values.max())}")


class MARNScorer(nn.Module):
    """Scores candidates for users from stored item representations.

    Args:
        head (Callable): the scoring head: a :class:`ScoringHead`, or an exported / AOTInductor
            one (call signature of :meth:`ScoringHead.forward`).
        store (RepresentationStore): the catalogue's representations (checked against ``config``).
        config (MARNConfig | None): the model's configuration; None: the store's.
        missing (str): "error", "mean" or "zero": what items missing from the store get (module
            docstring).
        pad_to_max_length (bool): pad histories to ``max_length`` (an exported head's static T)
            rather than to the longest history of the request.

    Example::

        scorer = load_scorer("runs/store", "runs/taobao_synthetic")
        logits = scorer([5, 17, 3], [0, 0, 1], [4, 2, 0], candidate_items=[8, 9, 10])   # [3]
        logits = scorer(hist, types, times, cands, history_lengths=[3, 0], candidate_counts=[2, 1])
    """

    def __init__(
        self,
        head: Callable[..., torch.Tensor],
        store: RepresentationStore,
        config: Optional[MARNConfig] = None,
        missing: str = "error",
        pad_to_max_length: bool = False,
    ) -> None:
        super().__init__()
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.config = config if config is not None else config_from_dict(store.manifest["model"])
        store.check_model(config_fingerprint(self.config), None, config_json(self.config))
        if store.dim != self.config.tower.hidden_dim:
            raise ValueError(f"store dimension {store.dim} != the model's {self.config.tower.hidden_dim}")
        self.head = head
        self.store = store
        self.missing = missing
        self.pad_to_max_length = pad_to_max_length
        self.stats: Dict[str, int] = dict(requests=0, users=0, candidates=0, missing_candidates=0, missing_history=0)

    def forward(
        self,
        history_items: IdsLike,
        behavior_types: IdsLike,
        time_buckets: IdsLike,
        candidate_items: IdsLike,
        history_lengths: Optional[IdsLike] = None,
        candidate_counts: Optional[IdsLike] = None,
    ) -> torch.Tensor:
        """
        Args:
            history_items: [N] item IDs of the behaviours, user after user (each user's in the
                training order, at most ``max_length`` per user).
            behavior_types: [N] behaviour type of each (click, cart, purchase: 0, 1, 2).
            time_buckets: [N] bucketised time since each behaviour
                (:func:`marn_rec.features.bucketize_time_gap`).
            candidate_items: [C] item IDs to score, user after user.
            history_lengths: [U] behaviours per user; None: one user.
            candidate_counts: [U] candidates per user; None: one user.

        Returns:
            torch.Tensor: [C] click logits (``sigmoid`` gives probabilities), in candidate order.

        Example::

            logits = scorer([5, 17], [0, 0], [3, 1], [8, 9, 10])
        """
        with torch.no_grad():
            return self.head(*self.prepare(history_items, behavior_types, time_buckets, candidate_items,
                                           history_lengths, candidate_counts))

    def prepare(
        self,
        history_items: IdsLike,
        behavior_types: IdsLike,
        time_buckets: IdsLike,
        candidate_items: IdsLike,
        history_lengths: Optional[IdsLike] = None,
        candidate_counts: Optional[IdsLike] = None,
    ) -> HeadInputs:
        """Checks a request and builds the head's inputs (arguments as :meth:`forward`)."""
        hist = as_ids("history_items", history_items)
        types = as_ids("behavior_types", behavior_types)
        times = as_ids("time_buckets", time_buckets)
        cands = as_ids("candidate_items", candidate_items)
        if (history_lengths is None) != (candidate_counts is None):
            raise ValueError("give both history_lengths and candidate_counts (a batch of users), or neither (one user)")
        if history_lengths is None:
            lengths = torch.tensor([hist.numel()], dtype=torch.int64)
            counts = torch.tensor([cands.numel()], dtype=torch.int64)
        else:
            lengths = as_ids("history_lengths", history_lengths)
            counts = as_ids("candidate_counts", candidate_counts)  # type: ignore[arg-type]
            if lengths.numel() != counts.numel() or lengths.numel() == 0:
                raise ValueError(f"history_lengths ({lengths.numel()}) and candidate_counts ({counts.numel()}) "
                                 "must have one entry per user, at least one user")
        c = self.config.behavior
        _check_range("history_lengths", lengths, c.max_length + 1)
        _check_range("candidate_counts", counts, 2**62)
        if int(lengths.sum()) != hist.numel():
            raise ValueError(f"history_lengths add up to {int(lengths.sum())}, but there are {hist.numel()} history items")
        if types.numel() != hist.numel() or times.numel() != hist.numel():
            raise ValueError(f"history_items ({hist.numel()}), behavior_types ({types.numel()}) and "
                             f"time_buckets ({times.numel()}) must have one entry per behaviour")
        if int(counts.sum()) != cands.numel():
            raise ValueError(f"candidate_counts add up to {int(counts.sum())}, but there are {cands.numel()} candidates")
        if cands.numel() == 0:
            raise ValueError("candidate_items: empty: nothing to score")
        _check_range("behavior_types", types, c.num_behavior_types)
        _check_range("time_buckets", times, c.num_time_buckets)
        rep_h, rep_c = self._representations(hist, cands)
        u = lengths.numel()
        t = c.max_length if self.pad_to_max_length else max(1, int(lengths.max()))
        # Step s of user j sits at [j, s]: behaviour k of the flat list goes to j * t + (k - start_j).
        starts = torch.cumsum(lengths, 0) - lengths
        user_of = torch.repeat_interleave(torch.arange(u), lengths)
        slot = user_of * t + torch.arange(hist.numel()) - starts[user_of]
        history = torch.zeros(u * t, self.config.tower.hidden_dim)
        history[slot] = rep_h
        padded_types = torch.zeros(u * t, dtype=torch.int64)
        padded_types[slot] = types
        padded_times = torch.zeros(u * t, dtype=torch.int64)
        padded_times[slot] = times
        candidate_user = torch.repeat_interleave(torch.arange(u), counts)
        self.stats["requests"] += 1
        self.stats["users"] += u
        self.stats["candidates"] += cands.numel()
        return (history.view(u, t, -1), lengths, padded_types.view(u, t), padded_times.view(u, t),
                rep_c, candidate_user)

    def _representations(self, hist: torch.Tensor, cands: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Float32 representations of the history and candidate items, per the missing policy."""
        rows = self.store.lookup(torch.cat([hist, cands]))
        known = rows >= 0
        if not bool(known.all()):
            n = hist.numel()
            miss_h = torch.unique(hist[~known[:n]]).tolist()
            miss_c = torch.unique(cands[~known[n:]]).tolist()
            if self.missing == "error":
                raise UnknownItemsError(miss_c, miss_h)
            self.stats["missing_history"] += int((~known[:n]).sum())
            self.stats["missing_candidates"] += int((~known[n:]).sum())
        reps = torch.zeros(rows.numel(), self.store.dim)
        if bool(known.any()):
            reps[known] = self.store.gather(rows[known])
        if self.missing == "mean" and not bool(known.all()):
            reps[~known] = self.store.mean
        return reps[: hist.numel()], reps[hist.numel():]


def load_head(checkpoint: Union[str, CheckpointInfo], verify: bool = True) -> ScoringHead:
    """The trained scoring head of a checkpoint, eval mode; only the head's tensors are read (no
    item table), so this works at any catalogue size."""
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else CheckpointInfo(checkpoint, verify)
    head = ScoringHead(info.config)
    load_model_state(info.path, head.marn_state_targets())
    return head.eval()


def load_scorer(
    store: Union[str, RepresentationStore],
    checkpoint: Optional[str] = None,
    exported: Optional[str] = None,
    missing: str = "error",
    verify: bool = True,
) -> MARNScorer:
    """A scorer over ``store`` with the head of ``checkpoint`` (eager) or of an exported artifact
    (``.pt2`` from :func:`marn_rec.serving.export.export_scorer`, or its AOTInductor package).

    Raises:
        StoreError: the store was extracted from another configuration or checkpoint.
    """
    from marn_rec.serving.export import load_exported_head

    store = store if isinstance(store, RepresentationStore) else RepresentationStore(store)
    if (checkpoint is None) == (exported is None):
        raise ValueError("give exactly one of checkpoint (eager head) and exported (an exported head)")
    if checkpoint is not None:
        info = CheckpointInfo(checkpoint, verify)
        store.check_model(config_fingerprint(info.config), None, config_json(info.config))
        head = load_head(info)
        store.check_model(config_fingerprint(info.config), head_fingerprint(head.state_dict()))
        return MARNScorer(head, store, info.config, missing)
    assert exported is not None
    fn, meta = load_exported_head(exported)
    config = config_from_dict(meta["model"])
    store.check_model(config_fingerprint(config), meta["head_fingerprint"], config_json(config))
    return MARNScorer(fn, store, config, missing, pad_to_max_length=True)


def scorer_from_marn(model: nn.Module, store: RepresentationStore, missing: str = "error") -> MARNScorer:
    """A scorer whose head is copied from an in-memory ``MARN`` (tests, benchmarks)."""
    return MARNScorer(head_from_marn(model), store, model.config, missing)
