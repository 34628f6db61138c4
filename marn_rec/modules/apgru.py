"""Attentional Property GRU, APGRU (paper 3.4.1): a GRU whose update gate also sees the behaviour
property, ``u_t = sigmoid(W_u rep_t + P_u p_t + U_u h_{t-1} + b_u)``.

Gate convention, stated once: that of ``torch.nn.GRU``,
``r_t = sigmoid(W_r x_t + b_ir + U_r h + b_hr)``, ``n_t = tanh(W_n x_t + b_in + r_t * (U_n h + b_hn))``,
``h_t = (1 - u_t) * n_t + u_t * h_{t-1}``: an update gate near 1 keeps the previous state. Weights use
``nn.GRU``'s names and layout (gates r, u, n stacked), so without the property term APGRU equals
``nn.GRU`` with the same weights. The candidate attention of 3.4.1 is
:class:`marn_rec.modules.candidate_attention.CandidateAttention`.

Why a Python loop and not ``nn.GRU``: cuDNN/ATen's fused GRU cannot add ``P_u p_t`` to one gate.
Input projections of all steps are one matmul before the loop; the loop walks ``unbind`` views
(indexing ``gi[t]`` would make autograd materialise a full-size gradient per step).
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class APGRU(nn.Module):
    """Single-layer batch-first GRU with the behaviour property in the update gate.

    Args:
        input_dim (int): size of ``rep_t``.
        hidden_dim (int): size of ``h_t``.
        property_dim (int): size of ``p_t``; 0 for a plain GRU (BaseModel).
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
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
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
        b, t, _ = inputs.shape
        if (properties is None) != (self.weight_ph is None):
            raise ValueError("properties must be given exactly when APGRU has a property term")
        h = inputs.new_zeros(b, self.hidden_dim)
        if t == 0:
            return inputs.new_zeros(b, 0, self.hidden_dim), h
        gi_r, gi_u, gi_n = F.linear(inputs, self.weight_ih, self.bias_ih).chunk(3, dim=2)
        if properties is not None:
            gi_u = gi_u + F.linear(properties, self.weight_ph)
        valid = torch.arange(t, device=inputs.device).unsqueeze(1) < lengths.unsqueeze(0)
        steps = zip(
            gi_r.transpose(0, 1).unbind(0),
            gi_u.transpose(0, 1).unbind(0),
            gi_n.transpose(0, 1).unbind(0),
            valid.unsqueeze(2).unbind(0),
        )
        states = []
        for x_r, x_u, x_n, mask in steps:
            h_r, h_u, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
            r = torch.sigmoid(x_r + h_r)
            u = torch.sigmoid(x_u + h_u)
            n = torch.tanh(x_n + r * h_n)
            h_new = n + u * (h - n)  # (1 - u) * n + u * h
            states.append(h_new * mask)
            h = torch.where(mask, h_new, h)  # past a sample's length its state stays put
        return torch.stack(states, dim=1), h
