"""This machine's float32 matrix-multiply rates: the reference of every roofline ratio.

A roofline means "fraction of what this CPU's own GEMMs reach", so the reference is the
fastest of the runtimes' square 2048 matmuls measured in the same run: torch's (MKL or
OpenBLAS) and ONNX Runtime's CPU MatMul times a weight (packed once, as in every linear
layer). Which of them is faster depends on the CPU: on an AVX2 Intel machine torch led,
on an AMD EPYC (Zen 4) ONNX Runtime's own kernel ran at up to 1.6 times torch's, and a
torch-only reference printed rooflines above 1. ONNX Runtime times another activation
(packed on every call, as in attention scores) is measured for ``bench profile`` only.
"""

from __future__ import annotations

import time

import numpy as np

# A runtime's threads spin for a while after a run (OpenMP, ONNX Runtime's pool): let them
# fall asleep before a GEMM, or they take its cores.
IDLE_BEFORE_GEMM_S = 0.2
REFERENCE_KINDS = ("torch", "onnxruntime_weights")  # what a roofline is measured against
ALL_KINDS = (*REFERENCE_KINDS, "onnxruntime_activations")


class GemmRates:
    """Square float32 GEMMs of each kind, built once and timed on demand."""

    def __init__(self, threads: int, kinds: tuple[str, ...] = REFERENCE_KINDS, size: int = 2048):
        import onnx
        import onnxruntime as ort
        import torch
        from onnx import TensorProto, helper

        self.size = size
        rng = np.random.default_rng(0)
        left, right = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
        square = [size, size]
        torch.set_num_threads(threads)
        torch_left, torch_right = torch.from_numpy(left), torch.from_numpy(right)
        self.candidates = {}
        for kind in kinds:
            if kind == "torch":
                self.candidates[kind] = lambda: torch_left @ torch_right
                continue
            inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, square)]
            initializers, feed = [], {"a": left}
            if kind == "onnxruntime_weights":
                initializers.append(onnx.numpy_helper.from_array(right, "b"))
            else:
                inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, square))
                feed["b"] = right
            graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", inputs,
                                      [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)], initializers)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            self.candidates[kind] = lambda session=session, feed=feed: session.run(None, feed)

    def measure(self, repeats: int = 2) -> dict[str, float]:
        """GFLOP/s of each kind, median of ``repeats``.

        The kinds are timed in turn within each repeat, so that a change in the machine's
        speed (other tenants) reaches all of them rather than one. Each waits for the threads
        of the one before to fall asleep, and runs once untimed to wake its own.
        """
        seconds: dict[str, list[float]] = {name: [] for name in self.candidates}
        for _ in range(repeats):
            for name, multiply in self.candidates.items():
                time.sleep(IDLE_BEFORE_GEMM_S)
                multiply()
                start = time.perf_counter()
                multiply()
                seconds[name].append(time.perf_counter() - start)
        return {name: 2 * self.size**3 / float(np.median(times)) / 1e9 for name, times in seconds.items()}


def reference_rate(rates: dict[str, float]) -> float:
    """The roofline's reference: the fastest of the runtimes' own GEMMs."""
    return max(rates[kind] for kind in REFERENCE_KINDS if kind in rates)
