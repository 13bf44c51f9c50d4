"""INT8 post-training quantisation that keeps the fragile parts of a transformer in float.

Made with ONNX Runtime's static quantiser (Q/DQ format, per-channel weights):

- ``--target tensorrt``: symmetric int8 activations and weights, zero points 0 — the
  only Q/DQ TensorRT accepts, and what every TensorRT version (10 and 11) builds from.
- ``--target cpu``: the form the CPU's int8 kernels run best (:data:`CPU_INT8_FORMATS`),
  chosen by the instruction set of the CPU it runs on (``--cpu-isa`` names another, so a
  workstation can calibrate for the camera boxes): without VNNI, uint8 activations with
  ``reduce_range`` (AVX2's ``vpmaddubsw`` saturates its int16 sums, and U8S8 at full range
  overflows on ViTs); with VNNI or AMX, whose dot products accumulate in int32, uint8
  activations at full range (as fast, closer to FP32; S8S8 ran slower). The choice is
  recorded in the model (``hybreid.cpu_isa``) and the report, and the embedder warns
  when it loads a copy made for another instruction set.
- ``--target openvino``: OpenVINO's runtime (:mod:`hybreid.inference.openvino_backend`)
  on any x86-64 CPU: symmetric int8 activations (zero point 0), and the attention
  MatMuls quantised too. Made for a CPU without VNNI, its weights are 7-bit: OpenVINO's
  kernels there shift int8 activations to uint8 and multiply with ``vpmaddubsw``, whose
  int16 sums saturate at full range (the tiny FusionReID under OpenVINO on an AMD EPYC
  Zen 3: worst cosine to FP32 0.9898 at full range, 0.9937 with 7-bit weights). An
  activation zero point leaves a Convert and a Subtract in float before every op
  OpenVINO cannot fold it into (14 % of the paper HAResformer's INT8 time); OpenVINO
  fuses quantised ``Q K^T``, Softmax and ``attention x V`` into one int8 kernel (its
  largest attention, 2592 tokens, 87 ms in bfloat16, 49 ms in int8). Measured under
  OpenVINO on an AMD EPYC with AVX-512 VNNI, batch 8, against ONNX Runtime FP32: paper
  FusionReID 2.92x (``cpu`` form) -> 3.19x (3.45x with its float ops in bfloat16);
  HAResformer with every layer quantised (``quantize_output_layers``,
  ``quantize_token_writers``) 3.32x.

Only the compute-heavy ops are quantised (Conv, MatMul, Gemm): Softmax, LayerNorm and
GELU stay float, and so do the attention MatMuls around the Softmax (``Q K^T`` and
``attention x V``, the MFU's single-query cross-attention included), unless
``quantize_attention`` is set (for the comparison run) or the target is ``openvino``.
A 1x1 Conv or Gemm that reads a concatenation is split into one op per concatenated tensor, summed (the same function
and FLOPs), so each part gets its own activation scale: one per-tensor scale cannot
serve tensors of different ranges side by side, as in HAResformer's CFFM (a ReLU map
next to LayerNorm-ed tokens) and HGAE (four stages' class tokens). A concatenation
reader that cannot be split stays float; ``quantize_concat_inputs`` quantises them as
they are instead. The layers that write the embedding (no other Conv/MatMul/Gemm
between them and the output) stay float as well (``quantize_output_layers``
overrides): their error reaches the embedding unfiltered, cubed by GeM and scaled up
channel by channel by the BNNeck. On the trained tiny HAResformer: quantised as they
are, 0.934 mean cosine to FP32; split, with the embedding writers float, 0.991.

For the ``cpu`` and ``openvino`` targets a patch embedding, whose tokens are concatenated
with the float class token, stays float too: OpenVINO, which runs the same file, computes
that concatenation wrongly from a quantised tensor (paper FusionReID: worst
cosine 0.899 to FP32 under OpenVINO, 0.998 under ONNX Runtime's CPU kernels; 0.998 for
both with the patch embedding float). ``quantize_token_writers`` quantises them anyway:
HAResformer's transformer embeddings, also concatenated with class tokens, run correctly
quantised under OpenVINO (paper model: cosine 0.9996).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hybreid.contract import ModelContract, metadata_of, set_metadata
from hybreid.errors import UserError
from hybreid.export.graph import consumers, producers
from hybreid.export.precision import unshare_initializers
from hybreid.machine import CPU_INT8_FORMATS, CPU_ISAS, CpuInt8Format

METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("tensorrt", "cpu", "openvino")
CPU_TARGETS = ("cpu", "openvino")  # made for an instruction set; TensorRT's form is one for every GPU


def cpu_int8_format(isa: str) -> CpuInt8Format:
    if isa not in CPU_ISAS:
        raise UserError(f"cpu instruction set must be one of {', '.join(CPU_ISAS)}, got {isa!r}")
    return CPU_INT8_FORMATS[isa]


@dataclass(frozen=True)
class QuantizationConfig:
    target: str = "tensorrt"
    cpu_isa: str = ""  # the ``cpu`` and ``openvino`` targets' instruction set (default: this CPU's)
    method: str = "minmax"
    op_types: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    exclude_nodes: tuple[str, ...] = ()
    quantize_attention: bool = False
    quantize_concat_inputs: bool = False
    quantize_output_layers: bool = False
    quantize_token_writers: bool = False

    def __post_init__(self):
        if self.target not in TARGETS:
            raise UserError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.method not in METHODS:
            raise UserError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.target in CPU_TARGETS:
            from hybreid.machine import cpu_isa

            object.__setattr__(self, "cpu_isa", self.cpu_isa or cpu_isa())
            cpu_int8_format(self.cpu_isa)
        elif self.cpu_isa:
            raise UserError("an instruction set applies to the cpu and openvino targets only")

    @property
    def cpu_format(self) -> CpuInt8Format | None:
        """The Q/DQ form for the CPU: the ``cpu`` target's from its instruction set; the
        ``openvino`` target's activations are always int8, its weight range the instruction set's."""
        if self.target == "cpu":
            return CPU_INT8_FORMATS[self.cpu_isa]
        if self.target == "openvino":
            made_for = CPU_INT8_FORMATS[self.cpu_isa]
            return CpuInt8Format("int8", made_for.reduce_range, made_for.why)
        return None

    @property
    def attention_quantized(self) -> bool:
        return self.quantize_attention or self.target == "openvino"

    @property
    def symmetric_activations(self) -> bool:
        """Zero-point-free int8 activations: TensorRT accepts no other, OpenVINO runs them fastest."""
        return self.target in ("tensorrt", "openvino")


@dataclass
class QuantizationResult:
    path: Path
    config: QuantizationConfig
    unquantized: dict[str, str] = field(default_factory=dict)  # node name -> why it stays float


def attention_matmuls(model) -> dict[str, str]:
    """The MatMuls on either side of every Softmax (``onnx.ModelProto``)."""
    from hybreid.export.precision import fp32_nodes

    return {name: reason for name, reason in fp32_nodes(model).items() if reason.startswith("attention")}


def output_layers(model, op_types: tuple[str, ...]) -> list[str]:
    """Nodes of ``op_types`` from which a graph output is reached through other ops only.

    The walk stops at LayerNormalization: every transformer block adds into the residual
    stream that a LayerNorm closes, and without the stop every block would count.
    """
    readers = consumers(model.graph)
    outputs = {output.name for output in model.graph.output}
    stops = (*op_types, "LayerNormalization")
    reaching: dict[str, bool] = {}

    def reaches_output(tensor: str) -> bool:
        if tensor not in reaching:
            reaching[tensor] = False  # a graph is acyclic; this only stops re-walking shared paths
            reaching[tensor] = tensor in outputs or any(
                node.op_type not in stops and any(reaches_output(out) for out in node.output)
                for node in readers.get(tensor, []))
        return reaching[tensor]

    return [node.name for node in model.graph.node
            if node.op_type in op_types and any(reaches_output(out) for out in node.output)]


SHAPE_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")


def token_writers(model, op_types: tuple[str, ...]) -> list[str]:
    """Nodes of ``op_types`` whose output, only reshaped or transposed, is concatenated with
    other tokens: a ViT's patch embedding next to its class token."""
    readers = consumers(model.graph)

    def reaches_concat(tensor: str) -> bool:
        return any(node.op_type == "Concat" or (node.op_type in SHAPE_OPS and reaches_concat(node.output[0]))
                   for node in readers.get(tensor, []))

    return [node.name for node in model.graph.node if node.op_type in op_types and reaches_concat(node.output[0])]


