"""The tower against the letter of the paper (sections 3.1-3.4, eq. 2-10), one test per deviation
found in the "Model quality" review; each test fails on the code before the fix.

1. L_ADV trains I only, never the embedding layer E (eq. 10).
2. L_ADV's game goes through a GRL of scale lambda: D1 learns from the unscaled L_ADV, I from -lambda
   times its gradient (the paper's [8]).
3. MAF starts as CONC.
4. The title CNN max-pools over the windows inside the title; an empty title gives zeros.
5. L_ADV sums over the modalities (eq. 7); L_D0 and L_Ds are means over (item, modality) pairs.
And the tower's diagnostics.
"""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchrec

from marn_rec import MARN, MARNTower, ablation, tiny
from marn_rec.models.loss import marn_loss
from marn_rec.models.marn import MARNTrain
from marn_rec.modules.ddma import DoubleDiscriminatorAdversarial, ModalityAdversarial, max_pool
from marn_rec.modules.maf import MultimodalAttentionFusion, SumFusion
from marn_rec.modules.title_cnn import TitleCNN
from marn_rec.testing import RandomCatalog, random_batch


def _tower(adversarial: str = "ddma", seed: int = 0) -> MARNTower:
    torch.manual_seed(seed)
    cfg = tiny()
    return MARNTower(replace(cfg.tower, adversarial=adversarial))


def _batch(n: int = 8):
    # Titles up to 9 words, so that some are empty, some shorter than a window, some truncated.
    cfg = tiny()
    return random_batch(cfg, n, seed=1, catalog=RandomCatalog(cfg, max_title_length=9))


def _run(tower: MARNTower, batch):
    return tower(batch.item_sparse, batch.item_title, batch.item_image)


def _grad_norms(module: torch.nn.Module):
    return {
        n: (0.0 if p.grad is None else float(p.grad.abs().sum())) for n, p in module.named_parameters()
    }


def _by_hand(tower: MARNTower, batch):
    """eq. 7 and L_Ds from the tower's parameters, written out: (L_ADV, L_Ds)."""
    e = tower.embedding(batch.item_sparse, batch.item_title, batch.item_image).detach()
    ddma = tower.adversarial
    c_m = torch.relu(tower.projection.invariant_projection(e))
    u, m, _ = c_m.shape
    target = torch.arange(m).expand(u, m).reshape(-1)
    w = 1 - torch.softmax(ddma.d0(c_m), -1).diagonal(dim1=1, dim2=2).detach()
    ce = F.cross_entropy(ddma.d1(c_m).reshape(u * m, m), target, reduction="none").view(u, m)
    l_adv = (w * ce).sum(1).mean()
    s_m = tower.projection.specific(e)
    l_ds = F.cross_entropy(ddma.d1(s_m).reshape(u * m, m), target)
    return l_adv, l_ds


# ------------------------------------------------------------------------ 1. L_ADV and E


@pytest.mark.parametrize("adversarial", ["ddma", "adv"])
def test_adversarial_game_never_reaches_the_embedding_layer(adversarial: str) -> None:
    tower = _tower(adversarial)
    out = _run(tower, _batch())
    # Both sides of L_ADV's game (D1's "d1" and I's "adv").
    sum(v for k, v in out.losses.items() if k in ("d1", "adv")).backward()
    grads = _grad_norms(tower)
    embedding = [n for n in grads if n.startswith("embedding.")]
    # Tables, e_m projections and the title CNN are all there ...
    assert any(".ebc." in n for n in embedding) and any(".ec." in n for n in embedding)
    assert any("projections." in n for n in embedding) and any("title_cnn" in n for n in embedding)
    # ... and L_ADV moves none of them.
    assert [n for n in embedding if grads[n] > 0] == []
    assert grads["projection.invariant_projection.weight"] > 0


