"""Which nodes stay in FP32 when a model runs in FP16, and the FP16 ONNX graph itself.

Reduced precision breaks transformers in known places: LayerNorm's variance and
Softmax's exponent overflow FP16, and the attention-score MatMul (``Q K^T``) feeds the
Softmax its range. GeM pooling raises activations to the power ``p = 3`` (FP16 tops out
at 65504), and the final L2 normalisation sums squares. These nodes are read from the
graph, not from names, so the same policy serves both TensorRT generations:

- TensorRT 10: FP16 builder flag, these layers pinned to FP32 with precision
  constraints (``hybreid.export.tensorrt_build``);
- TensorRT 11 (strongly typed networks): an FP16 ONNX in which these nodes stay FP32
  behind Cast nodes, made by onnxconverter-common's float16 conversion with a block
  list (:func:`convert_to_fp16`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from hybreid.contract import ModelContract, metadata_of, set_metadata
from hybreid.export.graph import consumers, producers

REASONS = {
    "LayerNormalization": "LayerNorm",
    "Softmax": "Softmax",
    "ReduceL2": "L2 normalisation",
    "ReduceSumSquare": "L2 normalisation",
}


def fp32_nodes(model) -> dict[str, str]:
    """``{node name: reason}`` of the nodes that must stay FP32 (``model`` is an onnx ModelProto)."""
    graph = model.graph
    readers, writers = consumers(graph), producers(graph)
    keep: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in REASONS:
            keep[node.name] = REASONS[node.op_type]
        elif node.op_type == "Softmax":
            keep[node.name] = "Softmax"
        if node.op_type == "Softmax":
            source = writers.get(node.input[0])
            if source is not None and source.op_type == "MatMul":
                keep[source.name] = "attention scores (Q K^T)"
            for consumer in readers.get(node.output[0], []):
                if consumer.op_type == "MatMul":
                    keep[consumer.name] = "attention-weighted values"
        if node.op_type == "Pow":
            # GeM: x^p, its spatial mean and the 1/p root.
            keep[node.name] = "GeM power"
            for consumer in readers.get(node.output[0], []):
                if consumer.op_type == "ReduceMean":
                    keep[consumer.name] = "GeM mean"
    return keep


def convert_to_fp16(source: str | Path, target: str | Path, keep_fp32: bool = True) -> dict[str, str]:
    """Write an FP16 copy of ``source`` with FP32 inputs/outputs; the nodes of
    :func:`fp32_nodes` stay FP32 unless ``keep_fp32=False`` (all-FP16, for comparison).
    Returns the nodes kept in FP32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    keep = fp32_nodes(model) if keep_fp32 else {}
    unshare_initializers(model, set(keep))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per weight clipped to FP16's range
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=list(keep),
                                                     disable_shape_infer=False)
    meta = metadata_of(model)  # a plain ONNX file (no hybreid contract) converts too
    if meta:
        contract = ModelContract.from_metadata(meta, str(source))
        set_metadata(converted, contract.with_precision("fp16" if keep_fp32 else "fp16-all"))
    onnx.save(converted, str(target))
    return keep


def unshare_initializers(model, fp32_names: set[str]) -> None:
    """Give the nodes in ``fp32_names`` their own copy of any initializer they share with others.

    Graph simplifiers merge equal constants (a zero LayerNorm bias and a zero convolution
    bias of the same width become one tensor); a converter that lowers the precision of
    some nodes (float16, int8) then finds one tensor it must keep and change at once.
    """
    import onnx

    initializers = {init.name: init for init in model.graph.initializer}
    users = {name: nodes for name, nodes in consumers(model.graph).items() if name in initializers}
    for name, nodes in users.items():
        blocked = [n for n in nodes if n.name in fp32_names]
        if not blocked or len(blocked) == len(nodes):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[name])
        copy.name = f"{name}__fp32"
        model.graph.initializer.append(copy)
        for node in blocked:
            for i, value in enumerate(node.input):
                if value == name:
                    node.input[i] = copy.name
