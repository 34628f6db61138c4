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
from marn_rec.config import IMAGE, TITLE, MARNConfig
from marn_rec.models.loss import adversarial_lambda_tensor, marn_loss
from marn_rec.models.tower import MARNTower
from marn_rec.modules.apgru import APGRU
from marn_rec.modules.candidate_attention import CandidateAttention
from marn_rec.modules.property_embedding import PropertyEmbedding
from marn_rec.validation import is_tracing, validate_model_inputs


class MARNOutput(NamedTuple):
    logits: torch.Tensor  # [B]
    aux_losses: Dict[str, torch.Tensor]  # the tower's, unweighted
    modality_weights: Optional[torch.Tensor]  # [U, M] DDMA's w_m
    diagnostics: Dict[str, torch.Tensor] = {}  # the tower's, detached scalars for logging


class MARN(nn.Module):
    """Multimodal adversarial representation network for CTR prediction.

    The item tower (:class:`MARNTower`) runs once per unique item of the batch; candidates and
    behaviours gather their rows. Behaviours, padded to ``config.behavior.max_length`` steps, are
    integrated by APGRU with the property term and candidate attention (``sequence="apgru"``) or
    by a plain GRU whose last state is the user embedding (``sequence="gru"``, BaseModel);
    ``"pgru"`` and ``"agru"`` keep only the property term or only the attention (diagnostics). The
    prediction MLP scores ``[user, candidate]``.

    ``forward`` has no data-dependent Python control flow, so the model FX-traces (TorchRec's
    train pipelines) and exports with ``torch.export``; input checks run in eager mode only.

    Args:
        config (MARNConfig): the model; presets in :mod:`marn_rec.config`.
        device (torch.device | None): ``meta`` to build paper-size tables for DMP to place.
        validate (bool): check inputs in eager ``forward`` and raise ``ValueError`` on bad ones.
            Off when batches are checked before they enter (:func:`marn_rec.validation.validate_batch`,
            as the training loop does).

    Example::

        model = MARN(tiny())
        batch = random_batch(tiny(), batch_size=4)      # marn_rec.testing
        out = model(**batch.model_inputs())
        probabilities = torch.sigmoid(out.logits)       # [4]
    """

    def __init__(
        self,
        config: MARNConfig,
        device: Optional[torch.device] = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.validate = validate
        # MARN checks the tower's inputs itself (with its own), so the tower does not check twice.
        self.tower = MARNTower(config.tower, device=device, validate=False)
        rep_dim = self.tower.output_dim
        self.property_embedding: Optional[PropertyEmbedding] = (
            PropertyEmbedding(config.behavior, device=device) if config.behavior_property else None
        )
        self.behavior = APGRU(
            rep_dim,
            config.gru_hidden_dim,
            self.property_embedding.output_dim if self.property_embedding is not None else 0,
            max_length=config.behavior.max_length,
            device=device,
        )
        self.attention: Optional[CandidateAttention] = (
            CandidateAttention(config.gru_hidden_dim, rep_dim, config.attention_mlp, device=device)
            if config.candidate_attention
            else None
        )
        self.over = nn.Sequential(
            MLP(config.gru_hidden_dim + rep_dim, list(config.prediction_mlp), device=device),
            nn.Linear(config.prediction_mlp[-1], 1, device=device),
        )

    def _num_items(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor],
        item_image: Optional[torch.Tensor],
    ) -> torch.Tensor | int:
        """U, read from an input the configured modalities guarantee."""
        modalities = self.config.tower.modalities
        if IMAGE in modalities and item_image is not None:
            return item_image.shape[0]
        if TITLE in modalities and item_title is not None:
            return item_title.stride()
        return item_sparse.stride()

    def forward(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor],
        item_image: Optional[torch.Tensor],
        candidate_index: torch.Tensor,
        history_index: torch.Tensor,
        history_lengths: torch.Tensor,
        history_property: KeyedJaggedTensor,
    ) -> MARNOutput:
        """
        Args:
            item_sparse (KeyedJaggedTensor): ID and statistic features of the U unique items.
            item_title (KeyedJaggedTensor | None): title words of the unique items.
            item_image (torch.Tensor | None): [U, image_dim] image vectors of the unique items.
            candidate_index (torch.Tensor): [B] row of each candidate among the unique items.
            history_index (torch.Tensor): [N] rows of the behaviours, sample after sample.
            history_lengths (torch.Tensor): [B] behaviours per sample (at most max_length), N in
                all.
            history_property (KeyedJaggedTensor): behavior_type, behavior_time per behaviour
                (stride max(N, 1), see :mod:`marn_rec.batch`).

        Returns:
            MARNOutput: logits [B], the tower's auxiliary losses and DDMA weights.
        """
        if self.validate and not is_tracing():
            validate_model_inputs(
                self.config, item_sparse, item_title, item_image,
                candidate_index, history_index, history_lengths, history_property,
            )
        slots = torch.cat([candidate_index, history_index])
        # An item's slot count weights the auxiliary losses: deduplication leaves them unchanged.
        # (index_add_, not bincount: its output size does not depend on the values.)
        num_items = self._num_items(item_sparse, item_title, item_image)
        item_weights = torch.zeros(num_items, device=slots.device).index_add_(
            0, slots, torch.ones(slots.shape, device=slots.device)
        )
        tower = self.tower(item_sparse, item_title, item_image, item_weights)
        rep = tower.representation
        candidate = rep.index_select(0, candidate_index)
        offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(history_lengths)
        # A fixed number of steps, T = max_length: no value decides a shape (traceable).
        steps = self.config.behavior.max_length
        history = torch.ops.fbgemm.jagged_to_padded_dense(
            rep.index_select(0, history_index), [offsets], [steps], 0.0
        )
        properties = None
        if self.property_embedding is not None:
            p = self.property_embedding(history_property)[: history_index.shape[0]]
            properties = torch.ops.fbgemm.jagged_to_padded_dense(p, [offsets], [steps], 0.0)
        states, last = self.behavior(history, history_lengths, properties)
        user = self.attention(states, history_lengths, candidate) if self.attention else last
        logits = self.over(torch.cat([user, candidate], dim=1)).squeeze(1)
        return MARNOutput(logits, tower.losses, tower.modality_weights, tower.diagnostics)


