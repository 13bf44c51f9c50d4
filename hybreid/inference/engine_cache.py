"""TensorRT engine identity: cache keys, sidecar files and the compatibility check.

A TensorRT engine runs only with the TensorRT version and GPU architecture it was
built for ("engine plan file is not compatible ... rebuild"). hybreid therefore builds
engines on the target and caches them under a key made of everything that shapes the
plan: the ONNX file's hash, the TensorRT version, the GPU name and compute capability,
and the build options. Beside each engine a JSON sidecar records that key and the
model contract, so a device can refuse an engine from elsewhere with a clear message
before TensorRT fails obscurely. Torch- and TensorRT-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hybreid.errors import UserError


@dataclass(frozen=True)
class BuildOptions:
    precision: str  # fp32, fp16, int8
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 2048
    strongly_typed: bool = False

    def __post_init__(self):
        if self.precision not in ("fp32", "fp16", "int8"):
            raise UserError(f"precision must be fp32, fp16 or int8, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(f"need 1 <= min <= opt <= max batch, got {self.min_batch}/{self.opt_batch}/"
                            f"{self.max_batch}")


@dataclass(frozen=True)
class DeviceInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" for Jetson Orin


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(onnx_sha256: str, device: DeviceInfo, options: BuildOptions) -> str:
    """16 hex digits identifying one engine build."""
    fields = {"onnx": onnx_sha256, **asdict(device), **asdict(options)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def profile_shapes(layout: str, height: int, width: int, options: BuildOptions) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) input shapes of the optimisation profile for the model's layout."""
    def shape(batch: int) -> tuple[int, int, int, int]:
        return (batch, height, width, 3) if layout == "NHWC" else (batch, 3, height, width)

    return shape(options.min_batch), shape(options.opt_batch), shape(options.max_batch)


def sidecar_path(engine: str | Path) -> Path:
    return Path(engine).with_suffix(".json")


def write_sidecar(engine: str | Path, key: str, onnx_sha256: str, device: DeviceInfo, options: BuildOptions,
                  contract: dict[str, str]) -> Path:
    path = sidecar_path(engine)
    path.write_text(json.dumps({"cache_key": key, "onnx_sha256": onnx_sha256, "device": asdict(device),
                                "build": asdict(options), "contract": contract}, indent=2))
    return path


def read_sidecar(engine: str | Path) -> dict:
    path = sidecar_path(engine)
    if not path.is_file():
        raise UserError(f"{engine} has no {path.name} beside it; build engines with `hybreid export engine`")
    try:
        data = json.loads(path.read_text())
        data["device"] = DeviceInfo(**data["device"])
        data["build"] = BuildOptions(**data["build"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is damaged ({exc}); rebuild the engine with `hybreid export engine`") from exc
    return data


def check_compatible(built_for: DeviceInfo, here: DeviceInfo, engine: str | Path) -> None:
    """Refuse an engine built for another TensorRT version or GPU, saying to rebuild."""
    problems = []
    if built_for.tensorrt_version != here.tensorrt_version:
        problems.append(f"TensorRT {built_for.tensorrt_version} (this device has {here.tensorrt_version})")
    if built_for.compute_capability != here.compute_capability or built_for.gpu_name != here.gpu_name:
        problems.append(f"GPU {built_for.gpu_name} sm {built_for.compute_capability} (this device has "
                        f"{here.gpu_name} sm {here.compute_capability})")
    if problems:
        raise UserError(f"engine {engine} was built for {' and '.join(problems)}; engines do not move between "
                        "TensorRT versions or GPUs: rebuild it on this device with `hybreid export engine`")
