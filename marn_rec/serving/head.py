"""The scoring head: MARN after the item tower (paper 3.4), as plain PyTorch, from representations.

:class:`ScoringHead` holds copies of a trained MARN's property tables (as plain tensors copied out of
the ``EmbeddingBagCollection``), APGRU, candidate attention and prediction MLP, and scores
candidates from item representations. It is what ``torch.export`` exports: no TorchRec module, no
FBGEMM op, no Python control flow on values.

Work is split by what it depends on. The behaviour states depend on the user alone, so APGRU runs
once per user (``U`` sequences), not once per candidate as in the training model (``B`` samples that
repeat the user's history), and as one call of ATen's fused GRU (``torch.gru``) on ``[rep_t, p_t]``
with the property weights ``P_u`` placed in the update gate's rows of the input weights (see
:meth:`ScoringHead._behavior_states`): the same recurrence as :class:`~marn_rec.modules.apgru.APGRU`
without its Python loop. The attention MLP's first layer is linear in ``[h_t, rep_candidate]``,
so it is split into ``W_h h_t + b`` (once per user and step) plus ``W_c rep_candidate`` (once per
candidate); only the later layers run per (candidate, step) pair. In fp32 this reorders a sum, so
logits differ from the training model's by float rounding (about 1e-7), not more.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from marn_rec.config import MARNConfig
from marn_rec.modules.apgru import APGRU

# As marn_rec.modules.candidate_attention: a finite fill that is also finite in fp16.
_MASKED_SCORE = -6.0e4
_PROPERTY_TABLES = "model.property_embedding.ebc.embedding_bags"


class ScoringHead(nn.Module):
    """APGRU once per user, candidate attention and the prediction MLP per candidate.

    Args:
        config (MARNConfig): the trained model's configuration (any ``sequence``).
        device (torch.device | None): parameter device.

    Weights start random; fill them with :meth:`load_marn_state` (from a MARN or a checkpoint,
    see :func:`marn_rec.serving.scorer.load_head`).

    Example::

        head = ScoringHead(config)
        head.load_marn_state(marn_train.state_dict())
        logits = head(history, lengths, types, times, candidates, candidate_user)  # [C]
    """

    def __init__(self, config: MARNConfig, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = config
        d, h = config.tower.hidden_dim, config.gru_hidden_dim
        b = config.behavior
        self.rep_dim, self.hidden_dim, self.max_length = d, h, b.max_length
        self.type_table: Optional[nn.Parameter] = None
        self.time_table: Optional[nn.Parameter] = None
        property_dim = 0
        if config.behavior_property:
            self.type_table = nn.Parameter(torch.randn(b.num_behavior_types, b.behavior_type_dim, device=device))
            self.time_table = nn.Parameter(torch.randn(b.num_time_buckets, b.time_dim, device=device))
            property_dim = b.behavior_type_dim + b.time_dim
        self.behavior = APGRU(d, h, property_dim, max_length=b.max_length, device=device)
        sizes = [h + d, *config.attention_mlp] if config.candidate_attention else []
        self.attention_layers = nn.ModuleList(
            nn.Linear(i, o, device=device) for i, o in zip(sizes[:-1], sizes[1:])
        )
        self.attention_score: Optional[nn.Linear] = (
            nn.Linear(sizes[-1], 1, bias=False, device=device) if config.candidate_attention else None
        )
        over = [h + d, *config.prediction_mlp]
        self.over_layers = nn.ModuleList(nn.Linear(i, o, device=device) for i, o in zip(over[:-1], over[1:]))
        self.over_out = nn.Linear(over[-1], 1, device=device)
        self.requires_grad_(False)

    def marn_keys(self) -> Dict[str, str]:
        """This module's state key -> the key of the same tensor in ``MARNTrain.state_dict()``."""
        keys: Dict[str, str] = {}
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ph"):
            if getattr(self.behavior, name) is not None:
                keys[f"behavior.{name}"] = f"model.behavior.{name}"
        if self.type_table is not None:
            keys["type_table"] = f"{_PROPERTY_TABLES}.t_behavior_type.weight"
            keys["time_table"] = f"{_PROPERTY_TABLES}.t_behavior_time.weight"
        for i in range(len(self.attention_layers)):
            for p in ("weight", "bias"):
                keys[f"attention_layers.{i}.{p}"] = f"model.attention.mlp._mlp.{i}._linear.{p}"
        if self.attention_score is not None:
            keys["attention_score.weight"] = "model.attention.score.weight"
        for i in range(len(self.over_layers)):
            for p in ("weight", "bias"):
                keys[f"over_layers.{i}.{p}"] = f"model.over.0._mlp.{i}._linear.{p}"
        keys["over_out.weight"] = "model.over.1.weight"
        keys["over_out.bias"] = "model.over.1.bias"
        return keys

    def marn_state_targets(self) -> Dict[str, torch.Tensor]:
        """``MARNTrain`` key -> this module's tensor: DCP fills them in place."""
        own = self.state_dict(keep_vars=True)
        return {marn: own[mine].data for mine, marn in self.marn_keys().items()}

    @torch.no_grad()
    def load_marn_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Copies the head's tensors out of a ``MARNTrain`` state dict (``model.`` keys) or a
        ``MARN`` one (keys without ``model.``)."""
        own = self.state_dict(keep_vars=True)
        for mine, marn in self.marn_keys().items():
            source = state.get(marn, state.get(marn[len("model."):]))
            if source is None:
                raise KeyError(f"the MARN state has no {marn!r}: another configuration?")
            if tuple(source.shape) != tuple(own[mine].shape):
                raise ValueError(f"{marn}: shape {list(source.shape)}, the head expects {list(own[mine].shape)}")
            own[mine].copy_(source)

    def forward(
        self,
        history: torch.Tensor,
        history_lengths: torch.Tensor,
        behavior_types: torch.Tensor,
        time_buckets: torch.Tensor,
        candidates: torch.Tensor,
        candidate_user: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            history (torch.Tensor): [U, T, d] float32 representations of each user's behaviours,
                left-aligned, zero after the user's length (T <= max_length; exactly max_length
                in an exported head).
            history_lengths (torch.Tensor): [U] int64 behaviours per user (0: no history).
            behavior_types (torch.Tensor): [U, T] int64 behaviour type of each step (0 padding).
            time_buckets (torch.Tensor): [U, T] int64 time bucket of each step (0 padding).
            candidates (torch.Tensor): [C, d] float32 candidate representations.
            candidate_user (torch.Tensor): [C] int64 user (row of ``history``) of each candidate.

        Returns:
            torch.Tensor: [C] click logits.

        Example::

            logits = head(torch.zeros(1, 20, 64), torch.tensor([0]), torch.zeros(1, 20, dtype=torch.long),
                          torch.zeros(1, 20, dtype=torch.long), torch.randn(5, 64), torch.zeros(5, dtype=torch.long))
        """
        properties = None
        if self.type_table is not None and self.time_table is not None:
            properties = torch.cat(
                [F.embedding(behavior_types, self.type_table), F.embedding(time_buckets, self.time_table)], dim=2
            )
        states, last = self._behavior_states(history, history_lengths, properties)
        if self.attention_score is None:  # BaseModel: the GRU's last state is the user embedding
            user = last.index_select(0, candidate_user)
        else:
            user = self._attend(states, history_lengths, candidates, candidate_user)
        x = torch.cat([user, candidates], dim=1)
        for layer in self.over_layers:
            x = torch.relu(layer(x))
        return self.over_out(x).squeeze(1)

    def _behavior_states(
        self, history: torch.Tensor, lengths: torch.Tensor, properties: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """APGRU's states [U, T, H] (zero after each length) and last valid states [U, H], with
        ATen's fused GRU: the property term ``P_u p_t`` of the update gate is a GRU input term
        once the input is ``[rep_t, p_t]`` and the input weights are ``[[W_r, 0], [W_u, P_u],
        [W_n, 0]]``. Every step runs for every user (left-aligned histories: the steps after a
        user's length do not touch its earlier states, and are zeroed), in one ATen call instead
        of a Python loop of ~15 ops per step (one op in an exported graph, too)."""
        g = self.behavior
        weight_ih, inputs = g.weight_ih, history
        if properties is not None and g.weight_ph is not None:
            h, p = self.hidden_dim, g.weight_ph.shape[1]
            zeros = g.weight_ph.new_zeros(h, p)
            weight_ih = torch.cat([g.weight_ih, torch.cat([zeros, g.weight_ph, zeros], dim=0)], dim=1)
            inputs = torch.cat([history, properties], dim=2)
        h0 = history.new_zeros(1, history.shape[0], self.hidden_dim)
        out, _ = torch.gru(inputs, h0, [weight_ih, g.weight_hh, g.bias_ih, g.bias_hh], True, 1, 0.0, False, False, True)
        steps = torch.arange(history.shape[1], device=history.device).unsqueeze(0)
        states = out * (steps < lengths.unsqueeze(1)).unsqueeze(2).to(out.dtype)
        last_index = (lengths - 1).clamp(min=0)
        last = out[torch.arange(out.shape[0], device=out.device), last_index]
        return states, last * (lengths > 0).unsqueeze(1).to(out.dtype)

    def _attend(
        self,
        states: torch.Tensor,
        lengths: torch.Tensor,
        candidates: torch.Tensor,
        candidate_user: torch.Tensor,
    ) -> torch.Tensor:
        """[C, H] user embeddings ``sum_t a_t h_t`` with respect to each candidate (3.4.1)."""
        assert self.attention_score is not None
        layers: List[nn.Linear] = list(self.attention_layers)
        first = layers[0] if layers else self.attention_score
        h = self.hidden_dim
        # [h_t, c] W^T + b = h_t W_h^T + b (per user and step) + c W_c^T (per candidate).
        per_step = F.linear(states, first.weight[:, :h], first.bias)  # [U, T, L]
        per_candidate = F.linear(candidates, first.weight[:, h:])  # [C, L]
        z = per_step.index_select(0, candidate_user) + per_candidate.unsqueeze(1)  # [C, T, L]
        if layers:
            z = torch.relu(z)
            for layer in layers[1:]:
                z = torch.relu(layer(z))
            z = self.attention_score(z)
        scores = z.squeeze(2)  # [C, T]
        t = states.shape[1]
        valid = torch.arange(t, device=states.device).unsqueeze(0) < lengths.index_select(0, candidate_user).unsqueeze(1)
        scores = scores.masked_fill(~valid, _MASKED_SCORE)
        weights = torch.softmax(scores, dim=1).masked_fill(~valid, 0.0)
        return torch.bmm(weights.unsqueeze(1), states.index_select(0, candidate_user)).squeeze(1)


def head_inputs_example(
    config: MARNConfig, users: int = 2, candidates: int = 3, steps: Optional[int] = None
) -> Tuple[torch.Tensor, ...]:
    """Valid example inputs of :meth:`ScoringHead.forward` (random, seed 0), e.g. for export."""
    g = torch.Generator().manual_seed(0)
    t = config.behavior.max_length if steps is None else steps
    d = config.tower.hidden_dim
    lengths = torch.randint(0, t + 1, (users,), generator=g)
    lengths[0] = t
    valid = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    history = torch.randn(users, t, d, generator=g) * valid.unsqueeze(2)
    types = torch.randint(0, config.behavior.num_behavior_types, (users, t), generator=g) * valid
    times = torch.randint(0, config.behavior.num_time_buckets, (users, t), generator=g) * valid
    cands = torch.randn(candidates, d, generator=g)
    user = torch.arange(candidates) % users
    return history, lengths, types, times, cands, user


def head_from_marn(model: nn.Module) -> ScoringHead:
    """A :class:`ScoringHead` with the weights of an in-memory ``MARN``, eval mode."""
    head = ScoringHead(model.config)
    head.load_marn_state(model.state_dict())
    return head.eval()