def unquantized_nodes(model, config: QuantizationConfig) -> dict[str, str]:
    """Every node left in float, with the reason."""
    keep = {} if config.attention_quantized else dict(attention_matmuls(model))
    for name in config.exclude_nodes:
        keep[name] = "excluded by name"
    if not config.quantize_concat_inputs:
        writers = producers(model.graph)
        for node in model.graph.node:
            source = writers.get(node.input[0]) if node.input else None
            if node.op_type in config.op_types and source is not None and source.op_type == "Concat":
                keep.setdefault(node.name, "input is a concatenation (one activation scale for tensors of "
                                           "different ranges)")
    if not config.quantize_output_layers:
        for name in output_layers(model, config.op_types):
            keep.setdefault(name, "writes the embedding (no quantised op between it and the output)")
    if config.target in ("cpu", "openvino") and not config.quantize_token_writers:
        for name in token_writers(model, config.op_types):
            keep.setdefault(name, "writes tokens concatenated with float ones (OpenVINO computes that "
                                  "concatenation wrongly from a quantised tensor)")
    for node in model.graph.node:
        if node.op_type not in config.op_types and node.op_type in ("Softmax", "LayerNormalization", "Erf"):
            keep.setdefault(node.name, f"{node.op_type} (not a quantised op type)")
    return keep


