"""Modality embedding layer (paper 3.1.1) and the projection of every modality to one size (3.2).

IDs (eq. 1) and statistic buckets are pooled lookups in one ``EmbeddingBagCollection``; title words
are a sequence lookup in an ``EmbeddingCollection`` followed by :class:`TitleCNN`; the image vector
is a dense input. DistributedModelParallel shards both collections with the default sharders.
"""

from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.config import IDS, IMAGE, STATISTIC, TITLE, ItemTowerConfig
from marn_rec.features import (
    TITLE_WORDS,
    id_feature_names,
    id_tables,
    statistic_features,
    statistic_tables,
    title_table,
)
from marn_rec.modules.title_cnn import TitleCNN


class ModalityEmbedding(nn.Module):
    """Embeds each modality of an item and projects it to ``modality_dim``: ``e_m`` of 3.2.

    Args:
        config (ItemTowerConfig): sizes and the modalities to embed.
        device (torch.device | None): ``meta`` to let DistributedModelParallel place the tables.

    Example::

        emb = ModalityEmbedding(tiny().tower)
        e = emb(item_sparse, item_title, item_image)  # [U, M, modality_dim]
    """

    def __init__(self, config: ItemTowerConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.modalities = tuple(config.modalities)
        self._title_length = config.title_length
        bag_tables = []
        if IDS in self.modalities:
            bag_tables += id_tables(config)
        if STATISTIC in self.modalities:
            bag_tables += statistic_tables(config)
        # Only the tables of the configured modalities exist, so DDP sees no unused parameters.
        self.ebc: EmbeddingBagCollection | None = (
            EmbeddingBagCollection(tables=bag_tables, device=device) if bag_tables else None
        )
        self.ec: EmbeddingCollection | None = None
        self.title_cnn: TitleCNN | None = None
        if TITLE in self.modalities:
            self.ec = EmbeddingCollection(tables=[title_table(config)], device=device)
            self.title_cnn = TitleCNN(
                config.word_dim, config.title_windows, config.title_filters, device=device
            )
        self._id_features: List[str] = id_feature_names(config)
        self._stat_features: List[str] = statistic_features(config)
        input_dims: Dict[str, int] = {
            IDS: sum(f.embedding_dim for f in config.item_id_features()),
            IMAGE: config.image_dim,
            TITLE: self.title_cnn.output_dim if self.title_cnn is not None else 0,
            STATISTIC: config.num_statistics * len(config.statistic_buckets) * config.statistic_dim,
        }
        self.projections = nn.ModuleDict(
            {
                m: nn.Linear(input_dims[m], config.modality_dim, device=device)
                for m in self.modalities
            }
        )

    def forward(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor] = None,
        item_image: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            item_sparse (KeyedJaggedTensor): ID and statistic features, stride U.
            item_title (KeyedJaggedTensor | None): title words, stride U (title modality only).
            item_image (torch.Tensor | None): [U, image_dim] image vectors (image modality only).

        Returns:
            torch.Tensor: [U, M, modality_dim], modalities in ``config.modalities`` order.
        """
        raw: Dict[str, torch.Tensor] = {}
        if self.ebc is not None:
            pooled = self.ebc(item_sparse).to_dict()
            if IDS in self.modalities:
                raw[IDS] = torch.cat([pooled[f] for f in self._id_features], dim=1)
            if STATISTIC in self.modalities:
                raw[STATISTIC] = torch.cat([pooled[f] for f in self._stat_features], dim=1)
        if self.ec is not None and self.title_cnn is not None:
            assert item_title is not None, "the title modality needs item_title"
            words = self.ec(item_title)[TITLE_WORDS]
            # Titles are padded (or truncated) to h words with zero vectors, as in Kim's CNN; the
            # CNN pools only over the windows inside each title, so it needs the lengths.
            padded = words.to_padded_dense(desired_length=self._title_length)
            raw[TITLE] = self.title_cnn(padded, words.lengths())
        if IMAGE in self.modalities:
            assert item_image is not None, "the image modality needs item_image"
            raw[IMAGE] = item_image
        return torch.stack([self.projections[m](raw[m]) for m in self.modalities], dim=1)
