"""One ``Embedder``: numpy crops in, L2-normalised float32 embeddings out.

The backend is chosen by the artifact: an ``.onnx`` file runs on ONNX Runtime (CPU, or
the CUDA / TensorRT execution providers where installed); a TensorRT engine
(``.engine``/``.plan`` with its ``.json`` contract beside it) runs on TensorRT with
pycuda. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybreid.errors import UserError
from hybreid.inference.contract import ModelContract, l2_normalize, preprocess


class Embedder:
    """Base class: subclasses implement ``run(batch) -> raw outputs``."""

    contract: ModelContract
    backend: str = ""
    max_batch: int | None = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return self.contract.embedding_dim

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``[len(crops), D]`` of RGB ``uint8`` crops of any size."""
        batch = preprocess(crops, self.contract)
        return self.embed_preprocessed(batch)

    def embed_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(batch)
        outputs = [self.run(batch[i : i + step]) for i in range(0, len(batch), step)]
        return l2_normalize(np.concatenate(outputs).astype(np.float32, copy=False))


class OnnxRuntimeEmbedder(Embedder):
    """ONNX Runtime; ``providers`` defaults to TensorRT > CUDA > CPU, whichever exist."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 disable_qdq_fusion: bool = False):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        available = ort.get_available_providers()
        if providers is None:
            preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
            providers = [p for p in preferred if p in available]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if disable_qdq_fusion:
            # Run Q/DQ as exact fake-quantisation: the numerics a GPU INT8 engine computes.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as exc:  # ORT raises InvalidProtobuf, Fail, ... for a damaged file
            raise UserError(f"ONNX Runtime cannot load {path} ({exc.__class__.__name__}): the file is damaged "
                            "or not an ONNX model; export it again") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = ModelContract.from_metadata(meta, str(path))
        self.backend = f"onnxruntime:{self.session.get_providers()[0]}"
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.contract.output_name], {self.contract.input_name: batch})[0]


def load_embedder(path: str | Path, **options) -> Embedder:
    """The embedder for an artifact: ONNX file or TensorRT engine."""
    path = Path(path)
    if path.suffix in (".engine", ".plan", ".trt"):
        from hybreid.inference.tensorrt_backend import TensorRTEmbedder

        return TensorRTEmbedder(path, **options)
    return OnnxRuntimeEmbedder(path, **options)