def split_concatenated_inputs(model) -> list[str]:
    """Rewrite each 1x1 Conv or Gemm that reads a channel concatenation as one such op per
    concatenated tensor, summed: ``W [a; b] + c = W_a a + W_b b + c`` (same FLOPs).

    Each part then gets its own INT8 activation scale instead of one scale for tensors of
    different ranges (HAResformer's CFFM reads a ReLU map next to LayerNorm-ed tokens,
    its HGAE four stages' class tokens). Needs shape-inferred ``value_info`` for the
    parts' widths; ops it cannot split are left alone (and stay float, see
    ``quantize_concat_inputs``). Returns the names of the ops it split.
    """
    from onnx import helper, numpy_helper

    writers = producers(model.graph)
    readers = {name: len(nodes) for name, nodes in consumers(model.graph).items()}
    initializers = {i.name: i for i in model.graph.initializer}
    widths = {}
    for info in [*model.graph.value_info, *model.graph.input]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            widths[info.name] = dims[1].dim_value
    split = []
    for node in list(model.graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        source = writers.get(node.input[0])
        if source is None or source.op_type != "Concat" or node.input[1] not in initializers:
            continue
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = next((a.i for a in source.attribute if a.name == "axis"), None)
        if node.op_type == "Conv":
            pointwise = (list(attributes.get("kernel_shape", [])) == [1, 1] and attributes.get("group", 1) == 1
                         and set(attributes.get("pads", [0])) == {0} and set(attributes.get("strides", [1])) == {1})
            if not pointwise or axis != 1:
                continue
            weight_axis = 1
        elif node.op_type == "Gemm":
            if axis not in (1, -1) or attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0:
                continue
            weight_axis = 1 if attributes.get("transB", 0) else 0
        parts = list(source.input)
        if any(p not in widths or p in initializers for p in parts) or readers[node.input[1]] != 1:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        bounds = np.cumsum([0] + [widths[p] for p in parts])
        if bounds[-1] != weight.shape[weight_axis]:
            continue
        position = list(model.graph.node).index(node)
        new_nodes, partial_outputs = [], []
        for index, part in enumerate(parts):
            piece = np.take(weight, range(bounds[index], bounds[index + 1]), axis=weight_axis)
            piece_name = f"{node.input[1]}__part{index}"
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(piece), piece_name))
            inputs = [part, piece_name] + (list(node.input[2:3]) if index == 0 else [])
            output = f"{node.output[0]}__part{index}"
            kept = {k: v for k, v in attributes.items() if node.op_type == "Conv" or k != "beta" or index == 0}
            new_nodes.append(helper.make_node(node.op_type, inputs, [output], name=f"{node.name}__part{index}",
                                              **kept))
            partial_outputs.append(output)
        total = partial_outputs[0]
        for index, output in enumerate(partial_outputs[1:], start=1):
            target = node.output[0] if index == len(partial_outputs) - 1 else f"{node.output[0]}__sum{index}"
            new_nodes.append(helper.make_node("Add", [total, output], [target], name=f"{node.name}__sum{index}"))
            total = target
        model.graph.node.remove(node)
        initializers.pop(node.input[1])
        model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == node.input[1]))
        for offset, new_node in enumerate(new_nodes):
            model.graph.node.insert(position + offset, new_node)
        readers[source.output[0]] -= 1
        if readers[source.output[0]] == 0:
            model.graph.node.remove(source)
        split.append(node.name)
    return split


