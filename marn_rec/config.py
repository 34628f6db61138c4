"""Configuration of MARN as dataclasses.

Defaults are the paper's values (WWW 2020, sections 3 and 4.1, Taobao column of Table 1). Where the
paper gives no number the default is marked "not in the paper" with the reason for the choice.
Presets (:func:`small`, :func:`tiny`) shrink numbers; they never select other code paths. The
ablations of paper Table 3 are :data:`ABLATIONS`, applied with :func:`ablation`.
"""

from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple

# Modality names, in the order the tower stacks them (index m of the discriminators' classes).
IDS = "ids"
IMAGE = "image"
TITLE = "title"
STATISTIC = "statistic"
ALL_MODALITIES: Tuple[str, ...] = (IDS, IMAGE, TITLE, STATISTIC)

FUSIONS = ("sum", "maf")  # BaseModel+CONC sums projected modalities; MAF is eq. 2-3.
ADVERSARIALS = ("none", "adv", "ddma")  # none, one plain discriminator [30], DDMA (3.3.2-3.3.3).
# BaseModel's GRU (last state), or APGRU (3.4.1: property in the update gate, candidate attention
# over the states). "pgru" (property, last state) and "agru" (attention, no property) are APGRU
# with one of its two parts removed: diagnostics, not rows of the paper's Table 3.
SEQUENCES = ("gru", "apgru", "pgru", "agru")


