"""The one entry point from an artifact path to its embedder; it knows every backend, so
the backends need not know each other."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybreid.errors import UserError
from hybreid.inference.embedder import Embedder, OnnxRuntimeEmbedder
from hybreid.inference.openvino_backend import is_openvino


def load_embedder(path: str | Path, threads: int | None = None, providers: Sequence[str] | str | None = None,
                  device: int = 0) -> Embedder:
    """The embedder for an artifact: ONNX file or TensorRT engine.

    ``providers``: ONNX Runtime's in order; ``openvino`` or ``openvino-bf16`` for OpenVINO's
    runtime (:mod:`.openvino_backend`); ``"auto"``: the fastest CPU backend, measured once
    on this box (:mod:`.providers`). ``device`` is the GPU of an engine.
    """
    path = Path(path)
    if path.suffix in (".engine", ".plan", ".trt"):
        from hybreid.inference.tensorrt_backend import TensorRTEmbedder

        return TensorRTEmbedder(path, device)
    if isinstance(providers, str) and providers != "auto":
        providers = [providers]
    if providers == "auto":
        from hybreid.inference.providers import fastest_provider

        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        providers = [fastest_provider(path, threads)]
    if providers and is_openvino(providers[0]):
        from hybreid.inference.openvino_backend import OpenVinoEmbedder

        return OpenVinoEmbedder(path, providers[0], threads)
    return OnnxRuntimeEmbedder(path, providers, threads)