def _isolate_quantized_inputs(model, float_nodes: set[str]) -> None:
    """Route a tensor that feeds both a quantised op and a float op (the MFU's key tokens
    feed a LayerNorm and the value MatMul) to the quantised op through an Identity.

    ONNX Runtime's quantiser rewires *every* reader of a quantised tensor to its
    DequantizeLinear, which would fake-quantise the float op's input too.
    """
    from onnx import helper

    readers = consumers(model.graph)
    initializers = {i.name for i in model.graph.initializer}
    added = []
    for tensor, nodes in readers.items():
        quantised = [n for n in nodes if n.name not in float_nodes]
        if tensor in initializers or not quantised or len(quantised) == len(nodes):
            continue
        alias = f"{tensor}__to_quantized"
        added.append(helper.make_node("Identity", [tensor], [alias], name=f"{tensor}__to_quantized_identity"))
        for node in quantised:
            for i, name in enumerate(node.input):
                if name == tensor:
                    node.input[i] = alias
    # Each Identity goes right before its first reader, keeping the graph topologically sorted.
    for identity in added:
        alias = identity.output[0]
        position = next(i for i, node in enumerate(model.graph.node) if alias in node.input)
        model.graph.node.insert(position, identity)


class _BatchReader:
    """ONNX Runtime's CalibrationDataReader over a preprocessed array."""

    def __init__(self, input_name: str, data: np.ndarray, batch_size: int = 8):
        self.input_name, self.data, self.batch_size = input_name, data, batch_size
        self._iterator: Iterator | None = None

    def get_next(self):
        if self._iterator is None:
            self._iterator = (self.data[i : i + self.batch_size] for i in range(0, len(self.data), self.batch_size))
        batch = next(self._iterator, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self):
        self._iterator = None


def _entropy_ranges(model_path: Path, op_types: tuple[str, ...], reader: _BatchReader, path: Path) -> None:
    """Entropy (KL) ranges with TensorRT's histogram: 2048 bins searched for the best 128.

    ``quantize_static`` builds ONNX Runtime's entropy calibrator with 128 bins for 128
    quantised bins, where the search has a single candidate, the full range, so it gives
    exactly MinMax. The same calibrator with 2048 bins is run here and its ranges reach
    ``quantize_static`` through its calibration cache.
    """
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    with tempfile.TemporaryDirectory(prefix="hybreid-entropy-") as work:
        calibrator = create_calibrator(model_path, list(op_types), augmented_model_path=str(Path(work) / "aug.onnx"),
                                       calibrate_method=CalibrationMethod.Entropy,
                                       extra_options={"num_bins": 2048, "num_quantized_bins": 128})
        calibrator.collect_data(reader)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors_data(calibrator.compute_data(), path)


