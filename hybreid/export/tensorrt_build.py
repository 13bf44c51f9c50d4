"""Build a TensorRT engine on the device that will run it, and cache it.

Never executed in this project's CI (no GPU there). Written against NVIDIA's
documented Python API and kept thin; the decisions it applies are made by tested,
TensorRT-free code: the FP32 layers (:func:`hybreid.export.precision.fp32_nodes`), the
profile shapes and the cache key (:mod:`hybreid.inference.engine_cache`).

- TensorRT 10: FP16 through the builder flag with LayerNorm, Softmax, the attention
  MatMuls, GeM and the L2 normalisation pinned to FP32 (``OBEY_PRECISION_CONSTRAINTS``);
  INT8 from a Q/DQ ONNX (explicit quantisation), or from a calibration cache where the
  installed version still has the (deprecated) implicit-INT8 calibrators.
- TensorRT 11: strongly typed networks only; precision comes from the ONNX itself:
  the FP16 ONNX of :func:`hybreid.export.precision.convert_to_fp16` or the Q/DQ ONNX.
"""

from __future__ import annotations

from pathlib import Path

from hybreid.contract import ModelContract, metadata_of
from hybreid.errors import UserError
from hybreid.inference.engine_cache import (
    BuildOptions,
    cache_key,
    file_sha256,
    profile_shapes,
    write_sidecar,
)
from hybreid.inference.tensorrt_backend import device_info, import_tensorrt


def tensorrt_major(version: str) -> int:
    return int(version.split(".")[0])


def plan_build(precision: str, trt_version: str, has_qdq: bool) -> dict:
    """What the builder must do for ``precision`` on this TensorRT version (no GPU needed)."""
    major = tensorrt_major(trt_version)
    if precision == "int8" and not has_qdq:
        if major >= 11:
            raise UserError("TensorRT 11 builds INT8 only from a Q/DQ ONNX: run `hybreid calibrate int8 "
                            "--target tensorrt` and build from its output")
        return {"strongly_typed": False, "flags": ["INT8", "FP16"], "calibration_cache": True, "pin_fp32": True}
    if major >= 11:
        # Strongly typed: the graph's own types decide (FP16 ONNX with FP32 islands, or Q/DQ).
        return {"strongly_typed": True, "flags": [], "calibration_cache": False, "pin_fp32": False}
    flags = {"fp32": [], "fp16": ["FP16", "OBEY_PRECISION_CONSTRAINTS"],
             "int8": ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]}[precision]
    return {"strongly_typed": False, "flags": flags, "calibration_cache": False, "pin_fp32": precision != "fp32"}


def build_engine(onnx_path: str | Path, out_dir: str | Path, options: BuildOptions,
                 calibration_cache: str | Path | None = None, timing_cache: str | Path | None = None) -> Path:
    """Build (or reuse from ``out_dir``) the engine for ``onnx_path`` on this device."""
    import onnx

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    trt, cuda = import_tensorrt()
    device = device_info(trt, cuda)
    model = onnx.load(str(onnx_path))
    contract = ModelContract.from_metadata(metadata_of(model), str(onnx_path))
    has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    plan = plan_build(options.precision, device.tensorrt_version, has_qdq)
    options = BuildOptions(**{**options.__dict__, "strongly_typed": plan["strongly_typed"]})
    onnx_hash = file_sha256(onnx_path)
    key = cache_key(onnx_hash, device, options)
    engine_path = out_dir / f"{contract.model}-{options.precision}-{key}.engine"
    if engine_path.is_file():
        return engine_path
    out_dir.mkdir(parents=True, exist_ok=True)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan["strongly_typed"] else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if plan["pin_fp32"]:
        from hybreid.export.precision import fp32_nodes

        keep = set(fp32_nodes(model))
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if layer.name in keep:
                layer.precision = trt.float32
                for output in range(layer.num_outputs):
                    layer.set_output_type(output, trt.float32)
    if plan["calibration_cache"]:
        if not calibration_cache:
            raise UserError("INT8 without a Q/DQ ONNX needs --calibration-cache (from `hybreid calibrate int8`)")
        config.int8_calibrator = _cache_calibrator(trt, Path(calibration_cache))
    profile = builder.create_optimization_profile()
    profile.set_shape(contract.input_name, *profile_shapes(contract.layout, contract.height, contract.width, options))
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {onnx_path}; see its log above")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    write_sidecar(engine_path, key, onnx_hash, device, options, contract.to_metadata())
    return engine_path


def _cache_calibrator(trt, cache: Path):
    """An implicit-INT8 calibrator that only replays a calibration cache (TensorRT <= 10)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.cache = cache.read_bytes()

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return self.cache

        def write_calibration_cache(self, data):
            return None

    return CacheCalibrator()
