"""Modality embedding, projections, MAF (eq. 2-3) and configurations against direct formulas."""

import pytest
import torch
import torch.nn.functional as F
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from marn_rec import MARN, MARNTower, ablation, paper, small, tiny
from marn_rec.config import ABLATIONS, IDS, IMAGE, ItemTowerConfig
from marn_rec.modules.apgru import APGRU
from marn_rec.modules.maf import MultimodalAttentionFusion, SumFusion
from marn_rec.modules.projection import ModalityProjection, PerModalityLinear
from marn_rec.modules.title_cnn import TitleCNN
from marn_rec.testing import random_batch


@pytest.mark.parametrize("old_step_kernels", [False, True])
def test_per_modality_linear_is_one_linear_per_slot(old_step_kernels: bool) -> None:
    lin = PerModalityLinear(3, 4, 5)
    lin.old_step_kernels = old_step_kernels
    x = torch.randn(7, 3, 4, requires_grad=True)
    y = lin(x)
    for m in range(3):
        torch.testing.assert_close(y[:, m], x[:, m] @ lin.weight[m] + lin.bias[m])
    g = torch.randn(7, 3, 5)
    (y * g).sum().backward()
    for m in range(3):  # d/dx of x_m W_m is g_m W_m^T; d/dW_m is x_m^T g_m
        torch.testing.assert_close(x.grad[:, m], g[:, m] @ lin.weight[m].t())
        torch.testing.assert_close(lin.weight.grad[m], x[:, m].detach().t() @ g[:, m])


def test_maf_is_eq_2_and_3() -> None:
    maf = MultimodalAttentionFusion(3, 4)
    torch.nn.init.normal_(maf.attention.weight)  # away from the CONC-like initialisation
    torch.nn.init.normal_(maf.attention.bias)
    s = torch.randn(5, 3, 4)
    expected = sum(
        torch.tanh(s[:, m] @ maf.attention.weight[m] + maf.attention.bias[m]) * s[:, m]
        for m in range(3)
    )
    torch.testing.assert_close(maf(s), expected)
    torch.testing.assert_close(SumFusion()(s), s[:, 0] + s[:, 1] + s[:, 2])


def test_title_cnn_is_kim_cnn() -> None:
    cnn = TitleCNN(word_dim=3, windows=(2, 3, 4), filters=2)
    words = torch.randn(4, 6, 3)
    out = cnn(words, torch.full((4,), 6))  # full-length titles: every window counts
    assert out.shape == (4, 6)
    for i, conv in enumerate(cnn.convs):
        w = conv.kernel_size[0]
        # Every n-gram window: the filter's dot product with the window's word vectors.
        grams = torch.stack([words[:, t : t + w].reshape(4, -1) for t in range(6 - w + 1)], 1)
        kernel = conv.weight.permute(0, 2, 1).reshape(2, -1)
        expected = F.relu(grams @ kernel.T + conv.bias).amax(1)
        torch.testing.assert_close(out[:, 2 * i : 2 * i + 2], expected)


def test_tower_output_and_losses() -> None:
    cfg = tiny()
    tower = MARNTower(cfg.tower)
    b = random_batch(cfg, 4)
    out = tower(b.item_sparse, b.item_title, b.item_image)
    assert out.representation.shape == (b.num_unique_items, cfg.tower.hidden_dim)
    assert set(out.losses) == {"d0", "d1", "adv", "ds"}
    assert out.modality_weights.shape == (b.num_unique_items, 4)
    assert ((out.modality_weights >= 0) & (out.modality_weights <= 1)).all()


def test_ablations_build_only_what_they_use() -> None:
    base = tiny()
    ids = MARN(ablation("BaseModel+IDs", base))
    assert ids.tower.embedding.ec is None and ids.tower.adversarial is None
    assert ids.tower.projection.invariant_projection is None
    assert ids.property_embedding is None and ids.attention is None
    assert ids.behavior.weight_ph is None
    image = MARN(ablation("BaseModel+IMAGE", base))
    assert image.tower.embedding.ebc is None and list(image.tower.embedding.projections) == [IMAGE]
    conc = MARN(ablation("BaseModel+CONC", base))
    assert isinstance(conc.tower.fusion, SumFusion)
    adv = MARN(ablation("BaseModel+MAF+ADV", base))
    assert type(adv.tower.adversarial).__name__ == "ModalityAdversarial"
    ddma = MARN(ablation("BaseModel+MAF+DDMA", base))
    assert type(ddma.tower.adversarial).__name__ == "DoubleDiscriminatorAdversarial"
    assert ddma.attention is None
    marn = MARN(ablation("MARN", base))
    assert marn.attention is not None and marn.behavior.weight_ph is not None
    assert len(ABLATIONS) == 7
    no_attention = MARN(ablation("MARN-ATTENTION", base))
    assert no_attention.attention is None and no_attention.behavior.weight_ph is not None
    no_property = MARN(ablation("MARN-PROPERTY", base))
    assert no_property.attention is not None and no_property.property_embedding is None
    assert no_property.behavior.weight_ph is None


