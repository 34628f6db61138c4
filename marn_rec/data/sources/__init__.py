"""Converters from published data sets to the user format ("raw" directory, ``docs/data_format.md``):
Amazon 2014 (reviews, meta, image features) and MovieLens-100K (GroupLens or RecBole layout).

Each converter writes ``items.parquet`` and ``interactions.parquet`` (and ``image_vectors.npy``)
into a directory that :func:`marn_rec.data.schema.validate_raw` accepts, and returns a
:class:`ConversionSummary` of what it wrote, dropped and skipped.
"""

from marn_rec.data.sources.amazon import convert_amazon
from marn_rec.data.sources.common import ERRORS, ConversionSummary
from marn_rec.data.sources.movielens import (
    FetchError,
    convert_grouplens_ml100k,
    convert_movielens,
    convert_recbole_ml100k,
    fetch_recbole_ml100k,
)

__all__ = [
    "ERRORS",
    "ConversionSummary",
    "FetchError",
    "convert_amazon",
    "convert_grouplens_ml100k",
    "convert_movielens",
    "convert_recbole_ml100k",
    "fetch_recbole_ml100k",
]
