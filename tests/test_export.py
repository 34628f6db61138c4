"""MARN, MARNTower and MARNTrain FX-trace (what TorchRec's train pipelines need), and MARN exports
with torch.export with dynamic batch size, item count and history length."""

import pytest
import torch
import torchrec.fx

from marn_rec import MARN, MARNTower, MARNTrain, ablation, tiny
from marn_rec.config import ABLATIONS, DIAGNOSTIC_ABLATIONS
from marn_rec.models.export import export_marn
from marn_rec.modules.apgru import APGRU
from marn_rec.testing import RandomCatalog, random_batch
from marn_rec.validation import validate_batch


@pytest.mark.parametrize("name", ["MARN", "BaseModel+CONC", "BaseModel+MAF+ADV"])
def test_fx_trace_gives_the_eager_outputs(name: str) -> None:
    config = ablation(name, tiny())
    torch.manual_seed(0)
    model = MARN(config).eval()
    batch = validate_batch(random_batch(config, 7, seed=1), config)
    traced = torchrec.fx.symbolic_trace(model)
    torch.testing.assert_close(traced(**batch.model_inputs()).logits, model(**batch.model_inputs()).logits)
    # Optional arguments left out are fixed as None when tracing, as FX requires.
    tower = torchrec.fx.symbolic_trace(model.tower, concrete_args={"item_weights": None})
    expected = model.tower(batch.item_sparse, batch.item_title, batch.item_image).representation
    torch.testing.assert_close(
        tower(batch.item_sparse, batch.item_title, batch.item_image).representation, expected
    )
    train = MARNTrain(model, total_steps=4)
    traced_train = torchrec.fx.symbolic_trace(train)
    assert int(train.step) == 0  # tracing does not advance the schedule
    torch.testing.assert_close(traced_train(batch)[1][1], train(batch)[1][1])


def test_masked_apgru_equals_the_packed_one() -> None:
    """The traced path (all T steps, finished samples masked) equals the eager packed path."""
    torch.manual_seed(0)
    gru = APGRU(6, 5, property_dim=3, max_length=7)
    x, p = torch.randn(9, 7, 6), torch.randn(9, 7, 3)
    lengths = torch.tensor([0, 7, 3, 1, 5, 7, 2, 0, 4])
    mask = (torch.arange(7) < lengths.unsqueeze(1)).unsqueeze(2)
    x, p = x * mask, p * mask  # padding is zero, as the model pads it
    eager = gru(x, lengths, p)
    masked = gru._forward_masked(x, lengths, p)
    for a, b in zip(masked, eager):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_export_with_dynamic_shapes_matches_eager_on_other_batches() -> None:
    config = tiny()
    torch.manual_seed(0)
    model = MARN(config, validate=False).eval()
    catalog = RandomCatalog(config)
    program = export_marn(model, validate_batch(random_batch(config, 6, seed=1, catalog=catalog), config))
    exported = program.module()
    # Other batch sizes, item counts, history lengths (empty histories included).
    for seed, size, min_length in [(2, 11, 0), (3, 2, 0), (4, 17, 3)]:
        batch = validate_batch(
            random_batch(config, size, seed=seed, catalog=catalog, min_length=min_length), config
        )
        torch.testing.assert_close(
            exported(**batch.model_inputs()).logits, model(**batch.model_inputs()).logits,
            atol=1e-5, rtol=1e-5,
        )


def test_export_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        export_marn(MARN(tiny()), random_batch(tiny(), 4))


def test_every_ablation_fx_traces() -> None:
    for name in [*ABLATIONS, *DIAGNOSTIC_ABLATIONS]:
        config = ablation(name, tiny())
        torchrec.fx.symbolic_trace(MARNTrain(MARN(config)))
        torchrec.fx.symbolic_trace(MARNTower(config.tower))
