"""Checkpoints: damage and edits are refused before anything is loaded; resumption is exact, also
with another number of loader workers. A tiny module and a range dataset, no DMP."""

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from marn_rec.training.checkpoint import (
    COMPLETE,
    MANIFEST,
    META,
    CheckpointError,
    checkpoint_dir,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    resume_point,
    save_checkpoint,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*set_vital.*"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled"),
    pytest.mark.filterwarnings("ignore:This DataLoader will create"),
]

N = 20
META_RUN = {"train": {"lr": 0.1, "lambda0": 0.05}, "data": {"seed": 0}}


class Batches(Dataset):
    """Map-style, one item per batch, like the project's datasets."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


class StatefulBatches(Batches):
    def __init__(self) -> None:
        self.calls = 0

    def state_dict(self) -> Dict[str, int]:
        return {"calls": self.calls}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.calls = state["calls"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 4, batch_first=True)
        self.out = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.gru(x)[0][:, -1])


def _setup(workers: int = 0, dataset: Dataset = None):
    model = Tiny()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    loader = StatefulDataLoader(dataset or Batches(), batch_size=None, num_workers=workers)
    return model, opt, loader


def _train(model, opt, it, steps: int) -> List[int]:
    seen = []
    for _ in range(steps):
        b = next(it)
        seen.append(int(b))
        x = torch.full((1, 2, 3), float(b) / N)
        (model(x) ** 2).sum().backward()
        opt.step()
        opt.zero_grad()
    return seen


def _saved(root: Path, steps: int = 5, workers: int = 0) -> Tuple[Path, Tiny, StatefulDataLoader]:
    torch.manual_seed(0)
    model, opt, loader = _setup(workers)
    _train(model, opt, iter(loader), steps)
    path = save_checkpoint(str(root), steps, model, opt, loader, META_RUN)
    return Path(path), model, loader


def _params(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(path: Path, workers: int = 0, meta=META_RUN):
    torch.manual_seed(1)  # other initial weights: the load must replace them
    model, opt, loader = _setup(workers)
    before = _params(model)
    try:
        step = load_checkpoint(str(path), model, opt, loader, meta)
    except CheckpointError:
        after = _params(model)
        assert all(torch.equal(before[k], after[k]) for k in before), "model changed by a refused load"
        raise
    return step, model, opt, loader


def _rewrite_manifest(path: Path) -> None:
    """What a careful forger would do: make manifest and marker agree with the edited files."""
    files = {}
    for f in sorted(path.iterdir()):
        if f.name not in (MANIFEST, COMPLETE):
            files[f.name] = {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
    raw = json.dumps({"format": 2, "files": files}, indent=1, sort_keys=True).encode()
    (path / MANIFEST).write_bytes(raw)
    (path / COMPLETE).write_text(f"sha256 {hashlib.sha256(raw).hexdigest()}\n")


# -- exact resumption -------------------------------------------------------------------------


def test_resume_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt, loader = _setup()
    it = iter(loader)
    _train(model, opt, it, 5)
    path = save_checkpoint(str(tmp_path), 5, model, opt, loader, META_RUN)
    rest = _train(model, opt, it, 7)

    step, model2, opt2, loader2 = _load(Path(path))
    assert step == 5
    assert _train(model2, opt2, iter(loader2), 7) == rest == list(range(5, 12))
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k


@pytest.mark.parametrize("saved_workers,loaded_workers", [(0, 2), (2, 0), (2, 3), (2, 2), (0, 0)])
def test_resume_with_another_worker_count(tmp_path: Path, saved_workers: int, loaded_workers: int) -> None:
    path, _, _ = _saved(tmp_path, steps=5, workers=saved_workers)
    _, _, _, loader = _load(path, workers=loaded_workers)
    assert [int(b) for b in loader] == list(range(5, N))
    # The epoch after the restored one starts again at 0.
    assert [int(b) for b in loader] == list(range(N))


def test_resume_at_the_end_of_the_epoch(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path, steps=N, workers=2)
    _, _, _, loader = _load(path, workers=0)
    it = iter(loader)
    with pytest.raises(StopIteration):
        next(it)


def test_stateful_dataset_needs_the_same_worker_count(tmp_path: Path) -> None:
    model, opt, loader = _setup(0, StatefulBatches())
    _train(model, opt, iter(loader), 3)
    path = save_checkpoint(str(tmp_path), 3, model, opt, loader, META_RUN)
    model, opt, loader = _setup(2, StatefulBatches())
    with pytest.raises(CheckpointError, match=r"saved with 0 workers and this run has 2.*"
                       r"dataset or its fetcher has a state.*--num-workers 0"):
        load_checkpoint(path, model, opt, loader, META_RUN)


def test_keeps_the_last_complete_checkpoints(tmp_path: Path) -> None:
    model, opt, loader = _setup()
    it = iter(loader)
    os.makedirs(checkpoint_dir(str(tmp_path), 1))  # an interrupted write of an earlier step
    for step in (2, 4, 6):
        _train(model, opt, it, 2)
        save_checkpoint(str(tmp_path), step, model, opt, loader, META_RUN, keep=2)
    assert sorted(complete_checkpoints(str(tmp_path))) == [4, 6]
    assert sorted(os.listdir(tmp_path)) == ["step_000000004", "step_000000006"]


# -- damage -----------------------------------------------------------------------------------


def _files(tmp_path: Path) -> List[str]:
    path, _, _ = _saved(tmp_path / "probe")
    return sorted(f.name for f in path.iterdir() if f.name != COMPLETE)


FILES = ["__0_0.distcp", ".metadata", "loader_rank0.pt", META, MANIFEST]


def test_the_files_are_the_expected_ones(tmp_path: Path) -> None:
    assert _files(tmp_path) == sorted(FILES)


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_flipped_bit_is_refused(tmp_path: Path, name: str, where: float) -> None:
    path, _, _ = _saved(tmp_path)
    data = bytearray((path / name).read_bytes())
    data[int(len(data) * where)] ^= 0x10
    (path / name).write_bytes(bytes(data))
    # meta.json may stop being JSON; then it cannot be read, which is refused as well.
    with pytest.raises(CheckpointError, match=r"damaged checkpoint|cannot read meta\.json"):
        _load(path)


def test_a_flipped_bit_in_a_weight_names_the_file(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    shard = path / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged checkpoint \(1 file\(s\) changed since "
                       r"written\): __0_0\.distcp differs from its sha256"):
        _load(path)


@pytest.mark.parametrize("name", FILES)
def test_a_truncated_file_is_refused(tmp_path: Path, name: str) -> None:
    path, _, _ = _saved(tmp_path)
    data = (path / name).read_bytes()
    (path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"damaged checkpoint|cannot read meta\.json"):
        _load(path)


def test_truncation_reports_the_sizes(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    size = (path / "loader_rank0.pt").stat().st_size
    (path / "loader_rank0.pt").write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError, match=rf"loader_rank0\.pt has 10 bytes, {size} when written"):
        _load(path)


@pytest.mark.parametrize("name", FILES)
def test_a_deleted_file_is_refused(tmp_path: Path, name: str) -> None:
    path, _, _ = _saved(tmp_path)
    (path / name).unlink()
    messages = {META: "cannot read meta.json", MANIFEST: "cannot read manifest.json"}
    with pytest.raises(CheckpointError, match=messages.get(name, f"{name} is missing")):
        _load(path)


def test_an_edited_step_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path, steps=5)
    meta = json.loads((path / META).read_text())
    meta["step"] = 7
    (path / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    with pytest.raises(CheckpointError, match=r"meta\.json differs from its sha256"):
        _load(path)
    # Manifest rewritten to match: the directory name still says 5 ...
    _rewrite_manifest(path)
    with pytest.raises(CheckpointError, match="records step 7, the directory name 5"):
        _load(path)
    # ... and renamed as well: the saved state itself says 5.
    moved = Path(checkpoint_dir(str(tmp_path), 7))
    path.rename(moved)
    assert latest_checkpoint(str(tmp_path)) == str(moved)
    with pytest.raises(CheckpointError, match=r"loader_rank0\.pt is of step 5 and rank 0, meta\.json of step 7"):
        _load(moved)
    (moved / "loader_rank0.pt").unlink()  # and no loader file to tell: the DCP state tells
    shutil.copy(_loader_of_step(tmp_path, 7), moved / "loader_rank0.pt")
    _rewrite_manifest(moved)
    with pytest.raises(CheckpointError, match="the model state is of step 5, meta.json says 7"):
        _load(moved)


def _loader_of_step(tmp_path: Path, step: int) -> Path:
    path, _, _ = _saved(tmp_path / f"other{step}", steps=step)
    return path / "loader_rank0.pt"


def test_an_edited_configuration_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    meta = json.loads((path / META).read_text())
    meta["train"]["lambda0"] = 0.5
    (path / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    with pytest.raises(CheckpointError, match=r"meta\.json has 119 bytes, 120 when written"):
        _load(path)
    _rewrite_manifest(path)
    with pytest.raises(CheckpointError, match=r"different run:\n  train\.lambda0: checkpoint 0\.5, this run 0\.05"):
        _load(path)


def test_another_configuration_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    other = {"train": {"lr": 0.2, "lambda0": 0.05}, "data": {"seed": 0}}
    with pytest.raises(CheckpointError, match=r"different run:\n  train\.lr: checkpoint 0\.1, this run 0\.2"):
        _load(path, meta=other)


def test_an_edited_manifest_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["__0_0.distcp"]["bytes"] += 1
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest.json does not match the checksum in COMPLETE"):
        _load(path)


def test_a_checkpoint_without_checksums_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    (path / COMPLETE).write_text("ok\n")  # what the format before checksums wrote
    with pytest.raises(CheckpointError, match="older version"):
        _load(path)


def test_an_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    (path / COMPLETE).unlink()
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        _load(path)


# -- where to resume --------------------------------------------------------------------------


def test_resume_point(tmp_path: Path) -> None:
    root = str(tmp_path / "ckpt")
    assert resume_point(root, "auto") is None  # nothing there: a fresh start
    assert resume_point(root, "never") is None
    with pytest.raises(CheckpointError, match="resume=required but .* has no complete checkpoint"):
        resume_point(root, "required")
    with pytest.raises(CheckpointError, match="resume must be one of"):
        resume_point(root, "sometimes")

    first, _, _ = _saved(Path(root), steps=2)
    second, _, _ = _saved(Path(root), steps=4)
    os.makedirs(checkpoint_dir(root, 6))  # interrupted while writing step 6
    assert resume_point(root, "auto") == str(second)
    assert resume_point(root, "required") == str(second)
    with pytest.raises(CheckpointError, match="resume=never but .* checkpoints of an earlier run"):
        resume_point(root, "never")

    # Every COMPLETE marker deleted: refused, not a silent fresh start.
    for p in (first, second):
        (p / COMPLETE).unlink()
    with pytest.raises(CheckpointError, match=r"only incomplete checkpoints \(step_000000002, "
                       r"step_000000004, step_000000006: no COMPLETE marker\).*resume=never"):
        resume_point(root, "auto")
    with pytest.raises(CheckpointError, match=r"has no complete checkpoint \(only incomplete ones"):
        resume_point(root, "required")
    assert resume_point(root, "never") is None


def test_in_a_process_group_of_one(tmp_path: Path) -> None:
    from marn_rec.training.loop import free_port

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        path, model, _ = _saved(tmp_path, steps=3, workers=0)
        assert resume_point(str(tmp_path), "auto") == str(path)
        step, model2, _, loader = _load(path, workers=2)
        assert step == 3 and [int(b) for b in loader] == list(range(3, N))
        assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
        data = bytearray((path / "__0_0.distcp").read_bytes())
        data[len(data) // 3] ^= 0x80
        (path / "__0_0.distcp").write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="damaged checkpoint"):
            _load(path)
    finally:
        dist.destroy_process_group()


def test_another_format_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved(tmp_path)
    meta = json.loads((path / META).read_text())
    meta["format"] = 3
    (path / META).write_text(json.dumps(meta))
    _rewrite_manifest(path)
    with pytest.raises(CheckpointError, match="written in checkpoint format 3, this code reads format 2"):
        _load(path)


def _two_ranks(rank: int, port: int, root: str, queue) -> None:
    """One rank of a gloo group of two: save, damage on rank 1's share, every rank refuses."""
    warnings.filterwarnings("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model, opt, loader = _setup(0)
        _train(model, opt, iter(loader), 3)
        path = save_checkpoint(root, 3, model, opt, loader, META_RUN)
        files = json.loads((Path(path) / MANIFEST).read_text())["files"]
        model2, opt2, loader2 = _setup(2)
        step = load_checkpoint(path, model2, opt2, loader2, META_RUN)
        resumed = [int(b) for b in loader2]
        dist.barrier()
        if rank == 0:  # a file that rank 1 hashes when verifying
            victim = Path(path) / sorted(files)[1]
            data = bytearray(victim.read_bytes())
            data[len(data) // 2] ^= 0x02
            victim.write_bytes(bytes(data))
        dist.barrier()
        try:
            load_checkpoint(path, *_setup(0), META_RUN)
            refused = None
        except CheckpointError as e:
            refused = str(e)
        queue.put((rank, step, resumed, sorted(files), refused))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_agree(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    from marn_rec.training.loop import free_port

    ctx = mp.get_context("fork")  # no re-import of torch and marn_rec in the children
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_two_ranks, args=(r, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank, step, resumed, files, refused in results:
        assert step == 3 and resumed == list(range(3, N))
        assert files == sorted([".metadata", "__0_0.distcp", "__1_0.distcp", "loader_rank0.pt",
                                "loader_rank1.pt", META])
        assert refused is not None and "(rank 1)" in refused and "damaged checkpoint" in refused
    assert results[0][4] == results[1][4]  # the same message on both ranks, raised together
