"""The representation store: one item tower output per catalogue item, memory-mapped.

A store directory holds (all ``.npy`` files load with ``np.load(path, mmap_mode="r")``)::

    manifest.json          what it is (written last: a directory without it is incomplete)
    representations.npy    [num_rows, d] float32, float16 or int8 (row-wise quantised)
    scale_offset.npy       [num_rows, 2] float32 per-row scale and offset (int8 only):
                           value = int8 * scale + offset
    ids.npy                [num_items] int64 item IDs stored, ascending
    rows.npy               [num_items] int64 row of representations.npy of each of ids.npy
    mean.npy               [d] float32 mean representation of the stored items (the "mean"
                           fallback of the scorer for items missing from the store)
    bad_items.jsonl        one {"id": ..., "error": ...} per item not stored (bad tower input)

Rows follow the source's order; an item whose tower input was bad keeps a zero row that no ID
points at. The manifest records the model configuration and its fingerprint, the fingerprint of
the trained scoring head (which checkpoint the rows belong to), the source, dtype, dimension and
counts; :meth:`RepresentationStore.check_model` refuses a store of another configuration or
checkpoint. The format is plain numpy + JSON, so a serving process without ``marn_rec`` reads it
(``tests/test_serving_export.py`` does).
"""

import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

FORMAT = "marn_rec.representations/1"
MANIFEST = "manifest.json"
MATRIX = "representations.npy"
SCALE_OFFSET = "scale_offset.npy"
IDS = "ids.npy"
ROWS = "rows.npy"
MEAN = "mean.npy"
BAD_ITEMS = "bad_items.jsonl"
DTYPES: Dict[str, Any] = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}


class StoreError(ValueError):
    """A store that cannot be used: incomplete, damaged, or of another model."""


def quantize_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row-wise int8: ``x ~ q * scale + offset`` per row, q in [-128, 127]; returns (q, [n, 2]
    scale and offset). A constant row is exact (scale 0)."""
    x = x.float()
    lo, hi = x.min(dim=1).values, x.max(dim=1).values
    scale = (hi - lo) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((x - lo.unsqueeze(1)) / safe.unsqueeze(1)).clamp_(0, 255) - 128
    q = torch.where(scale.unsqueeze(1) > 0, q, torch.zeros_like(q))
    offset = torch.where(scale > 0, lo + 128.0 * scale, lo)
    return q.to(torch.int8), torch.stack([scale, offset], dim=1)


def dequantize_rows(q: torch.Tensor, scale_offset: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_rows` (up to half a step per element)."""
    return q.float() * scale_offset[:, :1] + scale_offset[:, 1:]


class StoreWriter:
    """Writes the rows of a store being built in ``tmp_dir`` (see :func:`finish_store`).

    Several processes may write disjoint rows of one store: one creates it (``create=True``), the
    others open it after a barrier (``create=False``).

    Args:
        tmp_dir (str): the directory being built.
        num_rows (int): rows of the matrix (the source's item count).
        dim (int): d.
        dtype (str): "fp32", "fp16" or "int8".
        create (bool): create the files (one process) or open them for writing.
    """

    def __init__(self, tmp_dir: str, num_rows: int, dim: int, dtype: str, create: bool = True) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        shape = (max(num_rows, 0), dim)
        mode = "w+" if create else "r+"
        if create:
            os.makedirs(tmp_dir, exist_ok=True)
        self.matrix = np.lib.format.open_memmap(
            os.path.join(tmp_dir, MATRIX), mode=mode, dtype=DTYPES[dtype], shape=shape if create else None
        )
        self.scale_offset = None
        if dtype == "int8":
            self.scale_offset = np.lib.format.open_memmap(
                os.path.join(tmp_dir, SCALE_OFFSET), mode=mode, dtype=np.float32,
                shape=(shape[0], 2) if create else None,
            )

    def write(self, rows: np.ndarray, reps: torch.Tensor) -> None:
        """Stores float32 ``reps`` [k, d] in ``rows`` [k] (ascending is fastest)."""
        if rows.size == 0:
            return
        if self.dtype == "int8":
            q, so = quantize_rows(reps)
            self.matrix[rows] = q.numpy()
            assert self.scale_offset is not None
            self.scale_offset[rows] = so.numpy()
        else:
            self.matrix[rows] = reps.float().numpy().astype(DTYPES[self.dtype])

    def close(self) -> None:
        self.matrix.flush()
        if self.scale_offset is not None:
            self.scale_offset.flush()
        del self.matrix, self.scale_offset


