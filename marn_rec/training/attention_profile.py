"""Where APGRU's candidate attention (paper 3.4.1) looks, on a trained checkpoint's evaluation data.

For every sample with at least two behaviours, the attention weights ``a_t`` over its behaviours
are summarised as: the weight on the latest behaviour, the normalised entropy ``H(a) / ln L``
(1 = uniform over the L behaviours, 0 = one behaviour), and the mean weight at each distance
from the latest behaviour. Beside each: what a uniform weighting of the same samples gives, the
user embedding the attention starts from (equal scores at initialisation) and the one a plain
GRU's last state replaces (all weight at distance 0).

    profile = attention_profile(model, batches)
    profile["latest_weight"], profile["uniform_latest_weight"], profile["entropy"]
"""

import math
from typing import Any, Dict, Iterable, List, Optional

import torch

from marn_rec.batch import MARNBatch
from marn_rec.validation import validate_batch

DISTANCES = 20  # distances from the latest behaviour reported by default


@torch.no_grad()
def attention_profile(
    model: torch.nn.Module, batches: Iterable[MARNBatch], distances: int = DISTANCES
) -> Dict[str, Any]:
    """The summary of the module docstring over ``batches``, for an unsharded MARN whose
    ``sequence`` has the candidate attention ("apgru" or "agru").

    Returns ``{"samples", "latest_weight", "uniform_latest_weight", "entropy",
    "weight_by_distance": [distances], "uniform_weight_by_distance": [distances],
    "samples_by_distance": [distances], "mean_length"}``.

    Raises:
        ValueError: the model has no candidate attention, or no sample has two behaviours.
    """
    attention = getattr(model, "attention", None)
    if attention is None:
        raise ValueError("attention_profile: the model has no candidate attention "
                         f"(sequence {model.config.sequence!r}; it needs 'apgru' or 'agru')")
    captured: List[torch.Tensor] = []
    lengths_seen: List[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        states, lengths, candidate = args
        captured.append(module.weights(states, lengths, candidate).float().cpu())
        lengths_seen.append(lengths.cpu())

    was_training = model.training
    model.eval()
    handle = attention.register_forward_hook(hook)
    try:
        for batch in batches:
            model(**validate_batch(batch, model.config).model_inputs())
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ValueError("attention_profile: no batches")
    weights = torch.cat(captured)  # every batch is padded to max_length steps
    lengths = torch.cat(lengths_seen)
    keep = lengths >= 2
    if not bool(keep.any()):
        raise ValueError("attention_profile: no sample has two or more behaviours")
    weights, lengths = weights[keep].double(), lengths[keep]
    n, t = weights.shape
    rows = torch.arange(n)
    latest = weights[rows, lengths - 1]
    entropy = -(weights * weights.clamp(min=1e-30).log()).sum(1) / lengths.double().log()
    by_distance, uniform_by_distance, counts = [], [], []
    for d in range(min(distances, t)):
        has = lengths > d
        counts.append(int(has.sum()))
        if not bool(has.any()):
            by_distance.append(math.nan)
            uniform_by_distance.append(math.nan)
            continue
        by_distance.append(float(weights[rows[has], lengths[has] - 1 - d].mean()))
        uniform_by_distance.append(float((1.0 / lengths[has].double()).mean()))
    return {
        "samples": n,
        "mean_length": float(lengths.double().mean()),
        "latest_weight": float(latest.mean()),
        "uniform_latest_weight": float((1.0 / lengths.double()).mean()),
        "entropy": float(entropy.mean()),
        "weight_by_distance": by_distance,
        "uniform_weight_by_distance": uniform_by_distance,
        "samples_by_distance": counts,
    }


def attention_profile_from_checkpoint(
    path: str, data_dir: Optional[str] = None, split: str = "test", batch_size: int = 256,
    distances: int = DISTANCES, verify: bool = True,
) -> Dict[str, Any]:
    """:func:`attention_profile` of a checkpoint, over ``split`` of the prepared directory
    ``data_dir`` it trained on, or (``data_dir`` None) over the ordinary evaluation batches of
    the synthetic stream its ``meta.json`` describes; adds ``"checkpoint"``, ``"step"`` and
    ``"sequence"``."""
    from marn_rec.serving.weights import CheckpointInfo, load_marn

    info = CheckpointInfo(path, verify=verify)
    model = load_marn(info)
    batches: Iterable[MARNBatch]
    if data_dir is None:
        from marn_rec.data.synthetic import SyntheticTaobao
        from marn_rec.serving.sources import synthetic_config_from_meta

        stream = SyntheticTaobao(synthetic_config_from_meta(info.meta["data"]))
        batches = (stream.batch("eval", i) for i in range(stream.config.num_eval_batches))
    else:
        from marn_rec.data.prepared import PreparedBatchDataset, PreparedDataset

        prepared = PreparedBatchDataset(PreparedDataset(data_dir), split, batch_size=batch_size)
        batches = (prepared[i] for i in range(len(prepared)))
    out = attention_profile(model, batches, distances)
    out.update({"checkpoint": info.path, "step": info.step, "sequence": info.config.sequence})
    return out


def plot_attention_profile(profiles: Dict[str, Dict[str, Any]], png_path: str,
                           title: Optional[str] = None) -> None:
    """Mean attention weight against the distance from the latest behaviour, one line per
    profile (label -> :func:`attention_profile` result), and the uniform weighting's."""
    from marn_rec.training.figures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, p in profiles.items():
        ax.plot(range(len(p["weight_by_distance"])), p["weight_by_distance"], marker="o", ms=3,
                label=f"{label} (latest {p['latest_weight']:.2f}, entropy {p['entropy']:.2f})")
    first = next(iter(profiles.values()))
    ax.plot(range(len(first["uniform_weight_by_distance"])), first["uniform_weight_by_distance"],
            "k--", label=f"uniform (latest {first['uniform_latest_weight']:.2f}, entropy 1)")
    ax.set_xlabel("distance from the latest behaviour")
    ax.set_ylabel("mean attention weight")
    ax.set_title(title or "APGRU candidate attention by distance from the latest behaviour")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
