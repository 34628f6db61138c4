"""Serving MARN (paper 4.9.2): extract item representations once per catalogue item, then score
requests with APGRU, candidate attention and the prediction MLP only.

Modules: ``weights`` (reading a training checkpoint: configuration, tower, scoring head;
fingerprints), ``sources`` (item feature sources: synthetic catalogue, prepared item table),
``store`` (the memory-mapped representation store, fp32 / fp16 / row-wise int8), ``extract``
(the tower over a catalogue, one process or DMP ranks), ``head`` (the TorchRec-free scoring head),
``scorer`` (requests: checks, store lookups, missing items), ``export`` (``torch.export`` and
AOTInductor), ``benchmark`` and ``bench_cli`` (``benchmarks/serving.py``), ``cli`` (the examples).
"""

from marn_rec.serving.head import ScoringHead, head_from_marn
from marn_rec.serving.scorer import MARNScorer, UnknownItemsError, load_head, load_scorer, scorer_from_marn
from marn_rec.serving.sources import ItemSource, prepared_source, source_from_checkpoint_meta, synthetic_source
from marn_rec.serving.store import RepresentationStore, StoreError
from marn_rec.serving.weights import CheckpointInfo, config_fingerprint, head_fingerprint

__all__ = [
    "CheckpointInfo",
    "ItemSource",
    "MARNScorer",
    "RepresentationStore",
    "ScoringHead",
    "StoreError",
    "UnknownItemsError",
    "config_fingerprint",
    "head_fingerprint",
    "head_from_marn",
    "load_head",
    "load_scorer",
    "prepared_source",
    "scorer_from_marn",
    "source_from_checkpoint_meta",
    "synthetic_source",
]
