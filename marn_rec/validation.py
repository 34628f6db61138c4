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
- float inputs (images, item weights, labels) must be float32, finite, and (images, item weights)
  within :data:`MAX_ABS_FLOAT`;
- index inputs (KJT values, lengths and offsets, slot indices, history lengths, user IDs) must be
  int32 or int64;
- every tensor must be a plain dense (strided) tensor holding values: not on the ``meta`` device,
  not sparse, not nested; all of a batch's tensors on one device (non-contiguous views are fine);
- lengths are bounded before they are summed (no int64 overflow is possible);
- ``history_lengths`` are at most ``BehaviorConfig.max_length`` (the model pads to it);
- a batch has at least one sample and a tower input at least one item;
- a KJT has no duplicate keys, no per-value weights (the model's tables are unweighted), no
  variable batch size per feature, no inverse indices, and the derived values it may carry (stride,
  stride / length / offset per key, key index, the per-feature views ``to_dict()`` caches) agree with
  its keys, values and lengths: TorchRec's kernels read those instead of recomputing them;
- ``MARNBatch.meta`` is a dict of tensors with one row per sample.
"""

from dataclasses import replace
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Optional, Sequence

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

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
    if t.is_nested:
        raise ValueError(f"{name}: is a nested tensor; expected a dense one")
    if t.layout != torch.strided:
        raise ValueError(f"{name}: has layout {t.layout}; expected a dense (strided) tensor")
    if t.device.type == "meta":
        raise ValueError(f"{name}: is on the meta device, which holds no values to train on")
    return t.detach()


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
                f"{name}: values up to {big:.6g} in magnitude; at most {MAX_ABS_FLOAT:g} is "
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
    rows_are: str = "items",
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
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{name}: keys must be a list of feature names, got {keys!r}")
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"{name}: duplicate feature keys {dup}")
    missing = [f for f in rows_per_feature if f not in keys]
    if missing:
        raise ValueError(f"{name}: missing features {missing}; it has {keys}")
    # Read before lengths(), which derives (and caches) lengths from offsets.
    raw_offsets = kjt.offsets_or_none()
    if kjt.lengths_or_none() is None and raw_offsets is None:
        raise ValueError(f"{name}: has neither lengths nor offsets")
    if kjt.weights_or_none() is not None:
        raise ValueError(f"{name}: has per-value weights, which the model's tables do not read")
    if kjt.variable_stride_per_key():
        raise ValueError(f"{name}: variable batch size per feature is not supported")
    if kjt.inverse_indices_or_none() is not None:
        raise ValueError(f"{name}: inverse indices (variable batch size) are not supported")
    values = _check_int(f"{name} values", kjt.values())
    if raw_offsets is not None:
        _check_int(f"{name} offsets", raw_offsets)
    lengths = _check_int(f"{name} lengths", kjt.lengths())
    if lengths.dim() != 1 or values.dim() != 1:
        raise ValueError(f"{name}: lengths and values must be 1-d")
    if lengths.numel() % max(len(keys), 1):
        raise ValueError(
            f"{name}: {lengths.numel()} lengths are not a whole number per feature "
            f"for {len(keys)} features"
        )
    own_stride = lengths.numel() // max(len(keys), 1)
    if stride is not None and own_stride != stride:
        raise ValueError(f"{name}: batch size {own_stride} does not match the {stride} {rows_are}")
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
    if raw_offsets is not None:
        offsets = _check_int(f"{name} offsets", kjt.offsets())
        expected = torch.ops.fbgemm.asynchronous_complete_cumsum(lengths.long())
        if offsets.shape != expected.shape or not bool((offsets.long() == expected).all()):
            raise ValueError(f"{name}: offsets do not match lengths")
    per_key_lengths = lengths.reshape(len(keys), own_stride)
    length_per_key = per_key_lengths.sum(dim=1).tolist()
    per_key_values = torch.split(values, length_per_key)
    _check_kjt_caches(name, kjt, own_stride, length_per_key, per_key_lengths, per_key_values)
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


def _check_kjt_caches(
    name: str,
    kjt: KeyedJaggedTensor,
    stride: int,
    length_per_key: List[int],
    per_key_lengths: torch.Tensor,
    per_key_values: Sequence[torch.Tensor],
) -> None:
    """The values a KJT derives from its keys and lengths and may carry precomputed (constructor
    arguments, or caches filled by earlier calls) agree with them: TorchRec's lookups read these
    (an EmbeddingBagCollection reads ``to_dict()``'s cache, a sharded one splits by
    ``length_per_key``), so a wrong one reads other features' values or out of bounds.

    Only values the KJT already holds are read (its attributes, not the methods that compute and
    cache them): a check must not fill caches, which would, e.g., turn the dynamic sizes of a
    ``torch.export`` example into constants."""
    keys = kjt.keys()
    n = len(keys)
    declared = getattr(kjt, "_stride", None)
    if declared is not None and declared != stride:
        raise ValueError(
            f"{name}: declares batch size {declared} but its lengths give {stride} per feature"
        )
    declared = getattr(kjt, "_stride_per_key", None)
    if declared is not None and list(declared) != [stride] * n:
        raise ValueError(f"{name}: stride per key {list(declared)} does not match {stride}")
    offset_per_key = [0]
    for length in length_per_key:
        offset_per_key.append(offset_per_key[-1] + length)
    declared = kjt.length_per_key_or_none()
    if declared is not None and list(declared) != length_per_key:
        raise ValueError(f"{name}: length per key {list(declared)} does not match its lengths")
    declared = kjt.offset_per_key_or_none()
    if declared is not None and list(declared) != offset_per_key:
        raise ValueError(f"{name}: offset per key {list(declared)} does not match its lengths")
    declared = getattr(kjt, "_lengths_offset_per_key", None)
    if declared is not None and list(declared) != [i * stride for i in range(n + 1)]:
        raise ValueError(f"{name}: lengths offset per key does not match its batch size")
    declared = getattr(kjt, "_index_per_key", None)
    if declared is not None and dict(declared) != {k: i for i, k in enumerate(keys)}:
        raise ValueError(f"{name}: index per key does not match its keys")
    jt_dict = getattr(kjt, "_jt_dict", None)  # filled by to_dict(), or given to the constructor
    if jt_dict is None:
        return
    if not isinstance(jt_dict, dict) or sorted(jt_dict) != sorted(keys):
        raise ValueError(f"{name}: its per-feature views (to_dict()) do not match its keys")
    for i, key in enumerate(keys):
        jt = jt_dict[key]
        ok = isinstance(jt, JaggedTensor) and jt.weights_or_none() is None
        if ok:
            v = _check_int(f"{name} values of '{key}'", jt.values())
            jl = _check_int(f"{name} lengths of '{key}'", jt.lengths())
            o = jt.offsets_or_none()
            ok = (
                v.shape == per_key_values[i].shape
                and bool((v == per_key_values[i]).all())
                and jl.shape == per_key_lengths[i].shape
                and bool((jl == per_key_lengths[i]).all())
            )
            if ok and o is not None:
                o = _check_int(f"{name} offsets of '{key}'", o)
                expected = torch.ops.fbgemm.asynchronous_complete_cumsum(jl.long())
                ok = o.shape == expected.shape and bool((o.long() == expected).all())
        if not ok:
            raise ValueError(
                f"{name}: feature '{key}' of its per-feature views (to_dict()) does not match "
                "its values and lengths"
            )


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
    if num_items == 0:
        raise ValueError("items: none (U = 0); skip the input instead of feeding it to the tower")
    if item_weights is not None:
        check_float_tensor("item_weights", item_weights, [num_items])
        if bool((item_weights < 0).any()):
            raise ValueError("item_weights: must be non-negative")
    _check_one_device(
        {
            "item_sparse": item_sparse if rows else None,
            "item_title": item_title if TITLE in config.modalities else None,
            "item_image": item_image if IMAGE in config.modalities else None,
            "item_weights": item_weights,
        }
    )
    return num_items


def _check_one_device(inputs: Dict[str, object]) -> None:
    """All tensors (and KJT values) of ``inputs`` that are not None live on one device."""
    first: Optional[str] = None
    device: Optional[torch.device] = None
    for name, value in inputs.items():
        t = value.values() if isinstance(value, KeyedJaggedTensor) else value
        if not isinstance(t, torch.Tensor):
            continue
        if device is None:
            first, device = name, t.device
        elif t.device != device:
            raise ValueError(f"{name}: is on {t.device} but {first} is on {device}")


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
    inputs: Dict[str, object] = {
        "item_sparse": item_sparse if sparse_feature_rows(config.tower) else None,
        "item_title": item_title if TITLE in config.tower.modalities else None,
        "item_image": item_image if IMAGE in config.tower.modalities else None,
        "candidate_index": candidate_index,
        "history_index": history_index,
        "history_lengths": history_lengths,
    }
    if config.behavior_property:
        c = config.behavior
        rows = {BEHAVIOR_TYPE: c.num_behavior_types, BEHAVIOR_TIME: c.num_time_buckets}
        # An empty history still carries one placeholder behaviour (see marn_rec.batch).
        check_kjt("history_property", history_property, rows, max(n, 1), rows, rows_are="behaviours")
        inputs["history_property"] = history_property
    _check_one_device(inputs)
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
    _check_field_types(batch)
    b = validate_model_inputs(config, **batch.model_inputs())
    check_labels(batch.labels, b)
    check_index("user_ids", batch.user_ids, b, 2**62, "user of each sample")
    for key, value in batch.meta.items():
        _check_tensor(f"meta[{key!r}]", value)
        if value.shape[:1] != (b,):
            raise ValueError(f"meta[{key!r}]: expected {b} rows, got shape {list(value.shape)}")
    _check_one_device({"candidate_index": batch.candidate_index, "labels": batch.labels})
    tower = config.tower
    changes = {}
    sparse_keys = list(sparse_feature_rows(tower))
    if sparse_keys:
        changes["item_sparse"] = select_features(batch.item_sparse, sparse_keys)
    if TITLE in tower.modalities and batch.item_title is not None:
        changes["item_title"] = select_features(batch.item_title, [TITLE_WORDS])
    if config.behavior_property:
        changes["history_property"] = select_features(
            batch.history_property, [BEHAVIOR_TYPE, BEHAVIOR_TIME]
        )
    changes = {k: v for k, v in changes.items() if v is not getattr(batch, k)}
    return replace(batch, **changes) if changes else batch


def _check_field_types(batch: "MARNBatch") -> None:
    """Every field of ``batch`` has its type, also those the configured model does not read:
    train pipelines move, pin and record every field (``MARNBatch.to``)."""
    for name in ("item_sparse", "item_title", "history_property"):
        kjt = getattr(batch, name)
        if kjt is None and name != "item_sparse":
            continue
        if not isinstance(kjt, KeyedJaggedTensor):
            raise ValueError(f"{name}: expected a KeyedJaggedTensor, got {type(kjt).__name__}")
        for part in ("values", "lengths", "offsets", "weights"):
            t = getattr(kjt, f"{part}_or_none")() if part != "values" else kjt.values()
            if t is not None:
                _check_tensor(f"{name} {part}", t)
    if batch.item_image is not None:
        _check_tensor("item_image", batch.item_image)
    for name in ("candidate_index", "history_index", "history_lengths", "labels", "user_ids"):
        _check_tensor(name, getattr(batch, name))
    if not isinstance(batch.meta, dict):
        raise ValueError(f"meta: expected a dict of tensors, got {type(batch.meta).__name__}")
    for key in batch.meta:
        if not isinstance(key, str):
            raise ValueError(f"meta: keys must be strings, got {key!r}")


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
