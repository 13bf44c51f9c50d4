"""The two hybrid CNN + Transformer ReID model families and their registry."""

from .fusionreid import FusionReID
from .haresformer import HAResformer
from .output import TrainOutput
from .registry import REGISTRY, build, list_models, model_config

__all__ = ["FusionReID", "HAResformer", "TrainOutput", "REGISTRY", "build", "list_models", "model_config"]
