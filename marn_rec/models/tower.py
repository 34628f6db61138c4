"""MARNTower: the multimodal item tower (paper 3.1.1 + 3.2 + 3.3), ``rep = s + c``.

Usable on its own inside any TorchRec model: its ID, statistic and title-word tables are plain
``EmbeddingBagCollection`` / ``EmbeddingCollection`` modules, so DistributedModelParallel shards them
with the default sharders. It returns one representation per input item and its auxiliary
(adversarial) losses, unweighted; add them to the model's loss with :func:`marn_rec.models.loss.marn_loss`.

When integrating: a sharded ``EmbeddingBagCollection`` orders its output features by the rank that
holds each table, not as the unsharded one does; read a ``KeyedTensor`` by name (``to_dict()``),
never by position in ``values()``, as this tower does.
"""

from typing import Dict, NamedTuple, Optional

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.config import IDS, IMAGE, STATISTIC, TITLE, ItemTowerConfig
from marn_rec.features import ID_FEATURES, TITLE_WORDS, statistic_feature
from marn_rec.modules.ddma import DoubleDiscriminatorAdversarial, ModalityAdversarial
from marn_rec.modules.maf import MultimodalAttentionFusion, SumFusion
from marn_rec.modules.modality_embedding import ModalityEmbedding
from marn_rec.modules.projection import ModalityProjection
from marn_rec.validation import check_float_matrix, check_kjt


class TowerOutput(NamedTuple):
    representation: torch.Tensor  # [U, hidden_dim], rep = s + c
    losses: Dict[str, torch.Tensor]  # auxiliary losses: "d0", "adv", "ds" (those configured)
    modality_weights: Optional[torch.Tensor]  # [U, M] DDMA's w_m, None without adversary


class MARNTower(nn.Module):
    """Multimodal adversarial item representation.

    Modality embedding -> ``s_m = S_m(e_m)``, ``c_m = I(e_m)`` -> MAF fuses the ``s_m`` into ``s``
    (eq. 2-3) -> DDMA gives ``c = max_m(w_m c_m)`` and its losses (eq. 7, 10) -> ``rep = s + c``.
    ``config.fusion`` and ``config.adversarial`` select the Table 3 ablations.

    Args:
        config (ItemTowerConfig): sizes, modalities, fusion and adversarial network.
        device (torch.device | None): ``meta`` for deferred initialisation by DMP.
        validate (bool): check inputs and raise ``ValueError`` on bad ones (see
            :mod:`marn_rec.validation`); costs one pass over the IDs.

    Example::

        tower = MARNTower(tiny().tower)
        out = tower(item_sparse, item_title, item_image)
        score = (user_embedding * out.representation).sum(-1)
        loss = bce(score, labels) + sum(out.losses.values())
    """

    def __init__(
        self,
        config: ItemTowerConfig,
        device: torch.device | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.validate = validate
        m = len(config.modalities)
        self.embedding = ModalityEmbedding(config, device=device)
        self.projection = ModalityProjection(
            m,
            config.modality_dim,
            config.hidden_dim,
            with_invariant=config.adversarial != "none",
            device=device,
        )
        self.fusion: nn.Module = (
            MultimodalAttentionFusion(m, config.hidden_dim, device=device)
            if config.fusion == "maf"
            else SumFusion()
        )
        self.adversarial: nn.Module | None = None
        if config.adversarial == "ddma":
            self.adversarial = DoubleDiscriminatorAdversarial(m, config.hidden_dim, device=device)
        elif config.adversarial == "adv":
            self.adversarial = ModalityAdversarial(m, config.hidden_dim, device=device)
        self._rows: Dict[str, int] = {}
        if IDS in config.modalities:
            rows = (config.num_items, config.num_shops, config.num_brands, config.num_categories)
            self._rows.update(zip(ID_FEATURES, rows))
        if STATISTIC in config.modalities:
            for stat in range(config.num_statistics):
                for buckets in config.statistic_buckets:
                    self._rows[statistic_feature(stat, buckets)] = buckets

    @property
    def output_dim(self) -> int:
        return self.config.hidden_dim

    def check_inputs(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor],
        item_image: Optional[torch.Tensor],
    ) -> int:
        """Raises ``ValueError`` on bad item inputs; returns the number of items U."""
        c = self.config
        num_items: Optional[int] = None
        if self._rows:
            num_items = check_kjt("item_sparse", item_sparse, self._rows, None, self._rows)
        if TITLE in c.modalities:
            if item_title is None:
                raise ValueError("item_title: required by the title modality, got None")
            num_items = check_kjt(
                "item_title", item_title, {TITLE_WORDS: c.title_vocab_size}, num_items
            )
        if IMAGE in c.modalities:
            if item_image is None:
                raise ValueError("item_image: required by the image modality, got None")
            rows = item_image.shape[0] if num_items is None else num_items
            check_float_matrix("item_image", item_image, rows, c.image_dim)
            num_items = rows
        assert num_items is not None  # config validation guarantees one modality
        return num_items

    def forward(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor] = None,
        item_image: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
    ) -> TowerOutput:
        """
        Args:
            item_sparse (KeyedJaggedTensor): ID features (item_id, shop_id, brand_id,
                category_id) and statistic buckets (``stat{k}_b{buckets}``), one value per item.
            item_title (KeyedJaggedTensor | None): ``title_words`` of each item.
            item_image (torch.Tensor | None): [U, image_dim] image vectors.
            item_weights (torch.Tensor | None): [U] how many slots of the batch each item fills;
                weights the auxiliary losses so that a deduplicated batch has the objective of the
                per-slot batch. None: every item once.

        Returns:
            TowerOutput: representation [U, hidden_dim], auxiliary losses, DDMA weights.
        """
        if self.validate:
            self.check_inputs(item_sparse, item_title, item_image)
        e = self.embedding(item_sparse, item_title, item_image)
        specific = self.projection.specific(e)
        s = self.fusion(specific)
        if self.adversarial is None:
            return TowerOutput(s, {}, None)
        # Ds must not train the embedding layer (eq. 10): it sees S_m of detached embeddings.
        specific_detached = (
            self.projection.specific(e.detach()) if self.config.adversarial == "ddma" else None
        )
        adv = self.adversarial(self.projection.invariant(e), specific_detached, item_weights)
        return TowerOutput(s + adv.invariant, adv.losses, adv.modality_weights)
