"""Input checks at the model's boundary.

An ID out of its table's range makes FBGEMM read another row (or out of bounds) without a word, and
a length that does not match the values shifts every later item; both become silent wrong
answers. These checks run before any lookup and raise ``ValueError`` naming the feature and the
problem, so a bad batch leaves the model and optimizer state untouched.
"""

from typing import Dict, Iterable, Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

_INT_DTYPES = (torch.int32, torch.int64)


def _check_int(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _INT_DTYPES:
        raise ValueError(f"{name}: expected int32 or int64 values, got {t.dtype}")


def check_float_matrix(name: str, t: torch.Tensor, rows: int, cols: int) -> None:
    """``t`` is a finite floating [rows, cols] tensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected floating-point values, got {t.dtype}")
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"{name}: expected shape [num_items, {cols}], got {list(t.shape)}")
    if t.shape[0] != rows:
        raise ValueError(
            f"{name}: has {t.shape[0]} rows but the other item inputs have {rows} items"
        )
    bad = (~torch.isfinite(t)).sum()
    if bad:
        raise ValueError(f"{name}: {int(bad)} non-finite values (NaN or inf)")


def check_index(name: str, index: torch.Tensor, size: int, upper: int, what: str) -> None:
    """``index`` is a 1-d int tensor of ``size`` entries in ``[0, upper)``."""
    _check_int(name, index)
    if index.dim() != 1 or index.numel() != size:
        raise ValueError(f"{name}: expected {size} entries, got shape {list(index.shape)}")
    if index.numel():
        lo, hi = int(index.min()), int(index.max())
        if lo < 0 or hi >= upper:
            raise ValueError(
                f"{name}: indices must be in [0, {upper}) ({what}), got min {lo} and max {hi}"
            )


def check_kjt(
    name: str,
    kjt: KeyedJaggedTensor,
    rows_per_feature: Dict[str, int],
    stride: Optional[int],
    exactly_one: Iterable[str] = (),
) -> int:
    """Checks the features of ``kjt`` named in ``rows_per_feature``; returns the KJT's stride.

    Args:
        name: the argument's name, for messages.
        kjt: the input.
        rows_per_feature: feature -> rows of its table (IDs must be in ``[0, rows)``).
        stride: the batch size the KJT must have, or None to accept its own.
        exactly_one: features that must have exactly one value per row.
    """
    if not isinstance(kjt, KeyedJaggedTensor):
        raise ValueError(f"{name}: expected a KeyedJaggedTensor, got {type(kjt).__name__}")
    keys = kjt.keys()
    missing = [f for f in rows_per_feature if f not in keys]
    if missing:
        raise ValueError(f"{name}: missing features {missing}; it has {keys}")
    values, lengths = kjt.values(), kjt.lengths()
    _check_int(f"{name} values", values)
    _check_int(f"{name} lengths", lengths)
    if lengths.numel() % max(len(keys), 1):
        raise ValueError(
            f"{name}: {lengths.numel()} lengths are not a whole number per feature "
            f"for {len(keys)} features"
        )
    own_stride = lengths.numel() // max(len(keys), 1)
    if kjt.variable_stride_per_key():
        raise ValueError(f"{name}: variable batch size per feature is not supported")
    if stride is not None and own_stride != stride:
        raise ValueError(f"{name}: batch size {own_stride} does not match the {stride} items")
    if (lengths < 0).any():
        raise ValueError(f"{name}: negative lengths")
    total = int(lengths.sum())
    if total != values.numel():
        raise ValueError(
            f"{name}: lengths add up to {total} but there are {values.numel()} values"
        )
    per_key_lengths = lengths.view(len(keys), own_stride)
    per_key_values = torch.split(values, per_key_lengths.sum(dim=1).tolist())
    for i, key in enumerate(keys):
        if key not in rows_per_feature:
            continue
        if key in exactly_one and own_stride and not bool((per_key_lengths[i] == 1).all()):
            raise ValueError(f"{name}: feature '{key}' must have exactly one value per item")
        v = per_key_values[i]
        if v.numel():
            lo, hi, rows = int(v.min()), int(v.max()), rows_per_feature[key]
            if lo < 0:
                raise ValueError(f"{name}: feature '{key}' has negative id {lo}")
            if hi >= rows:
                raise ValueError(
                    f"{name}: feature '{key}' has id {hi} out of range for its table of "
                    f"{rows} rows"
                )
    return own_stride


def check_labels(labels: torch.Tensor, batch_size: int) -> None:
    """Labels are a finite [B] tensor of values in [0, 1]."""
    if not isinstance(labels, torch.Tensor) or not labels.is_floating_point():
        raise ValueError(f"labels: expected a floating-point tensor, got {getattr(labels, 'dtype', type(labels))}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels: expected shape [{batch_size}], got {list(labels.shape)}")
    if not bool(torch.isfinite(labels).all()) or bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("labels: must be finite and in [0, 1]")
