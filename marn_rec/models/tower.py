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

from marn_rec.config import ItemTowerConfig
from marn_rec.modules.ddma import DoubleDiscriminatorAdversarial, ModalityAdversarial, item_mean
from marn_rec.modules.maf import MultimodalAttentionFusion, SumFusion
from marn_rec.modules.modality_embedding import ModalityEmbedding
from marn_rec.modules.projection import ModalityProjection
from marn_rec.validation import is_tracing, validate_tower_inputs


# The auxiliary losses of each adversarial network (eq. 10), in a fixed order. "d1" and "adv" are
# the two sides of L_ADV's game (D1's and I's, see marn_rec.modules.ddma).
_LOSS_NAMES = {"ddma": ("d0", "d1", "adv", "ds"), "adv": ("d1", "adv")}


class TowerOutput(NamedTuple):
    representation: torch.Tensor  # [U, hidden_dim], rep = s + c
    # auxiliary losses: "d0", "d1", "adv", "ds" (those configured; see marn_rec.modules.ddma)
    losses: Dict[str, torch.Tensor]
    modality_weights: Optional[torch.Tensor]  # [U, M] DDMA's w_m, None without adversary
    # Detached 0-d tensors that show the adversarial game, for logging (empty while tracing):
    # s_rms, c_rms: rms of s and c (rep = s + c); w_mean, w_mean_<modality>: DDMA's w_m;
    # d0_accuracy, d1_accuracy, ds_accuracy: share of (item, modality) pairs each discriminator
    # classifies right (chance 1/M); d1_ce: D1's unweighted cross-entropy on the c_m (ln M when
    # confused, above it when confidently wrong). Items weighted by their slot counts.
    diagnostics: Dict[str, torch.Tensor] = {}


class MARNTower(nn.Module):
    """Multimodal adversarial item representation.

    Modality embedding -> ``s_m = S_m(e_m)``, ``c_m = I(e_m)`` -> MAF fuses the ``s_m`` into ``s``
    (eq. 2-3) -> DDMA gives ``c = max_m(w_m c_m)`` and its losses (eq. 7, 10) -> ``rep = s + c``.
    ``config.fusion`` and ``config.adversarial`` select the Table 3 ablations.

    Args:
        config (ItemTowerConfig): features, sizes, modalities, fusion and adversarial network.
        device (torch.device | None): ``meta`` for deferred initialisation by DMP.
        validate (bool): check inputs in eager ``forward`` and raise ``ValueError`` on bad ones
            (:func:`marn_rec.validation.validate_tower_inputs`; costs one pass over the IDs).
            Skipped while tracing or exporting: validate inputs before they enter a traced model.

    Example::

        tower = MARNTower(tiny().tower)
        batch = random_batch(tiny(), batch_size=4)        # marn_rec.testing
        out = tower(batch.item_sparse, batch.item_title, batch.item_image)
        out.representation.shape                          # [U, 8]
        loss = bce(score, labels) + sum(out.losses.values())
    """

    def __init__(
        self,
        config: ItemTowerConfig,
        device: Optional[torch.device] = None,
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
        self.adversarial: Optional[nn.Module] = None
        if config.adversarial == "ddma":
            self.adversarial = DoubleDiscriminatorAdversarial(m, config.hidden_dim, device=device)
        elif config.adversarial == "adv":
            self.adversarial = ModalityAdversarial(m, config.hidden_dim, device=device)

    @property
    def output_dim(self) -> int:
        return self.config.hidden_dim

    def check_inputs(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor],
        item_image: Optional[torch.Tensor],
        item_weights: Optional[torch.Tensor] = None,
    ) -> int:
        """Raises ``ValueError`` on bad item inputs; returns the number of items U."""
        return validate_tower_inputs(self.config, item_sparse, item_title, item_image, item_weights)

    def forward(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor] = None,
        item_image: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
    ) -> TowerOutput:
        """
        Args:
            item_sparse (KeyedJaggedTensor): the item's ID features (``config.item_id_features()``;
                Taobao's item_id, shop_id, brand_id, category_id by default) and statistic
                buckets (``stat{k}_b{buckets}``), stride U.
            item_title (KeyedJaggedTensor | None): ``title_words`` of each item (title modality).
            item_image (torch.Tensor | None): [U, image_dim] float32 image vectors (image
                modality).
            item_weights (torch.Tensor | None): [U] how many slots of the batch each item fills;
                weights the auxiliary losses so that a deduplicated batch has the objective of the
                per-slot batch. None: every item once.

        Returns:
            TowerOutput: representation [U, hidden_dim], auxiliary losses, DDMA weights,
            diagnostics.
        """
        if self.validate and not is_tracing():
            self.check_inputs(item_sparse, item_title, item_image, item_weights)
        diagnose = not is_tracing()
        e = self.embedding(item_sparse, item_title, item_image)
        if self.adversarial is None:
            s = self.fusion(self.projection.specific(e))
            diagnostics = {"s_rms": _rms(s, item_weights)} if diagnose else {}
            return TowerOutput(s, {}, None, diagnostics)
        # eq. 10: the embedding layer E is trained by L_CTR alone. Ds sees S_m of detached
        # embeddings; D1 and the GRL see I of detached embeddings (L_ADV trains I, not E), while c
        # pools I of the embeddings themselves (L_CTR trains E and I through it). The *_twice
        # projections give both from one projection.
        specific_detached: Optional[torch.Tensor] = None
        if self.config.adversarial == "ddma":
            specific, specific_detached = self.projection.specific_twice(e)
        else:
            specific = self.projection.specific(e)
        s = self.fusion(specific)
        invariant, invariant_detached = self.projection.invariant_twice(e)
        adv = self.adversarial(
            invariant,
            specific_detached,
            item_weights,
            adversarial_input=invariant_detached,
            diagnostics=diagnose,
        )
        # Named one by one: TorchRec's pipeline tracer keeps the (table-free) adversarial module
        # as a leaf, so its output is a proxy whose dict of losses cannot be iterated.
        losses = {name: adv.losses[name] for name in _LOSS_NAMES[self.config.adversarial]}
        diagnostics: Dict[str, torch.Tensor] = {}
        if diagnose:
            diagnostics = self._diagnostics(s, adv.invariant, adv.modality_weights, item_weights)
            diagnostics.update(adv.diagnostics)
        return TowerOutput(s + adv.invariant, losses, adv.modality_weights, diagnostics)

    @torch.no_grad()
    def _diagnostics(
        self,
        s: torch.Tensor,
        c: torch.Tensor,
        weights: torch.Tensor,
        item_weights: Optional[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """The scale of s and c and DDMA's mean w_m (see :class:`TowerOutput`)."""
        out = {"s_rms": _rms(s, item_weights), "c_rms": _rms(c, item_weights)}
        if self.config.adversarial == "ddma":
            out["w_mean"] = item_mean(weights.mean(dim=1), item_weights)
            for k, m in enumerate(self.config.modalities):
                out[f"w_mean_{m}"] = item_mean(weights[:, k], item_weights)
        return out


def _rms(x: torch.Tensor, item_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Root mean square of [U, d] ``x``, items weighted by their slot counts (detached)."""
    return item_mean(x.detach().pow(2).mean(dim=1), item_weights).sqrt()
