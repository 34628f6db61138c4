"""marn_rec: MARN (multimodal adversarial CTR model, WWW 2020) as TorchRec-native modules."""

from marn_rec.batch import ItemFeatures, MARNBatch, build_batch
from marn_rec.config import (
    ABLATIONS,
    BehaviorConfig,
    IdFeature,
    ItemTowerConfig,
    MARNConfig,
    ablation,
    config_from_dict,
    paper,
    small,
    tiny,
)
from marn_rec.models.loss import adversarial_lambda, marn_loss
from marn_rec.models.marn import MARN, MARNOutput, MARNTrain
from marn_rec.models.tower import MARNTower, TowerOutput
from marn_rec.validation import validate_batch, validated_batches

__all__ = [
    "ABLATIONS",
    "BehaviorConfig",
    "IdFeature",
    "ItemFeatures",
    "ItemTowerConfig",
    "MARN",
    "MARNBatch",
    "MARNConfig",
    "MARNOutput",
    "MARNTower",
    "MARNTrain",
    "TowerOutput",
    "ablation",
    "adversarial_lambda",
    "build_batch",
    "config_from_dict",
    "marn_loss",
    "paper",
    "small",
    "tiny",
    "validate_batch",
    "validated_batches",
]
