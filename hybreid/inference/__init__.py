"""Run an exported model: numpy in, numpy out. Torch-free (the edge side)."""

from hybreid.inference.contract import ModelContract, preprocess
from hybreid.inference.embedder import Embedder, OnnxRuntimeEmbedder, load_embedder

__all__ = ["Embedder", "ModelContract", "OnnxRuntimeEmbedder", "load_embedder", "preprocess"]
