"""Model files: weights plus the registry name and options that rebuild the model."""

from __future__ import annotations

from pathlib import Path

import torch

from hybreid.errors import UserError
from hybreid.models.registry import build, model_config


def resolved_options(name: str, options: dict) -> dict:
    """Every constructor option of ``name`` with ``options`` applied: a model file rebuilds the
    same model after the registry's defaults change. The initial weights (``*_weights``:
    local ImageNet files) are left out; the saved state replaces them."""
    resolved = model_config(name, **options)
    resolved.pop("family")
    return {key: value for key, value in resolved.items() if not key.endswith("weights")}


def save_model(path: str | Path, model: torch.nn.Module, name: str, options: dict, extra: dict | None = None) -> None:
    torch.save({"format": "hybreid-model-v1", "model": name, "options": resolved_options(name, options),
                "state_dict": model.state_dict(), **(extra or {})}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` (or a trainer's ``last.pt``); eval mode."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # a truncated or foreign file raises many types
        raise UserError(f"cannot read model file {path} ({exc.__class__.__name__}); is it a hybreid model?") from exc
    if not isinstance(payload, dict):
        raise UserError(f"{path} is not a hybreid model file")
    if "config" in payload and "state_dict" not in payload:  # a trainer checkpoint
        config = payload["config"]
        raise UserError(f"{path} is a training checkpoint; use the run's model.pt (model {config['model']})")
    if payload.get("format") != "hybreid-model-v1":
        raise UserError(f"{path} is not a hybreid model file (no 'format: hybreid-model-v1')")
    model = build(payload["model"], **payload["options"]).to(device)
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload
