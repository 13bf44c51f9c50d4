"""Named model configurations: the papers' defaults and tiny ones for tests and the demo.

``build(name, **overrides)`` returns the model; ``model_config(name, **overrides)``
returns the resolved keyword arguments, which travel with checkpoints and exported
models so any artifact can be rebuilt.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

from hybreid.errors import UserError, check_options

from .fusionreid import FusionReID
from .haresformer import HAResformer

FAMILIES: dict[str, type[nn.Module]] = {"fusionreid": FusionReID, "haresformer": HAResformer}


@dataclass(frozen=True)
class PaperValues:
    """What the paper prints for a configuration: the one place these numbers live."""

    params_m: float
    gflops: float  # as the paper names them (both papers count multiply-accumulates)
    source: str


@dataclass(frozen=True)
class ModelConfig:
    family: str
    description: str
    kwargs: dict = field(default_factory=dict)
    paper: PaperValues | None = None


# timm's tiny ViT cut to two blocks keeps the tiny FusionReID's forward well under a
# second on one core while still exercising every module of the paper's model.
_TINY_VIT = {"depth": 2}

REGISTRY: dict[str, ModelConfig] = {
    "fusionreid_vitb16_s12": ModelConfig(
        "fusionreid",
        "FusionReID, ResNet50 + ViT-B/16* (overlapping patches, stride 12), 256x128, D=768, 2 HTMs (Table I/V)",
        {"image_size": (256, 128), "vit_stride": 12},
        PaperValues(153.8, 28.1, "FusionReID Table V"),
    ),
    "fusionreid_vitb16_s16": ModelConfig(
        "fusionreid",
        "FusionReID, ResNet50 + ViT-B/16 (stride 16), 256x128, D=768, 2 HTMs (Table I)",
        {"image_size": (256, 128), "vit_stride": 16},
    ),
    "fusionreid_vitb16_s12_384": ModelConfig(
        "fusionreid",
        "FusionReID, ResNet50 + ViT-B/16*, 384x128 (Table I, the up-arrow rows)",
        {"image_size": (384, 128), "vit_stride": 12},
    ),
    "haresformer_h1l1": ModelConfig(
        "haresformer",
        "HAResformer, ResNet-50 + TE (H, L) = (1, 1), 288x144 (Table V)",
        {"image_size": (288, 144), "num_heads": 1, "depth": 1},
        PaperValues(113.75, 25.00, "HAResformer Table V"),
    ),
    "haresformer_h1l2": ModelConfig(
        "haresformer",
        "HAResformer, (H, L) = (1, 2), 288x144 (Table V)",
        {"image_size": (288, 144), "num_heads": 1, "depth": 2},
        PaperValues(180.64, 39.34, "HAResformer Table V"),
    ),
    "haresformer_h2l1": ModelConfig(
        "haresformer",
        "HAResformer, (H, L) = (2, 1), 288x144 (Table V)",
        {"image_size": (288, 144), "num_heads": 2, "depth": 1},
        PaperValues(113.75, 25.00, "HAResformer Table V"),
    ),
    "fusionreid_tiny": ModelConfig(
        "fusionreid",
        "tiny FusionReID for tests and the demo: ResNet18 + 2-block ViT-Ti/16 (stride 12), 128x64, "
        "D=96, 2 HTMs",
        {"image_size": (128, 64), "cnn": "resnet18", "vit": "vit_tiny_patch16_224",
         "vit_overrides": _TINY_VIT, "vit_stride": 12, "dim": 96, "num_heads": 4, "depth": 2,
         "num_cameras": 6, "num_classes": 100},
    ),
    "haresformer_tiny": ModelConfig(
        "haresformer",
        "tiny HAResformer for tests and the demo: ResNet18 stages + TEs (H, L) = (1, 1), 128x64",
        {"image_size": (128, 64), "cnn": "resnet18", "num_heads": 1, "depth": 1, "num_classes": 100},
    ),
}


def list_models() -> list[str]:
    return sorted(REGISTRY)


def model_config(name: str, **overrides) -> dict:
    """The resolved keyword arguments of a named configuration, plus its family."""
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    entry = REGISTRY[name]
    parameters = set(inspect.signature(FAMILIES[entry.family].__init__).parameters) - {"self"}
    check_options(overrides, parameters, f"{entry.family} model")
    return {"family": entry.family, **entry.kwargs, **overrides}


def build(name: str, **overrides) -> nn.Module:
    """Build the named configuration; ``overrides`` replace any of its options."""
    config = model_config(name, **overrides)
    family = config.pop("family")
    model = FAMILIES[family](**config)
    model.model_name = name
    return model
