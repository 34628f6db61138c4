"""Sparse feature names and the tables behind them (paper 3.1).

Every ID-like input is a TorchRec table: ID features and statistic buckets are pooled
(``EmbeddingBagConfig``), title words are a sequence (``EmbeddingConfig``), behaviour properties are
pooled per behaviour. Candidate and history items share the same tables because both are rows of
the batch's unique items (see :mod:`marn_rec.batch`).
"""

from typing import List

import torch
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType

from marn_rec.config import BehaviorConfig, ItemTowerConfig

ITEM_ID = "item_id"
SHOP_ID = "shop_id"
BRAND_ID = "brand_id"
CATEGORY_ID = "category_id"
ID_FEATURES = (ITEM_ID, SHOP_ID, BRAND_ID, CATEGORY_ID)  # Taobao's; data sets may have others
TITLE_WORDS = "title_words"
BEHAVIOR_TYPE = "behavior_type"
BEHAVIOR_TIME = "behavior_time"
PROPERTY_FEATURES = (BEHAVIOR_TYPE, BEHAVIOR_TIME)

# Behaviour types (3.1.2), in table row order.
CLICK, CART, PURCHASE = 0, 1, 2


def statistic_feature(stat: int, buckets: int) -> str:
    """Name of statistic ``stat`` discretised into ``buckets`` buckets."""
    return f"stat{stat}_b{buckets}"


def statistic_features(config: ItemTowerConfig) -> List[str]:
    return [
        statistic_feature(s, b)
        for s in range(config.num_statistics)
        for b in config.statistic_buckets
    ]


def id_feature_names(config: ItemTowerConfig) -> List[str]:
    return [f.name for f in config.item_id_features()]


_TABLE_DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16}
TABLE_DTYPES = tuple(_TABLE_DATA_TYPES)  # the values of ItemTowerConfig.table_dtype


def table_data_type(config: ItemTowerConfig) -> DataType:
    """TorchRec's storage type of the item tower's tables (``config.table_dtype``). FBGEMM keeps
    fp16 weights with an fp32 output and an fp32 row-wise AdaGrad state."""
    return _TABLE_DATA_TYPES[config.table_dtype]


def id_tables(config: ItemTowerConfig) -> List[EmbeddingBagConfig]:
    """Eq. 1: one table per ID feature; multi-valued features are mean-pooled."""
    return [
        EmbeddingBagConfig(
            name=f"t_{f.name}",
            embedding_dim=f.embedding_dim,
            num_embeddings=f.num_embeddings,
            feature_names=[f.name],
            pooling=PoolingType.MEAN if f.multi_valued else PoolingType.SUM,
            data_type=table_data_type(config),
        )
        for f in config.item_id_features()
    ]


def statistic_tables(config: ItemTowerConfig) -> List[EmbeddingBagConfig]:
    """3.1.1: one small table per (statistic, granularity)."""
    return [
        EmbeddingBagConfig(
            name=f"t_{statistic_feature(s, b)}",
            embedding_dim=config.statistic_dim,
            num_embeddings=b,
            feature_names=[statistic_feature(s, b)],
            data_type=table_data_type(config),
        )
        for s in range(config.num_statistics)
        for b in config.statistic_buckets
    ]


def title_table(config: ItemTowerConfig) -> EmbeddingConfig:
    return EmbeddingConfig(
        name=f"t_{TITLE_WORDS}",
        embedding_dim=config.word_dim,
        num_embeddings=config.title_vocab_size,
        feature_names=[TITLE_WORDS],
        data_type=table_data_type(config),
    )


def property_tables(config: BehaviorConfig) -> List[EmbeddingBagConfig]:
    """3.1.2: behaviour type and (bucketised) time since the behaviour."""
    return [
        EmbeddingBagConfig(
            name=f"t_{BEHAVIOR_TYPE}",
            embedding_dim=config.behavior_type_dim,
            num_embeddings=config.num_behavior_types,
            feature_names=[BEHAVIOR_TYPE],
        ),
        EmbeddingBagConfig(
            name=f"t_{BEHAVIOR_TIME}",
            embedding_dim=config.time_dim,
            num_embeddings=config.num_time_buckets,
            feature_names=[BEHAVIOR_TIME],
        ),
    ]


def bucketize_time_gap(seconds: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Seconds since a behaviour -> log2 bucket in ``[0, num_buckets)``.

    Bucket 0 holds gaps under 2 s; each further bucket doubles; the last one takes everything longer.
    """
    if (seconds < 0).any():
        raise ValueError(f"{BEHAVIOR_TIME}: negative time since behaviour")
    b = torch.floor(torch.log2(seconds.double().clamp_min(1.0))).long()
    return b.clamp_(0, num_buckets - 1)


def bucketize_statistic(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """A numeric statistic -> bucket index, by the ascending ``boundaries`` (len = buckets - 1).

    Multi-granularity discretisation (3.1.1) calls this twice with 9 and 99 boundaries, usually
    quantiles of the statistic over the items, so that buckets hold similar numbers of items.
    """
    return torch.bucketize(values, boundaries, right=True)


def quantile_boundaries(values: torch.Tensor, buckets: int) -> torch.Tensor:
    """``buckets - 1`` ascending quantile boundaries of ``values`` (equal-frequency buckets)."""
    q = torch.linspace(0, 1, buckets + 1, dtype=torch.float64)[1:-1]
    return torch.quantile(values.double(), q).to(values.dtype)

