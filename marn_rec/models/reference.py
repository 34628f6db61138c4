"""A reachable ceiling for the synthetic stream: BaseModel fed the generator's TRUE item factors.

The Bayes-optimal AUC (the AUC of the true click probability) is a ceiling no model reaches: it uses
the users' true interests, which a model only sees through at most T noisy behaviours, and the
exact form of the click model. The *reference* is the ceiling of this architecture and budget: the
same sequence model, candidate head and training as a Table 3 configuration, with the learned item
tower replaced by :class:`TrueFactorTower`, a trained linear map of the generator's truth vector of
each item (:func:`item_truth_vectors`). A model's share of the IDs-to-reference gap,
``(AUC - AUC_IDs) / (AUC_reference - AUC_IDs)`` (:func:`gap_share`), says how much of what better
item representations can buy at this budget it has bought.

The truth vector of an item holds every item-side quantity of the click model
(:mod:`marn_rec.data.synthetic.click`): the shared (modality-invariant) factor, the image and title
factors, the quality, the popularity feature, the ID-only offset (item + shop + brand bias), the
category group (one-hot), the group's signal factor (image, title or quality, zero elsewhere) and
the category's centre (what makes two items of a category alike in the behaviour term).

It is selected by name like a Table 3 configuration: ``TrainConfig(model="Reference")``,
``--model Reference`` (:data:`marn_rec.config.REFERENCE`, whose configuration is BaseModel's GRU and
head with every modality in the batch, checked as usual); the training loop then installs this
tower in place of the learned one (synthetic stream only: the truth comes from the generator).
"""

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from marn_rec.config import REFERENCE, REFERENCE_ABLATION, MARNConfig
from marn_rec.models.tower import TowerOutput
from marn_rec.validation import is_tracing


def truth_layout(data_config: Any) -> Tuple[Tuple[str, int], ...]:
    """(name, width) of the parts of :func:`item_truth_vectors`, in order."""
    c = data_config
    return (
        ("shared", c.shared_dim),
        ("image", c.image_factor_dim),
        ("title", c.title_factor_dim),
        ("quality", 1),
        ("popularity", 1),
        ("id_bias", 1),
        ("group", 3),
        ("signal_image", c.image_factor_dim),
        ("signal_title", c.title_factor_dim),
        ("signal_quality", 1),
        ("category_center", c.shared_dim),
    )