def quantize(onnx_path: str | Path, out_path: str | Path, calibration: np.ndarray, config: QuantizationConfig,
             cache_dir: str | Path | None = None) -> QuantizationResult:
    """Write the Q/DQ model of ``onnx_path`` calibrated on ``calibration`` (preprocessed input batch).

    Tensor ranges are cached per (model, calibration data, method, target) in ``cache_dir``:
    a re-run with the same data and method skips calibration inference.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    prepared = out_path.with_suffix(".prepared.onnx")
    # Shape inference only: graph optimisations would insert com.microsoft ops TensorRT cannot parse.
    quant_pre_process(str(onnx_path), str(prepared), skip_optimization=True, skip_onnx_shape=False,
                      skip_symbolic_shape=True)
    model = onnx.load(str(prepared))
    if not config.quantize_concat_inputs:
        split_concatenated_inputs(model)
    keep = unquantized_nodes(model, config)
    floats = set(keep) | {n.name for n in model.graph.node if n.op_type not in config.op_types}
    unshare_initializers(model, floats)
    _isolate_quantized_inputs(model, floats)
    onnx.save(model, str(prepared))
    meta = metadata_of(model)  # a plain ONNX file or a detector (no ReID contract) quantizes too
    contract = ModelContract.from_metadata(meta, str(onnx_path)) if "hybreid.model" in meta else None
    input_name = contract.input_name if contract else model.graph.input[0].name
    dims = next((i.type.tensor_type.shape.dim for i in model.graph.input if i.name == input_name), [])
    batch = (dims[0].dim_value if dims else 0) or 8  # the input's fixed batch; 8 where it is dynamic
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.method]
    digest = hashlib.sha256(onnx_path.read_bytes()[:1 << 24])
    digest.update(calibration.tobytes())
    digest.update(json.dumps([config.method, config.target, config.cpu_isa, sorted(keep)]).encode())
    ranges_name = f"ranges-{config.method}-{config.target}-{digest.hexdigest()[:16]}.json"
    cache = Path(cache_dir) / ranges_name if cache_dir else None
    if config.method == "entropy":
        cache = cache or out_path.with_name(ranges_name)
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        if config.method == "entropy" and not cache.exists():
            _entropy_ranges(prepared, config.op_types, _BatchReader(input_name, calibration, batch), cache)
        _quantize_static(prepared, out_path, _BatchReader(input_name, calibration, batch), config, keep, method,
                         cache)
    except ValueError as exc:
        if "bins" not in str(exc):
            raise
        # numpy cannot cut a tensor whose values all but coincide into ONNX Runtime's 2048
        # histogram bins; the method cannot calibrate this model, the others still can
        raise UserError(f"{config.method} calibration failed: ONNX Runtime's histogram of a near-constant tensor "
                        f"({exc}); use --method minmax") from exc
    finally:
        prepared.unlink(missing_ok=True)
    if config.method == "entropy" and not cache_dir:
        cache.unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    if contract:
        set_metadata(quantized, replace(contract, precision=f"int8-{config.target}-{config.method}",
                                        cpu_isa=config.cpu_isa))
    onnx.save(quantized, str(out_path))
    return QuantizationResult(out_path, config, keep)


def _quantize_static(prepared: Path, out_path: Path, reader: _BatchReader, config: QuantizationConfig,
                     keep: dict[str, str], method, cache: Path | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    tensorrt = config.target == "tensorrt"
    cpu_format = config.cpu_format
    signed = config.symmetric_activations or cpu_format.activations == "int8"
    quantize_static(
        str(prepared), str(out_path), reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.op_types),
        per_channel=True,
        reduce_range=bool(cpu_format and cpu_format.reduce_range),
        activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(keep),
        calibrate_method=method,
        # TensorRT takes float biases (it folds them itself); int32 bias Q/DQ is for CPU kernels.
        extra_options={"ActivationSymmetric": config.symmetric_activations, "WeightSymmetric": True,
                       "QuantizeBias": not tensorrt},
        calibration_cache_path=str(cache) if cache else None,
    )


# --- TensorRT calibration cache (the text format TensorRT 8.x/10.x calibrators read) --------


def activation_scales(qdq_model) -> dict[str, float]:
    """``{tensor name: scale}`` of every activation QuantizeLinear in a Q/DQ model."""
    from onnx import numpy_helper

    initializers = {i.name: i for i in qdq_model.graph.initializer}
    scales = {}
    for node in qdq_model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            scale = numpy_helper.to_array(initializers[node.input[1]]) if node.input[1] in initializers else None
            if scale is not None and scale.size == 1:
                scales[node.input[0]] = float(scale.reshape(-1)[0])
    return scales


def write_calibration_cache(scales: dict[str, float], path: str | Path, version: str = "100300") -> Path:
    """One header line, then ``tensor: <float32 scale as big-endian hex>`` per tensor."""
    lines = [f"TRT-{version}-EntropyCalibration2"]
    lines += [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in sorted(scales.items())]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_calibration_cache(path: str | Path) -> dict[str, float]:
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise UserError(f"{path} is not a TensorRT calibration cache (no 'TRT-' header)")
    scales = {}
    for line in lines[1:]:
        if line.strip():
            name, _, value = line.rpartition(": ")
            scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return scales
