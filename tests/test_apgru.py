"""APGRU against torch.nn.GRU and against eq. 3.4.1 written step by step."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from marn_rec.modules.apgru import APGRU
from marn_rec.modules.candidate_attention import CandidateAttention


def _copy_from_gru(apgru: APGRU, gru: nn.GRU) -> None:
    with torch.no_grad():
        apgru.weight_ih.copy_(gru.weight_ih_l0)
        apgru.weight_hh.copy_(gru.weight_hh_l0)
        apgru.bias_ih.copy_(gru.bias_ih_l0)
        apgru.bias_hh.copy_(gru.bias_hh_l0)


def test_without_property_equals_torch_gru_forward_and_gradients() -> None:
    b, t, d, h = 5, 7, 6, 4
    gru = nn.GRU(d, h, batch_first=True)
    apgru = APGRU(d, h)
    _copy_from_gru(apgru, gru)
    x = torch.randn(b, t, d)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref_states, ref_last = gru(x_ref)
    states, last = apgru(x_ours, torch.full((b,), t))
    torch.testing.assert_close(states, ref_states)
    torch.testing.assert_close(last, ref_last[0])
    w = torch.randn_like(states)
    ((ref_states * w).sum() + ref_last.sum()).backward()
    ((states * w).sum() + last.sum()).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad)
    for ours, ref in [
        (apgru.weight_ih, gru.weight_ih_l0),
        (apgru.weight_hh, gru.weight_hh_l0),
        (apgru.bias_ih, gru.bias_ih_l0),
        (apgru.bias_hh, gru.bias_hh_l0),
    ]:
        torch.testing.assert_close(ours.grad, ref.grad)


def test_variable_lengths_equal_packed_torch_gru() -> None:
    d, h = 3, 5
    lengths = torch.tensor([4, 0, 2, 6, 1])
    gru = nn.GRU(d, h, batch_first=True)
    apgru = APGRU(d, h)
    _copy_from_gru(apgru, gru)
    x = torch.randn(len(lengths), 6, d)
    states, last = apgru(x, lengths)
    nonempty = lengths > 0
    packed = pack_padded_sequence(
        x[nonempty], lengths[nonempty], batch_first=True, enforce_sorted=False
    )
    ref_packed, ref_last = gru(packed)
    ref_states, _ = pad_packed_sequence(ref_packed, batch_first=True, total_length=6)
    torch.testing.assert_close(states[nonempty], ref_states)
    torch.testing.assert_close(last[nonempty], ref_last[0])
    # A user without behaviours has the initial (zero) state.
    assert torch.equal(last[~nonempty], torch.zeros(1, h))
    assert torch.equal(states[~nonempty], torch.zeros(1, 6, h))


def _reference_apgru(m: APGRU, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Paper 3.4.1 step by step: u_t = sigmoid(W_u rep_t + P_u p_t + U_u h_{t-1} + b_u)."""
    h_dim = m.hidden_dim
    w_r, w_u, w_n = m.weight_ih.split(h_dim)
    u_r, u_u, u_n = m.weight_hh.split(h_dim)
    bi_r, bi_u, bi_n = m.bias_ih.split(h_dim)
    bh_r, bh_u, bh_n = m.bias_hh.split(h_dim)
    h = torch.zeros(x.shape[0], h_dim, dtype=x.dtype)
    out = []
    for t in range(x.shape[1]):
        xt, pt = x[:, t], p[:, t]
        r = torch.sigmoid(xt @ w_r.T + bi_r + h @ u_r.T + bh_r)
        u = torch.sigmoid(xt @ w_u.T + pt @ m.weight_ph.T + bi_u + h @ u_u.T + bh_u)
        n = torch.tanh(xt @ w_n.T + bi_n + r * (h @ u_n.T + bh_n))
        h = (1 - u) * n + u * h
        out.append(h)
    return torch.stack(out, 1)


def test_property_term_enters_the_update_gate() -> None:
    m = APGRU(4, 3, property_dim=2).double()
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    p = torch.randn(6, 5, 2, dtype=torch.float64)
    states, last = m(x, torch.full((6,), 5), p)
    ref = _reference_apgru(m, x, p)
    torch.testing.assert_close(states, ref)
    torch.testing.assert_close(last, ref[:, -1])
    # With P_u = 0 the property has no effect.
    with torch.no_grad():
        m.weight_ph.zero_()
    no_prop, _ = m(x, torch.full((6,), 5), p)
    with_other_prop, _ = m(x, torch.full((6,), 5), torch.randn_like(p))
    torch.testing.assert_close(no_prop, with_other_prop)


def test_apgru_gradcheck() -> None:
    m = APGRU(3, 2, property_dim=2).double()
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 0])
    assert torch.autograd.gradcheck(lambda a, b: m(a, lengths, b)[0], (x, p))


def test_property_required_iff_configured() -> None:
    with pytest.raises(ValueError, match="properties"):
        APGRU(3, 2, property_dim=2)(torch.randn(1, 2, 3), torch.tensor([2]))
    with pytest.raises(ValueError, match="properties"):
        APGRU(3, 2)(torch.randn(1, 2, 3), torch.tensor([2]), torch.randn(1, 2, 2))


