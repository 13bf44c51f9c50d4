"""Run an exported model: numpy in, numpy out. Torch-free (the edge side)."""

from hybreid.inference.embedder import Embedder, OnnxRuntimeEmbedder
from hybreid.inference.loader import load_embedder

__all__ = ["Embedder", "OnnxRuntimeEmbedder", "load_embedder"]
