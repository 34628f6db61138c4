"""Export of the scoring head: torch.export with dynamic users and candidates, a fresh Python process
that never imports marn_rec (nor TorchRec) loads and runs it from the .pt2 and the numpy store,
and the AOTInductor package."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from marn_rec import MARN, tiny
from marn_rec.serving import ItemSource, RepresentationStore, head_fingerprint, head_from_marn, load_scorer
from marn_rec.serving.export import compare_with_example, export_scorer, load_exported_head
from marn_rec.serving.extract import extract
from marn_rec.serving.testing import full_model_logits
from marn_rec.testing import RandomCatalog


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    config = tiny()
    model = MARN(config).eval()
    catalog = RandomCatalog(config)
    source = ItemSource(features=catalog.features, count=config.tower.num_items)
    head = head_from_marn(model)
    fp = head_fingerprint(head.state_dict())
    stores = {}
    for dtype in ("fp32", "int8"):
        extract(model.tower, source, str(tmp / dtype), config, None, fp, dtype=dtype, progress=False)
        stores[dtype] = RepresentationStore(str(tmp / dtype))
    paths = {dtype: str(tmp / f"scorer_{dtype}.pt2") for dtype in stores}
    for dtype, path in paths.items():
        export_scorer(head, path, stores[dtype], log=lambda _: None)
    return model, catalog, stores, paths


_FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch

    program, store = sys.argv[1], sys.argv[2]
    head = torch.export.load(program).module()
    example = torch.load(program[:-4] + ".example.pt", weights_only=True)
    saved = float((head(*example["inputs"]) - example["logits"]).abs().max())

    # The whole request path with numpy alone: ID lookup, gather, int8 dequantisation, padding.
    manifest = json.load(open(store + "/manifest.json"))
    ids = np.load(store + "/ids.npy", mmap_mode="r")
    rows = np.load(store + "/rows.npy", mmap_mode="r")
    matrix = np.load(store + "/representations.npy", mmap_mode="r")

    def reps(items):
        pos = np.searchsorted(ids, items)
        assert (ids[pos] == items).all()
        r = rows[pos]
        x = torch.from_numpy(np.asarray(matrix[r], dtype=np.float32))
        if manifest["dtype"] == "int8":
            so = torch.from_numpy(np.asarray(np.load(store + "/scale_offset.npy", mmap_mode="r")[r]))
            x = x * so[:, :1] + so[:, 1:]
        return x

    req = {k: v.numpy() for k, v in example["request"].items()}
    t = manifest["model"]["behavior"]["max_length"]
    lengths = req["history_lengths"]
    u = len(lengths)
    history = torch.zeros(u, t, manifest["dim"])
    types = torch.zeros(u, t, dtype=torch.int64)
    times = torch.zeros(u, t, dtype=torch.int64)
    start = 0
    hist = reps(req["history_items"])
    for j, n in enumerate(lengths):
        history[j, :n] = hist[start:start + n]
        types[j, :n] = torch.from_numpy(req["behavior_types"][start:start + n])
        times[j, :n] = torch.from_numpy(req["time_buckets"][start:start + n])
        start += n
    user = torch.repeat_interleave(torch.arange(u), torch.from_numpy(req["candidate_counts"]))
    out = head(history, torch.from_numpy(lengths), types, times, reps(req["candidate_items"]), user)
    numpy_path = float((out - example["logits"]).abs().max())
    leaked = [m for m in ("marn_rec", "torchrec", "fbgemm_gpu") if m in sys.modules]
    print(json.dumps({"saved": saved, "numpy_path": numpy_path, "leaked": leaked, "n": int(out.numel())}))
""")


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_fresh_process_without_marn_rec_runs_the_export(exported, tmp_path: Path, dtype: str) -> None:
    _, _, stores, paths = exported
    script = tmp_path / "serve.py"
    script.write_text(_FRESH)
    done = subprocess.run([sys.executable, str(script), paths[dtype], stores[dtype].path], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    assert result["n"] == 8
    assert result["saved"] <= 1e-5 and result["numpy_path"] <= 1e-5


def test_exported_scorer_equals_full_model_for_any_users_and_candidates(exported) -> None:
    model, catalog, stores, paths = exported
    scorer = load_scorer(stores["fp32"], exported=paths["fp32"])
    g = torch.Generator().manual_seed(7)
    t = model.config.behavior.max_length
    for lengths, counts in ([[t], [1]], [[2], [1000]], [[t, 0, 3], [4, 1, 6]], [[1] * 9, [2] * 9]):
        n, c = sum(lengths), sum(counts)
        request = dict(
            history_items=torch.randint(0, 50, (n,), generator=g), behavior_types=torch.randint(0, 3, (n,), generator=g),
            time_buckets=torch.randint(0, 5, (n,), generator=g), candidate_items=torch.randint(0, 50, (c,), generator=g),
            history_lengths=torch.tensor(lengths), candidate_counts=torch.tensor(counts),
        )
        got = scorer(**request)
        assert (got - full_model_logits(model, catalog.features, **request)).abs().max() <= 1e-5


def test_exported_head_is_refused_with_another_store(exported, tmp_path: Path) -> None:
    from marn_rec.serving import StoreError

    _, catalog, stores, paths = exported
    torch.manual_seed(99)
    other = MARN(tiny()).eval()
    fp = head_fingerprint(head_from_marn(other).state_dict())
    source = ItemSource(features=catalog.features, count=50)
    extract(other.tower, source, str(tmp_path / "other"), tiny(), None, fp, progress=False)
    with pytest.raises(StoreError, match="other trained weights"):
        load_scorer(str(tmp_path / "other"), exported=paths["fp32"])


def test_aoti_package_builds_and_matches(exported, tmp_path: Path) -> None:
    _, _, stores, _ = exported
    model = exported[0]
    path = str(tmp_path / "scorer.pt2")
    out = export_scorer(head_from_marn(model), path, stores["fp32"], aoti=True, log=lambda _: None)
    assert "aoti_error" not in out, out.get("aoti_error")
    runner, meta = load_exported_head(out["aoti"])
    assert meta["aoti"] is True
    assert compare_with_example(runner, out["aoti"]) <= 1e-5
    # Dynamic sizes survive AOTInductor too.
    scorer = load_scorer(stores["fp32"], exported=out["aoti"])
    eager = load_scorer(stores["fp32"], exported=path)
    request = ([1, 2, 3], [0, 1, 2], [0, 1, 4], list(range(40)))
    assert (scorer(*request) - eager(*request)).abs().max() <= 1e-5
