"""One ``Embedder``: numpy crops in, L2-normalised float32 embeddings out.

The backend is chosen by the artifact: an ``.onnx`` file runs on ONNX Runtime (CPU, or
the CUDA / TensorRT execution providers where installed, or OpenVINO on Intel CPUs when
asked for); a TensorRT engine
(``.engine``/``.plan`` with its ``.json`` contract beside it) runs on TensorRT with
pycuda. Torch-free.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybreid.contract import ModelContract, l2_normalize, preprocess
from hybreid.errors import UserError
from hybreid.machine import CPU_INT8_FORMATS, cpu_isa, cpu_model_name

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
    return (f"{source} was calibrated for the {made} instruction set, this CPU is {machine_isa} ({here.why}): it "
            f"runs, but slower or less accurately; calibrate it for this box with `hybreid calibrate int8 "
            f"--target cpu --cpu-isa {machine_isa}`")


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


OPENVINO = "OpenVINOExecutionProvider"
_openvino_registered = False  # a plugin library registers once per process


def _openvino_cpu_devices() -> list:
    """OpenVINO's CPU devices as ONNX Runtime sees them, registering the plugin once per process.

    OpenVINO reaches ONNX Runtime as a plugin execution provider (ORT >= 1.23), chosen by
    device, not by name (a name in ``providers`` would silently fall back to the CPU
    provider). On an AMD EPYC the plugin offers no device at all, although the
    ``openvino`` package's own runtime lists and runs that CPU.
    """
    import onnxruntime as ort

    global _openvino_registered
    if OPENVINO not in ort.get_available_providers() and not _openvino_registered:
        try:
            import onnxruntime_ep_openvino
        except ImportError as exc:
            raise UserError("the OpenVINO execution provider is not installed: `pip install 'hybreid[openvino]'` "
                            "(x86-64), or leave it out of the providers") from exc
        if not hasattr(ort, "register_execution_provider_library"):
            raise UserError(f"onnxruntime {ort.__version__} cannot load plugin execution providers; OpenVINO "
                            "needs onnxruntime >= 1.23")
        ort.register_execution_provider_library("OpenVINO", onnxruntime_ep_openvino.get_library_path())
        _openvino_registered = True
    return [device for device in ort.get_ep_devices()
            if device.ep_name == OPENVINO and device.device.type == ort.OrtHardwareDeviceType.CPU]


def openvino_unavailable_reason() -> str | None:
    """None where ONNX Runtime's OpenVINO provider can run on this CPU, else the reason in one sentence."""
    try:
        devices = _openvino_cpu_devices()
    except UserError as exc:
        return str(exc)
    if devices:
        return None
    return (f"ONNX Runtime's OpenVINO plugin offers no device for this CPU ({cpu_model_name()}); use the CPU "
            "execution provider")


def _add_openvino_cpu(options, threads: int | None) -> None:
    """Add OpenVINO's CPU device to ``options``.

    The precision is pinned to f32: on CPUs with AVX512-BF16 OpenVINO otherwise computes in
    bfloat16, which is another model's numerics (and, without AMX, slower).
    """
    devices = _openvino_cpu_devices()
    if not devices:
        raise UserError(openvino_unavailable_reason())
    cpu = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cpu["INFERENCE_NUM_THREADS"] = str(threads)
    options.add_provider_for_devices(devices[:1], {"load_config": json.dumps({"CPU": cpu})})


def onnxruntime_session(path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                        disable_qdq_fusion: bool = False, options=None):
    """An ONNX Runtime session, or one clear error for a missing or damaged file.

    ``providers`` defaults to TensorRT > CUDA > CPU, whichever exist. OpenVINO
    (``"OpenVINOExecutionProvider"`` or ``"openvino"``) is used only when asked for, with
    the CPU provider behind it for any node it does not take. ``options`` (an
    ``onnxruntime.SessionOptions``) carries anything else, e.g. profiling.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} does not exist")
    if providers is None:
        preferred = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in preferred if p in ort.get_available_providers()]
    providers = [OPENVINO if p.lower() == "openvino" else p for p in providers]
    options = options or ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if disable_qdq_fusion:
        # Run Q/DQ as exact fake-quantisation: the numerics a GPU INT8 engine computes.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if OPENVINO in providers:
        _add_openvino_cpu(options, threads)
        by_name = {}
    else:
        by_name = {"providers": list(providers)}
    try:
        return ort.InferenceSession(str(path), options, **by_name)
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
        self.path = Path(path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.contract.output_name], {self.contract.input_name: batch})[0]
