"""Input checks, run on a batch before it enters the model or a train pipeline.

An ID out of its table's range makes FBGEMM read another row (or out of bounds) without a word; a
length that does not match the values shifts every later item; a sharded EmbeddingBagCollection
reads features by position, so keys in another order silently swap features. All of these become
silent wrong answers or crashes inside kernels. :func:`validate_batch` checks a
:class:`~marn_rec.batch.MARNBatch` against the model's configuration and raises ``ValueError``
naming the input, the feature and the problem; it reads the values on the CPU, so it runs outside
the (traceable) model: the training loop calls it on every batch before the batch is moved,
pipelined or fed to the model, so a rejected batch leaves model and optimizer state untouched.

Limits that are not the tables' own:
- float inputs (images, item weights) must be finite and within :data:`MAX_ABS_FLOAT`;
- lengths are bounded before they are summed (no int64 overflow is possible);
- ``history_lengths`` are at most ``BehaviorConfig.max_length`` (the model pads to it).
"""

from dataclasses import replace
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.config import IMAGE, STATISTIC, TITLE, IDS, ItemTowerConfig, MARNConfig
from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE, TITLE_WORDS, statistic_feature

if TYPE_CHECKING:
    from marn_rec.batch import MARNBatch

# Largest magnitude accepted in float inputs. VGG16 fc7 activations are below 100; a value of 1e20
# passes a finiteness check yet turns every weight into NaN after one AdaGrad step.
MAX_ABS_FLOAT = 1e4

_INT_DTYPES = (torch.int32, torch.int64)


def is_tracing() -> bool:
    """True under FX symbolic tracing, torch.compile / torch.export, or TorchScript: value checks
    cannot run there (they read tensors back to the CPU)."""
    return (
        torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        or torch.compiler.is_compiling()
        or torch.jit.is_scripting()
    )


def _check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.device.type == "meta":
        raise ValueError(f"{name}: is on the meta device, which holds no values to train on")
    return t


def _check_int(name: str, t: object) -> torch.Tensor:
    t = _check_tensor(name, t)
    if t.dtype not in _INT_DTYPES:
        raise ValueError(f"{name}: expected int32 or int64 values, got {t.dtype}")
    return t


def check_float_tensor(name: str, t: object, shape: Sequence[int]) -> None:
    """``t`` is a float32 tensor of ``shape``, finite and within :data:`MAX_ABS_FLOAT`."""
    t = _check_tensor(name, t)
    if t.dtype != torch.float32:
        raise ValueError(f"{name}: expected float32 values, got {t.dtype} (convert with .float())")
    if list(t.shape) != list(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.numel():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name}: {bad} non-finite values (NaN or inf)")
        big = float(t.abs().max())
        if big > MAX_ABS_FLOAT:
            raise ValueError(
                f"{name}: values up to {big:.3g} in magnitude; at most {MAX_ABS_FLOAT:g} is "
                "accepted (scale the input)"
            )


def check_float_matrix(name: str, t: torch.Tensor, rows: int, cols: int) -> None:
    """``t`` is a [rows, cols] float32 tensor (finite, bounded)."""
    t = _check_tensor(name, t)
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"{name}: expected shape [num_items, {cols}], got {list(t.shape)}")
    if t.shape[0] != rows:
        raise ValueError(
            f"{name}: has {t.shape[0]} rows but the other item inputs have {rows} items"
        )
    check_float_tensor(name, t, [rows, cols])