class MARNTrain(nn.Module):
    """MARN with the loss of eq. 10, shaped like ``torchrec.models.dlrm.DLRMTrain``.

    ``forward(batch)`` returns ``(loss, (loss.detach(), logits.detach(), labels.detach()))``. The
    lambda of eq. 10 follows the schedule of section 4.1 over ``total_steps`` training steps; the
    module owns it: the persistent buffer ``step`` counts training forwards (so it is saved and
    restored with the model's state), and TorchRec's train pipelines or a plain loop drive it
    without extra arguments. The unweighted parts of the last training loss (``ctr``, ``d0``,
    ``adv``, ``ds``, ``total``) are kept, detached, in :attr:`losses` for logging, and the tower's
    diagnostics in :attr:`diagnostics`.

    Args:
        model (MARN): the model to train.
        total_steps (int): training steps of the run (the schedule's progress is
            ``step / (total_steps - 1)``).

    Example::

        train = MARNTrain(MARN(tiny()), total_steps=100)
        loss, (loss_detached, logits, labels) = train(random_batch(tiny(), batch_size=4))
        loss.backward()
    """

    def __init__(self, model: MARN, total_steps: int = 1) -> None:
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.model = model
        self.total_steps = total_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=_device_of(model)))
        self.losses: Dict[str, torch.Tensor] = {}
        self.diagnostics: Dict[str, torch.Tensor] = {}

    def reset_parameters(self) -> None:
        # DMP materialises meta-device modules with to_empty() and then calls this.
        with torch.no_grad():
            self.step.zero_()

    def adv_lambda(self) -> torch.Tensor:
        """lambda of eq. 10 at the current step (a 0-d tensor)."""
        c = self.model.config
        return adversarial_lambda_tensor(self.step, self.total_steps, c.lambda0, c.gamma)

    def forward(
        self, batch: MARNBatch
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch (MARNBatch): inputs and labels (checked beforehand by
                :func:`marn_rec.validation.validate_batch` when the model's ``validate`` is off).

        Returns:
            total loss, and (detached total loss, detached logits, detached labels).
        """
        out = self.model(
            batch.item_sparse,
            batch.item_title,
            batch.item_image,
            batch.candidate_index,
            batch.history_index,
            batch.history_lengths,
            batch.history_property,
        )
        losses = marn_loss(out.logits, batch.labels, out.aux_losses, self.adv_lambda())
        loss = losses["total"]
        if not is_tracing():
            self.losses = {k: v.detach() for k, v in losses.items()}
            self.diagnostics = dict(out.diagnostics)
            if self.training:
                with torch.no_grad():
                    self.step.add_(1)
        return loss, (loss.detach(), out.logits.detach(), batch.labels.detach())


def _device_of(module: nn.Module) -> Optional[torch.device]:
    p = next(module.parameters(), None)
    return p.device if p is not None else None