def test_candidate_attention_is_a_softmax_over_valid_steps() -> None:
    att = CandidateAttention(3, 2, (4,)).double()
    states = torch.randn(3, 5, 3, dtype=torch.float64, requires_grad=True)
    cand = torch.randn(3, 2, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0])
    user = att(states, lengths, cand)
    for i, n in enumerate(lengths.tolist()):
        if n == 0:
            assert torch.equal(user[i], torch.zeros(3, dtype=torch.float64))
            continue
        pairs = torch.cat([states[i, :n], cand[i].expand(n, 2)], 1)
        a = torch.softmax(att.score(att.mlp(pairs)).squeeze(1), 0)
        torch.testing.assert_close(user[i], (a.unsqueeze(1) * states[i, :n]).sum(0))
    user.sum().backward()
    assert torch.isfinite(states.grad).all()
    assert torch.equal(states.grad[1, 2:], torch.zeros(3, 3, dtype=torch.float64))
    assert all(torch.isfinite(p.grad).all() for p in att.parameters())


def test_all_empty_batch_keeps_every_parameter_in_the_graph() -> None:
    m = APGRU(3, 2, property_dim=2)
    states, last = m(torch.randn(4, 1, 3), torch.zeros(4, dtype=torch.long), torch.randn(4, 1, 2))
    assert torch.equal(states, torch.zeros(4, 1, 2)) and torch.equal(last, torch.zeros(4, 2))
    (states.sum() + last.sum()).backward()
    assert all(p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)) for p in m.parameters())


def test_unsorted_lengths_equal_per_sample_runs() -> None:
    m = APGRU(3, 4, property_dim=2)
    x, p = torch.randn(5, 6, 3), torch.randn(5, 6, 2)
    lengths = torch.tensor([2, 6, 0, 3, 6])
    states, last = m(x, lengths, p)
    for i, n in enumerate(lengths.tolist()):
        if n == 0:
            continue
        s_i, l_i = m(x[i : i + 1, :n], torch.tensor([n]), p[i : i + 1, :n])
        torch.testing.assert_close(states[i, :n], s_i[0])
        torch.testing.assert_close(last[i], l_i[0])
        assert torch.equal(states[i, n:], torch.zeros(6 - n, 4))


@pytest.mark.parametrize("with_property", [True, False])
def test_packed_path_equals_the_step_loop_and_the_masked_path(with_property: bool) -> None:
    """The eager path (packed valid steps), the step loop of 2026-12-01 that the benchmark times
    as the old step, and the traceable masked path: same states, last states and gradients."""
    torch.manual_seed(0)
    m = APGRU(5, 4, property_dim=3 if with_property else 0).double()
    lengths = torch.tensor([3, 0, 7, 1, 7, 5, 0, 2])
    x = torch.randn(len(lengths), 7, 5, dtype=torch.float64)
    p = torch.randn(len(lengths), 7, 3, dtype=torch.float64) if with_property else None
    w = torch.randn(len(lengths), 7, 4, dtype=torch.float64)

    def run(path: str):
        xs = x.clone().requires_grad_()
        ps = p.clone().requires_grad_() if p is not None else None
        m.zero_grad(set_to_none=True)
        m.old_step_kernels = path == "loop"
        states, last = m._forward_masked(xs, lengths, ps) if path == "masked" else m(xs, lengths, ps)
        ((states * w).sum() + (last * last).sum()).backward()
        grads = [xs.grad] + ([ps.grad] if ps is not None else []) + [q.grad for q in m.parameters()]
        return [states.detach(), last.detach()] + grads

    packed, loop, masked = run("packed"), run("loop"), run("masked")
    for a, b, c in zip(packed, loop, masked):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    # Padding stays zero, and a user without behaviours keeps the zero state.
    assert torch.equal(packed[0][0, 3:], torch.zeros(4, 4, dtype=torch.float64))
    assert torch.equal(packed[1][1], torch.zeros(4, dtype=torch.float64))


def test_packed_path_under_bf16_autocast_matches_the_step_loop() -> None:
    """The fast step runs APGRU under bf16 autocast: the packed path gives the step loop's
    results there too (same casts, same state dtype)."""
    torch.manual_seed(1)
    m = APGRU(6, 5, property_dim=2)
    lengths = torch.tensor([4, 1, 0, 6, 6, 3])
    x, p = torch.randn(6, 6, 6), torch.randn(6, 6, 2)
    out = {}
    for old in (False, True):
        m.old_step_kernels = old
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out[old] = m(x, lengths, p)
    for a, b in zip(out[False], out[True]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


def test_candidate_attention_split_first_layer_equals_the_concatenated_pairs() -> None:
    """The first scoring layer as ``W_h h_t + (W_r rep + b)`` against the concatenated pairs (the
    kernel of 2026-12-01): outputs and gradients equal to float64 rounding, an empty sample
    included; under bf16 autocast equal to bf16's precision."""
    torch.manual_seed(0)
    att = CandidateAttention(6, 5, (7, 4)).double()
    states, candidate = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 0])
    for dtype, autocast in ((torch.float64, False), (torch.float32, True)):
        att = att.to(dtype)
        results = []
        for old in (False, True):
            att.old_step_kernels = old
            att.zero_grad(set_to_none=True)
            s, c = states.to(dtype).requires_grad_(), candidate.to(dtype).requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = att(s, lengths, c)
            (out.float() * torch.arange(6.0)).sum().backward()
            results.append([out, s.grad, c.grad] + [p.grad for p in att.parameters()])
        for new, reference in zip(*results):
            tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 0, "atol": 1e-12}
            torch.testing.assert_close(new, reference, **tolerance)