def check_index(name: str, index: torch.Tensor, size: int, upper: int, what: str) -> None:
    """``index`` is a 1-d int tensor of ``size`` entries in ``[0, upper)``."""
    index = _check_int(name, index)
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
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"{name}: duplicate feature keys {dup}")
    missing = [f for f in rows_per_feature if f not in keys]
    if missing:
        raise ValueError(f"{name}: missing features {missing}; it has {keys}")
    values = _check_int(f"{name} values", kjt.values())
    lengths = _check_int(f"{name} lengths", kjt.lengths())
    if kjt.variable_stride_per_key():
        raise ValueError(f"{name}: variable batch size per feature is not supported")
    if lengths.dim() != 1 or values.dim() != 1:
        raise ValueError(f"{name}: lengths and values must be 1-d")
    if lengths.numel() % max(len(keys), 1):
        raise ValueError(
            f"{name}: {lengths.numel()} lengths are not a whole number per feature "
            f"for {len(keys)} features"
        )
    own_stride = lengths.numel() // max(len(keys), 1)
    if stride is not None and own_stride != stride:
        raise ValueError(f"{name}: batch size {own_stride} does not match the {stride} items")
    if lengths.numel():
        # Bounded before summing: lengths near 2**63 would wrap the sum back to numel(values).
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0:
            raise ValueError(f"{name}: negative lengths (min {lo})")
        if hi > values.numel():
            raise ValueError(
                f"{name}: a length of {hi} exceeds the {values.numel()} values in all"
            )
    total = int(lengths.sum())
    if total != values.numel():
        raise ValueError(
            f"{name}: lengths add up to {total} but there are {values.numel()} values"
        )
    if kjt.offsets_or_none() is not None:
        offsets = kjt.offsets()
        expected = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths.long())
        if offsets.shape != expected.shape or not bool((offsets.long() == expected).all()):
            raise ValueError(f"{name}: offsets do not match lengths")
    per_key_lengths = lengths.view(len(keys), own_stride)
    per_key_values = torch.split(values, per_key_lengths.sum(dim=1).tolist())
    one = set(exactly_one)
    for i, key in enumerate(keys):
        if key not in rows_per_feature:
            continue
        if key in one and own_stride and not bool((per_key_lengths[i] == 1).all()):
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


def select_features(kjt: KeyedJaggedTensor, keys: List[str]) -> KeyedJaggedTensor:
    """``kjt`` with exactly ``keys``, in that order (by name; others dropped).

    A sharded EmbeddingBagCollection fixes its feature order at the first batch and then reads by
    position, so every batch must present the same keys in the same order.
    """
    if kjt.keys() == keys:
        return kjt
    index = {k: i for i, k in enumerate(kjt.keys())}
    return kjt.permute([index[k] for k in keys])


def check_labels(labels: torch.Tensor, batch_size: int) -> None:
    """Labels are a finite float32 [B] tensor of values in [0, 1]."""
    labels = _check_tensor("labels", labels)
    if labels.dtype != torch.float32:
        raise ValueError(f"labels: expected float32 values, got {labels.dtype}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels: expected shape [{batch_size}], got {list(labels.shape)}")
    if not bool(torch.isfinite(labels).all()) or bool(((labels < 0) | (labels > 1)).any()):
        raise ValueError("labels: must be finite and in [0, 1]")


def sparse_feature_rows(config: ItemTowerConfig) -> Dict[str, int]:
    """Table rows of every ``item_sparse`` feature the tower reads, in the tower's order."""
    rows: Dict[str, int] = {}
    if IDS in config.modalities:
        rows.update({f.name: f.num_embeddings for f in config.item_id_features()})
    if STATISTIC in config.modalities:
        for stat in range(config.num_statistics):
            for buckets in config.statistic_buckets:
                rows[statistic_feature(stat, buckets)] = buckets
    return rows


def validate_tower_inputs(
    config: ItemTowerConfig,
    item_sparse: KeyedJaggedTensor,
    item_title: Optional[KeyedJaggedTensor],
    item_image: Optional[torch.Tensor],
    item_weights: Optional[torch.Tensor] = None,
) -> int:
    """Raises ``ValueError`` on bad item inputs of :class:`~marn_rec.models.tower.MARNTower`;
    returns the number of items U. The KJTs must hold the tower's features (extra keys are
    allowed here; :func:`validate_batch` drops them and fixes the order)."""
    rows = sparse_feature_rows(config)
    multi = {f.name for f in config.item_id_features() if f.multi_valued}
    num_items: Optional[int] = None
    if rows:
        exactly_one = [k for k in rows if k not in multi]
        num_items = check_kjt("item_sparse", item_sparse, rows, None, exactly_one)
    if TITLE in config.modalities:
        if item_title is None:
            raise ValueError("item_title: required by the title modality, got None")
        num_items = check_kjt(
            "item_title", item_title, {TITLE_WORDS: config.title_vocab_size}, num_items
        )
    if IMAGE in config.modalities:
        if item_image is None:
            raise ValueError("item_image: required by the image modality, got None")
        image = _check_tensor("item_image", item_image)
        rows_image = image.shape[0] if num_items is None and image.dim() else num_items
        check_float_matrix("item_image", image, int(rows_image or 0), config.image_dim)
        num_items = int(rows_image or 0)
    assert num_items is not None  # config validation guarantees one modality
    if item_weights is not None:
        check_float_tensor("item_weights", item_weights, [num_items])
        if bool((item_weights < 0).any()):
            raise ValueError("item_weights: must be non-negative")
    return num_items


