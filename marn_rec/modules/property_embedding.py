"""Behaviour property embedding (paper 3.1.2): behaviour type and time since it, ``p_t``."""

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.config import BehaviorConfig
from marn_rec.features import PROPERTY_FEATURES, property_tables


class PropertyEmbedding(nn.Module):
    """Looks up the type and time-bucket embeddings of each behaviour and concatenates them.

    Args:
        config (BehaviorConfig): table sizes.
        device (torch.device | None): ``meta`` for deferred initialisation by DMP.

    Example::

        emb = PropertyEmbedding(BehaviorConfig())
        p = emb(history_property)  # [N, behavior_type_dim + time_dim]
    """

    def __init__(self, config: BehaviorConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=property_tables(config), device=device)
        self.output_dim: int = config.behavior_type_dim + config.time_dim

    def forward(self, history_property: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            history_property (KeyedJaggedTensor): behavior_type and behavior_time, one value per
                behaviour (stride N; a batch without behaviours carries one placeholder, see
                :mod:`marn_rec.batch`).

        Returns:
            torch.Tensor: [stride, output_dim].
        """
        pooled = self.ebc(history_property).to_dict()
        return torch.cat([pooled[f] for f in PROPERTY_FEATURES], dim=1)
