"""Gradient reversal, DDMA's gradient routing (paper 3.3.2-3.3.3, eq. 10) and the lambda schedule."""

import math

import pytest
import torch

import marn_rec.modules.ddma as ddma_module
from marn_rec.config import tiny
from marn_rec.models.loss import adversarial_lambda, marn_loss
from marn_rec.modules.ddma import DoubleDiscriminatorAdversarial, ModalityAdversarial
from marn_rec.modules.grl import GradientReversal, grad_reverse
from marn_rec.testing import random_batch
from marn_rec.models.tower import MARNTower


def _reversed(f, scale):
    """x -> -scale * f(x) as the forward value, GRL's chain rule as the backward.

    gradcheck compares the numerical Jacobian of the forward (-scale J_f) with the analytic one:
    they agree exactly when the GRL multiplies the gradient by -scale.
    """

    def g(x):
        through_grl = f(grad_reverse(x, scale))
        return (-scale * f(x)).detach() + (through_grl - through_grl.detach())

    return g


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_gradient_reversal_gradcheck(scale: float) -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(_reversed(lambda v: v, scale), (x,))
    assert torch.autograd.gradcheck(_reversed(lambda v: torch.tanh(v @ w) ** 2, scale), (x,))
    # Forward is the identity.
    assert torch.equal(GradientReversal(scale)(x), x)


def _tower_and_batch(adversarial: str = "ddma"):
    cfg = tiny()
    tower_cfg = cfg.tower.__class__(**{**cfg.tower.__dict__, "adversarial": adversarial})
    tower = MARNTower(tower_cfg)
    batch = random_batch(cfg, 6)
    return tower, batch


def _run(tower, batch):
    return tower(batch.item_sparse, batch.item_title, batch.item_image)


def _grads(module):
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in module.named_parameters()}


def _nonzero(g):
    return g is not None and bool(g.abs().sum() > 0)


def test_d0_trains_only_d0() -> None:
    tower, batch = _tower_and_batch()
    _run(tower, batch).losses["d0"].backward()
    grads = _grads(tower)
    assert _nonzero(grads["adversarial.d0.weight"])
    others = [n for n, g in grads.items() if not n.startswith("adversarial.d0.") and _nonzero(g)]
    assert others == [], f"L_D0 reached {others}"


def test_ds_does_not_reach_the_embedding_layer() -> None:
    tower, batch = _tower_and_batch()
    _run(tower, batch).losses["ds"].backward()
    grads = _grads(tower)
    assert _nonzero(grads["projection.specific_projection.weight"])  # S_m learns from Ds
    assert _nonzero(grads["adversarial.d1.weight"])  # Ds shares D1's matrix
    reached = [n for n, g in grads.items() if n.startswith("embedding.") and _nonzero(g)]
    assert reached == [], f"L_Ds reached the embedding layer: {reached}"
    assert not _nonzero(grads["projection.invariant_projection.weight"])


def test_d1_loss_trains_only_d1() -> None:
    """D1's side of L_ADV's game: D1 learns to discriminate, nothing before it moves."""
    tower, batch = _tower_and_batch()
    _run(tower, batch).losses["d1"].backward()
    grads = _grads(tower)
    assert _nonzero(grads["adversarial.d1.weight"])
    others = [n for n, g in grads.items() if not n.startswith("adversarial.d1.") and _nonzero(g)]
    assert others == [], f"D1's loss reached {others}"


@pytest.mark.parametrize("adversarial", ["ddma", "adv"])
def test_adversarial_term_reaches_only_invariant_projection_reversed(
    monkeypatch, adversarial: str
) -> None:
    """I's side of L_ADV's game: the reversed gradient reaches I and nothing else (eq. 10 minimises
    L_ADV over I; the embedding layer is not a player, D1 learns from its own loss "d1")."""
    tower, batch = _tower_and_batch(adversarial)
    _run(tower, batch).losses["adv"].backward()
    reversed_grads = _grads(tower)
    tower.zero_grad(set_to_none=True)
    monkeypatch.setattr(ddma_module, "grad_reverse", lambda x, scale=1.0: x)
    _run(tower, batch).losses["adv"].backward()
    plain_grads = _grads(tower)
    name = "projection.invariant_projection.weight"
    assert _nonzero(plain_grads[name])
    torch.testing.assert_close(reversed_grads[name], -plain_grads[name])
    reached = [n for n, g in reversed_grads.items() if _nonzero(g) and "invariant_projection" not in n]
    assert reached == [], f"L_ADV (I's side) reached {reached}"