@dataclass(frozen=True)
class IdFeature:
    """One categorical feature of the item (paper eq. 1): a table of ``num_embeddings`` rows.

    Args:
        name: the feature's key in ``item_sparse``.
        num_embeddings: rows of its table.
        embedding_dim: width of its table.
        multi_valued: an item may have any number of values (e.g. a movie's genres); the
            EmbeddingBagCollection mean-pools them (an item without values gets zeros). Otherwise
            every item has exactly one value.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    multi_valued: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("IdFeature: name must be non-empty")
        if self.num_embeddings <= 0 or self.embedding_dim <= 0:
            raise ValueError(
                f"IdFeature {self.name!r}: num_embeddings and embedding_dim must be positive, "
                f"got {self.num_embeddings} and {self.embedding_dim}"
            )


@dataclass(frozen=True)
class ItemTowerConfig:
    """The multimodal item tower: modality embedding (3.1.1), MAF (3.2), DDMA (3.3)."""

    # 3.1.1 IDs, eq. 1: Taobao's four ID features, vocabularies from Table 1, dims from 4.1.
    # ``id_features`` replaces them with a data set's own (see :meth:`item_id_features`).
    num_items: int = 800_000_000
    num_shops: int = 17_000_000
    num_brands: int = 1_000_000
    num_categories: int = 20_000
    item_dim: int = 32
    shop_dim: int = 24
    brand_dim: int = 24
    category_dim: int = 16
    id_features: Tuple[IdFeature, ...] = ()
    # 3.1.1 image: VGG16 fc7, precomputed.
    image_dim: int = 4096
    # 3.1.1 title: h words of 300-d (Word2Vec/GloVe), Kim CNN with windows 2, 3, 4.
    title_vocab_size: int = 400_000  # not in the paper: the GloVe 6B vocabulary it cites.
    word_dim: int = 300
    title_length: int = 32  # h, not in the paper: titles are padded/truncated to it.
    title_windows: Tuple[int, ...] = (2, 3, 4)
    title_filters: int = 100  # per window, not in the paper: Kim (2014)'s value.
    # 3.1.1 statistic: each numeric statistic discretised at two granularities, 8-d lookups.
    # Four statistics: exposure, click, transaction orders, transaction amount.
    num_statistics: int = 4
    statistic_buckets: Tuple[int, ...] = (10, 100)
    statistic_dim: int = 8
    # 3.2: every modality is projected to one size, then S_m / I give d = 256.
    modality_dim: int = 256  # size of e_m, not in the paper: set equal to d.
    hidden_dim: int = 256  # d
    modalities: Tuple[str, ...] = ALL_MODALITIES
    fusion: str = "maf"
    adversarial: str = "ddma"
    # Storage of the item tower's tables (IDs, statistics, title words): "fp32", or "fp16" to hold
    # twice the rows per byte (not in the paper). Lookups still return fp32 (FBGEMM's output
    # dtype, TorchRec's unsharded collections cast), so the dense towers are unchanged.
    table_dtype: str = "fp32"

    def item_id_features(self) -> Tuple[IdFeature, ...]:
        """The item's ID features: ``id_features`` if given, else Taobao's item, shop, brand and
        category IDs with the ``num_*`` / ``*_dim`` sizes."""
        if self.id_features:
            return self.id_features
        return (
            IdFeature("item_id", self.num_items, self.item_dim),
            IdFeature("shop_id", self.num_shops, self.shop_dim),
            IdFeature("brand_id", self.num_brands, self.brand_dim),
            IdFeature("category_id", self.num_categories, self.category_dim),
        )

    def __post_init__(self) -> None:
        names = [f.name for f in self.id_features]
        if len(set(names)) != len(names):
            raise ValueError(f"id_features must have distinct names, got {names}")
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct and non-empty, got {self.modalities}")
        unknown = set(self.modalities) - set(ALL_MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; known: {ALL_MODALITIES}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.adversarial not in ADVERSARIALS:
            raise ValueError(f"adversarial must be one of {ADVERSARIALS}, got {self.adversarial!r}")
        if self.adversarial != "none" and len(self.modalities) < 2:
            raise ValueError("an adversarial network needs at least two modalities to discriminate")
        if max(self.title_windows) > self.title_length:
            raise ValueError("title_length must be at least the widest title window")
        if self.table_dtype not in ("fp32", "fp16"):
            raise ValueError(f"table_dtype must be fp32 or fp16, got {self.table_dtype!r}")


@dataclass(frozen=True)
class BehaviorConfig:
    """Behaviour sequence and its property embedding (3.1.2)."""

    max_length: int = 50  # T; docs/design.md: Taobao sequences of about 50 behaviours.
    num_behavior_types: int = 3  # click, add-to-cart, purchase
    behavior_type_dim: int = 8  # not in the paper
    # Seconds since the behaviour, discretised on a log scale (a statistic feature, 3.1.2).
    num_time_buckets: int = 32  # not in the paper
    time_dim: int = 8  # not in the paper


@dataclass(frozen=True)
class MARNConfig:
    """The whole CTR model: item tower, behaviour integration (3.4.1) and prediction (3.4.2)."""

    tower: ItemTowerConfig = field(default_factory=ItemTowerConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    sequence: str = "apgru"
    gru_hidden_dim: int = 256  # not in the paper: equal to the representation size.
    attention_mlp: Tuple[int, ...] = (80, 40)  # not in the paper: DIN's candidate attention.
    prediction_mlp: Tuple[int, ...] = (512, 256)  # Taobao; (128, 64) on Amazon.
    # 4.1: lambda = lambda0 * (2 / (1 + exp(-gamma * p)) - 1).
    lambda0: float = 0.05
    gamma: float = 10.0
    learning_rate: float = 0.1  # AdaGrad, dense and embeddings.

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCES:
            raise ValueError(f"sequence must be one of {SEQUENCES}, got {self.sequence!r}")

    @property
    def behavior_property(self) -> bool:
        """Whether the update gate sees the behaviour property ``p_t`` (APGRU's first part)."""
        return self.sequence in ("apgru", "pgru")

    @property
    def candidate_attention(self) -> bool:
        """Whether the user embedding is the candidate attention over the states (APGRU's second
        part) rather than the last state."""
        return self.sequence in ("apgru", "agru")


def paper() -> MARNConfig:
    """Paper sizes (Taobao). Build it on the meta device and let DMP place the tables."""
    return MARNConfig()


def small() -> MARNConfig:
    """Trains in minutes on 2 CPU cores: the training example's default."""
    return MARNConfig(
        tower=ItemTowerConfig(
            num_items=100_000,
            num_shops=5_000,
            num_brands=2_000,
            num_categories=100,
            image_dim=256,
            title_vocab_size=5_000,
            word_dim=32,
            title_length=12,
            title_filters=16,
            modality_dim=64,
            hidden_dim=64,
        ),
        behavior=BehaviorConfig(max_length=20),
        gru_hidden_dim=64,
        attention_mlp=(32,),
        prediction_mlp=(128, 64),
    )


def tiny() -> MARNConfig:
    """For unit tests: every code path, sizes of a few rows.

    Embedding dims are multiples of 4: FBGEMM's kernels need that of every (column) shard.
    """
    return MARNConfig(
        tower=ItemTowerConfig(
            num_items=50,
            num_shops=7,
            num_brands=5,
            num_categories=4,
            item_dim=8,
            shop_dim=4,
            brand_dim=4,
            category_dim=4,
            image_dim=10,
            title_vocab_size=30,
            word_dim=4,
            title_length=6,
            title_filters=3,
            num_statistics=2,
            statistic_dim=4,
            modality_dim=8,
            hidden_dim=8,
        ),
        behavior=BehaviorConfig(
            max_length=6, behavior_type_dim=4, num_time_buckets=5, time_dim=4
        ),
        gru_hidden_dim=7,
        attention_mlp=(5,),
        prediction_mlp=(9, 4),
    )


PRESETS = {"paper": paper, "small": small, "tiny": tiny}

# Paper Table 3. BaseModel uses a plain GRU; MARN = MAF + DDMA + APGRU.
ABLATIONS: Dict[str, Dict[str, object]] = {
    "BaseModel+IDs": dict(modalities=(IDS,), fusion="sum", adversarial="none", sequence="gru"),
    "BaseModel+IMAGE": dict(modalities=(IMAGE,), fusion="sum", adversarial="none", sequence="gru"),
    "BaseModel+CONC": dict(fusion="sum", adversarial="none", sequence="gru"),
    "BaseModel+MAF": dict(fusion="maf", adversarial="none", sequence="gru"),
    "BaseModel+MAF+ADV": dict(fusion="maf", adversarial="adv", sequence="gru"),
    "BaseModel+MAF+DDMA": dict(fusion="maf", adversarial="ddma", sequence="gru"),
    "MARN": dict(fusion="maf", adversarial="ddma", sequence="apgru"),
}

# Not rows of Table 3: MARN with one part of APGRU removed, to find which part a difference
# between MARN and BaseModel+MAF+DDMA (the same model with a plain GRU) comes from.
DIAGNOSTIC_ABLATIONS: Dict[str, Dict[str, object]] = {
    "MARN-ATTENTION": dict(fusion="maf", adversarial="ddma", sequence="pgru"),
    "MARN-PROPERTY": dict(fusion="maf", adversarial="ddma", sequence="agru"),
}


# Not a Table 3 row: the reachable ceiling on the synthetic stream (marn_rec.models.reference),
# BaseModel's GRU and head over every modality's batch, its item tower replaced by a map of the
# generator's true item factors. Selected by name like an ablation; needs the synthetic stream.
REFERENCE = "Reference"
REFERENCE_ABLATION: Dict[str, object] = dict(fusion="sum", adversarial="none", sequence="gru")


def ablation(name: str, base: MARNConfig) -> MARNConfig:
    """The Table 3 configuration ``name`` (or one of :data:`DIAGNOSTIC_ABLATIONS`, or
    :data:`REFERENCE`) at the sizes of ``base``."""
    known = {**ABLATIONS, **DIAGNOSTIC_ABLATIONS, REFERENCE: REFERENCE_ABLATION}
    if name not in known:
        raise ValueError(f"unknown ablation {name!r}; known: {list(known)}")
    changes = dict(known[name])
    sequence = changes.pop("sequence")
    # Single-modality baselines need that modality in the data; the others keep the base's.
    wanted: Optional[Tuple[str, ...]] = changes.pop("modalities", None)  # type: ignore[assignment]
    if wanted is not None:
        missing = [m for m in wanted if m not in base.tower.modalities]
        if missing:
            raise ValueError(
                f"ablation {name!r} needs the modalities {missing}, which this configuration "
                f"(modalities {base.tower.modalities}) does not have"
            )
        changes["modalities"] = wanted
    return replace(base, tower=replace(base.tower, **changes), sequence=sequence)


def config_from_dict(d: Dict[str, object]) -> MARNConfig:
    """The inverse of ``dataclasses.asdict(config)`` (also after a JSON round trip, which turns
    tuples into lists), e.g. to rebuild a model from a checkpoint's ``meta.json``."""
    tower = dict(d["tower"])  # type: ignore[arg-type]
    tower["id_features"] = tuple(IdFeature(**f) for f in tower.get("id_features", ()))
    for key in ("title_windows", "statistic_buckets", "modalities"):
        tower[key] = tuple(tower[key])
    top = {k: v for k, v in d.items() if k not in ("tower", "behavior")}
    for key in ("attention_mlp", "prediction_mlp"):
        top[key] = tuple(top[key])  # type: ignore[arg-type]
    return MARNConfig(
        tower=ItemTowerConfig(**tower),
        behavior=BehaviorConfig(**d["behavior"]),  # type: ignore[arg-type]
        **top,  # type: ignore[arg-type]
    )
