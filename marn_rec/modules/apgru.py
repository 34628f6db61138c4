"""Attentional Property GRU, APGRU (paper 3.4.1): a GRU whose update gate also sees the behaviour
property, ``u_t = sigmoid(W_u rep_t + P_u p_t + U_u h_{t-1} + b_u)``.

Gate convention, stated once: that of ``torch.nn.GRU``,
``r_t = sigmoid(W_r x_t + b_ir + U_r h + b_hr)``, ``n_t = tanh(W_n x_t + b_in + r_t * (U_n h + b_hn))``,
``h_t = (1 - u_t) * n_t + u_t * h_{t-1}``: an update gate near 1 keeps the previous state. Weights use
``nn.GRU``'s names and layout (gates r, u, n stacked), so without the property term APGRU equals
``nn.GRU`` with the same weights. The candidate attention of 3.4.1 is
:class:`marn_rec.modules.candidate_attention.CandidateAttention`.

Why a Python loop and not ``nn.GRU``: cuDNN/ATen's fused GRU cannot add ``P_u p_t`` to one gate.
The eager path packs the sequences as ``nn.GRU``'s ``PackedSequence`` does: samples sorted by
length, the valid steps gathered time-major into one [S, *] tensor (S = the sum of the lengths),
so that the input projections of all steps are one matmul over valid steps only, step t is a
contiguous slice of that tensor (``split``, whose backward is one ``cat``), and the states are
scattered back to [B, T, H] once (without padding, packing is a transpose). The step loop of
2026-12-01 (``old_step_kernels = True``) projected every padded step and sliced, padded and
concatenated per step; autograd then materialised a full-size gradient for every slice. It stays
for one reason: ``benchmarks/qps.py`` times the old step beside the new one. The packing reads the
lengths on the host, so under FX tracing, ``torch.compile`` and ``torch.export`` the module runs
all ``T`` steps for every sample and masks the finished ones instead (same results; the three
paths are tested against each other).
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from marn_rec.validation import is_tracing


class APGRU(nn.Module):
    """Single-layer batch-first GRU with the behaviour property in the update gate.

    Args:
        input_dim (int): size of ``rep_t``.
        hidden_dim (int): size of ``h_t``.
        property_dim (int): size of ``p_t``; 0 for a plain GRU (BaseModel).
        max_length (int | None): T, the padded length of the inputs; needed only to FX-trace the
            module (a traced graph cannot read T from a shape).
        device (torch.device | None): parameter device.

    Example::

        gru = APGRU(input_dim=256, hidden_dim=256, property_dim=16)
        states, last = gru(reps, lengths, properties)  # [B, T, 256], [B, 256]
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        property_dim: int = 0,
        max_length: Optional[int] = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.max_length = max_length
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_dim, input_dim, device=device))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_dim, hidden_dim, device=device))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_dim, device=device))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_dim, device=device))
        self.weight_ph: Optional[nn.Parameter] = (
            nn.Parameter(torch.empty(hidden_dim, property_dim, device=device))
            if property_dim > 0
            else None
        )
        self.reset_parameters()
        # True: the step loop of 2026-12-01 (see the module's docstring); same results.
        self.old_step_kernels = False

    def reset_parameters(self) -> None:
        # nn.GRU's initialisation.
        bound = 1.0 / math.sqrt(self.hidden_dim)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        properties: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            inputs (torch.Tensor): [B, T, input_dim] item representations ``rep_t``, left-aligned,
                padded after each sample's length.
            lengths (torch.Tensor): [B] valid steps per sample (0 allowed).
            properties (torch.Tensor | None): [B, T, property_dim] ``p_t``; required iff the
                module was built with ``property_dim > 0``.

        Returns:
            Tuple[torch.Tensor, torch.Tensor]: states [B, T, hidden_dim] (zero after a sample's
            length) and the last valid state [B, hidden_dim] (zeros for an empty sequence).
        """
        if (properties is None) != (self.weight_ph is None):
            raise ValueError("properties must be given exactly when APGRU has a property term")
        if is_tracing():
            return self._forward_masked(inputs, lengths, properties)
        b, t, _ = inputs.shape
        if t == 0:
            return inputs.new_zeros(b, 0, self.hidden_dim), inputs.new_zeros(b, self.hidden_dim)
        if self.old_step_kernels:
            return self._forward_step_slices(inputs, lengths, properties)
        return self._forward_packed(inputs, lengths, properties)

    def _cell(
        self,
        gi_t: torch.Tensor,
        gp_t: Optional[torch.Tensor],
        h: torch.Tensor,
    ) -> torch.Tensor:
        """One step for the rows of ``h``: ``gi_t`` = W rep_t + b_i, ``gp_t`` = P_u p_t."""
        x_r, x_u, x_n = gi_t.chunk(3, dim=1)
        h_r, h_u, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
        r = torch.sigmoid(x_r + h_r)
        if gp_t is not None:
            h_u = h_u + gp_t
        u = torch.sigmoid(x_u + h_u)
        n_new = torch.tanh(x_n + r * h_n)
        return n_new + u * (h - n_new)  # (1 - u) * n + u * h

    def _empty(
        self, inputs: torch.Tensor, gi: torch.Tensor, gp: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """No sample has a behaviour: zeros. Every parameter still enters the graph (with zero
        gradient): DDP's static graph, DMP's default, expects the same parameters each step."""
        b, t, _ = inputs.shape
        h = inputs.new_zeros(b, self.hidden_dim)
        anchor = gi.sum() + F.linear(h, self.weight_hh, self.bias_hh).sum()
        if gp is not None:
            anchor = anchor + gp.sum()
        return inputs.new_zeros(b, t, self.hidden_dim) + 0 * anchor, h + 0 * anchor

    def _forward_packed(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        properties: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The eager path: valid steps packed time-major, as a ``PackedSequence``."""
        b, t, _ = inputs.shape
        lengths = lengths.to(inputs.device).long().clamp(0, t)
        sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
        steps = torch.arange(t, device=inputs.device)
        running = sorted_lengths.unsqueeze(0) > steps.unsqueeze(1)  # [T, B]: step t, sorted rank j
        batch_sizes = [n for n in running.sum(1).tolist() if n > 0]
        # Without padding (every sample runs all T steps) packing is a transpose, which costs less
        # than a gather and a scatter (and whose backward is no scatter-add).
        full = len(batch_sizes) == t and batch_sizes[-1] == b
        # Row of (step t, rank j) in inputs viewed as [B * T, *], time-major over valid steps.
        rows = None if full else (order.unsqueeze(0) * t + steps.unsqueeze(1))[running]  # [S]

        def pack(x: torch.Tensor) -> torch.Tensor:
            if full:  # the stable sort of equal lengths is the identity: a time-major view
                return x.transpose(0, 1)
            return x.reshape(b * t, -1).index_select(0, rows)

        # (linear over the time-major view writes a contiguous [T, B, *]: the reshape is a view)
        gi = F.linear(pack(inputs), self.weight_ih, self.bias_ih).reshape(-1, 3 * self.hidden_dim)
        gp = (
            F.linear(pack(properties), self.weight_ph).reshape(-1, self.hidden_dim)
            if properties is not None
            else None
        )
        if not batch_sizes:
            return self._empty(inputs, gi, gp)
        # Sorted by length, the samples still running at step t are the first n_t rows of step
        # t - 1's state.
        h = inputs.new_zeros(batch_sizes[0], self.hidden_dim)
        packed_states = []
        gp_steps = gp.split(batch_sizes) if gp is not None else [None] * len(batch_sizes)
        for gi_t, gp_t, n in zip(gi.split(batch_sizes), gp_steps, batch_sizes):
            h = self._cell(gi_t, gp_t, h if h.shape[0] == n else h[:n])
            packed_states.append(h)
        if full:
            return torch.stack(packed_states, dim=1), h
        packed = torch.cat(packed_states)  # [S, H]
        states = packed.new_zeros(b * t, self.hidden_dim).index_copy(0, rows, packed)
        # Each sample's last state is its row at step length - 1: offset of that step plus the
        # sample's rank. A sample without behaviours keeps the zero state.
        offsets = torch.tensor([0] + batch_sizes[:-1], device=inputs.device).cumsum(0)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(b, device=order.device)
        nonempty = lengths > 0
        last_row = torch.where(nonempty, offsets[(lengths - 1).clamp_min(0)] + rank, 0)
        last = packed.index_select(0, last_row) * nonempty.unsqueeze(1).to(packed.dtype)
        return states.view(b, t, self.hidden_dim), last

    def _forward_step_slices(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        properties: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The step loop of 2026-12-01 (``old_step_kernels``), kept for the benchmark's old step."""
        b, t, _ = inputs.shape
        # Like a PackedSequence: samples sorted by length, so that step t updates only the first
        # n_t rows (the samples still running) and padding costs no compute.
        sorted_lengths, order = torch.sort(lengths, descending=True, stable=True)
        permuted = not bool((order == torch.arange(b, device=order.device)).all())
        steps = torch.arange(t, device=lengths.device)
        batch_sizes = (sorted_lengths.unsqueeze(0) > steps.unsqueeze(1)).sum(1).tolist()
        # Time-major projections of all steps at once ([T, B, 3H] and [T, B, H]), so that each
        # step's slice is contiguous; P_u p_t joins the update gate inside the step.
        x = inputs.transpose(0, 1)
        p = properties.transpose(0, 1) if properties is not None else None
        if permuted:
            x = x.index_select(1, order)
            p = p.index_select(1, order) if p is not None else None
        gi = F.linear(x, self.weight_ih, self.bias_ih)
        gp = F.linear(p, self.weight_ph).unbind(0) if p is not None else [None] * t
        h = inputs.new_zeros(b, self.hidden_dim)
        states = []
        for gi_t, gp_t, n in zip(gi.unbind(0), gp, batch_sizes):
            if n == 0:
                break
            h_new = self._cell(
                gi_t if n == b else gi_t[:n],
                None if gp_t is None else (gp_t if n == b else gp_t[:n]),
                h if n == b else h[:n],
            )
            if n == b:
                states.append(h_new)
                h = h_new
            else:  # finished samples keep their last state and output zeros
                states.append(F.pad(h_new, (0, 0, 0, b - n)))
                h = torch.cat([h_new, h[n:]])
        if not states:
            return self._empty(inputs, gi, torch.stack(list(gp)) if p is not None else None)
        out = torch.stack(states, dim=1)
        if out.shape[1] < t:
            out = F.pad(out, (0, 0, 0, t - out.shape[1]))
        if permuted:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(b, device=order.device)
            out, h = out.index_select(0, inverse), h.index_select(0, inverse)
        return out, h

    def _forward_masked(
        self,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        properties: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """All T steps for every sample; a finished sample keeps its state and outputs zeros.
        No value of ``lengths`` decides the control flow, so FX, dynamo and export can trace it."""
        t = self.max_length if torch.fx._symbolic_trace.is_fx_symbolic_tracing() else inputs.shape[1]
        if t is None:
            raise ValueError("APGRU: set max_length to FX-trace the module")
        gi = F.linear(inputs, self.weight_ih, self.bias_ih)
        gp = F.linear(properties, self.weight_ph) if properties is not None else None
        h = torch.zeros_like(gi[:, 0, : self.hidden_dim])
        states = []
        for step in range(t):
            h_new = self._cell(gi[:, step], gp[:, step] if gp is not None else None, h)
            valid = (lengths > step).unsqueeze(1)
            h = torch.where(valid, h_new, h)
            states.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
        return torch.stack(states, dim=1), h