def finish_store(
    tmp_dir: str,
    out_dir: str,
    ids: np.ndarray,
    rows: np.ndarray,
    mean: np.ndarray,
    bad_items: List[Dict[str, Any]],
    manifest: Dict[str, Any],
    overwrite: bool = False,
) -> str:
    """Writes the index, mean, bad items and manifest into ``tmp_dir`` and moves it to ``out_dir``
    (an existing store there is replaced only with ``overwrite``). Returns ``out_dir``."""
    order = np.argsort(ids, kind="stable")
    ids, rows = ids[order].astype(np.int64), rows[order].astype(np.int64)
    np.save(os.path.join(tmp_dir, IDS), ids)
    np.save(os.path.join(tmp_dir, ROWS), rows)
    np.save(os.path.join(tmp_dir, MEAN), mean.astype(np.float32))
    with open(os.path.join(tmp_dir, BAD_ITEMS), "w") as f:
        for item in bad_items:
            f.write(json.dumps(item) + "\n")
    contiguous = bool(len(ids) and ids[0] == 0 and ids[-1] == len(ids) - 1 and np.array_equal(rows, ids))
    record = {
        **manifest,
        "format": FORMAT,
        "num_items": int(len(ids)),
        "num_rows": int(manifest["num_rows"]),
        "contiguous": contiguous,
        "bad_items": len(bad_items),
        "files": {"matrix": MATRIX, "ids": IDS, "rows": ROWS, "mean": MEAN, "bad_items": BAD_ITEMS,
                  **({"scale_offset": SCALE_OFFSET} if manifest["dtype"] == "int8" else {})},
    }
    with open(os.path.join(tmp_dir, MANIFEST), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    if os.path.exists(out_dir):
        if not overwrite:
            raise StoreError(f"{out_dir} exists; pass overwrite=True (--overwrite) to replace it")
        old = f"{out_dir}.old{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(tmp_dir, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, out_dir)
    return out_dir


class RepresentationStore:
    """A store opened for reading: ID lookup and row gathers, memory-mapped.

    Args:
        path (str): the store directory.

    Example::

        store = RepresentationStore("runs/store")
        rows = store.lookup(torch.tensor([3, 17]))      # -1 where an ID is not stored
        reps = store.gather(rows)                       # [2, d] float32
    """

    def __init__(self, path: str) -> None:
        self.path = path
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest_path):
            raise StoreError(f"{path}: no {MANIFEST}: not a representation store, or its extraction did not finish")
        try:
            with open(manifest_path) as f:
                self.manifest: Dict[str, Any] = json.load(f)
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: unreadable {MANIFEST}: {e}") from e
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        m = self.manifest
        self.dtype: str = m["dtype"]
        self.dim: int = int(m["dim"])
        try:
            self.matrix = np.load(os.path.join(path, MATRIX), mmap_mode="r")
            self.ids = np.load(os.path.join(path, IDS), mmap_mode="r")
            self.rows = np.load(os.path.join(path, ROWS), mmap_mode="r")
            self.mean = torch.from_numpy(np.array(np.load(os.path.join(path, MEAN)), dtype=np.float32))
            self.scale_offset = (
                np.load(os.path.join(path, SCALE_OFFSET), mmap_mode="r") if self.dtype == "int8" else None
            )
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: damaged store: {e}") from e
        expected = (int(m["num_rows"]), self.dim)
        if self.matrix.shape != expected or self.matrix.dtype != DTYPES[self.dtype]:
            raise StoreError(f"{path}: {MATRIX} is {self.matrix.dtype}{list(self.matrix.shape)}, the manifest says "
                             f"{self.dtype}{list(expected)}")
        if self.ids.shape != (int(m["num_items"]),) or self.rows.shape != self.ids.shape:
            raise StoreError(f"{path}: {IDS}/{ROWS} do not hold {m['num_items']} items")
        self.contiguous = bool(m.get("contiguous", False))

    @property
    def num_items(self) -> int:
        """Items stored (rows an ID points at)."""
        return int(self.ids.shape[0])

    def nbytes(self) -> int:
        """Bytes of the store's arrays on disk."""
        arrays = [self.matrix, self.ids, self.rows] + ([self.scale_offset] if self.scale_offset is not None else [])
        return int(sum(a.nbytes for a in arrays))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Row of each of ``ids`` (1-d int64), -1 where the ID is not stored."""
        q = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        q = q.astype(np.int64, copy=False)
        if self.contiguous:
            rows = np.where((q >= 0) & (q < self.num_items), q, -1)
        else:
            n = self.num_items
            pos = np.searchsorted(self.ids, q)
            clipped = np.minimum(pos, max(n - 1, 0))
            found = (pos < n) & (self.ids[clipped] == q) if n else np.zeros(q.shape, dtype=bool)
            rows = np.where(found, self.rows[clipped] if n else 0, -1)
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """[k, d] float32 representations of store rows ``rows`` (all valid)."""
        r = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        block = torch.from_numpy(np.ascontiguousarray(self.matrix[r]))
        if self.dtype == "int8":
            assert self.scale_offset is not None
            return dequantize_rows(block, torch.from_numpy(np.ascontiguousarray(self.scale_offset[r])))
        return block.float()

    def bad_items(self) -> List[Dict[str, Any]]:
        """The items extraction did not store, with the reason."""
        path = os.path.join(self.path, BAD_ITEMS)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def check_model(self, config_fingerprint: str, head_fingerprint: Optional[str] = None,
                    config_dict: Optional[Dict[str, Any]] = None) -> None:
        """Refuses a store extracted from another model configuration or another checkpoint.

        Raises:
            StoreError: naming what differs.
        """
        m = self.manifest
        saved_fp, saved_model = m.get("config_fingerprint"), m.get("model")
        if saved_fp != config_fingerprint and isinstance(saved_model, dict):
            # Written before a configuration field (with a default) was added: compare the saved
            # configuration as the current code reads it.
            saved_fp, saved_model = _normalized(saved_model)
        if saved_fp != config_fingerprint:
            diffs = _differences(saved_model, config_dict) if config_dict is not None else []
            detail = ("; differences: " + "; ".join(diffs[:8])) if diffs else ""
            raise StoreError(f"{self.path} was extracted from a model of another configuration "
                             f"(fingerprint {str(m.get('config_fingerprint'))[:12]}, this model "
                             f"{config_fingerprint[:12]}){detail}")
        if head_fingerprint is not None and m.get("head_fingerprint") != head_fingerprint:
            ckpt = m.get("checkpoint") or {}
            raise StoreError(f"{self.path} was extracted from other trained weights (checkpoint "
                             f"{ckpt.get('path')}, step {ckpt.get('step')}) than the scorer's: "
                             "re-extract it from this checkpoint")


def _normalized(model: Dict[str, Any]) -> Tuple[Optional[str], Any]:
    """(fingerprint, JSON dict) of a saved configuration rebuilt by the current code (new fields
    take their defaults); (None, the dict) when it no longer builds."""
    from marn_rec.config import config_from_dict
    from marn_rec.serving.weights import config_fingerprint, config_json

    try:
        config = config_from_dict(model)
    except (TypeError, KeyError, ValueError):
        return None, model
    return config_fingerprint(config), config_json(config)


def _differences(saved: Any, expected: Any, prefix: str = "") -> List[str]:
    if isinstance(saved, dict) and isinstance(expected, dict):
        out: List[str] = []
        for k in sorted(set(saved) | set(expected)):
            out += _differences(saved.get(k), expected.get(k), f"{prefix}{k}.")
        return out
    return [] if saved == expected else [f"{prefix[:-1]}: store {saved!r}, model {expected!r}"]