def item_truth_vectors(catalog: Any, ranks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[len(ranks), K] float32 truth of the items of popularity ranks ``ranks`` (all catalogue
    items by default), parts as in :func:`truth_layout`."""
    from marn_rec.data.synthetic.catalog import _GROUP_IMAGE, _GROUP_STATISTIC, _GROUP_TITLE

    if ranks is None:
        ranks = torch.arange(catalog.num_catalog_items)
    t = catalog.truth(ranks)
    group = torch.nn.functional.one_hot(t.group, 3).float()
    is_image = (t.group == _GROUP_IMAGE).float()[:, None]
    is_title = (t.group == _GROUP_TITLE).float()[:, None]
    is_stat = (t.group == _GROUP_STATISTIC).float()[:, None]
    parts = [
        t.shared,
        t.image,
        t.title,
        t.quality[:, None],
        catalog.popularity_feature(ranks)[:, None],
        catalog.id_bias(ranks)[:, None],
        group,
        t.image * is_image,
        t.title * is_title,
        t.quality[:, None] * is_stat,
        catalog.category_centers[t.category],
    ]
    return torch.cat([p.float() for p in parts], 1)


class TrueFactorTower(nn.Module):
    """An item tower that looks up each item's truth vector and maps it linearly to the
    representation size: ``rep = W truth(item) + b`` (``W``, ``b`` trained; the truth is fixed).

    Same interface as :class:`~marn_rec.models.tower.MARNTower` (it reads only the ``item_id``
    feature of ``item_sparse``; no auxiliary losses, no modality weights), so it replaces the tower
    of a :class:`~marn_rec.models.marn.MARN` (:func:`install_reference_tower`). It has no embedding
    table: DMP replicates it with DDP like the dense towers.

    Args:
        truth: [num_catalog_items, K] truth vectors in popularity-rank order
            (:func:`item_truth_vectors`).
        id_map: ``(num_items, shift, mult_inv)`` of the catalogue's affine ID map
            (rank = ``(id - shift) * mult_inv mod num_items``).
        hidden_dim: representation size (the model's ``tower.hidden_dim``).
        item_feature: the key of the item ID feature.
        device: ``meta`` for DMP's deferred initialisation (it calls :meth:`reset_parameters`,
            which also fills the truth buffer).
    """

    def __init__(
        self,
        truth: torch.Tensor,
        id_map: Tuple[int, int, int],
        hidden_dim: int,
        item_feature: str = "item_id",
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if truth.dim() != 2 or truth.shape[0] < 1:
            raise ValueError(f"truth must be [items, K], got {list(truth.shape)}")
        self.num_ids, self.id_shift, self.id_mult_inv = (int(v) for v in id_map)
        self.item_feature = item_feature
        self.hidden_dim = hidden_dim
        self._truth_source = truth.detach().float().cpu()
        k = truth.shape[1]
        self.weight = nn.Parameter(torch.empty(hidden_dim, k, device=device))
        self.bias = nn.Parameter(torch.empty(hidden_dim, device=device))
        # Not persistent: checkpoints hold the map, the truth comes from the generator.
        self.register_buffer("truth", torch.empty(truth.shape, device=device), persistent=False)
        if device is None or torch.device(device).type != "meta":
            self.reset_parameters()

    @property
    def output_dim(self) -> int:
        return self.hidden_dim

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Unit-variance truth parts: 1/sqrt(K) keeps the representation near unit scale.
        nn.init.normal_(self.weight, std=self.weight.shape[1] ** -0.5)
        nn.init.zeros_(self.bias)
        self.truth.copy_(self._truth_source.to(self.truth.device))

    def ranks(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Popularity ranks of model item IDs (the inverse of the catalogue's ID map)."""
        ranks = ((item_ids.long() - self.id_shift) % self.num_ids) * self.id_mult_inv % self.num_ids
        return ranks.clamp(max=self.truth.shape[0] - 1)

    def forward(
        self,
        item_sparse: KeyedJaggedTensor,
        item_title: Optional[KeyedJaggedTensor] = None,
        item_image: Optional[torch.Tensor] = None,
        item_weights: Optional[torch.Tensor] = None,
    ) -> TowerOutput:
        ids = item_sparse[self.item_feature].values()
        rep = nn.functional.linear(self.truth[self.ranks(ids)], self.weight, self.bias)
        diagnostics: Dict[str, torch.Tensor] = {}
        if not is_tracing():
            with torch.no_grad():
                sq = rep.detach().pow(2).mean(dim=1)
                if item_weights is not None:
                    sq = (sq * item_weights).sum() / item_weights.sum().clamp_min(1e-12)
                else:
                    sq = sq.mean()
                diagnostics["s_rms"] = sq.sqrt()
        return TowerOutput(rep, {}, None, diagnostics)


def reference_tower(
    data_config: Any, hidden_dim: int, device: Optional[torch.device] = None, catalog: Any = None
) -> TrueFactorTower:
    """The :class:`TrueFactorTower` of the synthetic stream ``data_config`` (its catalogue is
    rebuilt from the config unless ``catalog`` is given)."""
    from marn_rec.data.synthetic import ItemCatalog

    catalog = catalog if catalog is not None else ItemCatalog(data_config)
    id_map = (data_config.num_items, catalog._id_shift, catalog._id_mult_inv)
    return TrueFactorTower(item_truth_vectors(catalog), id_map, hidden_dim, device=device)


def install_reference_tower(
    marn: nn.Module, data_config: Any, catalog: Any = None
) -> nn.Module:
    """Replaces ``marn.tower`` (a :class:`~marn_rec.models.marn.MARN` built from a configuration
    with :data:`REFERENCE_ABLATION`'s head) by the reference tower, on the same device (``meta``
    stays ``meta``); returns ``marn``."""
    config: MARNConfig = marn.config
    if config.sequence != REFERENCE_ABLATION["sequence"]:
        raise ValueError(f"the reference uses BaseModel's head (sequence='gru'), got {config.sequence!r}")
    device = next(marn.parameters()).device
    marn.tower = reference_tower(data_config, config.tower.hidden_dim, device, catalog)
    return marn


def gap_share(auc: float, ids_auc: float, reference_auc: float) -> float:
    """Share of the IDs-to-reference AUC gap a model closes (1: as good as the reference; can be
    negative or above 1); NaN when the reference does not beat IDs."""
    gap = reference_auc - ids_auc
    return (auc - ids_auc) / gap if gap > 0 else float("nan")


def gap_shares(results: Sequence[Dict[str, Any]], metric: str = "auc",
               ids: str = "BaseModel+IDs", reference: str = REFERENCE) -> Dict[str, float]:
    """``{model: gap_share}`` of evaluation records ``{"model": ..., metric: ...}`` of one seed."""
    by = {r["model"]: r[metric] for r in results if metric in r}
    if ids not in by or reference not in by:
        raise ValueError(f"need {ids!r} and {reference!r} among the results, got {sorted(by)}")
    return {m: gap_share(v, by[ids], by[reference]) for m, v in by.items()}