def test_embedding_layer_learns_from_the_ctr_loss_alone() -> None:
    """Through MARN and eq. 10's total: every gradient on E is the CTR loss's."""
    cfg = tiny()
    torch.manual_seed(0)
    model = MARNTrain(MARN(cfg), total_steps=5)
    model.step.fill_(3)  # lambda > 0
    batch = _batch(8)

    def embedding_grads(which: str):
        model.zero_grad(set_to_none=True)
        out = model.model(**batch.model_inputs())
        losses = marn_loss(out.logits, batch.labels, out.aux_losses, model.adv_lambda())
        losses[which].backward()
        return {
            n: p.grad.clone()
            for n, p in model.named_parameters()
            if n.startswith("model.tower.embedding.") and p.grad is not None
        }

    total, ctr = embedding_grads("total"), embedding_grads("ctr")
    assert total.keys() == ctr.keys() and len(total) > 0
    for n in total:
        torch.testing.assert_close(total[n], ctr[n], msg=n)
    # The CTR loss does train E through c (rep = s + c), not only through s.
    assert any(float(g.abs().sum()) > 0 for g in ctr.values())


def test_ctr_trains_e_and_i_through_c() -> None:
    """c (rep = s + c) pools I of the undetached embeddings: a loss on c trains I and E."""
    tower = _tower()
    captured = {}
    tower.fusion.register_forward_hook(lambda m, i, o: captured.update(s=o))
    out = _run(tower, _batch())
    c = out.representation - captured["s"]
    c.pow(2).sum().backward()
    grads = _grad_norms(tower)
    assert grads["projection.invariant_projection.weight"] > 0
    assert grads["embedding.projections.image.weight"] > 0
    assert grads["projection.specific_projection.weight"] == 0  # s is not involved


# ------------------------------------------------------------------------ 2. lambda and the GRL


def test_d1_learns_unscaled_and_i_at_minus_lambda() -> None:
    """Eq. 10's min_I max_D1 through a GRL of scale lambda (Ganin and Lempitsky, the paper's [8]):
    D1 gets the full gradient of L_ADV (plus lambda L_Ds's, the matrix is shared), I gets -lambda
    times the gradient of L_ADV."""
    lam = 0.05
    tower = _tower()
    batch = _batch()
    l_adv, l_ds = _by_hand(tower, batch)
    i_weight = tower.projection.invariant_projection.weight
    d1_weight = tower.adversarial.d1.weight
    g_adv_i, g_adv_d1 = torch.autograd.grad(l_adv, [i_weight, d1_weight])
    (g_ds_d1,) = torch.autograd.grad(l_ds, [d1_weight])

    out = _run(tower, batch)
    torch.testing.assert_close(out.losses["adv"], l_adv.detach())
    torch.testing.assert_close(out.losses["d1"], l_adv.detach())
    torch.testing.assert_close(out.losses["ds"], l_ds.detach())
    logits = torch.zeros(3)  # no CTR graph: only the auxiliary losses train
    total = marn_loss(logits, torch.ones(3), out.losses, lam)["total"]
    total.backward()
    torch.testing.assert_close(d1_weight.grad, g_adv_d1 + lam * g_ds_d1)
    torch.testing.assert_close(i_weight.grad, -lam * g_adv_i)


def test_d1_learns_even_at_lambda_zero() -> None:
    """At the start of the schedule (lambda = 0) D1 and D0 already learn; I is left alone."""
    tower = _tower()
    out = _run(tower, _batch())
    marn_loss(torch.zeros(2), torch.ones(2), out.losses, 0.0)["total"].backward()
    grads = _grad_norms(tower)
    assert grads["adversarial.d1.weight"] > 0 and grads["adversarial.d0.weight"] > 0
    assert grads["projection.invariant_projection.weight"] == 0
    assert grads["projection.specific_projection.weight"] == 0


# ------------------------------------------------------------------------ 3. MAF starts as CONC


def _materialise_like_dmp(module: torch.nn.Module) -> None:
    """What DistributedModelParallel does to a meta-device module: allocate, then call
    ``reset_parameters`` on each module that owns meta parameters (not on its parents)."""
    for m in module.modules():
        owns_meta = any(p.is_meta for p in m._parameters.values() if p is not None)
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_meta:
                m._parameters[name] = torch.nn.Parameter(torch.empty_like(p, device="cpu"))
        if owns_meta and hasattr(m, "reset_parameters"):
            m.reset_parameters()


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_maf_starts_as_conc(device: str) -> None:
    maf = MultimodalAttentionFusion(4, 6, device=torch.device(device))
    if device == "meta":
        _materialise_like_dmp(maf)
    s_m = torch.rand(5, 4, 6)
    expected = SumFusion()(s_m) / math.sqrt(3.0)
    torch.testing.assert_close(maf(s_m), expected)
    assert torch.equal(maf.attention.weight, torch.zeros_like(maf.attention.weight))
    # It is not stuck there: the attention gets a gradient.
    maf(s_m).sum().backward()
    assert float(maf.attention.weight.grad.abs().sum()) > 0


