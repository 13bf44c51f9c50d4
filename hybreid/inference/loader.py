"""The one entry point from an artifact path to its embedder; it knows every backend, so
the backends need not know each other."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hybreid.inference.embedder import Embedder, OnnxRuntimeEmbedder


def load_embedder(path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                  device: int = 0) -> Embedder:
    """The embedder for an artifact: ONNX file or TensorRT engine.

    ``threads`` and ``providers`` are ONNX Runtime's; ``device`` is the GPU of an engine.
    """
    path = Path(path)
    if path.suffix in (".engine", ".plan", ".trt"):
        from hybreid.inference.tensorrt_backend import TensorRTEmbedder

        return TensorRTEmbedder(path, device)
    return OnnxRuntimeEmbedder(path, providers, threads)
