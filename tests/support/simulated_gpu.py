"""A simulated GPU behind the stand-ins of ``bindings_standin``: what TensorRT and CUDA calls do.

A fake, for hardware that cannot exist on a CI machine, and labelled so in every test that
uses it. It keeps the contracts a real device enforces and a bug would break:

- memory: ``cudaMalloc`` / ``cudaMallocHost`` give real host buffers; a copy must stay
  inside live allocations of the kinds its ``cudaMemcpyKind`` names; a free must free a
  live allocation of its kind, once;
- streams: work goes to a stream that exists;
- the build: the ONNX is parsed into layers named after its nodes; the optimisation
  profile must give every input min <= opt <= max of the input's rank and fixed sizes; a
  strongly typed network takes no precision flag; implicit INT8 needs a calibrator,
  whose cache TensorRT reads;
- the run: the input shape must lie in the profile, every I/O tensor needs an address in
  device memory, and ``execute_async_v3`` computes the engine's ONNX with ONNX Runtime on
  the bytes that were copied to the device, writing the output where the address says.

Numerics, speed and memory use of a real GPU are outside it.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from dataclasses import dataclass

import numpy as np
import onnx

from support.bindings_standin import (
    ConformanceError,
    CudaApi,
    CudaFailure,
    CudaObject,
    StandIn,
    TensorRTApi,
    Transcript,
)

ENGINE_MAGIC = b"SIMULATED-TENSORRT-ENGINE\n"
STREAM_HANDLE_BASE = 0x57_0000_0000


@dataclass
class Allocation:
    kind: str  # "device" or "host" (page-locked)
    buffer: np.ndarray
    label: str
    live: bool = True

    @property
    def address(self) -> int:
        return self.buffer.ctypes.data


def _state(instance: StandIn) -> dict:
    return object.__getattribute__(instance, "_standin_state")


def _dims(value) -> tuple[int, ...]:
    if isinstance(value, StandIn):
        return tuple(int(v) for v in _state(value)["values"])
    return tuple(int(v) for v in value)


class SimulatedGpu:
    def __init__(self, tensorrt_api: dict, cuda_api: dict, gpu_name: str = "Orin", capability=(8, 7),
                 devices: int = 1):
        self.gpu_name, self.capability, self.devices = gpu_name, capability, devices
        self.allocations: list[Allocation] = []
        self.streams: dict[int, str] = {}
        self.failures: dict[str, str] = {}  # CUDA function -> cudaError_t member it returns
        self.parse_errors: list[str] = []  # what the ONNX parser reports, when it fails
        self.build_fails = self.execution_fails = False  # the builder returns None / execute_async_v3 False
        self.transcript = Transcript(render_int=self._render_int)
        self.tensorrt_api = TensorRTApi(tensorrt_api, self, self.transcript)
        self.cuda_api = CudaApi(cuda_api, self, self.transcript)
        self.tensorrt = self.tensorrt_api.module()
        self.cudart = self.cuda_api.module()

    # installing -------------------------------------------------------------
    def install(self, monkeypatch) -> None:
        """Make ``import tensorrt`` and ``from cuda.bindings import runtime`` find the stand-ins."""
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, self.cudart
        for name, module in (("tensorrt", self.tensorrt), ("cuda", cuda), ("cuda.bindings", bindings),
                             ("cuda.bindings.runtime", self.cudart)):
            monkeypatch.setitem(sys.modules, name, module)

    @property
    def lines(self) -> list[str]:
        return self.transcript.lines

    # dispatch -----------------------------------------------------------------
    def responder(self, name: str):
        handler = getattr(self, "on_" + name.replace(".", "_"), None)
        if name in self.failures:
            def fail(*args, **kwargs):
                raise CudaFailure(self.failures[name])
            return fail
        return handler

    def created(self, instance: StandIn, qualname: str, args: tuple, kwargs: dict) -> None:
        if qualname == "OnnxParser":
            _state(instance)["network"] = args[0]

    def assigned(self, instance: StandIn, qualname: str, name: str, value) -> None:
        if (qualname, name) == ("IBuilderConfig", "int8_calibrator"):
            # What TensorRT asks a calibrator whose cache is valid (it then skips get_batch).
            self._call_back(value, "get_batch_size")
            self._call_back(value, "read_calibration_cache")

    def _call_back(self, instance: StandIn, name: str, *args):
        """TensorRT calling a Python override: the answer must have the type TensorRT declares."""
        api = self.tensorrt_api
        qualname = next(klass._standin_qualname for klass in type(instance).__mro__ if "_standin_api" in
                        klass.__dict__)
        signature = api.check_call(f"{qualname}.{name}", api.lookup(qualname, "methods", name), args, {},
                                   skip_self=True)
        value = getattr(instance, name)(*args)
        if not api.accepts(signature.returns[0], value):
            raise ConformanceError(f"{type(instance).__name__}.{name} returned {api.transcript.render(value)}, "
                                   f"TensorRT expects {signature.returns[0]}")
        self.lines.append(f"  (TensorRT calls {type(instance).__name__}.{name}() -> {api.transcript.render(value)})")
        return value

    def _render_int(self, value: int) -> str | None:
        if value in self.streams:
            return self.streams[value]
        found = self._find(value)
        return f"{found[0].label}+{found[1]}" if found else None

    # memory -------------------------------------------------------------------
    def _allocate(self, kind: str, size: int) -> int:
        if size <= 0:
            raise CudaFailure("cudaErrorInvalidValue")
        label = f"{kind}#{sum(a.kind == kind for a in self.allocations) + 1}"
        allocation = Allocation(kind, np.zeros(size, dtype=np.uint8), label)
        self.allocations.append(allocation)
        return allocation.address

    def _find(self, address: int) -> tuple[Allocation, int] | None:
        for allocation in self.allocations:
            offset = address - allocation.address
            if 0 <= offset < allocation.buffer.nbytes:
                return allocation, offset
        return None

    def _span(self, address: int, count: int, kind: str, what: str) -> np.ndarray:
        found = self._find(address)
        if found is None or found[0].kind != kind:
            raise ConformanceError(f"{what}: {address:#x} is not in any {kind} allocation")
        allocation, offset = found
        if not allocation.live:
            raise ConformanceError(f"{what}: {allocation.label} was already freed")
        if offset + count > allocation.buffer.nbytes:
            raise ConformanceError(f"{what}: {count} bytes at {allocation.label}+{offset} run past its "
                                   f"{allocation.buffer.nbytes} bytes")
        return allocation.buffer[offset: offset + count]

    def _free(self, address: int, kind: str, what: str) -> None:
        found = self._find(address)
        if found is None or found[1] != 0 or found[0].kind != kind:
            raise ConformanceError(f"{what}: {address:#x} is not the start of a {kind} allocation")
        if not found[0].live:
            raise ConformanceError(f"{what}: {found[0].label} freed twice")
        found[0].live = False

    def _stream(self, stream, what: str) -> None:
        handle = int(stream) if isinstance(stream, CudaObject) else stream
        if handle not in self.streams:
            raise ConformanceError(f"{what}: {stream!r} is not a live stream")

    # CUDA runtime ---------------------------------------------------------------
    def on_cudaGetDeviceCount(self):
        return self.devices

    def on_cudaSetDevice(self, device):
        if device >= self.devices:
            raise CudaFailure("cudaErrorInvalidDevice")

    def on_cudaGetDeviceProperties(self, device):
        if device >= self.devices:
            raise CudaFailure("cudaErrorInvalidDevice")
        return CudaObject(self.cuda_api, "cudaDeviceProp", self.transcript.label("cudaDeviceProp"),
                          name=self.gpu_name.encode(), major=self.capability[0], minor=self.capability[1])

    def on_cudaGetErrorName(self, error):
        return error.name.encode()

    def on_cudaGetErrorString(self, error):
        return f"simulated {error.name}".encode()

    def on_cudaMalloc(self, size):
        return self._allocate("device", size)

    def on_cudaMallocHost(self, size):
        return self._allocate("host", size)

    def on_cudaFree(self, pointer):
        self._free(pointer, "device", "cudaFree")

    def on_cudaFreeHost(self, pointer):
        self._free(pointer, "host", "cudaFreeHost")

    def on_cudaStreamCreate(self):
        handle = STREAM_HANDLE_BASE + len(self.streams) + 1
        self.streams[handle] = f"stream#{len(self.streams) + 1}"
        return CudaObject(self.cuda_api, "cudaStream_t", self.streams[handle], handle=handle)

    def on_cudaStreamSynchronize(self, stream):
        self._stream(stream, "cudaStreamSynchronize")

    def on_cudaStreamDestroy(self, stream):
        self._stream(stream, "cudaStreamDestroy")
        del self.streams[int(stream)]

    def on_cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self._stream(stream, "cudaMemcpyAsync")
        source_kind, target_kind = {"cudaMemcpyHostToDevice": ("host", "device"),
                                    "cudaMemcpyDeviceToHost": ("device", "host"),
                                    "cudaMemcpyDeviceToDevice": ("device", "device"),
                                    "cudaMemcpyHostToHost": ("host", "host")}[kind.name]
        target = self._span(int(dst), count, target_kind, f"cudaMemcpyAsync({kind.name}) destination")
        source = self._span(int(src), count, source_kind, f"cudaMemcpyAsync({kind.name}) source")
        ctypes.memmove(target.ctypes.data, source.ctypes.data, count)

    # TensorRT: the build ------------------------------------------------------------
    def on_Builder_create_network(self, builder, flags=0):
        allowed = self.tensorrt_api.classes["NetworkDefinitionCreationFlag"]["enum"]
        valid_bits = sum(1 << value for value in allowed.values())
        if flags & ~valid_bits:
            raise ConformanceError(f"create_network({flags:#x}): bits outside NetworkDefinitionCreationFlag")
        typed_bit = allowed.get("STRONGLY_TYPED")
        return self.tensorrt_api.new("INetworkDefinition", strongly_typed=typed_bit is not None and
                                     bool(flags >> typed_bit & 1), layers=None)

    def on_OnnxParser_parse(self, parser, model, path=None):
        if self.parse_errors:
            return False
        network = _state(parser)["network"]
        graph_model = onnx.load_from_string(bytes(model))
        state = _state(network)
        state["model"] = graph_model
        state["layers"] = [self.tensorrt_api.new("ILayer", name=node.name, outputs=len(node.output))
                           for node in graph_model.graph.node]
        return True

    def on_OnnxParser_num_errors(self, parser):
        return len(self.parse_errors)

    def on_OnnxParser_get_error(self, parser, index):
        return self.tensorrt_api.new("ParserError", text=self.parse_errors[index])

    def _layers(self, network) -> list:
        layers = _state(network)["layers"]
        if layers is None:
            raise ConformanceError("the network was used before OnnxParser.parse filled it")
        return layers

    def on_INetworkDefinition_num_layers(self, network):
        return len(self._layers(network))

    def on_INetworkDefinition_get_layer(self, network, index):
        layers = self._layers(network)
        if not 0 <= index < len(layers):
            raise ConformanceError(f"get_layer({index}) of a network with {len(layers)} layers")
        return layers[index]

    def on_ILayer_name(self, layer):
        return _state(layer)["name"]

    def on_ILayer_num_outputs(self, layer):
        return _state(layer)["outputs"]

    def on_ILayer_set_output_type(self, layer, index, dtype):
        if not 0 <= index < _state(layer)["outputs"]:
            raise ConformanceError(f"set_output_type({index}) on a layer with {_state(layer)['outputs']} outputs")

    def on_IBuilderConfig_set_flag(self, config, flag):
        _state(config).setdefault("flags", []).append(flag.name)

    def on_IBuilderConfig_add_optimization_profile(self, config, profile):
        profiles = _state(config).setdefault("profiles", [])
        profiles.append(profile)
        return len(profiles) - 1

    def on_IOptimizationProfile_set_shape(self, profile, name, low, opt, high):
        _state(profile).setdefault("shapes", {})[name] = (_dims(low), _dims(opt), _dims(high))

    def on_IBuilderConfig_create_timing_cache(self, config, data):
        return self.tensorrt_api.new("ITimingCache", payload=bytes(data) or b"simulated timing cache")

    def on_IBuilderConfig_set_timing_cache(self, config, cache, ignore_mismatch):
        _state(config)["timing_cache"] = cache
        return True

    def on_IBuilderConfig_get_timing_cache(self, config):
        return _state(config)["timing_cache"]

    def on_ITimingCache_serialize(self, cache):
        return self.tensorrt_api.new("IHostMemory", payload=_state(cache)["payload"])

    def on_Builder_build_serialized_network(self, builder, network, config):
        if self.build_fails:
            return None
        model = _state(network).get("model")
        if model is None:
            raise ConformanceError("build_serialized_network: the network was never parsed")
        settings = _state(config)
        flags = settings.get("flags", [])
        if _state(network)["strongly_typed"] and set(flags) & {"FP16", "BF16", "INT8", "FP8"}:
            raise ConformanceError(f"a strongly typed network takes no precision flag, got {flags}")
        has_qdq = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        if "INT8" in flags and not has_qdq and "int8_calibrator" not in settings:
            raise ConformanceError("implicit INT8 (no Q/DQ) without a calibrator")
        profiles = settings.get("profiles", [])
        if len(profiles) != 1:
            raise ConformanceError(f"expected one optimisation profile, got {len(profiles)}")
        shapes = _state(profiles[0]).get("shapes", {})
        for graph_input in model.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else None
                    for d in graph_input.type.tensor_type.shape.dim]
            if graph_input.name not in shapes:
                raise ConformanceError(f"the profile gives no shape for input {graph_input.name!r}")
            low, opt, high = shapes[graph_input.name]
            if not len(low) == len(opt) == len(high) == len(dims):
                raise ConformanceError(f"profile shapes {low}/{opt}/{high} do not have the rank of {dims}")
            for axis, fixed in enumerate(dims):
                sizes = (low[axis], opt[axis], high[axis])
                if fixed is not None and set(sizes) != {fixed}:
                    raise ConformanceError(f"input {graph_input.name} axis {axis} is fixed at {fixed}, "
                                           f"the profile says {sizes}")
                if not 1 <= sizes[0] <= sizes[1] <= sizes[2]:
                    raise ConformanceError(f"profile axis {axis} is not min <= opt <= max: {sizes}")
        header = json.dumps({"profile": {name: list(map(list, value)) for name, value in shapes.items()},
                             "flags": flags, "strongly_typed": _state(network)["strongly_typed"]})
        payload = ENGINE_MAGIC + header.encode() + b"\n" + model.SerializeToString()
        return self.tensorrt_api.new("IHostMemory", payload=payload)

    # TensorRT: the run ---------------------------------------------------------------
    def on_Runtime_deserialize_cuda_engine(self, runtime, data):
        data = bytes(data)
        if not data.startswith(ENGINE_MAGIC):
            return None
        header, _, model_bytes = data[len(ENGINE_MAGIC):].partition(b"\n")
        import onnxruntime

        session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        return self.tensorrt_api.new("ICudaEngine", session=session,
                                     profile={name: tuple(map(tuple, value))
                                              for name, value in json.loads(header)["profile"].items()})

    def on_ICudaEngine_create_execution_context(self, engine):
        return self.tensorrt_api.new("IExecutionContext", engine=engine, shapes={}, addresses={})

    def on_ICudaEngine_get_tensor_profile_shape(self, engine, name, profile_index):
        profile = _state(engine)["profile"]
        if profile_index != 0 or name not in profile:
            raise ConformanceError(f"get_tensor_profile_shape({name!r}, {profile_index}): no such input/profile")
        return [self.tensorrt_api.new("Dims", values=shape) for shape in profile[name]]

    def _engine_of(self, context):
        return _state(_state(context)["engine"])

    def on_IExecutionContext_set_input_shape(self, context, name, shape):
        low, _, high = self._engine_of(context)["profile"][name]
        shape = _dims(shape)
        if len(shape) != len(low) or any(not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            return False
        _state(context)["shapes"][name] = shape
        return True

    def on_IExecutionContext_set_tensor_address(self, context, name, address):
        session = self._engine_of(context)["session"]
        names = [tensor.name for tensor in [*session.get_inputs(), *session.get_outputs()]]
        if name not in names:
            raise ConformanceError(f"set_tensor_address({name!r}): the engine's tensors are {names}")
        if self._find(address) is None or self._find(address)[0].kind != "device":
            raise ConformanceError(f"set_tensor_address({name!r}): {address:#x} is not device memory")
        _state(context)["addresses"][name] = address
        return True

    def on_IExecutionContext_execute_async_v3(self, context, stream_handle):
        self._stream(stream_handle, "execute_async_v3")
        if self.execution_fails:
            return False
        session = self._engine_of(context)["session"]
        state = _state(context)
        feeds = {}
        for tensor in session.get_inputs():
            if tensor.name not in state["shapes"] or tensor.name not in state["addresses"]:
                raise ConformanceError(f"execute_async_v3 before the shape and address of {tensor.name!r}")
            dtype = np.uint8 if tensor.type == "tensor(uint8)" else np.float32
            shape = state["shapes"][tensor.name]
            count = int(np.prod(shape)) * np.dtype(dtype).itemsize
            raw = self._span(state["addresses"][tensor.name], count, "device", f"input {tensor.name}")
            feeds[tensor.name] = raw.view(dtype).reshape(shape).copy()
        outputs = session.run(None, feeds)
        for tensor, value in zip(session.get_outputs(), outputs, strict=True):
            if tensor.name not in state["addresses"]:
                raise ConformanceError(f"execute_async_v3 before the address of output {tensor.name!r}")
            value = np.ascontiguousarray(value)
            target = self._span(state["addresses"][tensor.name], value.nbytes, "device", f"output {tensor.name}")
            target[:] = value.view(np.uint8).reshape(-1)
        return True