def test_ddma_weights_and_max_pooling_follow_the_paper() -> None:
    m, d = 3, 5
    ddma = DoubleDiscriminatorAdversarial(m, d).double()
    c = torch.randn(4, m, d, dtype=torch.float64, requires_grad=True)
    out = ddma(c)
    probs = torch.softmax(ddma.d0(c), dim=-1)
    expected_w = torch.stack([1 - probs[:, k, k] for k in range(m)], dim=1)
    torch.testing.assert_close(out.modality_weights, expected_w)
    assert not out.modality_weights.requires_grad  # w_m is a constant (eq. 7)
    expected_c = torch.stack([expected_w[:, k : k + 1] * c[:, k] for k in range(m)]).amax(0)
    torch.testing.assert_close(out.invariant, expected_c)
    # eq. 7: L_ADV = mean over items of sum over m of w_m * CE(D1(c_m), m), both sides of it.
    logp = torch.log_softmax(ddma.d1(c), dim=-1)
    expected_adv = -torch.stack([expected_w[:, k] * logp[:, k, k] for k in range(m)], 1).sum(1).mean()
    torch.testing.assert_close(out.losses["adv"], expected_adv)
    torch.testing.assert_close(out.losses["d1"], expected_adv)
    # L_D0: mean over (item, modality) pairs.
    logp0 = torch.log_softmax(ddma.d0(c), dim=-1)
    expected_d0 = -torch.stack([logp0[:, k, k] for k in range(m)], 1).mean()
    torch.testing.assert_close(out.losses["d0"], expected_d0)


def test_item_weights_weight_the_losses() -> None:
    ddma = DoubleDiscriminatorAdversarial(2, 3)
    c = torch.randn(3, 2, 3)
    # An item counted twice weighs as two copies of it.
    twice = ddma(torch.cat([c, c[:1]]))
    weighted = ddma(c, item_weights=torch.tensor([2.0, 1.0, 1.0]))
    for k in twice.losses:
        torch.testing.assert_close(weighted.losses[k], twice.losses[k])


def test_plain_adversarial_has_unit_weights_and_no_d0() -> None:
    adv = ModalityAdversarial(3, 4)
    c = torch.randn(5, 3, 4)
    out = adv(c)
    assert set(out.losses) == {"d1", "adv"}
    assert torch.equal(out.modality_weights, torch.ones(5, 3))
    assert torch.equal(out.invariant, c.amax(1))


def test_lambda_schedule() -> None:
    assert adversarial_lambda(0.0) == 0.0
    assert adversarial_lambda(1.0) == pytest.approx(0.05 * (2 / (1 + math.exp(-10)) - 1))
    values = [adversarial_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)
    assert adversarial_lambda(0.5, lambda0=1.0, gamma=10.0) == pytest.approx(
        2 / (1 + math.exp(-5)) - 1
    )
    with pytest.raises(ValueError, match="progress"):
        adversarial_lambda(1.5)


def test_total_loss_is_eq_10() -> None:
    logits, labels = torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0])
    aux = {
        "ds": torch.tensor(2.0), "d0": torch.tensor(3.0), "d1": torch.tensor(5.0),
        "adv": torch.tensor(5.0),
    }
    out = marn_loss(logits, labels, aux, adv_lambda=0.1)
    ctr = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    # lambda scales L_Ds and I's side of L_ADV; D0 and D1 learn from their unscaled losses.
    torch.testing.assert_close(out["total"], ctr + 0.1 * 2.0 + 3.0 + 5.0 + 0.1 * 5.0)
    with pytest.raises(ValueError, match="unknown auxiliary loss"):
        marn_loss(logits, labels, {"bogus": torch.tensor(1.0)}, 0.1)


def test_modality_cross_entropy_kernels_agree_with_cross_entropy() -> None:
    """The current kernel (logsumexp minus the diagonal, in fp32) against ``F.cross_entropy`` (the
    kernel of 2026-12-01), values and gradients, in float64, and under bf16 autocast through DDMA."""
    from marn_rec.modules.ddma import modality_cross_entropy

    torch.manual_seed(0)
    logits = (torch.randn(7, 4, 4, dtype=torch.float64) * 5).requires_grad_()
    target = torch.arange(4).expand(7, 4).reshape(-1)
    reference = torch.nn.functional.cross_entropy(logits.reshape(28, 4), target, reduction="none")
    weights, pairs = torch.rand(7, dtype=torch.float64), torch.rand(7, 4, dtype=torch.float64)
    expected = (reference.view(7, 4) * pairs).sum(1).mul(weights).sum() / weights.sum()
    (g_expected,) = torch.autograd.grad(expected, logits)
    for old in (False, True):
        got = modality_cross_entropy(logits, weights, pairs, "sum", old_step_kernels=old)
        (g_got,) = torch.autograd.grad(got, logits)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(g_got, g_expected)
    # The whole module, old and new kernels, fp32 and bf16 autocast: same losses and gradients.
    ddma = DoubleDiscriminatorAdversarial(4, 6)
    c, s = torch.randn(9, 4, 6), torch.randn(9, 4, 6)
    for autocast in (False, True):
        results = []
        for old in (False, True):
            ddma.old_step_kernels = old
            ddma.zero_grad(set_to_none=True)
            x = c.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = ddma(x, s, item_weights=torch.arange(1.0, 10.0))
            sum(out.losses.values()).backward()
            results.append([out.losses[k].float() for k in sorted(out.losses)] + [x.grad]
                           + [p.grad for p in ddma.parameters()])
        for new, old_value in zip(*results):
            torch.testing.assert_close(new, old_value, **({"rtol": 1e-2, "atol": 1e-3} if autocast else {}))
