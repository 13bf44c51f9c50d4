"""Build a TensorRT engine on the device that will run it, and cache it.

Everything the build decides is made first, TensorRT-free, by :func:`plan_engine`: the
builder flags, whether the network is strongly typed, the layers pinned to FP32
(:func:`hybreid.export.precision.fp32_nodes`), the profile shapes and the cache key
(:mod:`hybreid.inference.engine_cache`). ``hybreid export engine --dry-run`` prints that
plan for a given TensorRT version on a machine without a GPU; :func:`build_engine` applies
it with TensorRT's Python API, in few lines.

- TensorRT 10: FP16 through the builder flag with LayerNorm, Softmax, the attention
  MatMuls, GeM and the L2 normalisation pinned to FP32 (``OBEY_PRECISION_CONSTRAINTS``);
  INT8 from a Q/DQ ONNX (explicit quantisation), or from a calibration cache where the
  installed version still has the (deprecated) implicit-INT8 calibrators.
- TensorRT 11: strongly typed networks only; precision comes from the ONNX itself:
  the FP16 ONNX of :func:`hybreid.export.precision.convert_to_fp16` or the Q/DQ ONNX.

The TensorRT calls are checked name by name, signature by signature, against NVIDIA's
own bindings of TensorRT 10.3 and 11.4 (the conformance tests); no GPU ran them here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from hybreid.contract import ModelContract, metadata_of
from hybreid.errors import UserError
from hybreid.inference.engine_cache import (
    BuildOptions,
    DeviceInfo,
    cache_key,
    file_sha256,
    profile_shapes,
    write_sidecar,
)
from hybreid.inference.tensorrt_backend import device_info, import_tensorrt


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise UserError(f"TensorRT version must look like 10.3.0, got {version!r}") from None


@dataclass(frozen=True)
class EnginePlan:
    """What the builder will be told, for one ONNX file on one TensorRT version and GPU."""

    source: Path
    contract: ModelContract
    device: DeviceInfo
    options: BuildOptions
    flags: tuple[str, ...]
    calibration_cache: bool
    fp32_layers: dict[str, str]  # layer (ONNX node) name -> why it stays FP32
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    onnx_sha256: str
    cache_key: str

    @property
    def strongly_typed(self) -> bool:
        return self.options.strongly_typed

    @property
    def engine_name(self) -> str:
        return f"{self.contract.model}-{self.options.precision}-{self.cache_key}.engine"


def plan_engine(onnx_path: str | Path, options: BuildOptions, device: DeviceInfo) -> EnginePlan:
    """The build of ``onnx_path`` for ``device`` (no GPU or TensorRT needed)."""
    import onnx

    from hybreid.export.precision import fp32_nodes

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {onnx_path} does not exist")
    model = onnx.load(str(onnx_path))
    contract = ModelContract.from_metadata(metadata_of(model), str(onnx_path))
    has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    has_fp16 = any(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in model.graph.initializer)
    major = tensorrt_major(device.tensorrt_version)
    precision = options.precision
    if major >= 11:
        # Strongly typed: the graph's own types decide, so the file must already be in the
        # asked precision, or the engine would silently be another one.
        if precision == "int8" and not has_qdq:
            raise UserError("TensorRT 11 builds INT8 only from a Q/DQ ONNX: run `hybreid calibrate int8 "
                            "--target tensorrt` and build from its output")
        if precision == "fp16" and not has_fp16:
            raise UserError(f"TensorRT 11 takes the precision from the ONNX and {onnx_path.name} is FP32: export "
                            "it with `hybreid export onnx --fp16` and build from the .fp16.onnx file")
        if precision == "fp32" and (has_fp16 or has_qdq):
            raise UserError(f"TensorRT 11 takes the precision from the ONNX and {onnx_path.name} is not FP32: "
                            "build from the FP32 ONNX, or ask for the precision the file has")
        flags, calibration, pinned = (), False, {}
    else:
        flags = {"fp32": (), "fp16": ("FP16", "OBEY_PRECISION_CONSTRAINTS"),
                 "int8": ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")}[precision]
        calibration = precision == "int8" and not has_qdq
        pinned = fp32_nodes(model) if precision != "fp32" else {}
    options = replace(options, strongly_typed=major >= 11)
    onnx_hash = file_sha256(onnx_path)
    return EnginePlan(
        source=onnx_path, contract=contract, device=device, options=options, flags=flags,
        calibration_cache=calibration, fp32_layers=pinned,
        profile=profile_shapes(contract.layout, contract.height, contract.width, options),
        onnx_sha256=onnx_hash, cache_key=cache_key(onnx_hash, device, options))


def describe_plan(plan: EnginePlan, layers_shown: int = 12) -> str:
    """The plan as a person reads it: ``hybreid export engine --dry-run`` prints this."""
    from hybreid.tables import format_table

    device = plan.device
    rows = [
        ("TensorRT", device.tensorrt_version),
        ("GPU", f"{device.gpu_name} (sm {device.compute_capability})"),
        ("model", f"{plan.contract.model} ({plan.source.name})"),
        ("precision", plan.options.precision),
        ("network", "strongly typed (the ONNX's types decide)" if plan.strongly_typed else "weakly typed"),
        ("builder flags", ", ".join(plan.flags) or "none"),
        ("INT8 calibration cache", "required (implicit INT8)" if plan.calibration_cache else "no"),
        ("layers pinned to FP32", "none: the ONNX's own types keep its FP32 islands" if plan.strongly_typed
         else str(len(plan.fp32_layers))),
        (f"profile {plan.contract.input_name}", " / ".join("x".join(map(str, shape)) for shape in plan.profile)
         + " (min / opt / max)"),
        ("workspace", f"{plan.options.workspace_mib} MiB"),
        ("cache key", plan.cache_key),
        ("engine file", plan.engine_name),
    ]
    text = format_table(["build", "value"], rows)
    if plan.fp32_layers:
        shown = list(plan.fp32_layers.items())[:layers_shown]
        text += "\n\n" + format_table(["layer kept FP32", "why"], shown)
        if len(plan.fp32_layers) > layers_shown:
            text += f"\n... and {len(plan.fp32_layers) - layers_shown} more"
    return text


def build_engine(onnx_path: str | Path, out_dir: str | Path, options: BuildOptions,
                 calibration_cache: str | Path | None = None, timing_cache: str | Path | None = None) -> Path:
    """Build (or reuse from ``out_dir``) the engine for ``onnx_path`` on this device."""
    out_dir = Path(out_dir)
    trt, cudart = import_tensorrt()
    plan = plan_engine(onnx_path, options, device_info(trt, cudart))
    engine_path = out_dir / plan.engine_name
    if engine_path.is_file():
        return engine_path
    if plan.calibration_cache and not calibration_cache:
        raise UserError("INT8 without a Q/DQ ONNX needs --calibration-cache (from `hybreid calibrate int8`)")
    out_dir.mkdir(parents=True, exist_ok=True)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(plan.source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT cannot parse {plan.source}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.options.workspace_mib << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in plan.fp32_layers:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
    if plan.calibration_cache:
        config.int8_calibrator = _cache_calibrator(trt, Path(calibration_cache))
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.contract.input_name, *plan.profile)
    config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT failed to build an engine from {plan.source}; see its log above")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    write_sidecar(engine_path, plan.cache_key, plan.onnx_sha256, plan.device, plan.options,
                  plan.contract.to_metadata())
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
