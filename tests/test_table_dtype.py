"""fp16 tables (ItemTowerConfig.table_dtype, --table-dtype): the item tower's tables are stored in
fp16 (TorchRec DataType.FP16, FBGEMM's fp16 weights under DMP), lookups still return fp32, a run
trains, checkpoints and resumes exactly, and an fp16 checkpoint is not resumed by an fp32 run."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torchrec.modules.embedding_configs import DataType

from marn_rec import MARN, MARNTrain, tiny
from marn_rec.config import ItemTowerConfig, config_from_dict
from marn_rec.features import TABLE_DTYPES, id_tables, property_tables, statistic_tables, title_table
from marn_rec.testing import random_batch
from marn_rec.training.checkpoint import CheckpointError, latest_checkpoint
from marn_rec.training.cli import parse_train_args
from marn_rec.training.loop import TrainConfig, train
from marn_rec.training.run_meta import run_meta


def _fp16(config=None):
    config = config or tiny()
    return replace(config, tower=replace(config.tower, table_dtype="fp16"))


def test_table_configs_follow_the_dtype() -> None:
    assert TABLE_DTYPES == ("fp32", "fp16") and ItemTowerConfig().table_dtype == "fp32"
    tower = _fp16().tower
    for t in id_tables(tower) + statistic_tables(tower) + [title_table(tower)]:
        assert t.data_type == DataType.FP16, t.name
    assert all(t.data_type == DataType.FP32 for t in id_tables(tiny().tower))
    assert all(t.data_type == DataType.FP32 for t in property_tables(tiny().behavior))  # tiny tables
    with pytest.raises(ValueError, match="table_dtype must be fp32 or fp16"):
        ItemTowerConfig(table_dtype="bf16")
    # A configuration read back from a checkpoint's meta.json keeps the dtype; older ones default.
    from dataclasses import asdict

    assert config_from_dict(asdict(_fp16())).tower.table_dtype == "fp16"
    old = asdict(tiny())
    del old["tower"]["table_dtype"]
    assert config_from_dict(old).tower.table_dtype == "fp32"


def test_unsharded_model_with_fp16_tables_returns_fp32() -> None:
    config = _fp16()
    model = MARN(config)
    tables = {n: p.dtype for n, p in model.named_parameters() if ".embedding_bags." in n or ".embeddings." in n}
    assert tables and all(
        d == (torch.float32 if "behavior" in n else torch.float16) for n, d in tables.items()
    ), tables
    out = model(**random_batch(config, batch_size=6).model_inputs())
    assert out.logits.dtype == torch.float32 and bool(torch.isfinite(out.logits).all())
    out.logits.sum().backward()


def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(preset="tiny", batch_size=16, steps=6, eval_every=3, eval_batches=2,
                out_dir=str(out), progress=False, recall_at=(1, 2), table_dtype="fp16")
    return TrainConfig(**{**base, **kw})


def test_fp16_run_trains_checkpoints_and_resumes_exactly(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full"))
    assert 0.0 <= full["auc"] <= 1.0
    train(_cfg(tmp_path / "resumed", stop_after=4))
    # The sharded tables were written in fp16, their row-wise AdaGrad state in fp32.
    saved = dcp.FileSystemReader(latest_checkpoint(str(tmp_path / "resumed" / "checkpoints"))).read_metadata()
    dtypes = {k: v.properties.dtype for k, v in saved.state_dict_metadata.items() if hasattr(v, "properties")}
    assert dtypes["model.model.tower.embedding.ebc.embedding_bags.t_item_id.weight"] == torch.float16
    assert dtypes["model.model.tower.embedding.ec.embeddings.t_title_words.weight"] == torch.float16
    assert dtypes["model.model.property_embedding.ebc.embedding_bags.t_behavior_type.weight"] == torch.float32
    momentum = [d for k, d in dtypes.items() if k.startswith("optim.state.sparse.") and "t_item_id" in k]
    assert momentum == [torch.float32]
    assert train(_cfg(tmp_path / "resumed")) == full
    with pytest.raises(CheckpointError, match=r"model.tower.table_dtype: checkpoint 'fp16', this run 'fp32'"):
        train(_cfg(tmp_path / "resumed", table_dtype="fp32"))


def test_table_dtype_is_in_the_checked_meta() -> None:
    cfg16 = TrainConfig(preset="tiny", table_dtype="fp16")
    assert run_meta(cfg16, cfg16.model_config(), {})["model"]["tower"]["table_dtype"] == "fp16"
    assert cfg16.model_config().tower.table_dtype == "fp16"
    assert "table_dtype" not in run_meta(cfg16, cfg16.model_config(), {})["train"]


def test_command_line_flag(tmp_path: Path, capsys) -> None:
    cfg = parse_train_args(["--preset", "tiny", "--table-dtype", "fp16", "--out-dir", str(tmp_path)])
    assert cfg.table_dtype == "fp16" and cfg.model_config().tower.table_dtype == "fp16"
    assert parse_train_args(["--preset", "tiny", "--out-dir", str(tmp_path)]).table_dtype == "fp32"
    with pytest.raises(SystemExit) as e:
        parse_train_args(["--preset", "tiny", "--table-dtype", "int8", "--out-dir", str(tmp_path)])
    assert e.value.code == 2
    assert "--table-dtype" in capsys.readouterr().err


def test_dense_initial_accumulator_reaches_adagrad_and_the_checked_meta() -> None:
    """The dense AdaGrad starts its sums at the configured value, which the checkpoint meta
    records (checkpoints from before the field existed: tests/test_run_meta.py)."""
    from torch import nn

    from marn_rec.training.sharding import ADAGRAD_INITIAL_ACCUMULATOR, training_optimizer

    layer = nn.Linear(3, 2)
    for value, expected in ((None, ADAGRAD_INITIAL_ACCUMULATOR), (1e-3, 1e-3)):
        opt = training_optimizer(layer, initial_accumulator_value=value)
        sums = [s["sum"] for s in opt.state.values() if "sum" in s]
        assert sums and all(torch.all(s == expected) for s in sums)
    cfg = TrainConfig(preset="tiny", dense_initial_accumulator=1e-3)
    assert run_meta(cfg, cfg.model_config(), {})["train"]["dense_initial_accumulator"] == 1e-3


def test_attention_initial_accumulator_sets_only_the_candidate_attention_sums(tmp_path: Path) -> None:
    """--attention-initial-accumulator (default 0) starts APGRU's candidate attention at its own
    AdaGrad sums and every other dense parameter at the dense value; the optimizer keeps one group (its state
    loads into an optimizer built with the other setting); the meta records the value."""
    from marn_rec.training.sharding import candidate_attention_parameters, training_optimizer

    model = MARNTrain(MARN(tiny()))
    attention = {id(p) for p in candidate_attention_parameters(model)}
    assert attention == {id(p) for p in model.model.attention.parameters()} and attention
    opt = training_optimizer(model, initial_accumulator_value=0.1, attention_initial_accumulator=0.0)
    sums = {id(p): s["sum"] for p, s in opt.state.items() if "sum" in s}
    assert attention <= set(sums) and len(sums) > len(attention)
    for key, s in sums.items():
        assert torch.all(s == (0.0 if key in attention else 0.1))

    # A plain AdaGrad step from those sums: the attention's first step is lr * sign(g) whatever
    # the gradient's scale; the rest take lr * g / sqrt(0.1 + g^2).
    loss, _ = model(random_batch(tiny(), batch_size=8))
    loss.backward()
    before = {id(p): p.detach().clone() for p in model.parameters()}
    grads = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    opt.step()
    for p in model.parameters():
        g = grads.get(id(p))
        if g is None or id(p) not in sums:
            continue
        init = 0.0 if id(p) in attention else 0.1
        expected = before[id(p)] - 0.1 * g / ((init + g * g).sqrt() + 1e-10)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)

    other = training_optimizer(model, attention_initial_accumulator=None)  # all at 0.1
    other.load_state_dict(opt.state_dict())
    for p, s in other.state.items():
        if "sum" in s:
            torch.testing.assert_close(s["sum"], opt.state[p]["sum"])

    cfg = TrainConfig(preset="tiny", attention_initial_accumulator=0.0)
    assert run_meta(cfg, cfg.model_config(), {})["train"]["attention_initial_accumulator"] == 0.0
    with pytest.raises(ValueError, match="attention_initial_accumulator"):
        TrainConfig(preset="tiny", attention_initial_accumulator=-1.0)
    args = ["--out-dir", str(tmp_path), "--attention-initial-accumulator"]
    assert parse_train_args(args + ["0"]).attention_initial_accumulator == 0.0
    assert parse_train_args(args[:2]).attention_initial_accumulator == 0.0 == TrainConfig().attention_initial_accumulator
    with pytest.raises(SystemExit):
        parse_train_args(args + ["nan"])


def test_fusion_initial_accumulator_sets_only_the_maf_attention_sums(tmp_path: Path) -> None:
    """--fusion-initial-accumulator (default None: as the other dense parameters) starts MAF's
    attention (eq. 3) at its own AdaGrad sums, beside the candidate attention's; validated in the
    config and on the command line."""
    from marn_rec.training.sharding import (
        candidate_attention_parameters,
        fusion_attention_parameters,
        training_optimizer,
    )

    model = MARNTrain(MARN(tiny()))
    fusion = {id(p) for p in fusion_attention_parameters(model)}
    assert fusion == {id(p) for p in model.model.tower.fusion.parameters()} and fusion
    attention = {id(p) for p in candidate_attention_parameters(model)}
    for value in (None, 0.0, 0.02):
        opt = training_optimizer(model, initial_accumulator_value=0.1, attention_initial_accumulator=0.0,
                                 fusion_initial_accumulator=value)
        sums = {id(p): s["sum"] for p, s in opt.state.items() if "sum" in s}
        assert fusion <= set(sums) and len(sums) > len(fusion) + len(attention)
        for key, s in sums.items():
            expected = 0.0 if key in attention else 0.1 if key not in fusion or value is None else value
            assert torch.all(s == expected), (key in fusion, value)

    assert TrainConfig().fusion_initial_accumulator is None
    with pytest.raises(ValueError, match="fusion_initial_accumulator"):
        TrainConfig(preset="tiny", fusion_initial_accumulator=float("inf"))
    args = ["--out-dir", str(tmp_path), "--fusion-initial-accumulator"]
    assert parse_train_args(args + ["0"]).fusion_initial_accumulator == 0.0
    assert parse_train_args(args[:2]).fusion_initial_accumulator is None
    with pytest.raises(SystemExit):
        parse_train_args(args + ["-1"])
