"""The preprocessing contract an exported model carries, and the numpy/OpenCV side of it.

Torch-free: a camera box reads the contract from the ONNX metadata (through ONNX
Runtime) or from the JSON file written beside a TensorRT engine.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hybreid.errors import UserError


@dataclass(frozen=True)
class ModelContract:
    model: str
    weights_sha256: str
    embedding_dim: int
    input_name: str
    output_name: str
    layout: str  # NHWC (uint8, preprocessing in the graph) or NCHW (float32, normalised here)
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocess_in_graph: bool
    config: dict

    @property
    def identity(self) -> str:
        """``name@hash``: what the matcher compares before it accepts an embedding."""
        return f"{self.model}@{self.weights_sha256}"

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> ModelContract:
        try:
            contract = cls(
                model=meta["hybreid.model"],
                weights_sha256=meta["hybreid.weights_sha256"],
                embedding_dim=int(meta["hybreid.embedding_dim"]),
                input_name=meta["hybreid.input_name"],
                output_name=meta["hybreid.output_name"],
                layout=meta["hybreid.input_layout"],
                height=int(meta["hybreid.input_height"]),
                width=int(meta["hybreid.input_width"]),
                mean=tuple(json.loads(meta["hybreid.mean"])),
                std=tuple(json.loads(meta["hybreid.std"])),
                preprocess_in_graph=meta["hybreid.preprocess_in_graph"] == "1",
                config=json.loads(meta.get("hybreid.config", "{}")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{source} carries no hybreid contract ({exc}); export it with `hybreid export onnx`") \
                from exc
        problem = contract._problem()
        if problem:
            raise UserError(f"{source} carries a damaged hybreid contract ({problem}); export it again")
        return contract

    def _problem(self) -> str | None:
        """What makes this contract unusable (a model file is untrusted input), or None."""
        if not (0 < self.embedding_dim <= 8192 and 0 < self.height <= 4096 and 0 < self.width <= 4096):
            return f"embedding_dim {self.embedding_dim}, input {self.height}x{self.width}"
        if self.layout not in ("NCHW", "NHWC"):
            return f"input layout {self.layout!r}"
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
                return f"{name} {list(values)!r}"
        if min(self.std) <= 0:
            return f"std {list(self.std)!r}"
        return None

    def to_metadata(self) -> dict[str, str]:
        return {
            "hybreid.model": self.model, "hybreid.weights_sha256": self.weights_sha256,
            "hybreid.embedding_dim": str(self.embedding_dim), "hybreid.input_name": self.input_name,
            "hybreid.output_name": self.output_name, "hybreid.input_layout": self.layout,
            "hybreid.input_height": str(self.height), "hybreid.input_width": str(self.width),
            "hybreid.mean": json.dumps(list(self.mean)), "hybreid.std": json.dumps(list(self.std)),
            "hybreid.preprocess_in_graph": "1" if self.preprocess_in_graph else "0",
            "hybreid.config": json.dumps(self.config, sort_keys=True),
        }


def preprocess(crops: Sequence[np.ndarray], contract: ModelContract) -> np.ndarray:
    """RGB ``uint8`` crops of any size -> the model's input batch.

    Bicubic resizing matches the training-time evaluation transform.
    """
    if len(crops) == 0:
        raise ValueError("no crops to embed")
    size = (contract.width, contract.height)
    resized = []
    for crop in crops:
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
            raise ValueError(f"a crop must be an RGB uint8 array [H, W, 3], got {crop.dtype} {crop.shape}")
        resized.append(cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC))
    batch = np.stack(resized)
    if contract.preprocess_in_graph:
        return np.ascontiguousarray(batch)
    scaled = batch.astype(np.float32) / 255.0
    normalized = (scaled - np.array(contract.mean, np.float32)) / np.array(contract.std, np.float32)
    return np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))


def read_rgb(path) -> np.ndarray:
    """An image file as an RGB ``uint8`` array ``[H, W, 3]``, or one clear error."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path} (missing or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