def validate_model_inputs(
    config: MARNConfig,
    item_sparse: KeyedJaggedTensor,
    item_title: Optional[KeyedJaggedTensor],
    item_image: Optional[torch.Tensor],
    candidate_index: torch.Tensor,
    history_index: torch.Tensor,
    history_lengths: torch.Tensor,
    history_property: KeyedJaggedTensor,
) -> int:
    """Raises ``ValueError`` on bad inputs of :class:`~marn_rec.models.marn.MARN`; returns B."""
    b = _check_int("candidate_index", candidate_index).numel()
    if b == 0:
        raise ValueError("batch: empty (no samples); skip it instead of feeding it to the model")
    num_items = validate_tower_inputs(config.tower, item_sparse, item_title, item_image)
    check_index("candidate_index", candidate_index, b, num_items, "rows of the unique items")
    t = config.behavior.max_length
    check_index(
        "history_lengths", history_lengths, b, t + 1, f"behaviours per sample, max_length {t}"
    )
    n = int(history_lengths.sum())
    check_index("history_index", history_index, n, num_items, "rows of the unique items")
    if config.sequence == "apgru":
        c = config.behavior
        rows = {BEHAVIOR_TYPE: c.num_behavior_types, BEHAVIOR_TIME: c.num_time_buckets}
        # An empty history still carries one placeholder behaviour (see marn_rec.batch).
        check_kjt("history_property", history_property, rows, max(n, 1), rows)
    return b


def validate_batch(batch: "MARNBatch", config: MARNConfig) -> "MARNBatch":
    """Checks every input of ``batch`` for a model of ``config``; returns the batch with its KJTs
    holding exactly the model's features in the model's order (extra features dropped).

    Call it on every batch before it is moved, pipelined or fed to the model (the training loop
    does).

    Example::

        batch = validate_batch(batch, config)
        loss, (loss_detached, logits, labels) = MARNTrain(MARN(config, validate=False))(batch)

    Raises:
        ValueError: naming the input, the feature and the problem.
    """
    from marn_rec.batch import MARNBatch

    if not isinstance(batch, MARNBatch):
        raise ValueError(f"batch: expected a MARNBatch, got {type(batch).__name__}")
    b = validate_model_inputs(config, **batch.model_inputs())
    check_labels(batch.labels, b)
    check_index("user_ids", batch.user_ids, b, 2**62, "user of each sample")
    for key, value in batch.meta.items():
        _check_tensor(f"meta[{key!r}]", value)
        if value.shape[:1] != (b,):
            raise ValueError(f"meta[{key!r}]: expected {b} rows, got shape {list(value.shape)}")
    tower = config.tower
    changes = {}
    sparse_keys = list(sparse_feature_rows(tower))
    if sparse_keys:
        changes["item_sparse"] = select_features(batch.item_sparse, sparse_keys)
    if TITLE in tower.modalities and batch.item_title is not None:
        changes["item_title"] = select_features(batch.item_title, [TITLE_WORDS])
    if config.sequence == "apgru":
        changes["history_property"] = select_features(
            batch.history_property, [BEHAVIOR_TYPE, BEHAVIOR_TIME]
        )
    changes = {k: v for k, v in changes.items() if v is not getattr(batch, k)}
    return replace(batch, **changes) if changes else batch


def validated_batches(batches: Iterable["MARNBatch"], config: MARNConfig) -> Iterator["MARNBatch"]:
    """``batches`` passed through :func:`validate_batch`: put it between a data loader and a
    train pipeline, which moves and starts the lookups of batches ahead of the forward.

    Example::

        pipeline = TrainPipelineSparseDist(dmp, optimizer, device)
        batches = validated_batches(loader, config)
        loss_detached, logits, labels = pipeline.progress(batches)
    """
    for batch in batches:
        yield validate_batch(batch, config)
