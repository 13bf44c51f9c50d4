"""Who writes and who reads each tensor of an ONNX graph: what the FP16 policy
(:mod:`.precision`) and the INT8 placement (:mod:`hybreid.calibration.int8`) both walk."""

from __future__ import annotations


def producers(graph) -> dict:
    """``{tensor name: the node that writes it}``."""
    return {output: node for node in graph.node for output in node.output}


def consumers(graph) -> dict[str, list]:
    """``{tensor name: the nodes that read it, in graph order}``."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers
