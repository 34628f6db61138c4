"""Preparation: a raw directory in the user format -> a prepared directory of training samples.

``prepare(raw_dir, out_dir, PrepareConfig(...))`` maps raw IDs to table rows with saved
vocabularies, discretises item statistics of the training period, tokenises titles, and turns the
behaviour log into DIN-protocol samples (candidate, label, history with behaviour types and time
buckets) in bounded memory. The prepared format is described in :mod:`.layout`; the knobs and the
protocol in :class:`PrepareConfig`; :mod:`marn_rec.data.prepared` loads the result.

Modules: ``config`` (PrepareConfig), ``layout`` (names of the prepared format), ``items`` (item
rows, vocabularies, titles, statistics), ``partition`` (pass 1: stream and hash-partition the log
by user), ``samples`` (pass 2: one user shard at a time -> samples), ``pipeline`` (pass 3 and
``prepare``).
"""

from marn_rec.data.prepare.config import PrepareConfig
from marn_rec.data.prepare.items import tokenize
from marn_rec.data.prepare.pipeline import prepare

__all__ = ["PrepareConfig", "prepare", "tokenize"]
