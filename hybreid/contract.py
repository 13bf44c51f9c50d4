"""The model contract: every ``hybreid.*`` metadata key an exported model carries, and
the numpy/OpenCV side of it (preprocessing, image reading).

This module is the only place that names a metadata key, forms a model's identity
(``name@hash``) or reads the metadata of an ONNX file. The exporter writes
:meth:`ModelContract.to_metadata`; FP16 and INT8 copies rewrite it with their
precision; bundles, the TensorRT build and the embedder read it back with
:func:`read_onnx_contract` or :meth:`ModelContract.from_metadata` (a camera box reads
it through ONNX Runtime, or from the JSON file written beside a TensorRT engine).
Torch-free; OpenCV is imported only by the functions that touch pixels, so the
matcher and the protocol can use the identity without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hybreid.errors import UserError

PREFIX = "hybreid."
FORMAT = "1"


def model_identity(name: str, weights_sha256: str) -> str:
    """``name@hash``: what the matcher compares before it accepts an embedding."""
    return f"{name}@{weights_sha256}"


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
    precision: str = "fp32"  # fp16, fp16-all, int8-<target>-<method> for the converted copies
    opset: int = 0
    version: str = ""  # of hybreid, at export
    cpu_isa: str = ""  # the instruction set an int8 copy for the CPU was made for (hybreid.machine.CPU_ISAS)

    @property
    def identity(self) -> str:
        return model_identity(self.model, self.weights_sha256)

    @property
    def input_dtype(self) -> str:
        return "uint8" if self.preprocess_in_graph else "float32"

    def with_precision(self, precision: str) -> ModelContract:
        return replace(self, precision=precision)

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
                precision=meta.get("hybreid.precision", "fp32"),
                opset=int(meta.get("hybreid.opset", "0")),
                version=meta.get("hybreid.version", ""),
                cpu_isa=meta.get("hybreid.cpu_isa", ""),
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
        """Every key, as strings (ONNX metadata holds strings only)."""
        return {
            "hybreid.format": FORMAT, "hybreid.version": self.version,
            "hybreid.model": self.model, "hybreid.weights_sha256": self.weights_sha256,
            "hybreid.embedding_dim": str(self.embedding_dim), "hybreid.input_name": self.input_name,
            "hybreid.output_name": self.output_name, "hybreid.input_layout": self.layout,
            "hybreid.input_height": str(self.height), "hybreid.input_width": str(self.width),
            "hybreid.mean": json.dumps(list(self.mean)), "hybreid.std": json.dumps(list(self.std)),
            "hybreid.preprocess_in_graph": "1" if self.preprocess_in_graph else "0",
            "hybreid.config": json.dumps(self.config, sort_keys=True, default=list),
            "hybreid.input_dtype": self.input_dtype, "hybreid.channel_order": "RGB",
            "hybreid.normalized_output": "1", "hybreid.opset": str(self.opset), "hybreid.precision": self.precision,
            **({"hybreid.cpu_isa": self.cpu_isa} if self.cpu_isa else {}),
        }


def metadata_of(model) -> dict[str, str]:
    """The ``hybreid.*`` metadata of a loaded ONNX ``ModelProto``."""
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}


def set_metadata(model, contract: ModelContract) -> None:
    """Replace the metadata of a ``ModelProto`` by ``contract``'s."""
    del model.metadata_props[:]
    for key, value in contract.to_metadata().items():
        model.metadata_props.add(key=key, value=value)


def read_onnx_contract(path: str | Path) -> ModelContract:
    """The contract of an ONNX file, read without its weights (needs the ``onnx`` package)."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and others for a damaged file
        raise UserError(f"{path} is not a readable ONNX file ({exc.__class__.__name__}); export it again") from exc
    return ModelContract.from_metadata(metadata_of(model), str(path))


def preprocess(crops: Sequence[np.ndarray], contract: ModelContract) -> np.ndarray:
    """RGB ``uint8`` crops of any size -> the model's input batch.

    Bicubic resizing matches the training-time evaluation transform.
    """
    if len(crops) == 0:
        raise ValueError("no crops to embed")
    import cv2

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
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read image {path} (missing or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
