"""The two hybrid CNN + Transformer ReID model families and their registry.

The names below are imported on first use (PEP 562): ``hybreid.models.cli`` must load on
a camera box without torch, and importing it runs this file.
"""

from importlib import import_module

_HOMES = {"FusionReID": ".fusionreid", "HAResformer": ".haresformer", "TrainOutput": ".output",
          "REGISTRY": ".registry", "build": ".registry", "list_models": ".registry", "model_config": ".registry"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_HOMES[name], __name__), name)
