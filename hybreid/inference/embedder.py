"""One ``Embedder``: numpy crops in, L2-normalised float32 embeddings out.

The backend is chosen by the artifact: an ``.onnx`` file runs on ONNX Runtime (CPU, or
the CUDA / TensorRT execution providers where installed) or on OpenVINO's runtime
(:mod:`.openvino_backend`); a TensorRT engine
(``.engine``/``.plan`` with its ``.json`` contract beside it) runs on TensorRT with
NVIDIA's cuda-python. Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybreid.contract import ModelContract, l2_normalize, preprocess
from hybreid.errors import UserError
from hybreid.machine import CPU_INT8_FORMATS, cpu_isa

log = logging.getLogger("hybreid.inference")


def other_cpu_warning(contract: ModelContract, source: str, machine_isa: str | None = None) -> str | None:
    """What to tell the user when an INT8 copy made for one CPU instruction set runs on
    another whose int8 kernels want another form (None when the forms agree)."""
    if not contract.cpu_isa:
        return None
    machine_isa = machine_isa or cpu_isa()
    made_for, here = CPU_INT8_FORMATS.get(contract.cpu_isa), CPU_INT8_FORMATS[machine_isa]
    if made_for == here:
        return None
    made = repr(contract.cpu_isa[:40]) if made_for is None else contract.cpu_isa
    target = "openvino" if contract.precision.startswith("int8-openvino") else "cpu"
    return (f"{source} was calibrated for the {made} instruction set, this CPU is {machine_isa} ({here.why}): it "
            f"runs, but slower or less accurately; calibrate it for this box with `hybreid calibrate int8 "
            f"--target {target} --cpu-isa {machine_isa}`")


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

    def probe(self, source: str) -> None:
        """Embed one blank crop: a model whose contract does not describe its graph (a damaged
        or forged one) fails here in one sentence rather than in the middle of real work."""
        crop = np.zeros((self.contract.height, self.contract.width, 3), dtype=np.uint8)
        try:
            output = self.embed([crop])
        except Exception as exc:  # ONNX Runtime, OpenVINO and TensorRT raise their own types
            raise UserError(f"model {source} does not run on its own contract "
                            f"({exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}); export it again") \
                from None
        if output.shape != (1, self.contract.embedding_dim):
            raise UserError(f"model {source} gives embeddings of shape {output.shape[1:]}, "
                            f"its contract says {self.contract.embedding_dim}; export it again")

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``[len(crops), D]`` of RGB ``uint8`` crops of any size."""
        batch = preprocess(crops, self.contract)
        return self.embed_preprocessed(batch)

    def embed_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        step = self.max_batch or len(batch)
        outputs = [self.run(batch[i : i + step]) for i in range(0, len(batch), step)]
        return l2_normalize(np.concatenate(outputs).astype(np.float32, copy=False))


def onnxruntime_session(path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                        disable_qdq_fusion: bool = False, options=None):
    """An ONNX Runtime session, or one clear error for a missing or damaged file.

    ``providers`` defaults to TensorRT > CUDA > CPU, whichever exist (OpenVINO is its own
    runtime, :mod:`.openvino_backend`). ``options`` (an ``onnxruntime.SessionOptions``)
    carries anything else, e.g. profiling.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    available = ort.get_available_providers()
    if providers is None:
        preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in preferred if p in available]
    missing = [p for p in providers if p not in available]
    if missing:  # ONNX Runtime would print a warning and run on its CPU provider instead
        raise UserError(f"ONNX Runtime here offers {', '.join(available)}; {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not among them (OpenVINO: providers [openvino])")
    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if disable_qdq_fusion:
        # Run Q/DQ as exact fake-quantisation: the numerics a GPU INT8 engine computes.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # ORT raises InvalidProtobuf, Fail, ... for a damaged file
        raise UserError(f"ONNX Runtime cannot load {path} ({exc.__class__.__name__}): the file is damaged "
                        "or not an ONNX model; export it again") from exc


class OnnxRuntimeEmbedder(Embedder):
    """ONNX Runtime, with the providers of :func:`onnxruntime_session`."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 disable_qdq_fusion: bool = False):
        self.session = onnxruntime_session(path, providers, threads, disable_qdq_fusion)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.contract = ModelContract.from_metadata(meta, str(path))
        warning = other_cpu_warning(self.contract, str(path))
        if warning:
            log.warning(warning)
        self.backend = f"onnxruntime:{self.session.get_providers()[0]}"
        if self.contract.precision.startswith("int8-openvino") and self.backend.endswith("CPUExecutionProvider"):
            # ONNX Runtime runs the openvino target's S8S8 slower than the cpu target's U8S8 (docs/deployment.md)
            log.warning("%s was calibrated for OpenVINO's runtime: `providers: [openvino]` runs it faster than "
                        "ONNX Runtime's CPU provider (or calibrate it with --target cpu)", path)
        self.path = Path(path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.contract.output_name], {self.contract.input_name: batch})[0]
