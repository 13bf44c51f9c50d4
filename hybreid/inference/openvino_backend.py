"""OpenVINO's own runtime on x86-64 CPUs, Intel and AMD alike: the ONNX file read as it
is, FP32 or the Q/DQ INT8 copy of ``calibrate int8`` (run on OpenVINO's int8 kernels).

Two providers name it: ``openvino`` computes the float ops in f32 (the numerics of the
FP32 model), ``openvino-bf16`` in bfloat16 where the CPU has AVX512-BF16 or AMX
(OpenVINO's ``INFERENCE_PRECISION_HINT``). The precision is always set: left alone,
OpenVINO picks bfloat16 on such CPUs, which is another model's numerics.

ONNX Runtime's OpenVINO plugin (``onnxruntime-ep-openvino``) is not used: it offers no
device on an AMD EPYC, where this runtime lists the CPU and runs the paper models'
INT8 copies 1.5x faster than ONNX Runtime's own CPU kernels.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from hybreid.contract import ModelContract
from hybreid.errors import UserError
from hybreid.inference.embedder import Embedder, other_cpu_warning
from hybreid.machine import cpu_features, cpu_model_name

log = logging.getLogger("hybreid.inference")

# provider name -> OpenVINO's inference precision for the ops left in float
PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def is_openvino(provider: str) -> bool:
    return provider.lower() in PRECISIONS


@functools.cache
def _core():
    import openvino

    return openvino.Core()


def bf16_unavailable_reason(features: frozenset[str] | None = None) -> str | None:
    """None where the CPU computes bfloat16 natively, else why not (``features``: this CPU's)."""
    features = cpu_features() if features is None else features
    if any(flag in features for flag in BF16_FEATURES):
        return None
    return (f"this CPU ({cpu_model_name()}) has neither AVX512-BF16 nor AMX: OpenVINO would emulate bfloat16, "
            "slower than f32; use the openvino provider")


def openvino_unavailable_reason(provider: str = "openvino") -> str | None:
    """None where ``provider`` (``openvino`` or ``openvino-bf16``) runs here, else the reason in one sentence."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino package is not installed: `pip install 'hybreid[openvino]'` (x86-64)"
    if "CPU" not in _core().available_devices:
        return f"OpenVINO offers no CPU device on this machine ({cpu_model_name()})"
    return bf16_unavailable_reason() if PRECISIONS[provider.lower()] == "bf16" else None


def compile_for_cpu(path: str | Path, provider: str = "openvino", threads: int | None = None):
    """(the model as OpenVINO read it, the model compiled for this CPU), its float ops in the
    precision ``provider`` names; OpenVINO's RuntimeError where it cannot."""
    config = {"INFERENCE_PRECISION_HINT": PRECISIONS[provider.lower()], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    model = _core().read_model(str(path))
    return model, _core().compile_model(model, "CPU", config)


class OpenVinoEmbedder(Embedder):
    """An ONNX artifact compiled by OpenVINO for this CPU."""

    def __init__(self, path: str | Path, provider: str = "openvino", threads: int | None = None):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"model file {path} does not exist")
        reason = openvino_unavailable_reason(provider)
        if reason:
            raise UserError(reason)
        precision = PRECISIONS[provider.lower()]
        try:
            model, compiled = compile_for_cpu(path, provider, threads)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError for a graph it cannot read or compile
            first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise UserError(f"OpenVINO cannot compile {path} ({first_line}): the file is damaged or uses an "
                            "operator OpenVINO lacks; use the CPU provider") from exc
        # the ONNX file's metadata as OpenVINO read it: parsing the file again for it took
        # 0.7 s more on the paper FusionReID
        rt_info = model.get_rt_info()
        metadata = ({key: value.astype(str) for key, value in rt_info["framework"].items()}
                    if "framework" in rt_info else {})
        self.contract = ModelContract.from_metadata(metadata, str(path))
        warning = other_cpu_warning(self.contract, str(path))
        if warning:
            log.warning(warning)
        self.request = compiled.create_infer_request()
        self.backend = f"openvino:CPU-{precision}"
        self.path = path

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.request.infer({self.contract.input_name: np.ascontiguousarray(batch)})[self.contract.output_name]
