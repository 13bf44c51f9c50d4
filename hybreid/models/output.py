"""What a model returns in training mode."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TrainOutput:
    """Every supervised feature of one forward pass, by name.

    ``features`` are the embeddings the metric losses (triplet, hetero-center, MMD)
    see; ``logits`` holds the identity-classifier outputs, for the features that have
    a classifier. Names are model-specific and documented by each model.
    """

    features: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor] = field(default_factory=dict)
