"""Candidate attention of APGRU (paper 3.4.1): an MLP scores ``[h_t, rep_candidate]``, a softmax over
the valid steps normalises the scores, and the user embedding is ``sum_t a_t h_t``."""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.mlp import MLP


_MASKED_SCORE = -6.0e4


class CandidateAttention(nn.Module):
    """Attention pooling of the behaviour states with respect to the candidate item.

    Args:
        state_dim (int): size of ``h_t``.
        candidate_dim (int): size of ``rep_candidate``.
        layer_sizes (Sequence[int]): hidden layers of the scoring MLP (ReLU); a linear layer to
            one score follows.
        device (torch.device | None): parameter device.

    Example::

        att = CandidateAttention(256, 256, (80, 40))
        user = att(states, lengths, candidate)  # [B, 256]
    """

    def __init__(
        self,
        state_dim: int,
        candidate_dim: int,
        layer_sizes: Sequence[int],
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        sizes = list(layer_sizes)
        self.mlp = MLP(state_dim + candidate_dim, sizes, device=device) if sizes else nn.Identity()
        # No bias: the softmax over steps ignores a constant, so a bias would only get float-noise
        # gradients, which AdaGrad's g / sqrt(sum g^2) turns into steps of +-lr.
        self.score = nn.Linear(
            sizes[-1] if sizes else state_dim + candidate_dim, 1, bias=False, device=device
        )
        self.state_dim = state_dim
        # True: the MLP's first layer on the concatenated [h_t, rep] pairs, as on 2026-12-01
        # (see :meth:`_hidden`).
        self.old_step_kernels = False

    def forward(
        self, states: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            states (torch.Tensor): [B, T, state_dim] behaviour states ``h_t``.
            lengths (torch.Tensor): [B] valid steps; a sample with none gets a zero embedding.
            candidate (torch.Tensor): [B, candidate_dim] candidate representations.

        Returns:
            torch.Tensor: [B, state_dim] user embeddings ``u_candidate``.
        """
        weights = self.weights(states, lengths, candidate)
        return torch.bmm(weights.unsqueeze(1), states).squeeze(1)

    def weights(
        self, states: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor
    ) -> torch.Tensor:
        """[B, T] normalised attention weights ``a_t`` (zero after each length; arguments as in
        :meth:`forward`)."""
        t = states.shape[1]
        scores = self.score(self._hidden(states, candidate)).squeeze(2)
        valid = torch.arange(t, device=states.device).unsqueeze(0) < lengths.unsqueeze(1)
        # A finite fill (not -inf) keeps rows without any valid step free of NaN gradients; a
        # constant (not finfo(dtype).min) keeps the module traceable, and -6e4 is finite in fp16.
        scores = scores.masked_fill(~valid, _MASKED_SCORE)
        return torch.softmax(scores, dim=1).masked_fill(~valid, 0.0)

    def _hidden(self, states: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        """The scoring MLP on every pair ``[h_t, rep_candidate]``: [B, T, last hidden size].

        The first layer ``W [h_t, rep] + b`` is computed as ``W_h h_t + (W_r rep + b)``: the
        candidate's half once per sample instead of once per step, and no [B, T, 2d] pairs to
        build and take apart again in the backward. Same weights, same values up to rounding;
        ``old_step_kernels`` concatenates the pairs as on 2026-12-01.
        """
        b, t, _ = states.shape
        if self.old_step_kernels or not isinstance(self.mlp, MLP):
            pairs = torch.cat([states, candidate.unsqueeze(1).expand(b, t, -1)], dim=2)
            return self.mlp(pairs)
        # torchrec's MLP is a Sequential (_mlp) of Perceptrons (_linear, then _activation_fn); the
        # tests compare this path with the MLP's own forward, so a change there shows.
        first, *rest = list(self.mlp._mlp)
        w, h = first._linear.weight, self.state_dim
        per_candidate = F.linear(candidate, w[:, h:], first._linear.bias)
        x = F.linear(states, w[:, :h]) + per_candidate.unsqueeze(1)
        x = first._activation_fn(x)
        for layer in rest:
            x = layer(x)
        return x
