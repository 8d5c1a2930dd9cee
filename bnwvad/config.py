"""Configuration dataclasses: the model, the training recipe and the dataset presets.

No torch here: the runtime and the CLIs read presets without importing it.
Defaults are the paper's (and the published code's); every size is a field so tests
can build tiny models.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SELECTIONS = ("sbs", "sls", "bls")
DISTANCES = ("mahalanobis", "euclidean", "cosine")
SCORES = ("product", "classifier", "dfm")


@dataclass
class ModelConfig:
    """Everything needed to build a BN-WVAD model, stored in every checkpoint."""

    feature_dim: int = 1024          # D: 1024 (I3D RGB) or 1152 (I3D + VGGish audio)
    embed_dim: int = 512             # enhancer width
    depth: int = 2                   # enhancer blocks
    heads: int = 4
    head_dim: int = 128
    mlp_dim: int = 512
    hidden_dims: tuple[int, ...] = (32, 16)  # the normal head's BN layers X^h1, X^h2
    ln_eps: float = 1e-5
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    # Selection ratios rho_s / rho_b (XD-Violence values by default; presets set them).
    ratio_sample: float = 0.2
    ratio_batch: float = 0.4
    margin: float = 1.0              # MPP margin m
    w_normal: float = 1.0
    w_mpp: tuple[float, ...] = (5.0, 20.0)   # lambda_1, lambda_2, one per hidden layer
    # Ablation switches studied in the paper.
    selection: str = "sbs"           # sbs | sls | bls  (Fig. 6, Table 9)
    distance: str = "mahalanobis"    # mahalanobis | euclidean | cosine  (Table 7)
    score: str = "product"           # product | classifier | dfm  (Table 5)

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        self.w_mpp = tuple(float(w) for w in self.w_mpp)
        self.validate()

    def validate(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection={self.selection!r}: expected one of {SELECTIONS}")
        if self.distance not in DISTANCES:
            raise ValueError(f"distance={self.distance!r}: expected one of {DISTANCES}")
        if self.score not in SCORES:
            raise ValueError(f"score={self.score!r}: expected one of {SCORES}")
        if len(self.w_mpp) != len(self.hidden_dims):
            raise ValueError(
                f"w_mpp has {len(self.w_mpp)} weights but hidden_dims has "
                f"{len(self.hidden_dims)} layers: give one MPP weight per hidden layer")
        for name in ("ratio_sample", "ratio_batch"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}={v}: expected a fraction in [0, 1]")
        if self.feature_dim <= 0 or self.embed_dim != self.heads * self.head_dim:
            raise ValueError(
                f"embed_dim={self.embed_dim} must equal heads*head_dim="
                f"{self.heads}*{self.head_dim}, and feature_dim must be positive")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        d["w_mpp"] = list(self.w_mpp)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class DatasetPreset:
    """What a benchmark fixes: crops at test time, feature size and selection ratios."""

    name: str
    crops: int
    feature_dim: int
    ratio_sample: float
    ratio_batch: float
    audio_dim: int = 0               # > 0: optional audio features that can be appended
    frames_per_snippet: int = 16
    # Model sizes other than the paper's defaults, as (field, value) pairs (the demo's).
    model: tuple[tuple[str, Any], ...] = ()

    def model_config(self, audio: bool = False, **overrides: Any) -> ModelConfig:
        if audio and not self.audio_dim:
            raise ValueError(f"dataset {self.name!r} has no audio features")
        dim = self.feature_dim + (self.audio_dim if audio else 0)
        kw: dict[str, Any] = dict(feature_dim=dim, ratio_sample=self.ratio_sample,
                                  ratio_batch=self.ratio_batch)
        kw.update(dict(self.model))
        kw.update(overrides)
        return ModelConfig(**kw)


# The built-in demo set (bnwvad.demo: XD-Violence layout, 5 crops of synthetic 128-d features)
# and the demo recipe's model, smaller than the paper's so that it trains in minutes on 2 CPU
# cores. bnwvad.demo takes its recipe from here.
DEMO_MODEL_SIZES: tuple[tuple[str, Any], ...] = (
    ("embed_dim", 64), ("heads", 2), ("head_dim", 32), ("mlp_dim", 64), ("hidden_dims", (32, 16)))


PRESETS: dict[str, DatasetPreset] = {
    "ucf": DatasetPreset("ucf", crops=10, feature_dim=1024, ratio_sample=0.1, ratio_batch=0.2),
    "xd": DatasetPreset("xd", crops=5, feature_dim=1024, ratio_sample=0.2, ratio_batch=0.4,
                        audio_dim=128),
    "shanghaitech": DatasetPreset("shanghaitech", crops=10, feature_dim=1024,
                                  ratio_sample=0.3, ratio_batch=0.4),
    "demo": DatasetPreset("demo", crops=5, feature_dim=128, ratio_sample=0.2, ratio_batch=0.4,
                          model=DEMO_MODEL_SIZES),
}


def get_preset(name: str) -> DatasetPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset preset {name!r}; expected one of {sorted(PRESETS)}") from None


@dataclass
class TrainConfig:
    """The published training recipe (DESIGN.md, "Training, exactly")."""

    batch_size: int = 64             # B normal + B abnormal videos per step
    segments: int = 200              # T after resampling
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-5       # torch Adam's L2 form
    grad_clip: float = 1.0
    iterations: int = 3000
    eval_every: int = 100
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d
