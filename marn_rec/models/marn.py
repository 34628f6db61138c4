"""MARN, the whole CTR model (paper Figure 1): item tower, behaviour integration, prediction.

``MARN`` maps a :class:`marn_rec.batch.MARNBatch`'s inputs to click logits; ``MARNTrain`` adds the
loss of eq. 10, the way ``torchrec.models.dlrm.DLRMTrain`` wraps ``DLRM``.
"""

from typing import Dict, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.batch import MARNBatch
from marn_rec.config import MARNConfig
from marn_rec.features import BEHAVIOR_TIME, BEHAVIOR_TYPE
from marn_rec.models.loss import marn_loss
from marn_rec.modules.apgru import APGRU
from marn_rec.modules.candidate_attention import CandidateAttention
from marn_rec.modules.property_embedding import PropertyEmbedding
from marn_rec.models.tower import MARNTower
from marn_rec.validation import check_index, check_kjt, check_labels


class MARNOutput(NamedTuple):
    logits: torch.Tensor  # [B]
    aux_losses: Dict[str, torch.Tensor]  # the tower's, unweighted
    modality_weights: Optional[torch.Tensor]  # [U, M] DDMA's w_m


class MARN(nn.Module):
    """Multimodal adversarial representation network for CTR prediction.

    The item tower (:class:`MARNTower`) runs once per unique item of the batch; candidates and
    behaviours gather their rows. Behaviours are integrated by APGRU with the property term and
    candidate attention (``sequence="apgru"``) or by a plain GRU whose last state is the user
    embedding (``sequence="gru"``, BaseModel). The prediction MLP scores ``[user, candidate]``.

    Args:
        config (MARNConfig): the model; presets in :mod:`marn_rec.config`.
        device (torch.device | None): ``meta`` to build paper-size tables for DMP to place.
        validate (bool): check inputs at the boundary and raise ``ValueError`` on bad ones.

    Example::

        model = MARN(tiny())
        out = model(**batch.model_inputs())
        probabilities = torch.sigmoid(out.logits)
    """

    def __init__(
        self,
        config: MARNConfig,
        device: torch.device | None = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.validate = validate
        # MARN checks the tower's inputs itself (with its own), so the tower does not check twice.
        self.tower = MARNTower(config.tower, device=device, validate=False)
        rep_dim = self.tower.output_dim
        use_apgru = config.sequence == "apgru"
        self.property_embedding: PropertyEmbedding | None = (
            PropertyEmbedding(config.behavior, device=device) if use_apgru else None
        )
        self.behavior = APGRU(
            rep_dim,
            config.gru_hidden_dim,
            self.property_embedding.output_dim if self.property_embedding is not None else 0,
            device=device,
        )
        self.attention: CandidateAttention | None = (
            CandidateAttention(config.gru_hidden_dim, rep_dim, config.attention_mlp, device=device)
            if use_apgru
            else None
        )
        self.over = nn.Sequential(
            MLP(config.gru_hidden_dim + rep_dim, list(config.prediction_mlp), device=device),
            nn.Linear(config.prediction_mlp[-1], 1, device=device),
        )

    def _check_inputs(
        self,
        num_items: int,
        candidate_index: torch.Tensor,
        history_index: torch.Tensor,
        history_lengths: torch.Tensor,
        history_property: KeyedJaggedTensor,
    ) -> None:
        b = candidate_index.numel() if isinstance(candidate_index, torch.Tensor) else -1
        check_index("candidate_index", candidate_index, b, num_items, "rows of the unique items")
        check_index("history_lengths", history_lengths, b, 2**62, "behaviours per sample")
        n = int(history_lengths.sum())
        check_index("history_index", history_index, n, num_items, "rows of the unique items")
        if self.property_embedding is not None:
            c = self.config.behavior
            rows = {BEHAVIOR_TYPE: c.num_behavior_types, BEHAVIOR_TIME: c.num_time_buckets}
            check_kjt("history_property", history_property, rows, n, rows)

    def forward(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: KeyedJaggedTensor,
        item_image: torch.Tensor,
        candidate_index: torch.Tensor,
        history_index: torch.Tensor,
        history_lengths: torch.Tensor,
        history_property: KeyedJaggedTensor,
    ) -> MARNOutput:
        """
        Args:
            item_sparse (KeyedJaggedTensor): ID and statistic features of the U unique items.
            item_title (KeyedJaggedTensor): title words of the unique items.
            item_image (torch.Tensor): [U, image_dim] image vectors of the unique items.
            candidate_index (torch.Tensor): [B] row of each candidate among the unique items.
            history_index (torch.Tensor): [N] rows of the behaviours, sample after sample.
            history_lengths (torch.Tensor): [B] behaviours per sample, N in all.
            history_property (KeyedJaggedTensor): behavior_type, behavior_time per behaviour.

        Returns:
            MARNOutput: logits [B], the tower's auxiliary losses and DDMA weights.
        """
        if self.validate:
            num_items = self.tower.check_inputs(item_sparse, item_title, item_image)
            self._check_inputs(
                num_items, candidate_index, history_index, history_lengths, history_property
            )
        slots = torch.cat([candidate_index, history_index])
        # An item's slot count weights the auxiliary losses: deduplication leaves them unchanged.
        item_weights = torch.bincount(slots, minlength=item_image.shape[0]).to(item_image.dtype)
        tower = self.tower(item_sparse, item_title, item_image, item_weights)
        rep = tower.representation
        candidate = rep.index_select(0, candidate_index)
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(history_lengths)
        # One step at least, so that every parameter takes part in every step (DDP static graph).
        steps = max(int(history_lengths.max()) if history_lengths.numel() else 0, 1)
        history = torch.ops.fbgemm.jagged_to_padded_dense(
            rep.index_select(0, history_index), [offsets], [steps], 0.0
        )
        properties = None
        if self.property_embedding is not None:
            properties = torch.ops.fbgemm.jagged_to_padded_dense(
                self.property_embedding(history_property), [offsets], [steps], 0.0
            )
        states, last = self.behavior(history, history_lengths, properties)
        user = self.attention(states, history_lengths, candidate) if self.attention else last
        logits = self.over(torch.cat([user, candidate], dim=1)).squeeze(1)
        return MARNOutput(logits, tower.losses, tower.modality_weights)


class MARNTrain(nn.Module):
    """MARN with the loss of eq. 10, for DistributedModelParallel and training loops.

    Args:
        model (MARN): the model to train.

    Example::

        train = MARNTrain(MARN(tiny()))
        loss, (losses, logits, labels) = train(batch, adv_lambda=adversarial_lambda(0.3))
        loss.backward()
    """

    def __init__(self, model: MARN) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: MARNBatch, adv_lambda: float
    ) -> Tuple[torch.Tensor, Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch (MARNBatch): inputs and labels.
            adv_lambda (float): lambda of eq. 10 at this step.

        Returns:
            total loss, and (detached losses by name, detached logits, labels).
        """
        if self.model.validate:
            check_labels(batch.labels, batch.batch_size)
        out = self.model(**batch.model_inputs())
        losses = marn_loss(out.logits, batch.labels, out.aux_losses, adv_lambda)
        detached = {k: v.detach() for k, v in losses.items()}
        return losses["total"], (detached, out.logits.detach(), batch.labels)