def test_marn_tower_starts_with_maf_equal_to_conc() -> None:
    tower = _tower()
    batch = _batch()
    e = tower.embedding(batch.item_sparse, batch.item_title, batch.item_image)
    s_m = tower.projection.specific(e)
    torch.testing.assert_close(tower.fusion(s_m), s_m.sum(1) / math.sqrt(3.0))


# ------------------------------------------------------------------------ 4. title CNN


def _kim_by_hand(cnn: TitleCNN, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Max over the windows inside each title; one window for a title shorter than it; 0 empty."""
    rows = []
    for u in range(words.shape[0]):
        n = min(int(lengths[u]), words.shape[1])
        parts = []
        for conv in cnn.convs:
            w = conv.kernel_size[0]
            if n == 0:
                parts.append(torch.zeros(conv.out_channels))
                continue
            title = words[u, :n]
            if n < w:  # the available words as one window (the zero padding adds nothing)
                title = torch.cat([title, torch.zeros(w - n, words.shape[2])])
            y = F.relu(conv(title.T.unsqueeze(0)))[0]  # [filters, windows inside the title]
            parts.append(y.amax(dim=1))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@pytest.mark.parametrize("old_step_kernels", [False, True])
def test_title_cnn_pools_only_inside_the_title(old_step_kernels: bool) -> None:
    torch.manual_seed(0)
    cnn = TitleCNN(word_dim=3, windows=(2, 3, 4), filters=2)
    cnn.old_step_kernels = old_step_kernels
    with torch.no_grad():
        for conv in cnn.convs:
            conv.bias.fill_(5.0)  # windows over the padding would win every max
    h = 6
    lengths = torch.tensor([0, 1, 2, 3, 4, 5, 6, 9])  # 9 > h: truncated to h
    words = torch.randn(len(lengths), h, 3)
    words = words * (torch.arange(h) < lengths.clamp(max=h).unsqueeze(1)).unsqueeze(2)
    out = cnn(words, lengths)
    torch.testing.assert_close(out, _kim_by_hand(cnn, words, lengths))
    assert torch.equal(out[0], torch.zeros(6))  # empty title
    # More padding changes nothing.
    longer = torch.cat([words, torch.zeros(len(lengths), 4, 3)], dim=1)
    torch.testing.assert_close(cnn(longer, lengths.clamp(max=h)), out)


def test_title_cnn_and_pooling_of_c_old_and_new_kernels_agree_with_gradients() -> None:
    """The kernels of 2026-12-01 (amax, the empty-title mask apart) that the benchmark times as
    the old step, and the current ones (max, one mask): same outputs and gradients without ties,
    in fp32 and under bf16 autocast."""
    torch.manual_seed(0)
    cnn = TitleCNN(word_dim=5, windows=(2, 3, 4), filters=4)
    lengths = torch.tensor([0, 1, 3, 4, 6, 8])
    words = torch.randn(len(lengths), 8, 5) * (torch.arange(8) < lengths.unsqueeze(1)).unsqueeze(2)
    c_m = torch.randn(len(lengths), 3, 4)
    for autocast in (False, True):
        results = []
        for old in (False, True):
            cnn.old_step_kernels = old
            cnn.zero_grad(set_to_none=True)
            x, c = words.clone().requires_grad_(), c_m.clone().requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out, pooled = cnn(x, lengths), max_pool(c, old)
            (out.float() * torch.arange(out.shape[1])).sum().backward()
            (pooled * torch.arange(4)).sum().backward()
            results.append([out.detach(), pooled.detach(), x.grad, c.grad] + [p.grad for p in cnn.parameters()])
        for new, old in zip(*results):
            # Under autocast the old CNN's output was promoted to fp32 by the empty-title mask;
            # the new one stays bf16 (the projection after it casts to bf16 either way), so the
            # gradients flow back in bf16 instead of fp32: equal to bf16's precision.
            tolerance = {"rtol": 1.6e-2, "atol": 1e-3} if autocast else {}
            torch.testing.assert_close(new, old.to(new.dtype), **tolerance)


def test_empty_titles_embed_to_zeros_in_the_tower() -> None:
    tower = _tower()
    batch = _batch(12)
    captured = {}
    tower.embedding.title_cnn.register_forward_hook(lambda m, i, o: captured.update(out=o))
    _run(tower, batch)
    lengths = batch.item_title.lengths()
    assert bool((lengths == 0).any()) and bool((lengths > 0).any())
    assert torch.equal(captured["out"][lengths == 0], torch.zeros_like(captured["out"][lengths == 0]))


def test_marn_still_fx_traces() -> None:
    torch.manual_seed(0)
    model = MARN(tiny())
    batch = _batch()
    traced = torchrec.fx.symbolic_trace(model)
    eager, out = model(**batch.model_inputs()), traced(**batch.model_inputs())
    torch.testing.assert_close(out.logits, eager.logits)
    assert out.aux_losses.keys() == eager.aux_losses.keys()
    for k in eager.aux_losses:
        torch.testing.assert_close(out.aux_losses[k], eager.aux_losses[k])
    assert out.diagnostics == {} and eager.diagnostics  # diagnostics in eager mode only


# ------------------------------------------------------------------------ 5. sums and means


def test_l_adv_sums_over_modalities_and_d0_averages_over_pairs() -> None:
    m, d = 4, 3
    c = torch.randn(5, m, d)
    plain = ModalityAdversarial(m, d)
    ddma = DoubleDiscriminatorAdversarial(m, d)
    for net in (plain, ddma):
        for p in net.parameters():
            torch.nn.init.zeros_(p)  # uniform discriminators: every CE is ln M
    out = plain(c)
    # eq. 7: a sum over the M modalities of each item, not a mean.
    torch.testing.assert_close(out.losses["adv"], torch.tensor(m * math.log(m)))
    torch.testing.assert_close(out.losses["d1"], torch.tensor(m * math.log(m)))
    out = ddma(c, specific_detached=c)
    # w_m = 1 - 1/M for a uniform D0.
    torch.testing.assert_close(out.losses["adv"], torch.tensor((m - 1) * math.log(m)))
    # L_D0, L_Ds: expectations over (item, modality) pairs.
    torch.testing.assert_close(out.losses["d0"], torch.tensor(math.log(m)))
    torch.testing.assert_close(out.losses["ds"], torch.tensor(math.log(m)))


# ------------------------------------------------------------------------ diagnostics


def test_tower_diagnostics_show_the_game() -> None:
    tower = _tower()
    batch = _batch()
    captured = {}
    tower.fusion.register_forward_hook(lambda m, i, o: captured.update(s=o))
    out = _run(tower, batch)
    diag = out.diagnostics
    modalities = tiny().tower.modalities
    expected = {"s_rms", "c_rms", "w_mean", "d0_accuracy", "d1_accuracy", "ds_accuracy", "d1_ce"}
    assert expected | {f"w_mean_{m}" for m in modalities} == set(diag)
    for k, v in diag.items():
        assert v.dim() == 0 and not v.requires_grad, k
    s = captured["s"]
    c = out.representation - s
    torch.testing.assert_close(diag["s_rms"], s.pow(2).mean().sqrt())
    torch.testing.assert_close(diag["c_rms"], c.pow(2).mean().sqrt())
    torch.testing.assert_close(diag["w_mean"], out.modality_weights.mean())
    for k, m in enumerate(modalities):
        torch.testing.assert_close(diag[f"w_mean_{m}"], out.modality_weights[:, k].mean())
    for k in ("d0_accuracy", "d1_accuracy", "ds_accuracy"):
        assert 0.0 <= float(diag[k]) <= 1.0
    # Without an adversarial network only s exists.
    assert set(_run(_tower("none"), batch).diagnostics) == {"s_rms"}


def test_diagnostics_are_the_same_for_deduplicated_batches() -> None:
    cfg = ablation("MARN", tiny())
    torch.manual_seed(0)
    model = MARN(cfg)
    catalog = RandomCatalog(cfg)
    dedup = random_batch(cfg, 12, seed=3, catalog=catalog, dedup=True)
    per_slot = random_batch(cfg, 12, seed=3, catalog=catalog, dedup=False)
    assert dedup.num_unique_items < per_slot.num_unique_items
    a = model(**dedup.model_inputs()).diagnostics
    b = model(**per_slot.model_inputs()).diagnostics
    assert a and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)