def test_diagnostic_sequences_are_the_two_parts_of_apgru() -> None:
    """MARN-ATTENTION's logits are MARN's with the candidate attention replaced by the last state;
    MARN-PROPERTY's are MARN's with the property term's weights at zero."""
    torch.manual_seed(0)
    base = tiny()
    inputs = random_batch(base, batch_size=6).model_inputs()
    for name in ("MARN-ATTENTION", "MARN-PROPERTY"):
        marn = MARN(ablation("MARN", base)).eval()
        variant = MARN(ablation(name, base)).eval()
        missing, unexpected = variant.load_state_dict(marn.state_dict(), strict=False)
        assert not missing and unexpected  # the variant holds a strict subset of MARN's weights
        with torch.no_grad():
            if name == "MARN-PROPERTY":
                marn.behavior.weight_ph.zero_()
            else:
                marn.attention = _LastState()
            torch.testing.assert_close(variant(**inputs).logits, marn(**inputs).logits)


class _LastState(torch.nn.Module):
    """The user embedding of a GRU without attention: each sample's last valid state."""

    def forward(self, states: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        last = states[torch.arange(states.shape[0]), (lengths - 1).clamp(min=0)]
        return last * (lengths > 0).unsqueeze(1).to(last.dtype)


def test_paper_preset_has_the_paper_sizes_on_meta() -> None:
    cfg = paper()
    model = MARN(cfg, device=torch.device("meta"))
    tables = {
        c.name: (c.num_embeddings, c.embedding_dim)
        for m in model.modules()
        if isinstance(m, EmbeddingBagCollection)
        for c in m.embedding_bag_configs()
    }
    assert tables["t_item_id"] == (800_000_000, 32)
    assert tables["t_shop_id"] == (17_000_000, 24)
    assert tables["t_brand_id"] == (1_000_000, 24)
    assert tables["t_category_id"] == (20_000, 16)
    assert tables["t_stat0_b10"] == (10, 8) and tables["t_stat3_b100"] == (100, 8)
    ec = [m for m in model.modules() if isinstance(m, EmbeddingCollection)][0]
    assert ec.embedding_configs()[0].embedding_dim == 300
    assert model.tower.embedding.projections[IMAGE].in_features == 4096
    assert model.tower.config.hidden_dim == 256
    assert [m.out_features for m in model.over.modules() if isinstance(m, torch.nn.Linear)] == [512, 256, 1]
    assert [c.kernel_size[0] for c in model.tower.embedding.title_cnn.convs] == [2, 3, 4]
    # Presets shrink numbers, not code paths: the same modules at every size.
    kinds = lambda m: {type(x).__name__ for x in m.modules()}  # noqa: E731
    assert kinds(MARN(small())) == kinds(model) == kinds(MARN(tiny()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(modalities=()), "non-empty"),
        (dict(modalities=("ids", "sound")), "unknown modalities"),
        (dict(fusion="concat"), "fusion must be one of"),
        (dict(adversarial="gan"), "adversarial must be one of"),
        (dict(modalities=(IDS,), adversarial="ddma"), "at least two modalities"),
        (dict(title_length=3), "widest title window"),
    ],
)
def test_bad_config_is_rejected(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ItemTowerConfig(**kwargs)


def test_unknown_ablation() -> None:
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation("BaseModel+XYZ", tiny())


def test_apgru_in_marn_has_the_property_term() -> None:
    model = MARN(tiny())
    assert isinstance(model.behavior, APGRU)
    assert model.behavior.weight_ph.shape == (tiny().gru_hidden_dim, 8)


@pytest.mark.parametrize("kind", ["specific", "invariant"])
def test_projecting_once_for_both_embeddings_and_their_detached_copy(kind: str) -> None:
    """``*_twice`` against projecting ``e`` and ``e.detach()`` apart (the kernel of 2026-12-01):
    equal outputs, and gradients equal to float64 rounding, including when only one of the two
    outputs is used (the detached one's gradient reaches the parameters, never ``e``)."""
    torch.manual_seed(0)
    proj = ModalityProjection(4, 6, 5).double()
    e = torch.randn(7, 4, 6, dtype=torch.float64)
    weights = (torch.randn(7, 4, 5, dtype=torch.float64), torch.randn(7, 4, 5, dtype=torch.float64))
    for use in ((1.0, 1.0), (1.0, 0.0), (0.0, 1.0)):
        results = []
        for old in (False, True):
            proj.old_step_kernels = old
            proj.zero_grad(set_to_none=True)
            x = e.clone().requires_grad_()
            both = getattr(proj, f"{kind}_twice")(x)
            loss = sum(u * (y * w).sum() for u, y, w in zip(use, both, weights) if u)
            loss.backward()
            grads = [x.grad] + [p.grad for p in proj.parameters()]
            results.append([*both] + [g if g is not None else torch.zeros(()) for g in grads])
        for new, reference in zip(*results):
            torch.testing.assert_close(new, reference.expand_as(new), rtol=0, atol=1e-12)
    # Under bf16 autocast: the dtypes and values autocast gives the two separate projections.
    proj = ModalityProjection(4, 6, 5)
    outputs = []
    for old in (False, True):
        proj.old_step_kernels = old
        proj.zero_grad(set_to_none=True)
        x = e.float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, y_detached = getattr(proj, f"{kind}_twice")(x)
        (y.float().sum() + 2 * y_detached.float().sum()).backward()
        outputs.append([y, y_detached, x.grad] + [p.grad for p in proj.parameters()])
    for new, reference in zip(*outputs):
        if reference is None:  # the other projection's parameters
            assert new is None
            continue
        assert new.dtype == reference.dtype
        torch.testing.assert_close(new, reference, rtol=1e-2, atol=1e-2)
